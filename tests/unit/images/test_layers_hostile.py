"""Hostile layers: each tries to reach outside the target (``..``, symlinks, hard links, device
nodes) or to exhaust the host (bombs, huge headers, deep paths), and must be refused.

Every hostile case checks two things: ``HostileLayerError`` is raised (or ``ImageError`` for what
msb simply does not apply), and the sentinel directory next to the target (``tmp_path/"outside"``)
is exactly as it was.
"""

from __future__ import annotations

import os
import stat
import tarfile

import pytest

from engine.errors import HostileLayerError, ImageError
from engine.images.layers import apply_layer
from tests.unit.images.layer_helpers import Layers, dirent, hard, node, reg, sym, tar_bytes

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


def test_file_onto_a_symlink_replaces_it_instead_of_writing_through(sentinel: Layers) -> None:
    sentinel.apply([dirent("etc"), sym("etc/passwd", str(sentinel.outside / "etc" / "passwd"))])
    sentinel.apply([reg("etc/passwd", b"root:x:0:0:pwned\n")])
    assert not (sentinel.root / "etc" / "passwd").is_symlink()
    assert (sentinel.root / "etc" / "passwd").read_bytes() == b"root:x:0:0:pwned\n"


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


def test_device_node_unprivileged_is_a_placeholder(sentinel: Layers) -> None:
    stats = sentinel.apply([node("dev/sda", tarfile.BLKTYPE, 0o660, devmajor=8, devminor=0)], privileged=False)
    st = (sentinel.root / "dev" / "sda").lstat()
    assert stat.S_ISREG(st.st_mode) and st.st_size == 0 and stats.skipped_devices == 1


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
