"""Store, pull, push, import/export against the in-memory FakeRegistry."""

from __future__ import annotations

import json
import os
import tarfile
from pathlib import Path

import pytest

from engine.errors import AuthError, ImageError, NotFoundError, RegistryError
from engine.images.archive import export_layout, import_archive, import_layout
from engine.images.credentials import Credentials
from engine.images.fake_registry import FakeRegistry
from engine.images.oci import Platform
from engine.images.pull import ensure_image, pull_image
from engine.images.push import push_image
from engine.images.reference import ImageRef
from engine.images.store import DigestMismatch, ImageStore
from tests.unit.images.fakeimg import docker_save_tar, publish, publish_index, write_layout

REPO = "registry.test/team/app"


@pytest.fixture
def store(tmp_path: Path) -> ImageStore:
    return ImageStore(tmp_path / "store")


@pytest.fixture
def reg() -> FakeRegistry:
    return FakeRegistry()


def _layers() -> list[dict[str, str]]:
    return [{"etc/one": "1"}, {"srv/two": "2" * 5000}]


async def test_pull_stores_verified_blobs_and_names_image(store: ImageStore, reg: FakeRegistry, tmp_path: Path) -> None:
    digest, _ = publish(reg, REPO, "v1", tmp_path, _layers(), env=["A=1"])
    res = await pull_image(f"{REPO}:v1", store, reg)
    assert not res.up_to_date and res.fetched_bytes > 0
    rec = store.get(f"{REPO}:v1")
    assert rec is not None and rec.manifest == digest == rec.digest
    manifest = store.manifest(rec)
    assert len(manifest.layers) == 2
    assert all(store.verify_blob(d.digest) for d in [manifest.config, *manifest.layers])
    assert store.config(rec).config.env == ["A=1"]
    assert [p for p in (store.root / "ingest").iterdir() if p.suffix == ".part"] == []  # nothing half-written


async def test_second_pull_downloads_nothing(store: ImageStore, reg: FakeRegistry, tmp_path: Path) -> None:
    publish(reg, REPO, "v1", tmp_path, _layers())
    await pull_image(f"{REPO}:v1", store, reg)
    blob_calls = [c for c in reg.calls if c[0] == "blob"]
    res = await pull_image(f"{REPO}:v1", store, reg)
    assert res.up_to_date and res.fetched_bytes == 0
    assert [c for c in reg.calls if c[0] == "blob"] == blob_calls


async def test_index_picks_the_requested_platform(store: ImageStore, reg: FakeRegistry, tmp_path: Path) -> None:
    _, amd = publish(reg, REPO, "x", tmp_path, [{"platform": "amd64"}], tag_it=False)
    _, arm = publish(reg, REPO, "x", tmp_path, [{"platform": "arm64"}], arch="arm64", tag_it=False)
    top = publish_index(reg, REPO, "multi", [amd, arm])
    res = await pull_image(f"{REPO}:multi", store, reg, platform=Platform(os="linux", architecture="arm64"))
    assert res.record.digest == top and res.record.manifest == arm.digest
    assert res.record.platform == "linux/arm64"
    assert not store.has_blob(amd.digest)  # the other platform was never fetched
    with pytest.raises(ImageError, match="no variant for linux/s390x"):
        await pull_image(f"{REPO}:multi", store, reg, platform=Platform(os="linux", architecture="s390x"))


async def test_corrupt_blob_is_rejected_and_refetched(store: ImageStore, reg: FakeRegistry, tmp_path: Path) -> None:
    digest, _ = publish(reg, REPO, "v1", tmp_path, _layers())
    layer = json.loads(reg.manifests[(f"{REPO}", "v1")][0])["layers"][1]["digest"]
    reg.corrupt_once.add(layer)
    res = await pull_image(f"{REPO}:v1", store, reg)
    assert store.verify_blob(layer)
    assert [c for c in reg.calls if c == ("blob", layer)] == [("blob", layer)] * 2
    assert res.record.manifest == digest


async def test_blob_corrupt_every_time_fails_and_stores_nothing(store: ImageStore, reg: FakeRegistry,
                                                                 tmp_path: Path) -> None:
    publish(reg, REPO, "v1", tmp_path, _layers())
    layer = json.loads(reg.manifests[(REPO, "v1")][0])["layers"][0]["digest"]
    reg.blobs[layer] = reg.blobs[layer][:-1] + bytes([reg.blobs[layer][-1] ^ 1])  # the registry holds bad bytes
    with pytest.raises(ImageError, match="failed verification twice"):
        await pull_image(f"{REPO}:v1", store, reg)
    assert not store.has_blob(layer)
    assert store.get(f"{REPO}:v1") is None


async def test_broken_download_resumes_with_range(store: ImageStore, reg: FakeRegistry, tmp_path: Path) -> None:
    publish(reg, REPO, "v1", tmp_path, [{"big": os.urandom(300_000).hex()}])
    layer = json.loads(reg.manifests[(REPO, "v1")][0])["layers"][0]["digest"]
    reg.fail_after[layer] = 100_000
    await pull_image(f"{REPO}:v1", store, reg)
    assert reg.range_requests == 1
    assert store.verify_blob(layer)


async def test_interrupted_pull_leaves_no_visible_blob_then_resumes(store: ImageStore, reg: FakeRegistry,
                                                                    tmp_path: Path) -> None:
    publish(reg, REPO, "v1", tmp_path, [{"big": os.urandom(200_000).hex()}])
    layer = json.loads(reg.manifests[(REPO, "v1")][0])["layers"][0]["digest"]
    w = store.writer(layer, len(reg.blobs[layer]))
    w.write(reg.blobs[layer][:50_000])
    w.__exit__(None, None, None)  # the process "died" here
    assert not store.has_blob(layer)
    await pull_image(f"{REPO}:v1", store, reg)
    assert reg.range_requests == 1 and store.verify_blob(layer)


def test_writer_rejects_oversize_and_mismatch(store: ImageStore) -> None:
    w = store.writer("sha256:" + "0" * 64, 3)
    with pytest.raises(ImageError, match="larger than"):
        w.write(b"1234")
    w.discard()
    w = store.writer("sha256:" + "0" * 64, 3)
    w.write(b"abc")
    with pytest.raises(DigestMismatch):
        w.commit()
    assert not store.has_blob("sha256:" + "0" * 64)


async def test_auth_none_wrong_right(store: ImageStore, tmp_path: Path) -> None:
    need = Credentials(username="u", password="p")
    for creds, expect in ((None, "requires authentication"), (Credentials(username="u", password="x"), "rejected")):
        reg = FakeRegistry(require=need, creds=creds)
        publish(reg, REPO, "v1", tmp_path, _layers())
        with pytest.raises(AuthError, match=expect):
            await pull_image(f"{REPO}:v1", store, reg)
    reg = FakeRegistry(require=need, creds=Credentials(username="u", password="p"))
    publish(reg, REPO, "v1", tmp_path, _layers())
    assert (await pull_image(f"{REPO}:v1", store, reg)).record.name == f"{REPO}:v1"


async def test_offline_base_image_gets_a_build_hint(store: ImageStore) -> None:
    class Down(FakeRegistry):
        async def get_manifest(self, ref: ImageRef, reference: str):  # type: ignore[no-untyped-def]
            raise RegistryError("cannot reach registry registry-1.docker.io: no DNS")

    with pytest.raises(ImageError) as err:
        await pull_image("microsandbox/python", store, Down())
    assert "msb image build microsandbox/python" in str(err.value)


async def test_offline_uses_stored_copy(store: ImageStore, reg: FakeRegistry, tmp_path: Path) -> None:
    publish(reg, REPO, "v1", tmp_path, _layers())
    await pull_image(f"{REPO}:v1", store, reg)

    class Down(FakeRegistry):
        async def get_manifest(self, ref: ImageRef, reference: str):  # type: ignore[no-untyped-def]
            raise RegistryError("unreachable")

    res = await pull_image(f"{REPO}:v1", store, Down())
    assert res.offline and res.record.name == f"{REPO}:v1"


async def test_ensure_image_does_not_touch_registry_when_stored(store: ImageStore, reg: FakeRegistry,
                                                               tmp_path: Path) -> None:
    publish(reg, REPO, "v1", tmp_path, _layers())
    rec = await ensure_image(f"{REPO}:v1", store, reg)
    calls = len(reg.calls)
    assert (await ensure_image(f"{REPO}:v1", store, reg)).manifest == rec.manifest
    assert (await ensure_image(rec.id, store, reg)).name == rec.name  # by image id
    assert len(reg.calls) == calls


async def test_rejects_non_container_artifacts(store: ImageStore, reg: FakeRegistry) -> None:
    cfg = reg.add_blob(b"{}")
    data = json.dumps({"schemaVersion": 2, "config": {"mediaType": "application/vnd.oras.config.v1+json",
                       "digest": cfg, "size": 2}, "layers": []}).encode()  # fmt: skip
    reg.add_manifest(REPO, "art", data, "application/vnd.oci.image.manifest.v1+json")
    with pytest.raises(ImageError, match="not a container image"):
        await pull_image(f"{REPO}:art", store, reg)


async def test_push_uploads_missing_blobs_then_manifest(store: ImageStore, reg: FakeRegistry, tmp_path: Path) -> None:
    digest, _ = publish(reg, REPO, "v1", tmp_path, _layers())
    await pull_image(f"{REPO}:v1", store, reg)
    other = FakeRegistry()
    res = await push_image(store, f"{REPO}:v1", "other.test/copy:v2", other)
    assert res.digest == digest and res.pushed_blobs == 3
    again = await push_image(store, f"{REPO}:v1", "other.test/copy:v2", other)
    assert again.pushed_blobs == 0
    with pytest.raises(NotFoundError):
        await push_image(store, "nope:1", None, other)


async def test_prune_keeps_referenced_blobs(store: ImageStore, reg: FakeRegistry, tmp_path: Path) -> None:
    publish(reg, REPO, "a", tmp_path, [{"shared": "s"}, {"a": "a"}])
    publish(reg, REPO, "b", tmp_path, [{"b": "b"}])
    await pull_image(f"{REPO}:a", store, reg)
    await pull_image(f"{REPO}:b", store, reg)
    before = store.usage()["blobs"]
    store.remove(f"{REPO}:b")
    removed, freed = store.prune()
    assert removed == 3 and freed > 0  # b's manifest, config and layer
    assert store.usage()["blobs"] == before - 3
    rec = store.get(f"{REPO}:a")
    assert rec is not None
    assert all(store.has_blob(d.digest) for d in store.manifest(rec).layers)
    with pytest.raises(NotFoundError):
        store.remove(f"{REPO}:b")


def test_import_layout_and_export_roundtrip(store: ImageStore, tmp_path: Path) -> None:
    write_layout(tmp_path / "lay", tmp_path, {"hello": "world"}, "v1")
    [rec] = import_layout(store, tmp_path / "lay", name="example.test/hello:1")
    assert rec.name == "example.test/hello:1" and rec.source == "import"
    out = export_layout(store, ["example.test/hello:1"], tmp_path / "exported")
    other = ImageStore(tmp_path / "store2")
    [back] = import_layout(other, out)
    assert back.name == "example.test/hello:1" and back.manifest == rec.manifest
    tar = export_layout(store, ["example.test/hello:1"], tmp_path / "img.tar")
    [from_tar] = import_archive(ImageStore(tmp_path / "store3"), tar)
    assert from_tar.manifest == rec.manifest


def test_import_without_name_uses_dir_and_ref(store: ImageStore, tmp_path: Path) -> None:
    write_layout(tmp_path / "My Layout", tmp_path, {"x": "y"}, "v7")
    [rec] = import_layout(store, tmp_path / "My Layout")
    assert rec.name == "localhost/my-layout:v7"


def test_import_layout_with_tampered_blob_fails(store: ImageStore, tmp_path: Path) -> None:
    write_layout(tmp_path / "lay", tmp_path, {"hello": "world"}, "v1")
    blobs = sorted((tmp_path / "lay" / "blobs" / "sha256").iterdir(), key=lambda p: p.stat().st_size)
    biggest = blobs[-1]
    biggest.write_bytes(biggest.read_bytes()[:-1] + b"!")
    with pytest.raises(ImageError):
        import_layout(store, tmp_path / "lay", name="x.test/y:1")
    assert store.get("x.test/y:1") is None


def test_import_docker_save(store: ImageStore, tmp_path: Path) -> None:
    docker_save_tar(tmp_path / "save.tar", {"etc/motd": "hi"}, "myapp:2")
    [rec] = import_archive(store, tmp_path / "save.tar")
    assert rec.name == "docker.io/library/myapp:2"
    assert len(store.manifest(rec).layers) == 1


def test_import_hostile_archive_stays_inside(store: ImageStore, tmp_path: Path) -> None:
    import io

    evil = tmp_path / "evil.tar"
    with tarfile.open(evil, "w") as t:
        ti = tarfile.TarInfo("../../escaped")
        ti.size = 1
        t.addfile(ti, io.BytesIO(b"x"))
    with pytest.raises(ImageError):
        import_archive(store, evil)
    assert not (tmp_path / "escaped").exists() and not (store.root.parent / "escaped").exists()


def test_concurrent_writers_of_one_blob_do_not_collide(store: ImageStore) -> None:
    import hashlib

    data = os.urandom(100_000)
    digest = "sha256:" + hashlib.sha256(data).hexdigest()
    a = store.writer(digest, len(data))
    b = store.writer(digest, len(data))  # the part file is taken: b gets a private one
    assert a.part != b.part
    a.write(data[:50_000])
    b.write(data)
    b.commit()
    a.write(data[50_000:])
    a.commit()
    assert store.verify_blob(digest)
    assert [p for p in (store.root / "ingest").iterdir() if p.suffix == ".part"] == []


async def test_concurrent_pulls_of_one_image(store: ImageStore, reg: FakeRegistry, tmp_path: Path) -> None:
    import asyncio

    publish(reg, REPO, "v1", tmp_path, [{"big": os.urandom(200_000).hex()}, {"b": "b"}])
    results = await asyncio.gather(*(pull_image(f"{REPO}:v1", store, reg) for _ in range(4)))
    assert len({r.record.manifest for r in results}) == 1
    rec = store.get(f"{REPO}:v1")
    assert rec is not None and all(store.verify_blob(d.digest) for d in store.manifest(rec).layers)
