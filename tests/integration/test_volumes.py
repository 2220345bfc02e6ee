"""Volumes in a real VM: host directories over virtio-9p, read-write and read-only, confined."""

from __future__ import annotations

import os
import shutil
import stat
from pathlib import Path

import pytest

from engine.errors import BootError, ConfigError
from engine.sandbox.engine import Engine
from engine.sandbox.sandbox import Sandbox
from engine.sandbox.spec import SandboxSpec, VolumeMount
from engine.vm.kernel import load_cached_debian_kernel


async def sh(sb: Sandbox, script: str) -> tuple[int, str, str]:
    res = await sb.exec(["sh", "-c", script], timeout=60)
    return res.exit_code, res.stdout.decode(), res.stderr.decode()


async def mount_table(sb: Sandbox) -> dict[str, tuple[str, str, set[str]]]:
    """``/proc/mounts`` of the guest: source -> (mount point, type, options)."""
    lines = (await sh(sb, "cat /proc/mounts"))[1].splitlines()
    return {w[0]: (w[1], w[2], set(w[3].split(","))) for w in map(str.split, lines)}


@pytest.mark.qemu_only  # 9p mapped-xattr semantics; gVisor: test_gvisor_backend.py
async def test_volumes_round_trip_read_only_and_confinement(
    engine: Engine, busybox_rootfs: Path, tmp_path: Path
) -> None:
    rw, ro = tmp_path / "rw", tmp_path / "ro"
    rw.mkdir()
    ro.mkdir()
    secret = os.urandom(8).hex()
    (tmp_path / "secret.txt").write_text(secret)  # beside the volumes, not in them
    (rw / "host.txt").write_text("written by the host\n")
    (rw / "abs-link").symlink_to(tmp_path / "secret.txt")
    (rw / "rel-link").symlink_to("../secret.txt")
    (rw / "passwd-link").symlink_to("/etc/passwd")
    (ro / "fixed.txt").write_text("read only\n")
    shutil.copy(busybox_rootfs / "bin" / "busybox", rw / "busybox")
    vols = (VolumeMount(host=rw, guest="/mnt/my vol"), VolumeMount(host=ro, guest="/ro-é", readonly=True))
    sb = await engine.start(SandboxSpec(name="vol-" + os.urandom(3).hex(), rootfs=busybox_rootfs, volumes=vols))
    try:
        # host -> guest, guest -> host, and a host change seen at once (no stale cache)
        assert await sh(sb, "cat '/mnt/my vol/host.txt'") == (0, "written by the host\n", "")
        assert (await sh(sb, "echo from the guest > '/mnt/my vol/guest.txt'"))[0] == 0
        assert (rw / "guest.txt").read_text() == "from the guest\n"
        assert (rw / "guest.txt").stat().st_uid == os.getuid()  # created with QEMU's credentials
        # mapped-xattr: the guest's modes, owners and special files stay metadata; on the host
        # nothing becomes setuid, root-owned on the guest's say, or a device node
        assert (await sh(sb, "chown 0:0 '/mnt/my vol/guest.txt' && chmod 4755 '/mnt/my vol/guest.txt'"))[0] == 0
        assert (await sh(sb, "stat -c %a '/mnt/my vol/guest.txt'"))[1] == "4755\n"  # as the guest sees it
        assert (rw / "guest.txt").stat().st_mode & 0o7777 == 0o644
        assert (await sh(sb, "mknod '/mnt/my vol/disk' b 8 0 && mknod '/mnt/my vol/null' c 1 3"))[0] == 0
        assert stat.S_ISREG((rw / "disk").stat().st_mode) and stat.S_ISREG((rw / "null").stat().st_mode)
        assert (await sh(sb, "head -c 16 '/mnt/my vol/disk' | wc -c"))[1].strip() in ("0", "")
        (rw / "host.txt").write_text("changed\n")
        assert (await sh(sb, "cat '/mnt/my vol/host.txt'"))[1] == "changed\n"
        mounts = await mount_table(sb)
        assert mounts["msbvol0"][:2] == ("/mnt/my\\040vol", "9p")
        assert {"rw", "nosuid", "nodev", "mmap"} <= mounts["msbvol0"][2]
        assert mounts["msbvol1"][:2] == ("/ro-é", "9p") and {"ro", "nosuid", "nodev"} <= mounts["msbvol1"][2]
        assert await sh(sb, "'/mnt/my vol/busybox' echo run from a volume") == (0, "run from a volume\n", "")

        # read-only: writes, deletes and creates fail with EROFS; the host files stay as they were
        for script in ("echo x >> /ro-é/fixed.txt", "rm /ro-é/fixed.txt", "touch /ro-é/new", "mkdir /ro-é/d"):
            code, _, err = await sh(sb, script)
            assert code != 0 and "Read-only file system" in err, (script, err)
        assert (ro / "fixed.txt").read_text() == "read only\n" and sorted(os.listdir(ro)) == ["fixed.txt"]

        # confinement: ".." is the guest's root, and symlinks resolve in the guest, not on the host
        parent = (await sh(sb, "ls -a '/mnt/my vol/..'"))[1]
        assert parent == (await sh(sb, "ls -a /mnt"))[1] and "my vol" in parent and "secret.txt" not in parent
        for link in ("abs-link", "rel-link"):
            code, out, _ = await sh(sb, f"cat '/mnt/my vol/{link}'")
            assert code != 0 and secret not in out, link
        # mapped-xattr shows a symlink the host made as a file it cannot read: never the host's file
        through_link = (await sh(sb, "cat '/mnt/my vol/passwd-link'"))[1]
        assert Path("/etc/passwd").read_text() not in through_link or not through_link
        # symlinks the guest makes are resolved by the guest kernel, in the guest
        assert (await sh(sb, "ln -s /etc/passwd '/mnt/my vol/guest-link'"))[0] == 0
        guest_passwd = (await sh(sb, "cat /etc/passwd"))[1]
        assert (await sh(sb, "cat '/mnt/my vol/guest-link'"))[1] == guest_passwd != Path("/etc/passwd").read_text()
        assert not (rw / "guest-link").is_symlink()  # stored as a plain file on the host
    finally:
        await sb.kill()
    assert sorted(os.listdir(rw)) == ["abs-link", "busybox", "disk", "guest-link", "guest.txt", "host.txt", "null",
                                      "passwd-link", "rel-link"]


@pytest.mark.qemu_only
async def test_a_volume_that_cannot_be_mounted_stops_the_boot(
    engine: Engine, busybox_rootfs: Path, tmp_path: Path
) -> None:
    spec = SandboxSpec(name="vol-bad", rootfs=busybox_rootfs, volumes=(VolumeMount(host=tmp_path, guest="/bin/sh"),))
    with pytest.raises(BootError) as info:
        await engine.start(spec)  # /bin/sh is a file in the image: no mount point
    assert "mounting volume msbvol0 on /bin/sh: Not a directory" in info.value.console_tail


async def test_volumes_on_a_kernel_without_9p_are_refused_before_boot(busybox_rootfs: Path, tmp_path: Path) -> None:
    kernel = load_cached_debian_kernel()
    if kernel is None:
        pytest.skip("Debian's kernel is not in the cache (make setup fetches it)")
    assert not kernel.supports_9p  # Debian's cloud kernel is built without CONFIG_NET_9P
    spec = SandboxSpec(name="vol-deb", rootfs=busybox_rootfs, volumes=(VolumeMount(host=tmp_path, guest="/data"),))
    with pytest.raises(ConfigError, match="lacks 9p") as info:
        await Engine(backend="qemu", kernel=kernel).start(spec)
    assert "make kernel" in (info.value.hint or "")
