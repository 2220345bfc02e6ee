"""Applying layer tars: OCI changeset semantics, metadata, and hostile layers that must not escape.

Every hostile case checks two things: ``HostileLayerError`` is raised, and the sentinel directory
next to the target (``tmp_path/"outside"``) is exactly as it was.
"""

from __future__ import annotations

import gzip
import hashlib
import io
import os
import stat
import tarfile
from collections.abc import Iterator
from pathlib import Path

import pytest
import zstandard

from engine.errors import HostileLayerError, ImageError
from engine.images.layers import LayerStats, apply_layer
from engine.images.layout import write_layer_tar

MTIME = 1_600_000_000
Entry = tuple[tarfile.TarInfo, bytes | None]


def _info(name: str, kind: bytes, mode: int, **kw: object) -> tarfile.TarInfo:
    ti = tarfile.TarInfo(name)
    ti.type, ti.mode, ti.mtime = kind, mode, MTIME
    for key, value in kw.items():
        setattr(ti, key, value)
    return ti


def reg(name: str, data: bytes = b"", mode: int = 0o644, **kw: object) -> Entry:
    return _info(name, tarfile.REGTYPE, mode, size=len(data), **kw), data


def dirent(name: str, mode: int = 0o755, **kw: object) -> Entry:
    return _info(name, tarfile.DIRTYPE, mode, **kw), None


def sym(name: str, target: str) -> Entry:
    return _info(name, tarfile.SYMTYPE, 0o777, linkname=target), None


def hard(name: str, target: str) -> Entry:
    return _info(name, tarfile.LNKTYPE, 0o644, linkname=target), None


def node(name: str, kind: bytes, mode: int = 0o600, **kw: object) -> Entry:
    return _info(name, kind, mode, **kw), None


def tar_bytes(entries: list[Entry]) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for ti, data in entries:
            tar.addfile(ti, io.BytesIO(data) if data is not None else None)
    return buf.getvalue()


def compress(raw: bytes, compression: str | None) -> bytes:
    if compression == "gzip":
        return gzip.compress(raw)
    if compression == "zstd":
        return zstandard.ZstdCompressor().compress(raw)
    return raw


class Layers:
    """Writes layer blobs under tmp_path and applies them to ``root``, next to ``outside``."""

    def __init__(self, tmp_path: Path) -> None:
        self.tmp = tmp_path
        self.root = tmp_path / "root"
        self.outside = tmp_path / "outside"
        self.count = 0

    def blob(self, raw: bytes, compression: str | None = None) -> Path:
        self.count += 1
        path = self.tmp / f"layer{self.count}.blob"
        path.write_bytes(compress(raw, compression))
        return path

    def apply(self, entries: list[Entry], compression: str | None = None, **kw: object) -> LayerStats:
        return apply_layer(self.blob(tar_bytes(entries), compression), compression, self.root, **kw)  # type: ignore[arg-type]


def snapshot(root: Path) -> dict[str, tuple[int, bytes | str]]:
    """Every path under ``root`` with its mode and content (file bytes, link target or "dir")."""
    out: dict[str, tuple[int, bytes | str]] = {}
    for dirpath, dirnames, filenames in os.walk(root):
        for name in dirnames + filenames:
            p = Path(dirpath, name)
            st = p.lstat()
            body: bytes | str = os.readlink(p) if p.is_symlink() else "dir" if p.is_dir() else p.read_bytes()
            out[str(p.relative_to(root))] = (st.st_mode, body)
    return out


@pytest.fixture
def layers(tmp_path: Path) -> Layers:
    return Layers(tmp_path)


@pytest.fixture
def sentinel(layers: Layers) -> Iterator[Layers]:
    """``outside/secret`` and ``outside/etc/passwd`` exist; the test body must leave them be."""
    (layers.outside / "etc").mkdir(parents=True)
    (layers.outside / "secret").write_bytes(b"top secret")
    (layers.outside / "etc" / "passwd").write_bytes(b"root:x:0:0\n")
    before = snapshot(layers.outside)
    yield layers
    assert snapshot(layers.outside) == before


def xattrs_supported(path: Path) -> bool:
    probe = path / "xattr-probe"
    probe.write_bytes(b"")
    try:
        os.setxattr(probe, "user.probe", b"1")
        return True
    except OSError:
        return False
    finally:
        probe.unlink()


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


def test_file_onto_a_symlink_replaces_it_instead_of_writing_through(sentinel: Layers) -> None:
    sentinel.apply([dirent("etc"), sym("etc/passwd", str(sentinel.outside / "etc" / "passwd"))])
    sentinel.apply([reg("etc/passwd", b"root:x:0:0:pwned\n")])
    assert not (sentinel.root / "etc" / "passwd").is_symlink()
    assert (sentinel.root / "etc" / "passwd").read_bytes() == b"root:x:0:0:pwned\n"


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
        (_info("home/link", tarfile.SYMTYPE, 0o777, linkname="suid", uid=77, gid=78), None),
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
    null = (root / "dev" / "null").lstat()
    assert stat.S_ISCHR(null.st_mode) and null.st_rdev == os.makedev(1, 3)
    loop = (root / "dev" / "loop0").lstat()
    assert stat.S_ISBLK(loop.st_mode) and loop.st_gid == 6 and stat.S_IMODE(loop.st_mode) == 0o660
    assert stats.skipped_owners == 0


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


# --- hostile layers: each raises HostileLayerError and leaves `outside` alone --------------------------


@pytest.mark.parametrize(
    "name",
    ["../outside/pwn", "/../outside/pwn", "a/../../outside/pwn", "./../outside/secret", "a/b/../../../outside/x"],
)
def test_dotdot_names_are_refused(sentinel: Layers, name: str) -> None:
    with pytest.raises(HostileLayerError, match=r"'\.\.'"):
        sentinel.apply([reg(name, b"pwned")])


def test_dotdot_in_a_directory_name(sentinel: Layers) -> None:
    with pytest.raises(HostileLayerError):
        sentinel.apply([dirent("../outside/newdir")])
    assert not (sentinel.outside / "newdir").exists()


def test_directory_onto_a_symlink_replaces_it_instead_of_merging_through(sentinel: Layers) -> None:
    sentinel.apply([sym("etc", str(sentinel.outside / "etc"))])
    sentinel.apply([dirent("etc", 0o777), reg("etc/hosts", b"inside")])
    assert not (sentinel.root / "etc").is_symlink()
    assert sorted(p.name for p in (sentinel.root / "etc").iterdir()) == ["hosts"]


def test_relative_symlink_then_write_through_it(sentinel: Layers) -> None:
    with pytest.raises(HostileLayerError, match="symlink 'a'"):
        sentinel.apply([sym("a", "../outside"), reg("a/pwn", b"pwned")])
    assert os.readlink(sentinel.root / "a") == "../outside"  # the symlink itself is fine


def test_absolute_symlink_then_write_through_it(sentinel: Layers) -> None:
    with pytest.raises(HostileLayerError):
        sentinel.apply([sym("etc", str(sentinel.outside / "etc")), reg("etc/passwd", b"pwned")])


def test_symlink_from_a_lower_layer_then_write_through_it(sentinel: Layers) -> None:
    sentinel.apply([sym("a", "../../outside")])
    with pytest.raises(HostileLayerError):
        sentinel.apply([dirent("a/newdir")])


def test_symlink_deep_in_the_path(sentinel: Layers) -> None:
    with pytest.raises(HostileLayerError, match="'x/y/z'"):
        sentinel.apply([dirent("x"), dirent("x/y"), sym("x/y/z", "../../../../outside"), reg("x/y/z/etc/pwn", b"!")])


def test_whiteout_through_a_symlink(sentinel: Layers) -> None:
    sentinel.apply([sym("a", "../outside")])
    with pytest.raises(HostileLayerError):
        sentinel.apply([reg("a/.wh.secret")])


def test_opaque_through_a_symlink(sentinel: Layers) -> None:
    sentinel.apply([sym("a", str(sentinel.outside))])
    with pytest.raises(HostileLayerError):
        sentinel.apply([reg("a/.wh..wh..opq")])


def test_whiteout_of_dotdot(sentinel: Layers) -> None:
    with pytest.raises(HostileLayerError):
        sentinel.apply([reg(".wh..."), reg("a/.wh..")])
    assert sentinel.root.is_dir()


def test_hardlink_outside(sentinel: Layers) -> None:
    with pytest.raises(HostileLayerError):
        sentinel.apply([hard("stolen", "../outside/secret")])
    assert not (sentinel.root / "stolen").exists()


def test_hardlink_absolute_stays_inside(sentinel: Layers) -> None:
    with pytest.raises(HostileLayerError, match="not in the layers"):
        sentinel.apply([hard("stolen", str(sentinel.outside / "secret"))])


def test_hardlink_through_a_symlinked_dir(sentinel: Layers) -> None:
    with pytest.raises(HostileLayerError, match="symlink 'lnk'"):
        sentinel.apply([sym("lnk", "../outside"), hard("stolen", "lnk/secret")])
    assert not (sentinel.root / "stolen").exists()


def test_hardlink_to_a_symlink_links_the_symlink_itself(sentinel: Layers) -> None:
    sentinel.apply([sym("lnk", str(sentinel.outside / "secret")), hard("twin", "lnk")])
    assert os.readlink(sentinel.root / "twin") == str(sentinel.outside / "secret")
    assert (sentinel.root / "twin").lstat().st_ino == (sentinel.root / "lnk").lstat().st_ino


def test_hardlink_to_something_not_there_yet(sentinel: Layers) -> None:
    with pytest.raises(HostileLayerError, match="not in the layers"):
        sentinel.apply([hard("early", "late"), reg("late", b"x")])


def test_device_node_unprivileged(sentinel: Layers) -> None:
    with pytest.raises(HostileLayerError, match=r"'dev/sda'.*device node") as info:
        sentinel.apply([node("dev/sda", tarfile.BLKTYPE, 0o660, devmajor=8, devminor=0)], privileged=False)
    assert "run as root" in (info.value.hint or "")
    assert not (sentinel.root / "dev" / "sda").exists()


def test_bomb_over_max_bytes(sentinel: Layers) -> None:
    with pytest.raises(HostileLayerError, match="more than 1048576 bytes"):
        sentinel.apply([reg("zeros", bytes(8 << 20))], "gzip", max_bytes=1 << 20)
    assert not (sentinel.root / "zeros").exists() or (sentinel.root / "zeros").stat().st_size <= 1 << 20


def test_bomb_in_the_padding_after_the_archive(sentinel: Layers) -> None:
    blob = sentinel.blob(tar_bytes([reg("f", b"x")]) + bytes(8 << 20), "gzip")
    with pytest.raises(HostileLayerError, match="more than"):
        apply_layer(blob, "gzip", sentinel.root, max_bytes=1 << 20)


def test_file_size_over_max_bytes_is_refused_before_reading(sentinel: Layers) -> None:
    ti, _ = reg("huge")
    ti.size = 1 << 40  # the header alone: the data never comes
    blob = sentinel.blob(ti.tobuf(tarfile.PAX_FORMAT) + bytes(1024))
    with pytest.raises(HostileLayerError, match="files unpack to more than"):
        apply_layer(blob, None, sentinel.root, max_bytes=1 << 20)
    assert not (sentinel.root / "huge").exists()


def test_too_many_entries(sentinel: Layers) -> None:
    with pytest.raises(HostileLayerError, match="more than 5 entries"):
        sentinel.apply([reg(f"f{i}", b"") for i in range(10)], max_entries=5)
    assert len(list(sentinel.root.iterdir())) == 5


def test_nul_in_a_name(sentinel: Layers) -> None:
    ti, data = reg("x", b"pwned")
    ti.pax_headers = {"path": "ok\0/../../outside/pwn"}
    with pytest.raises(HostileLayerError, match="NUL"):
        sentinel.apply([(ti, data)])
    assert list(sentinel.root.iterdir()) == []


def test_component_over_255_bytes(sentinel: Layers) -> None:
    with pytest.raises(HostileLayerError, match="255"):
        sentinel.apply([reg("d/" + "n" * 256, b"x")])


def test_path_over_4096_bytes(sentinel: Layers) -> None:
    with pytest.raises(HostileLayerError, match="4096"):
        sentinel.apply([reg("/".join(["d" * 200] * 21), b"x")])


def test_path_too_deep(sentinel: Layers) -> None:
    with pytest.raises(HostileLayerError, match="levels deep"):
        sentinel.apply([reg("/".join(["d"] * 300), b"x")])


def test_oversized_pax_header(sentinel: Layers) -> None:
    ti, data = reg("f", b"x")
    ti.pax_headers = {"comment": "c" * (2 << 20)}
    with pytest.raises(HostileLayerError, match="extension header"):
        sentinel.apply([(ti, data)])


def test_sparse_file_is_refused(sentinel: Layers) -> None:
    ti, data = reg("f", b"x")
    ti.pax_headers = {"GNU.sparse.major": "1", "GNU.sparse.minor": "0", "GNU.sparse.realsize": str(1 << 40)}
    with pytest.raises(ImageError, match="sparse"):
        sentinel.apply([(ti, data)])


def test_missing_blob(layers: Layers) -> None:
    with pytest.raises(ImageError, match="cannot read the blob"):
        apply_layer(layers.tmp / "nope", None, layers.root)
