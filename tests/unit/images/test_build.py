"""The offline base-image builder: recipes, the host's mirror, busybox end to end, and the
Debian path against a fake ``mmdebstrap`` (no network; the real one runs in the integration tests)."""

from __future__ import annotations

import gzip
import hashlib
import io
import shutil
import subprocess
import sys
import tarfile
from collections.abc import Iterator
from pathlib import Path

import pytest
import zstandard

from engine.errors import ImageError
from engine.images import build, busybox
from engine.images.build import (
    BASE_IMAGES,
    DEFAULT_MIRROR,
    PATH_ENV,
    build_base_image,
    debian_mirror,
    find_static_busybox,
    is_static_elf,
    mmdebstrap_argv,
)
from engine.images.layout import Compression, LayoutReader
from engine.images.oci import MAX_CONFIG_BYTES, MAX_MANIFEST_BYTES, ImageConfig, parse_config, parse_manifest

# --- helpers ---------------------------------------------------------------------------------


def read_image(root: Path) -> tuple[str | None, ImageConfig, str, bytes]:
    """``(ref name, config, layer media type, uncompressed layer tar)`` of a one-image layout."""
    reader = LayoutReader(root)
    [(ref, desc)] = list(reader.images())
    manifest = parse_manifest(reader.read_blob(desc, MAX_MANIFEST_BYTES))
    config = parse_config(reader.read_blob(manifest.config, MAX_CONFIG_BYTES))
    [layer] = manifest.layers
    blob = reader.read_blob(layer, 1 << 30)
    if layer.media_type.endswith("+zstd"):
        tar = zstandard.ZstdDecompressor().stream_reader(io.BytesIO(blob)).read()
    elif layer.media_type.endswith("+gzip"):
        tar = gzip.decompress(blob)
    else:
        tar = blob
    return ref, config, layer.media_type, tar


def members(tar: bytes) -> dict[str, tarfile.TarInfo]:
    with tarfile.open(fileobj=io.BytesIO(tar), mode="r:") as tf:
        return {m.name: m for m in tf.getmembers()}


def leftovers(parent: Path, out: Path) -> list[str]:
    return sorted(p.name for p in parent.iterdir() if p != out)


@pytest.fixture(scope="module")
def static_busybox() -> Path:
    try:
        return find_static_busybox()
    except ImageError as exc:
        pytest.skip(f"no static busybox here ({exc.message}); apt-get install busybox-static")


# --- recipes ---------------------------------------------------------------------------------


def test_recipe_table() -> None:
    assert set(BASE_IMAGES) == {"microsandbox/python", "microsandbox/node", "busybox"}
    py, node, bb = BASE_IMAGES["microsandbox/python"], BASE_IMAGES["microsandbox/node"], BASE_IMAGES["busybox"]
    assert (py.kind, node.kind, bb.kind) == ("debian", "debian", "busybox")
    assert {"python3", "python3-pip", "python3-venv", "ca-certificates"} <= set(py.packages)
    assert {"nodejs", "npm", "ca-certificates"} <= set(node.packages)
    assert (py.config.cmd, node.config.cmd, bb.config.cmd) == (["python3"], ["node"], ["sh"])
    for name, recipe in BASE_IMAGES.items():
        assert recipe.name == name
        assert recipe.config.env and recipe.config.env[0] == PATH_ENV
        assert recipe.config.working_dir in ("/", "/root")
    assert py.config.env and {"LANG=C.UTF-8", "PYTHONUNBUFFERED=1"} <= set(py.config.env)
    assert py.config.model_dump(by_alias=True, exclude_none=True)["Cmd"] == ["python3"]


def test_unknown_recipe_names_the_known_ones(tmp_path: Path) -> None:
    with pytest.raises(ImageError, match="no base image recipe") as err:
        build_base_image("alpine", tmp_path / "out")
    assert err.value.hint and "microsandbox/python" in err.value.hint
    assert not (tmp_path / "out").exists()


# --- the host's mirror -----------------------------------------------------------------------


def apt_root(tmp_path: Path, files: dict[str, str]) -> Path:
    for rel, text in files.items():
        path = tmp_path / "etc" / "apt" / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    return tmp_path


def test_mirror_from_one_line_sources(tmp_path: Path) -> None:
    root = apt_root(tmp_path, {"sources.list": (
        "# a comment\n"
        "deb http://security.debian.org/debian-security bookworm-security main\n"
        "deb-src http://src.example/debian bookworm main\n"
        "deb [arch=amd64 signed-by=/usr/share/keyrings/k.gpg] http://mirror.example/debian/ bookworm main # hi\n"
    )})  # fmt: skip
    assert debian_mirror(root) == "http://mirror.example/debian"


def test_mirror_from_deb822_sources_skips_security_third_party_and_disabled(tmp_path: Path) -> None:
    root = apt_root(tmp_path, {
        "sources.list.d/a-nodesource.sources": (
            "Types: deb\nURIs: https://deb.nodesource.com/node_20.x\nSuites: nodistro\nComponents: main\n"
        ),
        "sources.list.d/b-off.sources": "Types: deb\nURIs: http://off.example/debian\nSuites: bookworm\nEnabled: no\n",
        "sources.list.d/debian.sources": (
            "Types: deb\n"
            "# http://snapshot.debian.org/archive/debian-security/20250520T000000Z\n"
            "URIs: http://deb.debian.org/debian-security\nSuites: bookworm-security\nComponents: main\n"
            "\n"
            "Types: deb deb-src\n"
            "# http://snapshot.debian.org/archive/debian/20250520T000000Z\n"
            "URIs:\n http://apt.internal:3142/debian\n http://second.example/debian\n"
            "Suites: bookworm bookworm-updates\nComponents: main\n"
            "Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg\n"
        ),
        "sources.list.d/google.list.disabled-by-farm": "deb http://ignored.example/debian bookworm main\n",
    })  # fmt: skip
    assert debian_mirror(root) == "http://apt.internal:3142/debian"


def test_mirror_falls_back_to_deb_debian_org(tmp_path: Path) -> None:
    assert debian_mirror(tmp_path) == DEFAULT_MIRROR
    root = apt_root(tmp_path, {"sources.list": "deb http://archive.ubuntu.com/ubuntu jammy main\n"})
    assert debian_mirror(root) == DEFAULT_MIRROR


def test_mirror_on_this_host_is_a_url() -> None:
    assert debian_mirror().startswith(("http://", "https://", "file:", "ftp://"))


# --- the mmdebstrap command line -------------------------------------------------------------


def test_mmdebstrap_argv(tmp_path: Path) -> None:
    tar = tmp_path / "r.tar"
    argv = mmdebstrap_argv(BASE_IMAGES["microsandbox/python"], tar, "bookworm", "http://m/debian", "root")
    assert argv[0] == "mmdebstrap"
    assert argv[-3:] == ["bookworm", str(tar), "http://m/debian"]
    for flag in ("--mode=root", "--variant=minbase", "--format=tar", "--skip=output/dev",
                 "--include=python3,python-is-python3,python3-pip,python3-venv,ca-certificates",
                 "--dpkgopt=path-exclude=/usr/share/doc/*", "--dpkgopt=path-exclude=/usr/share/locale/*"):  # fmt: skip
        assert flag in argv
    [hook] = [a for a in argv if a.startswith("--customize-hook=")]
    assert "EXTERNALLY-MANAGED" in hook and "etc/resolv.conf" in hook
    # mmdebstrap keeps its apt.conf in the chroot's /tmp: clearing it made its cleanup run on the host's apt.
    assert '"$1"/tmp' not in hook and '"$1/tmp' not in hook


def test_unsafe_drop_pattern_is_refused(tmp_path: Path) -> None:
    recipe = BASE_IMAGES["microsandbox/node"].model_copy(update={"drop": ["../etc; rm -rf /"]})
    with pytest.raises(ImageError, match="unsafe drop pattern"):
        mmdebstrap_argv(recipe, tmp_path / "r.tar", "bookworm", DEFAULT_MIRROR, "root")


# --- busybox end to end ----------------------------------------------------------------------


def test_static_elf_check(static_busybox: Path, tmp_path: Path) -> None:
    assert is_static_elf(static_busybox)
    assert not is_static_elf(Path(sys.executable).resolve())  # CPython is dynamically linked
    (tmp_path / "text").write_text("#!/bin/sh\n")
    (tmp_path / "short").write_bytes(b"\x7fELF\x02\x01")
    assert not is_static_elf(tmp_path / "text")
    assert not is_static_elf(tmp_path / "short")


@pytest.mark.parametrize("compression", ["zstd", "gzip"])
def test_busybox_layout(static_busybox: Path, tmp_path: Path, compression: Compression) -> None:
    lines: list[str] = []
    out, ref = build_base_image("busybox", tmp_path / "bb", log=lines.append, compression=compression)
    assert (out, ref) == (tmp_path / "bb", "latest")
    assert lines and leftovers(tmp_path, out) == []
    name, config, media_type, tar = read_image(out)
    assert name == "latest" and media_type.endswith(compression)
    assert config.config.cmd == ["sh"] and config.config.env == [PATH_ENV]
    assert config.rootfs.diff_ids == ["sha256:" + hashlib.sha256(tar).hexdigest()]
    assert config.history and "busybox" in config.history[0]["created_by"]
    assert config.config.labels and config.config.labels["org.opencontainers.image.title"] == "busybox"
    got = members(tar)
    binary = got["bin/busybox"]
    assert binary.isreg() and binary.mode == 0o755 and binary.size == static_busybox.stat().st_size
    assert got["bin/sh"].issym() and got["bin/sh"].linkname == "/bin/busybox"
    assert got["tmp"].isdir() and got["tmp"].mode == 0o1777 and got["root"].mode == 0o700
    assert all(m.uid == 0 and m.gid == 0 and m.uname == "" for m in got.values())
    assert all(not m.name.startswith(("/", "./")) and ".." not in m.name.split("/") for m in got.values())
    assert {"proc", "sys", "dev", "run", "etc/passwd", "etc/group"} <= set(got)
    with tarfile.open(fileobj=io.BytesIO(tar)) as tf:
        passwd = tf.extractfile("etc/passwd")
        assert passwd is not None and passwd.read().startswith(b"root:x:0:0:")
    skopeo_accepts(out, ref)


def skopeo_accepts(out: Path, ref: str) -> None:
    if shutil.which("skopeo") is None:
        pytest.skip("skopeo is not installed: the layout was not cross-checked (apt-get install skopeo)")
    res = subprocess.run(["skopeo", "inspect", f"oci:{out}:{ref}"], capture_output=True, text=True, timeout=60)
    assert res.returncode == 0, res.stderr


def test_busybox_is_reproducible_and_replaces_an_old_layout(static_busybox: Path, tmp_path: Path) -> None:
    out = tmp_path / "bb"
    build_base_image("busybox", out)
    first = read_image(out)[3]
    build_base_image("busybox", out)
    assert read_image(out)[3] == first
    assert leftovers(tmp_path, out) == []


def test_failure_leaves_no_layout_and_no_temp_dir(
    static_busybox: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def broken(_busybox: Path) -> Iterator[busybox.Entry]:
        yield busybox.tar_info("bin", tarfile.DIRTYPE, 0o755, 0), None
        raise ImageError("stop half-way")

    monkeypatch.setattr(build, "busybox_entries", broken)
    with pytest.raises(ImageError, match="stop half-way"):
        build_base_image("busybox", tmp_path / "bb")
    assert list(tmp_path.iterdir()) == []


def test_refuses_to_replace_a_directory_that_is_not_a_layout(tmp_path: Path) -> None:
    (tmp_path / "home").mkdir()
    (tmp_path / "home" / "precious.txt").write_text("keep me")
    with pytest.raises(ImageError, match="not an OCI layout"):
        build_base_image("busybox", tmp_path / "home")
    assert (tmp_path / "home" / "precious.txt").read_text() == "keep me"


def test_cli_builds_busybox(static_busybox: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert build.main(["busybox", str(tmp_path / "cli")]) == 0
    assert capsys.readouterr().out.strip() == f"oci:{tmp_path / 'cli'}:latest"
    assert build.main(["busybox", str(tmp_path / "cli" / "oci-layout")]) == 1  # a file: refused, no traceback


# --- the Debian path, with a fake mmdebstrap -------------------------------------------------

FAKE_MMDEBSTRAP = """#!{python}
import io, sys, tarfile
if "--fail" in open(sys.argv[0] + ".mode").read():
    print("E: cannot download the Release file"); sys.exit(1)
print("I: pretending"); sys.stdout.flush()
def info(name, kind, **kw):
    ti = tarfile.TarInfo(name); ti.type = kind; ti.uname = ti.gname = "root"
    for k, v in kw.items(): setattr(ti, k, v)
    return ti
with tarfile.open(sys.argv[-2], "w", format=tarfile.PAX_FORMAT) as tf:
    tf.addfile(info("./", tarfile.DIRTYPE, mode=0o755, mtime=1700000000))
    tf.addfile(info("./usr/", tarfile.DIRTYPE, mode=0o755))
    tf.addfile(info("./usr/bin/", tarfile.DIRTYPE, mode=0o755))
    data = b"#!/bin/sh\\necho python\\n"
    tf.addfile(info("./usr/bin/python3.11", tarfile.REGTYPE, mode=0o755, size=len(data)), io.BytesIO(data))
    tf.addfile(info("./usr/bin/python3", tarfile.SYMTYPE, linkname="python3.11"))
    tf.addfile(info("./usr/bin/python3-hard", tarfile.LNKTYPE, linkname="./usr/bin/python3.11"))
    long = "./usr/" + "x" * 150
    tf.addfile(info(long, tarfile.REGTYPE, mode=0o644, size=0, pax_headers={{"path": long}}))
    tf.addfile(info("./null", tarfile.CHRTYPE, mode=0o666, devmajor=1, devminor=3))
"""


@pytest.fixture
def fake_mmdebstrap(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    bin_dir = tmp_path / "fakebin"
    bin_dir.mkdir()
    script = bin_dir / "mmdebstrap"
    script.write_text(FAKE_MMDEBSTRAP.format(python=sys.executable))
    script.chmod(0o755)
    (bin_dir / "mmdebstrap.mode").write_text("ok")
    monkeypatch.setenv("PATH", f"{bin_dir}:/usr/bin:/bin")
    return script


def test_debian_layer_is_normalised(fake_mmdebstrap: Path, tmp_path: Path) -> None:
    lines: list[str] = []
    out, ref = build_base_image("microsandbox/python", tmp_path / "py", suite="trixie",
                                mirror="http://user:secret@mirror.local:3142/debian", log=lines.append)  # fmt: skip
    assert "I: pretending" in lines and not any("secret" in line for line in lines)
    _, config, _, tar = read_image(out)
    assert config.rootfs.diff_ids == ["sha256:" + hashlib.sha256(tar).hexdigest()]
    labels = config.config.labels or {}
    assert labels["msb.debian.suite"] == "trixie" and labels["msb.debian.mirror"] == "mirror.local"
    assert config.history and "secret" not in str(config.history)
    assert "http://mirror.local:3142/debian" in config.history[0]["created_by"]
    assert config.config.cmd == ["python3"] and config.config.working_dir == "/root"
    got = members(tar)
    assert set(got) == {"usr", "usr/bin", "usr/bin/python3.11", "usr/bin/python3", "usr/bin/python3-hard",
                        "usr/" + "x" * 150, "dev"}  # fmt: skip
    assert got["usr/bin/python3-hard"].islnk() and got["usr/bin/python3-hard"].linkname == "usr/bin/python3.11"
    assert got["usr/bin/python3"].linkname == "python3.11"
    assert got["dev"].isdir() and got["dev"].mtime == 1700000000
    assert all(m.uname == "" for m in got.values())
    skopeo_accepts(out, ref)


def test_mmdebstrap_failure_shows_its_output(fake_mmdebstrap: Path, tmp_path: Path) -> None:
    (fake_mmdebstrap.parent / "mmdebstrap.mode").write_text("--fail")
    with pytest.raises(ImageError, match="cannot download the Release file") as err:
        build_base_image("microsandbox/node", tmp_path / "node", mirror="http://mirror.local/debian")
    assert err.value.hint and "mirror.local" in err.value.hint
    assert leftovers(tmp_path, tmp_path / "node") == ["fakebin"]


def test_missing_mmdebstrap_says_how_to_install_it(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PATH", str(tmp_path / "empty"))
    with pytest.raises(ImageError, match="mmdebstrap is not installed") as err:
        build_base_image("microsandbox/python", tmp_path / "py", mirror=DEFAULT_MIRROR)
    assert err.value.hint == "install mmdebstrap: apt-get install mmdebstrap"
    assert list(tmp_path.iterdir()) == []
