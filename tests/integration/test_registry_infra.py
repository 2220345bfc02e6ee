"""The registry test infrastructure works.

docker-registry starts anonymous and behind htpasswd, skopeo pushes every fabricated image,
the registry serves what was built, and the fabricated layers hold what their ``Expect`` says
(checked with a small in-memory layer merge, so a wrong expectation fails here, not in a pull test).
"""

from __future__ import annotations

import gzip
import hashlib
import io
import os
import posixpath
import tarfile
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import zstandard

from engine.images.layout import LayoutReader
from engine.images.oci import (
    OCI_INDEX,
    OCI_LAYER,
    OCI_LAYER_GZIP,
    OCI_LAYER_ZSTD,
    OCI_MANIFEST,
    Descriptor,
    host_platform,
)
from tests.support.images import (
    FabricatedImage,
    big_image,
    busybox_layer,
    gzip_and_zstd,
    multi_layer_whiteouts,
    two_platform_index,
)
from tests.support.registry import (
    LocalRegistry,
    RegistryStartError,
    SkopeoError,
    probe,
    push_layout,
    skopeo_inspect,
    skopeo_pull,
)

pytest_plugins = ["tests.support.fixtures"]

GZ, ZST = OCI_LAYER_GZIP, OCI_LAYER_ZSTD


# --- the registries --------------------------------------------------------------------------


def test_anonymous_registry_answers_v2(registry: LocalRegistry) -> None:
    assert registry.host.startswith("127.0.0.1:")
    assert probe(f"{registry.url}/v2/") == "200"


def test_auth_registry_challenges_over_plain_http(auth_registry: LocalRegistry) -> None:
    assert probe(f"{auth_registry.url}/v2/") == "401"
    assert probe(f"{auth_registry.url}/v2/", creds=f"{auth_registry.username}:wrong") == "401"
    assert probe(f"{auth_registry.url}/v2/", creds=auth_registry.creds) == "200"


def test_stop_ends_the_process_and_removes_its_own_dir() -> None:
    reg = LocalRegistry().start()
    pid, workdir = reg.pid, reg.workdir
    assert pid is not None and probe(f"{reg.url}/v2/") == "200"
    reg.stop()
    with pytest.raises(ProcessLookupError):  # reaped, not a zombie
        os.kill(pid, 0)
    assert not workdir.exists()
    reg.stop()  # idempotent


def test_start_failure_carries_the_registry_log() -> None:
    reg = LocalRegistry(extra_config={"storage": {"nosuchdriver": {}}})
    with pytest.raises(RegistryStartError, match=r"(?s)exited with status.*StorageDriver not registered"):
        reg.start()
    assert reg.pid is None


# --- pushing the fabricated images ---------------------------------------------------------


def test_whiteout_image_is_pushed_byte_for_byte(registry: LocalRegistry, repo: str, tmp_path: Path) -> None:
    img = multi_layer_whiteouts(tmp_path)
    pushed = push_layout(img.layout, img.ref, registry, f"{repo}:v1")
    assert pushed.digest == img.top.digest
    raw = skopeo_inspect(pushed.ref, raw=True)
    assert raw["mediaType"] == OCI_MANIFEST
    assert [layer["mediaType"] for layer in raw["layers"]] == [GZ, GZ, ZST, GZ] == img.layer_media_types
    assert skopeo_inspect(pushed.ref)["Layers"] == [d.digest for d in img.layers]
    config = skopeo_inspect(pushed.ref, config=True)
    assert config["rootfs"]["diff_ids"] == img.diff_ids
    assert config["config"] == {"Env": ["PATH=/usr/bin:/bin", "MSB_TEST=1"], "WorkingDir": "/data", "Cmd": ["sh"],
                                "User": "0"}  # fmt: skip


def test_uncompressed_layer_is_gzipped_on_push(registry: LocalRegistry, repo: str, tmp_path: Path) -> None:
    img = gzip_and_zstd(tmp_path)
    assert img.layer_media_types == [GZ, GZ, ZST, OCI_LAYER]
    pushed = push_layout(img.layout, img.ref, registry, f"{repo}:v1")
    raw = skopeo_inspect(pushed.ref, raw=True)
    # skopeo compresses whatever is uncompressed for a registry: new digest, new media type.
    assert [layer["mediaType"] for layer in raw["layers"]] == [GZ, GZ, ZST, GZ]
    assert [layer["digest"] for layer in raw["layers"][:3]] == [d.digest for d in img.layers[:3]]
    assert raw["layers"][3]["digest"] != img.layers[3].digest
    assert pushed.digest != img.top.digest
    assert skopeo_inspect(pushed.ref, config=True)["rootfs"]["diff_ids"] == img.diff_ids


def test_auth_registry_rejects_anonymous_and_accepts_creds(auth_registry: LocalRegistry, repo: str,
                                                           tmp_path: Path) -> None:  # fmt: skip
    img = busybox_layer(tmp_path)
    with pytest.raises(SkopeoError, match="unauthorized"):
        push_layout(img.layout, img.ref, auth_registry, f"{repo}:v1")
    pushed = push_layout(img.layout, img.ref, auth_registry, f"{repo}:v1", creds=auth_registry.creds)
    with pytest.raises(SkopeoError, match="unauthorized") as anon:
        skopeo_inspect(pushed.ref)
    assert auth_registry.password and auth_registry.password not in str(anon.value)
    with pytest.raises(SkopeoError, match="unauthorized"):
        skopeo_inspect(pushed.ref, creds=f"{auth_registry.username}:wrong")
    assert skopeo_inspect(pushed.ref, creds=auth_registry.creds)["Digest"] == img.top.digest


def test_push_all_keeps_both_platforms(registry: LocalRegistry, repo: str, tmp_path: Path) -> None:
    img = two_platform_index(tmp_path)
    pushed = push_layout(img.layout, img.ref, registry, f"{repo}:v1", all_platforms=True)
    assert pushed.digest == img.top.digest
    raw = skopeo_inspect(pushed.ref, raw=True)
    assert raw["mediaType"] == OCI_INDEX
    assert {(m["platform"]["os"], m["platform"]["architecture"]) for m in raw["manifests"]} == {
        ("linux", "amd64"), ("linux", "arm64")}  # fmt: skip
    for m in raw["manifests"]:
        variant = img.platforms[f"linux/{m['platform']['architecture']}"]
        assert m["digest"] == variant.top.digest
        one = skopeo_inspect(f"{registry.host}/{repo}@{m['digest']}", raw=True)
        assert [layer["digest"] for layer in one["layers"]] == [d.digest for d in variant.layers]


def test_push_without_all_keeps_only_the_host_platform(registry: LocalRegistry, repo: str, tmp_path: Path) -> None:
    img = two_platform_index(tmp_path)
    pushed = push_layout(img.layout, img.ref, registry, f"{repo}:v1")
    assert pushed.digest == img.platforms[f"linux/{host_platform().architecture}"].top.digest
    assert skopeo_inspect(pushed.ref, raw=True)["mediaType"] == OCI_MANIFEST


def test_skopeo_pull_round_trips_layers(registry: LocalRegistry, repo: str, tmp_path: Path) -> None:
    img = busybox_layer(tmp_path)
    pushed = push_layout(img.layout, img.ref, registry, f"{repo}:v1")
    pulled = LayoutReader(skopeo_pull(pushed.ref, tmp_path / "pulled"))
    [(ref, desc)] = list(pulled.images())
    assert (ref, desc.digest) == ("latest", img.top.digest)
    for layer in img.layers:
        assert pulled.blob_path(layer.digest).read_bytes() == (img.layout / "blobs" / "sha256" /
                                                               layer.digest[7:]).read_bytes()  # fmt: skip


# --- the fabricated images hold what they promise ------------------------------------------


@pytest.mark.parametrize("build", [multi_layer_whiteouts, gzip_and_zstd, busybox_layer])
def test_expectations_match_the_layers(build: Callable[[Path], FabricatedImage], tmp_path: Path) -> None:
    img = build(tmp_path)
    _check(img, _merge(img))


def test_each_platform_has_its_own_platform_file(tmp_path: Path) -> None:
    img = two_platform_index(tmp_path)
    assert set(img.platforms) == {"linux/amd64", "linux/arm64"}
    for name, variant in img.platforms.items():
        assert variant.config.architecture == name.split("/")[1]
        _check(variant, _merge(variant))


def test_whiteouts_are_tar_entries_by_name(tmp_path: Path) -> None:
    img = multi_layer_whiteouts(tmp_path)
    names = [ti.name for ti, _ in _entries(img, img.layers[2])]
    assert names.index("opq/.wh..wh..opq") < names.index("opq/new")
    assert "data/.wh.gone" in names


def test_big_image_is_reproducible_and_half_compressible(tmp_path: Path) -> None:
    a = big_image(tmp_path / "a", total_mb=4, layers=2)
    b = big_image(tmp_path / "b", total_mb=4, layers=2)
    assert a.top.digest == b.top.digest
    assert a.layer_media_types == [GZ, GZ]
    fs = _merge(a)
    assert sum(len(data) for path, (ti, data) in fs.items() if ti.isreg() and path.startswith("/big/")) == 4 << 20
    ratio = sum(d.size for d in a.layers) / (4 << 20)
    assert 0.5 < ratio < 0.95, ratio
    _check(a, fs)


Fs = dict[str, tuple[tarfile.TarInfo, bytes]]


def _entries(img: FabricatedImage, desc: Descriptor) -> Iterator[tuple[tarfile.TarInfo, bytes]]:
    with open(img.layout / "blobs" / "sha256" / desc.digest[7:], "rb") as raw:
        stream: io.BufferedIOBase = raw
        if desc.media_type == GZ:
            stream = gzip.GzipFile(fileobj=raw)
        elif desc.media_type == ZST:
            stream = io.BufferedReader(zstandard.ZstdDecompressor().stream_reader(raw))
        with tarfile.open(fileobj=stream, mode="r|") as tar:
            for ti in tar:
                f = tar.extractfile(ti) if ti.isreg() else None
                yield ti, f.read() if f else b""


def _merge(img: FabricatedImage) -> Fs:
    """A reference merge of the layers (overlay semantics), in memory."""
    fs: Fs = {}
    for desc in img.layers:
        this_layer: set[str] = set()
        for ti, data in _entries(img, desc):
            path = posixpath.normpath("/" + ti.name)
            parent, base = posixpath.split(path)
            if base == ".wh..wh..opq":
                for p in [p for p in fs if p.startswith(parent.rstrip("/") + "/") and p not in this_layer]:
                    del fs[p]
            elif base.startswith(".wh."):
                gone = posixpath.join(parent, base[4:])
                for p in [p for p in fs if p == gone or p.startswith(gone + "/")]:
                    del fs[p]
            else:
                if ti.islnk():
                    data = fs[posixpath.normpath("/" + ti.linkname)][1]
                fs[path] = (ti, data)
                this_layer.add(path)
    return fs


def _check(img: FabricatedImage, fs: Fs) -> None:
    e = img.expect
    for path, content in e.files.items():
        assert fs[path][1] == content, path
    for path, hexdigest in e.sha256.items():
        assert hashlib.sha256(fs[path][1]).hexdigest() == hexdigest, path
    for path, mode in e.modes.items():
        assert fs[path][0].mode & 0o7777 == mode, path
    for path, target in e.symlinks.items():
        assert fs[path][0].issym() and fs[path][0].linkname == target, path
    for first, second in e.hardlinks:
        assert fs[second][0].islnk() and "/" + fs[second][0].linkname == first, second
    for path in e.dirs:
        assert fs[path][0].isdir(), path
    for path in e.absent:
        assert path not in fs, path
