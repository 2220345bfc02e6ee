"""Applying layer tars: what a layer holds, OCI changeset semantics (replacement, whiteouts,
opaque directories) and metadata. Hostile layers are in ``test_layers_hostile.py``.
"""

from __future__ import annotations

import gzip
import hashlib
import io
import os
import stat
import tarfile
from pathlib import Path

import pytest
import zstandard

from engine.errors import HostileLayerError, ImageError
from engine.images.layers import apply_layer
from engine.images.layout import write_layer_tar
from tests.unit.images.layer_helpers import (
    MTIME,
    Layers,
    dirent,
    hard,
    node,
    reg,
    sym,
    tar_bytes,
    tar_info,
    xattrs_supported,
)

# --- what a layer holds ---------------------------------------------------------------------------


def test_files_dirs_links_modes_and_mtimes(layers: Layers) -> None:
    entries = [
        dirent("bin", 0o755),
        reg("bin/busybox", b"\x7fELF busybox", 0o755),
        reg("bin/su", b"su binary", 0o4755),
        reg("bin/wall", b"wall", 0o2755),
        dirent("tmp", 0o1777),
        sym("bin/sh", "busybox"),
        sym("lib64", "/lib"),  # absolute: fine, it is only followed inside the guest
        hard("bin/ash", "bin/busybox"),
        dirent("ro", 0o555),
        reg("ro/inside", b"written before the parent became read-only", 0o444),
        node("run/initctl", tarfile.FIFOTYPE, 0o640),
    ]
    stats = layers.apply(entries)
    root = layers.root
    assert (root / "bin" / "busybox").read_bytes() == b"\x7fELF busybox"
    assert stat.S_IMODE((root / "bin" / "su").stat().st_mode) == 0o4755
    assert stat.S_IMODE((root / "bin" / "wall").stat().st_mode) == 0o2755
    assert stat.S_IMODE((root / "tmp").stat().st_mode) == 0o1777
    assert stat.S_IMODE((root / "ro").stat().st_mode) == 0o555
    assert os.readlink(root / "bin" / "sh") == "busybox"
    assert os.readlink(root / "lib64") == "/lib"
    assert (root / "bin" / "ash").stat().st_ino == (root / "bin" / "busybox").stat().st_ino
    fifo = (root / "run" / "initctl").lstat()
    assert stat.S_ISFIFO(fifo.st_mode) and stat.S_IMODE(fifo.st_mode) == 0o640
    assert stat.S_IMODE((root / "run").stat().st_mode) == 0o755  # an unlisted parent: Docker's mode
    for path in ("bin", "bin/su", "bin/sh", "tmp", "ro", "run/initctl"):  # dirs too: their mtime is set last
        assert (root / path).lstat().st_mtime == MTIME, path
    assert stats.entries == 11
    assert stats.bytes == sum(ti.size for ti, _ in entries)
    assert stats.whiteouts == 0


def test_target_is_created_private(layers: Layers) -> None:
    layers.apply([reg("f", b"x")])
    assert stat.S_IMODE(layers.root.stat().st_mode) == 0o700


def test_root_entry_keeps_the_target_private(layers: Layers) -> None:
    layers.apply([dirent("./", 0o755), reg("./f", b"x")])
    assert stat.S_IMODE(layers.root.stat().st_mode) == 0o700
    assert (layers.root / "f").read_bytes() == b"x"


def test_leading_slash_and_dot_are_stripped(sentinel: Layers) -> None:
    sentinel.apply([reg("/etc/passwd", b"in the root"), reg("./etc/hosts", b"hosts")])
    assert (sentinel.root / "etc" / "passwd").read_bytes() == b"in the root"
    assert (sentinel.root / "etc" / "hosts").read_bytes() == b"hosts"


@pytest.mark.parametrize("compression", ["gzip", "zstd", "none"])
def test_diff_id_matches_the_uncompressed_tar(layers: Layers, tmp_path: Path, compression: str) -> None:
    src = tmp_path / "src"
    (src / "etc").mkdir(parents=True)
    (src / "etc" / "os-release").write_text("ID=test\n")
    (src / "big").write_bytes(os.urandom(3 << 20))  # several 1 MiB chunks
    blob, _, diff_id = write_layer_tar(src, tmp_path, compression)  # type: ignore[arg-type]
    stats = apply_layer(blob, None if compression == "none" else compression, layers.root)
    raw = blob.read_bytes()
    raw = gzip.decompress(raw) if compression == "gzip" else raw
    raw = zstandard.ZstdDecompressor().stream_reader(io.BytesIO(raw)).read() if compression == "zstd" else raw
    assert stats.diff_id == diff_id == "sha256:" + hashlib.sha256(raw).hexdigest()
    assert len(raw) % 10240 == 0  # tarfile pads to a record: the padding is in the diff_id too
    assert (layers.root / "big").read_bytes() == (src / "big").read_bytes()
    assert (layers.root / "etc" / "os-release").read_text() == "ID=test\n"


def test_zstd_layer_of_several_frames(layers: Layers) -> None:
    raw = tar_bytes([reg("a", b"A" * 5000), reg("b", b"B" * 5000)])
    c = zstandard.ZstdCompressor()
    blob = layers.tmp / "frames.blob"
    blob.write_bytes(c.compress(raw[:4096]) + c.compress(raw[4096:]))
    stats = apply_layer(blob, "zstd", layers.root)
    assert stats.diff_id == "sha256:" + hashlib.sha256(raw).hexdigest()
    assert (layers.root / "b").read_bytes() == b"B" * 5000


def test_empty_layer(layers: Layers) -> None:
    raw = tar_bytes([])
    stats = apply_layer(layers.blob(raw, "gzip"), "gzip", layers.root)
    assert stats.entries == 0
    assert stats.diff_id == "sha256:" + hashlib.sha256(raw).hexdigest()
    assert list(layers.root.iterdir()) == []


def test_corrupt_blob_is_an_image_error(layers: Layers) -> None:
    blob = layers.blob(tar_bytes([reg("f", os.urandom(100_000))]), "gzip")
    blob.write_bytes(blob.read_bytes()[:5000])
    with pytest.raises(ImageError, match="not a valid gzip tar stream") as info:
        apply_layer(blob, "gzip", layers.root)
    assert not isinstance(info.value, HostileLayerError)


def test_unknown_compression(layers: Layers) -> None:
    with pytest.raises(ImageError, match="unknown layer compression"):
        apply_layer(layers.blob(b""), "bzip2", layers.root)


def test_missing_blob(layers: Layers) -> None:
    with pytest.raises(ImageError, match="cannot read the blob"):
        apply_layer(layers.tmp / "nope", None, layers.root)


# --- replacing what lower layers made ---------------------------------------------------------------


def test_entries_replace_and_directories_merge(layers: Layers) -> None:
    layers.apply([
        reg("x", b"lower file"),
        dirent("d", 0o755), reg("d/lower", b"kept"),
        dirent("s", 0o755), reg("s/child", b"goes away"),
        reg("f", b"becomes a symlink"),
        sym("l", "somewhere"),
    ])  # fmt: skip
    layers.apply([
        dirent("x", 0o750), reg("x/y", b"now a dir"),
        dirent("d", 0o700), reg("d/upper", b"added"),
        sym("s", "elsewhere"),
        sym("f", "x/y"),
        reg("l", b"a file now"),
    ])  # fmt: skip
    root = layers.root
    assert (root / "x" / "y").read_bytes() == b"now a dir"
    assert stat.S_IMODE((root / "x").stat().st_mode) == 0o750
    assert sorted(p.name for p in (root / "d").iterdir()) == ["lower", "upper"]
    assert stat.S_IMODE((root / "d").stat().st_mode) == 0o700
    assert os.readlink(root / "s") == "elsewhere"
    assert os.readlink(root / "f") == "x/y"
    assert not (root / "l").is_symlink() and (root / "l").read_bytes() == b"a file now"


def test_whiteout_removes_a_file_and_a_tree(layers: Layers) -> None:
    layers.apply([reg("a/file", b"1"), reg("a/keep", b"2"), reg("tree/x/y/z", b"3"), sym("link", "tree")])
    stats = layers.apply([reg("a/.wh.file"), reg(".wh.tree"), reg(".wh.link"), reg("a/.wh.never-existed")])
    root = layers.root
    assert sorted(p.name for p in (root / "a").iterdir()) == ["keep"]
    assert not (root / "tree").exists() and not (root / "link").is_symlink()
    assert stats.whiteouts == 4
    assert not [p for p in root.rglob("*") if p.name.startswith(".wh.")]


def test_opaque_dir_keeps_this_layers_entries_and_drops_lower_ones(layers: Layers) -> None:
    layers.apply([reg("d/old1", b"1"), reg("d/sub/old2", b"2"), reg("d/again/old3", b"3"), reg("other", b"4")])
    stats = layers.apply([
        dirent("d"),
        reg("d/new", b"same layer, before the marker"),
        reg("d/again/fresh", b"same layer, inside a lower dir"),
        reg("d/.wh..wh..opq"),
        reg("d/later", b"after the marker"),
    ])  # fmt: skip
    d = layers.root / "d"
    assert sorted(p.name for p in d.iterdir()) == ["again", "later", "new"]
    assert [p.name for p in (d / "again").iterdir()] == ["fresh"]
    assert (layers.root / "other").exists()
    assert stats.whiteouts == 1
    assert not (d / ".wh..wh..opq").exists()


def test_whiteout_leaves_a_same_layer_entry_alone(layers: Layers) -> None:
    layers.apply([reg("f", b"lower")])
    layers.apply([reg("f", b"upper"), reg(".wh.f")])
    assert (layers.root / "f").read_bytes() == b"upper"


def test_aufs_metadata_is_ignored(layers: Layers) -> None:
    stats = layers.apply([dirent(".wh..wh.plnk"), reg(".wh..wh.plnk/123.456", b"aufs"), reg("d/.wh..wh.aufs"),
                          reg("f", b"x")])  # fmt: skip
    assert stats.whiteouts == 0
    assert sorted(str(p.relative_to(layers.root)) for p in layers.root.rglob("*")) == ["f"]


# --- metadata -------------------------------------------------------------------------------------


def test_xattrs_from_pax_headers(layers: Layers) -> None:
    layers.root.mkdir(mode=0o700)
    if not xattrs_supported(layers.root):
        pytest.skip("this filesystem has no user xattrs")
    f, _ = entry = reg("f", b"x")
    f.pax_headers = {"SCHILY.xattr.user.note": "hello", "SCHILY.xattr.user.bin": "\udcff\x00raw"}
    d, _ = dentry = dirent("d")
    d.pax_headers = {"SCHILY.xattr.user.dir": "on a dir", "SCHILY.xattr.trusted.overlay.redirect": "/x"}
    stats = layers.apply([entry, dentry])
    assert os.getxattr(layers.root / "f", "user.note") == b"hello"
    assert os.getxattr(layers.root / "f", "user.bin") == b"\xff\x00raw"
    assert os.getxattr(layers.root / "d", "user.dir") == b"on a dir"
    assert stats.skipped_xattrs == 1  # trusted.overlay.* is never set


def test_xattr_that_cannot_be_set_is_counted(layers: Layers) -> None:
    s, _ = entry = sym("l", "target")
    s.pax_headers = {"SCHILY.xattr.user.x": "1"}  # Linux refuses user.* on symlinks
    stats = layers.apply([entry])
    assert stats.skipped_xattrs == 1


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root to chown")
def test_owners_when_privileged(layers: Layers) -> None:
    stats = layers.apply([
        dirent("home", uid=1000, gid=1000),
        reg("home/suid", b"x", 0o6755, uid=1234, gid=5678),
        (tar_info("home/link", tarfile.SYMTYPE, 0o777, linkname="suid", uid=77, gid=78), None),
        node("dev/null", tarfile.CHRTYPE, 0o666, devmajor=1, devminor=3),
        node("dev/loop0", tarfile.BLKTYPE, 0o660, devmajor=7, devminor=0, gid=6),
    ])  # fmt: skip
    root = layers.root
    st = (root / "home" / "suid").stat()
    assert (st.st_uid, st.st_gid) == (1234, 5678)
    assert stat.S_IMODE(st.st_mode) == 0o6755  # chown before chmod: setuid survives
    assert (root / "home").stat().st_uid == 1000
    link = (root / "home" / "link").lstat()
    assert (link.st_uid, link.st_gid) == (77, 78)  # lchown: the link itself, not what it points at
    null = (root / "dev" / "null").lstat()  # devices: empty placeholder files, owners kept
    assert stat.S_ISREG(null.st_mode) and null.st_size == 0 and stat.S_IMODE(null.st_mode) == 0o600
    loop = (root / "dev" / "loop0").lstat()
    assert stat.S_ISREG(loop.st_mode) and loop.st_gid == 6 and stat.S_IMODE(loop.st_mode) == 0o600
    assert stats.skipped_owners == 0 and stats.skipped_devices == 2


def test_unprivileged_skips_owners(layers: Layers) -> None:
    stats = layers.apply(
        [reg("mine", b"x", uid=os.geteuid(), gid=os.getegid()), reg("theirs", b"y", 0o4755, uid=4321, gid=4321),
         dirent("d", uid=4321, gid=0)],
        privileged=False,
    )  # fmt: skip
    st = (layers.root / "theirs").stat()
    assert (st.st_uid, st.st_gid) == (os.geteuid(), os.getegid())
    assert stat.S_IMODE(st.st_mode) == 0o4755
    assert stats.skipped_owners == 2
