"""Hostile image authors: what a layer tar may plant in the host's image cache.

msb applies layers as root into ``~/.cache/msb/…``. A layer with a copy of ``/dev/mem`` or
``/dev/sda`` must never become a real device node there (anyone who reaches the node reads the
host's memory or disk), whatever ``privileged`` says; FIFOs lose their special bits; setuid-root
files stay behind a 0700 root; and no symlink, hard link or ``..`` path writes outside the target.
"""

from __future__ import annotations

import os
import shutil
import stat
import tarfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from engine.errors import HostileLayerError
from engine.images.archive import import_layout
from engine.images.layout import LayoutWriter
from engine.images.resolve import resolve_root
from engine.images.store import ImageStore
from engine.sandbox.engine import Engine
from engine.vm.disk import build_ext4
from tests.support.images import BUSYBOX_EXPECT, LayerBuilder, _image, add_busybox_layer
from tests.unit.images.layer_helpers import Entry, Layers, dirent, hard, node, outside_untouched, reg, sym

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="the attack needs msb running as root")

DEVICES: list[Entry] = [
    dirent("dev"),
    node("dev/mem", tarfile.CHRTYPE, 0o666, devmajor=1, devminor=1),
    node("dev/sda", tarfile.BLKTYPE, 0o660, devmajor=8, devminor=0, gid=6),
    node("dev/kmsg", tarfile.CHRTYPE, 0o6777, devmajor=1, devminor=11),  # setuid bits on a device
    node("usr/share/whiteout", tarfile.CHRTYPE, 0o000, devmajor=0, devminor=0),  # overlayfs-style 0:0
    node("opt/disk", tarfile.BLKTYPE, 0o777, devmajor=259, devminor=0, uid=1000),  # away from /dev
    hard("opt/disk-twin", "opt/disk"),
]


@pytest.fixture
def sentinel(tmp_path: Path) -> Iterator[Layers]:
    with outside_untouched(Layers(tmp_path)) as layers:
        before = set(os.listdir(tmp_path))
        yield layers
        assert set(os.listdir(tmp_path)) - before <= {f"layer{i}.blob" for i in range(1, 10)} | {"root"}


def nodes(root: Path) -> list[str]:
    """Every char or block device under ``root`` (which must be none)."""
    found = []
    for dirpath, dirnames, filenames in os.walk(root):
        for name in dirnames + filenames:
            mode = os.lstat(os.path.join(dirpath, name)).st_mode
            if stat.S_ISCHR(mode) or stat.S_ISBLK(mode):
                found.append(os.path.join(dirpath, name))
    return found


@pytest.mark.parametrize("privileged", [None, True, False])
def test_device_nodes_never_become_devices(sentinel: Layers, privileged: bool | None) -> None:
    stats = sentinel.apply(DEVICES, privileged=privileged)
    assert nodes(sentinel.root) == []
    assert stats.skipped_devices == 5
    for path in ("dev/mem", "dev/sda", "dev/kmsg", "usr/share/whiteout", "opt/disk"):
        st = (sentinel.root / path).lstat()
        assert stat.S_ISREG(st.st_mode) and st.st_size == 0, path
        assert stat.S_IMODE(st.st_mode) & ~0o600 == 0, path  # no setuid, nothing for group/others
    assert (sentinel.root / "opt/disk-twin").lstat().st_ino == (sentinel.root / "opt/disk").lstat().st_ino


def test_a_later_layer_can_still_replace_or_delete_a_device(sentinel: Layers) -> None:
    sentinel.apply(DEVICES)
    sentinel.apply([reg("dev/mem", b"now a file"), reg("dev/.wh.sda"), node("dev/sda2", tarfile.BLKTYPE)])
    assert (sentinel.root / "dev/mem").read_bytes() == b"now a file"
    assert not (sentinel.root / "dev/sda").exists()
    assert nodes(sentinel.root) == []


def test_fifo_keeps_its_kind_but_not_special_bits(sentinel: Layers) -> None:
    sentinel.apply([node("run/pipe", tarfile.FIFOTYPE, 0o7777), node("run/plain", tarfile.FIFOTYPE, 0o640)])
    pipe, plain = (sentinel.root / "run/pipe").lstat(), (sentinel.root / "run/plain").lstat()
    assert stat.S_ISFIFO(pipe.st_mode) and stat.S_IMODE(pipe.st_mode) == 0o777
    assert stat.S_ISFIFO(plain.st_mode) and stat.S_IMODE(plain.st_mode) == 0o640


def test_setuid_root_files_stay_behind_a_private_root(sentinel: Layers) -> None:
    """The layer asks for a world-open root; a setuid-root shell must still be out of other users' reach."""
    stats = sentinel.apply([dirent(".", 0o777), dirent("./", 0o777), reg("bin/rootsh", b"\x7fELF", 0o4755)])
    st = (sentinel.root / "bin/rootsh").lstat()
    assert (st.st_uid, stat.S_IMODE(st.st_mode)) == (0, 0o4755)  # the guest needs sudo & co
    assert stat.S_IMODE(sentinel.root.stat().st_mode) == 0o700
    assert stats.entries == 3


@pytest.mark.parametrize("entries,match", [
    ([reg("../outside/secret", b"pwned")], r"'\.\.'"),
    ([reg("a/../../outside/etc/passwd", b"pwned")], r"'\.\.'"),
    ([sym("etc", "../outside/etc"), reg("etc/passwd", b"pwned")], "symlink 'etc'"),
    ([sym("esc", "/"), reg("esc/tmp/planted", b"x")], "symlink 'esc'"),
    ([sym("l", "../outside/secret"), hard("h", "l/x")], "symlink 'l'"),
    ([hard("stolen", "../outside/secret")], r"'\.\.'"),
    ([hard("stolen", "/etc/passwd")], "not in the layers"),
    ([node("../outside/mem", tarfile.CHRTYPE, devmajor=1, devminor=1)], r"'\.\.'"),
])  # fmt: skip
def test_escapes_are_refused(sentinel: Layers, entries: list[Entry], match: str) -> None:
    with pytest.raises(HostileLayerError, match=match):
        sentinel.apply(entries)
    assert nodes(sentinel.root) == []


def test_a_symlink_entry_is_only_a_link(sentinel: Layers) -> None:
    """A symlink may point anywhere (only the guest follows it); writing "through" it replaces it."""
    sentinel.apply([sym("secret", str(sentinel.outside / "secret"))])
    sentinel.apply([reg("secret", b"replaced")])
    assert (sentinel.root / "secret").read_bytes() == b"replaced"


@pytest.mark.vm
async def test_a_vm_boots_from_an_image_whose_layer_has_devices(tmp_path: Path) -> None:
    """The guest's /dev is its own devtmpfs: the placeholders under it are hidden, /dev/null works."""
    writer = LayoutWriter(tmp_path / "layout")
    with LayerBuilder(writer.root, "gzip") as lb:
        for ti, _ in DEVICES:
            lb.tar.addfile(ti)
        devices = lb.finish(writer)
    image = _image(writer, [add_busybox_layer(writer), devices], BUSYBOX_EXPECT, ref="devices")
    writer.close()
    store = ImageStore(tmp_path / "store")
    [record] = import_layout(store, image.layout, name="msb-security/devices:1", ref_name="devices")
    root = await resolve_root(record.name, store=store, cache_dir=tmp_path / "cache")
    assert nodes(root.rootfs) == []
    sb = await Engine().start(root.spec("layer-devices", memory_mib=256))
    try:
        script = "echo x > /dev/null && test -c /dev/null && test ! -e /dev/sda && test -f /opt/disk && echo ok"
        res = await sb.exec(["sh", "-c", script])
        assert (res.exit_code, res.stdout.strip()) == (0, b"ok"), res
    finally:
        await sb.kill()


@pytest.mark.skipif(shutil.which("mkfs.ext4") is None, reason="needs mkfs.ext4 (e2fsprogs)")
def test_the_vm_image_builds_from_a_tree_with_placeholders(sentinel: Layers) -> None:
    sentinel.apply([*DEVICES, reg("bin/sh", b"#!", 0o755)])
    out = sentinel.tmp / "root.ext4"
    build_ext4(sentinel.root, out)
    assert out.stat().st_size > 0
    out.unlink()
