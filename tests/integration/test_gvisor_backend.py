"""What is particular to the gVisor backend: the image tree stays untouched, limits, volumes as
bind mounts, the persistent layer's format, and nothing left behind."""

from __future__ import annotations

import asyncio
import os
import signal
from pathlib import Path

import pytest

from engine.errors import ConfigError, VmCrashedError
from engine.sandbox.engine import Engine
from engine.sandbox.sandbox import Sandbox, Status
from engine.sandbox.spec import SandboxSpec, VolumeMount
from engine.vm import overlay
from tests.integration.conftest import pid_alive


@pytest.fixture
def gv() -> Engine:
    return Engine(backend="gvisor")


async def sh(sb: Sandbox, script: str) -> tuple[int, str, str]:
    res = await sb.exec(["sh", "-c", script], timeout=60)
    return res.exit_code, res.stdout.decode(), res.stderr.decode()


def tree_state(root: Path) -> set[tuple[str, int, int]]:
    return {(str(p.relative_to(root)), p.lstat().st_size, p.lstat().st_mtime_ns) for p in root.rglob("*")}


async def test_writes_never_reach_the_image_tree(gv: Engine, busybox_rootfs: Path) -> None:
    before = tree_state(busybox_rootfs)
    sb = await gv.start(SandboxSpec(name="gv-tree", rootfs=busybox_rootfs, network="none", memory_mib=256))
    try:
        assert sb.backend == "gvisor" and sb.accel == "none"
        code, _, err = await sh(sb, "echo x > /new-file && rm /bin/vi && echo y >> /etc/passwd")
        assert code == 0, err
        assert (await sh(sb, "cat /new-file"))[1] == "x\n"
    finally:
        await sb.kill()
    assert tree_state(busybox_rootfs) == before


async def test_memory_limit_and_hostname_are_the_specs(gv: Engine, busybox_rootfs: Path) -> None:
    async with await gv.start(SandboxSpec(name="gv-lim", rootfs=busybox_rootfs, network="none", memory_mib=320)) as sb:
        meminfo = (await sh(sb, "head -1 /proc/meminfo"))[1].split()
        assert meminfo[0] == "MemTotal:" and int(meminfo[1]) == 320 * 1024
        assert (await sh(sb, "hostname"))[1] == "gv-lim\n"
        metrics = await sb.metrics()
        assert metrics.host_rss_mib is not None and metrics.host_rss_mib > 10  # the Sentry's RSS


async def test_volumes_are_bind_mounts_read_write_and_read_only(
    gv: Engine, busybox_rootfs: Path, tmp_path: Path
) -> None:
    rw, ro = tmp_path / "rw", tmp_path / "ro"
    rw.mkdir()
    ro.mkdir()
    (tmp_path / "secret.txt").write_text("host secret\n")  # beside the volumes, not in them
    (rw / "host.txt").write_text("from the host\n")
    (rw / "abs-link").symlink_to(tmp_path / "secret.txt")
    (ro / "fixed.txt").write_text("read only\n")
    vols = (VolumeMount(host=rw, guest="/mnt/rw"), VolumeMount(host=ro, guest="/mnt/ro", readonly=True))
    spec = SandboxSpec(name="gv-vol", rootfs=busybox_rootfs, network="none", volumes=vols, memory_mib=256)
    async with await gv.start(spec) as sb:
        assert await sh(sb, "cat /mnt/rw/host.txt") == (0, "from the host\n", "")
        assert (await sh(sb, "echo from the guest > /mnt/rw/guest.txt"))[0] == 0
        assert (rw / "guest.txt").read_text() == "from the guest\n"
        (rw / "host.txt").write_text("changed\n")
        assert (await sh(sb, "cat /mnt/rw/host.txt"))[1] == "changed\n"
        assert (await sh(sb, "cat /mnt/ro/fixed.txt"))[1] == "read only\n"
        code, _, err = await sh(sb, "echo no > /mnt/ro/new.txt")
        assert code != 0 and "Read-only file system" in err
        assert not (ro / "new.txt").exists()
        # an O_TRUNC open of an existing file must not empty it on the host either
        assert (await sh(sb, "echo no > /mnt/ro/fixed.txt; rm -f /mnt/ro/fixed.txt; chmod 777 /mnt/ro"))[0] != 0
        assert (ro / "fixed.txt").read_text() == "read only\n"
        assert ro.stat().st_mode & 0o777 == 0o755
        # a symlink in a volume resolves inside the sandbox, never to the host's file
        code, out, _ = await sh(sb, "cat /mnt/rw/abs-link")
        assert "host secret" not in out
        code, _, err = await sh(sb, "mknod /mnt/rw/disk b 8 0")
        assert code != 0 and not (rw / "disk").exists()


async def test_persistent_layer_is_a_directory_and_survives_a_killed_sentry(
    gv: Engine, busybox_rootfs: Path, tmp_path: Path
) -> None:
    spec = SandboxSpec(name="gv-keep", rootfs=busybox_rootfs, network="none", persist_dir=tmp_path, memory_mib=256)
    sb = await gv.start(spec)
    await sh(sb, "echo kept > /root/note && rm /bin/vi")
    sentry = sb.vm.pid
    assert sentry is not None and Path(f"/proc/{sentry}/cmdline").read_bytes().startswith(b"runsc-sandbox")
    os.kill(sentry, signal.SIGKILL)
    await asyncio.wait_for(sb.vm.wait_exited(), 15)
    await asyncio.sleep(0.1)
    assert sb.status is Status.CRASHED
    await sb.kill()
    assert not overlay.overlay_mounts_of(tmp_path / "upper")  # the host overlay is gone with it
    assert (tmp_path / "upper" / "root" / "note").read_text() == "kept\n"
    async with await gv.start(spec) as again:
        assert (await sh(again, "cat /root/note"))[1] == "kept\n"
        assert (await sh(again, "ls /bin/vi"))[0] != 0
        before = (await again.metrics()).disk_bytes  # counted on the host: the layer, not the disk
        assert 0 < before < 1 << 20
        await again.write_file("/root/big", b"x" * (3 << 20))
        await asyncio.sleep(5.1)  # the host-side count is refreshed at most every 5 s
        assert (await again.metrics()).disk_bytes >= before + (3 << 20)
    # the same sandbox on QEMU would not see these files: refused, with the backend to use
    with pytest.raises(ConfigError, match="--backend gvisor"):
        await Engine(backend="qemu").start(spec)


async def test_kill_leaves_no_process_and_no_mount(gv: Engine, busybox_rootfs: Path, tmp_path: Path) -> None:
    spec = SandboxSpec(name="gv-gone", rootfs=busybox_rootfs, network="none", persist_dir=tmp_path, memory_mib=256)
    sb = await gv.start(spec)
    pids = [sb.vm.pid, sb.vm.proc.pid]
    await sb.stop()
    assert sb.status is Status.STOPPED
    assert not any(pid_alive(p) for p in pids)
    assert not overlay.overlay_mounts_of(tmp_path / "upper")
    assert not sb.run_dir.exists() or not (sb.run_dir / "root").is_mount()


async def test_killing_pid_1_from_inside_is_a_clean_crash(gv: Engine, busybox_rootfs: Path) -> None:
    """Unlike a Linux kernel, gVisor lets root in the sandbox SIGKILL its PID 1 (the agent): the
    sandbox ends, as crashed with a clear error, and leaves nothing behind."""
    sb = await gv.start(SandboxSpec(name="gv-init", rootfs=busybox_rootfs, network="none", memory_mib=256))
    pids = [sb.vm.pid, sb.vm.proc.pid]
    with pytest.raises(VmCrashedError, match="crashed"):
        await asyncio.wait_for(sb.exec(["sh", "-c", "kill -9 1; sleep 30"]), 20)
    await asyncio.wait_for(sb.vm.wait_exited(), 15)
    assert sb.status is Status.CRASHED
    await sb.kill()
    assert not any(pid_alive(p) for p in pids)


async def test_cpu_use_is_measured_on_the_host(gv: Engine, busybox_rootfs: Path) -> None:
    """gVisor's /proc/stat is all zeros, so CPU % comes from the sandbox's cgroup on the host."""
    async with await gv.start(SandboxSpec(name="gv-cpu", rootfs=busybox_rootfs, network="none", memory_mib=256)) as sb:
        idle = await sb.metrics()
        assert idle.processes == 1  # the agent; no kernel-thread heuristic hides pid 2 here
        burn = await sb.spawn(["sh", "-c", "while :; do :; done"], timeout=5)
        await sb.metrics()
        await asyncio.sleep(1.0)  # the interval being measured
        busy = await sb.metrics()
        assert busy.cpu_percent > 30, busy
        assert busy.processes == 2, busy
        await burn.signal(9)
        await burn.wait()


async def test_auto_keeps_a_persistent_sandbox_on_the_backend_its_files_are_for(
    busybox_rootfs: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A sandbox made on QEMU (files in upper.ext4) still runs on QEMU when auto picks gVisor;
    a new one runs on gVisor."""
    monkeypatch.delenv("MSB_BACKEND", raising=False)
    spec = SandboxSpec(name="gv-follow", rootfs=busybox_rootfs, network="none", persist_dir=tmp_path / "old",
                       memory_mib=256)  # fmt: skip
    async with await Engine(backend="qemu").start(spec) as sb:
        await sh(sb, "echo from qemu > /root/note")
    auto = Engine()
    await auto.prepare()
    assert auto.backend_verdict is not None
    if auto.backend_verdict.name != "gvisor":
        pytest.skip(f"auto picks {auto.backend_verdict.name} on this host, not gVisor")
    async with await auto.start(spec) as again:
        assert again.backend == "qemu"
        assert (await sh(again, "cat /root/note"))[1] == "from qemu\n"
    fresh = spec.model_copy(update={"name": "gv-new", "persist_dir": tmp_path / "new"})
    async with await auto.start(fresh) as new:
        assert new.backend == "gvisor"
