"""Boot, concurrency, persistence, crashes and clear errors with real VMs."""

from __future__ import annotations

import asyncio
import os
import signal
from pathlib import Path

import pytest

from engine.errors import AgentError, BootError, KernelError, VmCrashedError, VmError
from engine.sandbox.engine import Engine
from engine.sandbox.sandbox import Sandbox, Status
from engine.sandbox.spec import SandboxSpec
from engine.vm.kernel import Kernel
from tests.integration.conftest import pid_alive


async def test_three_sandboxes_at_once(engine: Engine, busybox_rootfs: Path) -> None:
    specs = [SandboxSpec(name=f"multi-{i}", rootfs=busybox_rootfs, memory_mib=256) for i in range(3)]
    boxes = await asyncio.gather(*(engine.start(s) for s in specs))
    try:
        names = await asyncio.gather(*(b.exec(["hostname"]) for b in boxes))
        assert sorted(r.stdout.strip().decode() for r in names) == ["multi-0", "multi-1", "multi-2"]
        await boxes[0].exec(["sh", "-c", "echo mine > /tmp/own"])
        other = await boxes[1].exec(["cat", "/tmp/own"])
        assert other.exit_code != 0  # writable layers are separate
    finally:
        await asyncio.gather(*(b.stop() for b in boxes))
    assert all(b.status is Status.STOPPED for b in boxes)
    assert not any(pid_alive(b.vm.pid) for b in boxes)


async def test_persistent_upper_layer_survives_stop_and_start(
    engine: Engine, busybox_rootfs: Path, tmp_path: Path
) -> None:
    spec = SandboxSpec(name="persist", rootfs=busybox_rootfs, memory_mib=256, persist_dir=tmp_path)
    async with await engine.start(spec) as sb:
        await sb.exec(["sh", "-c", "mkdir -p /data && echo kept > /data/f && rm /bin/vi"])
    async with await engine.start(spec) as sb:
        assert (await sb.exec(["cat", "/data/f"])).stdout == b"kept\n"
        assert (await sb.exec(["ls", "/bin/vi"])).exit_code != 0  # the deletion persisted too


async def test_persistent_layer_survives_kill_9_of_the_vm(
    engine: Engine, busybox_rootfs: Path, tmp_path: Path
) -> None:
    spec = SandboxSpec(name="crashy", rootfs=busybox_rootfs, memory_mib=256, persist_dir=tmp_path)
    sb = await engine.start(spec)
    await sb.exec(["sh", "-c", "echo survived > /root/note"])
    assert sb.vm.pid is not None
    os.kill(sb.vm.pid, signal.SIGKILL)
    await asyncio.wait_for(sb.vm.wait_exited(), 10)
    await sb.kill()
    async with await engine.start(spec) as again:
        assert (await again.exec(["cat", "/root/note"])).stdout == b"survived\n"


@pytest.mark.qemu_only  # sysrq: a guest kernel panic
async def test_guest_panic_is_a_clear_error_and_leaves_no_process(sandbox: Sandbox) -> None:
    pid = sandbox.vm.pid
    with pytest.raises(VmCrashedError) as info:
        await asyncio.wait_for(sandbox.exec(["sh", "-c", "echo c > /proc/sysrq-trigger; sleep 60"]), 30)
    assert "crashed" in str(info.value)
    assert sandbox.status is Status.CRASHED
    await asyncio.wait_for(sandbox.vm.wait_exited(), 10)
    assert not pid_alive(pid)
    with pytest.raises(VmCrashedError):
        await sandbox.exec(["true"])


@pytest.mark.qemu_only  # gVisor lets root in the sandbox kill PID 1: test_gvisor_backend.py
async def test_guest_cannot_kill_its_init(sandbox: Sandbox) -> None:
    res = await sandbox.exec(["kill", "-9", "1"])
    assert res.exit_code == 0  # the signal is sent, and the kernel ignores it for init
    assert (await sandbox.exec(["echo", "still here"])).stdout == b"still here\n"


async def test_vm_killed_from_the_host_mid_exec_fails_the_exec(sandbox: Sandbox) -> None:
    task = asyncio.ensure_future(sandbox.exec(["sleep", "60"]))
    await asyncio.sleep(0.2)  # let the exec reach the guest before pulling the plug
    assert sandbox.vm.pid is not None
    os.kill(sandbox.vm.pid, signal.SIGKILL)
    with pytest.raises(VmCrashedError):
        await asyncio.wait_for(task, 15)
    assert sandbox.status is Status.CRASHED


async def test_missing_agent_says_how_to_build_it(busybox_rootfs: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MSB_AGENT", "/nonexistent/msb-agent")
    with pytest.raises(AgentError) as info:
        await Engine(backend="qemu", accel="tcg").start(SandboxSpec(name="x", rootfs=busybox_rootfs))
    assert "make agent" in str(info.value)


async def test_missing_qemu_says_what_to_install(busybox_rootfs: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MSB_QEMU", "/nonexistent/qemu")
    with pytest.raises(VmError) as info:
        await Engine(backend="qemu", accel="tcg").start(SandboxSpec(name="x", rootfs=busybox_rootfs))
    assert "apt-get install qemu-system-x86" in str(info.value)


async def test_missing_kernel_is_a_kernel_error(monkeypatch: pytest.MonkeyPatch, busybox_rootfs: Path) -> None:
    monkeypatch.setenv("MSB_KERNEL", "/nonexistent/bzImage")
    with pytest.raises(KernelError) as info:
        await Engine(backend="qemu", accel="tcg").start(SandboxSpec(name="x", rootfs=busybox_rootfs))
    assert "MSB_KERNEL" in str(info.value)


async def test_garbage_kernel_is_refused_before_booting(busybox_rootfs: Path, tmp_path: Path) -> None:
    bad = tmp_path / "bzImage"
    bad.write_bytes(os.urandom(8192))
    engine = Engine(backend="qemu", accel="tcg", kernel=Kernel(kind="custom", path=bad, version="bad", modules=[]))
    with pytest.raises(KernelError) as info:
        await engine.start(SandboxSpec(name="bad", rootfs=busybox_rootfs))
    assert "not a bzImage" in str(info.value) and "make kernel" in str(info.value)


@pytest.mark.qemu_only
async def test_truncated_kernel_fails_boot_with_console_tail(
    engine: Engine, busybox_rootfs: Path, tmp_path: Path
) -> None:
    good = (await engine.prepare()).kernel
    bad = tmp_path / "bzImage"
    bad.write_bytes(good.path.read_bytes()[: good.path.stat().st_size // 2])
    broken = Engine(backend="qemu", accel="tcg", kernel=good.model_copy(update={"path": bad}))
    t0 = asyncio.get_running_loop().time()
    with pytest.raises((BootError, VmError)) as info:
        await broken.start(SandboxSpec(name="trunc", rootfs=busybox_rootfs, boot_timeout_s=5))
    assert asyncio.get_running_loop().time() - t0 < 15  # bounded wait, no hang
    text = str(info.value)
    assert "failed to boot" in text or "QEMU" in text
    assert "console" in text or "qemu" in text


async def test_not_a_directory_rootfs_is_a_config_error(engine: Engine, tmp_path: Path) -> None:
    from engine.errors import ConfigError

    with pytest.raises(ConfigError):
        await engine.start(SandboxSpec(name="x", rootfs=tmp_path / "missing"))
