"""Engine and Sandbox over the fake backend: lifecycle, crashes, boot failures, metrics."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from engine.errors import BootError, SandboxStateError, VmCrashedError
from engine.sandbox.engine import Engine
from engine.sandbox.sandbox import Sandbox, Status
from engine.sandbox.spec import SandboxSpec
from engine.vm.fake import FakeBackend, FakeVm
from engine.vm.kernel import Kernel
from tests.unit.helpers import STEP_TIMEOUT_S, FakeClock, eventually

T = STEP_TIMEOUT_S
KERNEL = Kernel(kind="custom", path=Path("/nonexistent/bzImage"), version="0.0-fake")


def make_engine(tmp_path: Path, backend: FakeBackend) -> Engine:
    return Engine(backend=backend, kernel=KERNEL, accel="tcg", cache_dir=tmp_path / "cache")


def spec(tmp_path: Path, name: str = "sb", **kw: object) -> SandboxSpec:
    rootfs = tmp_path / "rootfs"
    rootfs.mkdir(exist_ok=True)
    return SandboxSpec(name=name, rootfs=rootfs, **kw)  # type: ignore[arg-type]


@pytest.fixture
async def sandboxes() -> AsyncIterator[list[Sandbox]]:
    """Sandboxes a test started; killed at teardown whatever happened."""
    made: list[Sandbox] = []
    yield made
    for sb in made:
        await sb.kill()


async def start(engine: Engine, s: SandboxSpec, made: list[Sandbox]) -> Sandbox:
    async with asyncio.timeout(T):
        sb = await engine.start(s)
    made.append(sb)
    return sb


def vm_of(sb: Sandbox) -> FakeVm:
    assert isinstance(sb.vm, FakeVm)
    return sb.vm


async def test_prepare_builds_nothing_for_the_fake_backend(tmp_path: Path) -> None:
    engine = make_engine(tmp_path, FakeBackend(tmp_dir=tmp_path))
    assets = await engine.prepare()
    assert assets.kernel == KERNEL
    assert (assets.accel.accel, assets.accel.source) == ("tcg", "forced")
    assert not (tmp_path / "cache" / "initramfs").exists() and not (tmp_path / "cache" / "accel.json").exists()
    assert await engine.prepare() is assets  # once per engine


async def test_without_a_kernel_the_fake_gets_a_placeholder(tmp_path: Path) -> None:
    engine = Engine(backend=FakeBackend(tmp_dir=tmp_path), cache_dir=tmp_path / "cache", accel="kvm")
    assets = await engine.prepare()
    assert assets.accel.accel == "kvm" and assets.kernel.source == "fake backend"


async def test_start_exec_stop(tmp_path: Path, sandboxes: list[Sandbox]) -> None:
    backend = FakeBackend(tmp_dir=tmp_path)
    engine = make_engine(tmp_path, backend)
    sb = await start(engine, spec(tmp_path, env={"WHO": "msb"}), sandboxes)
    assert sb.status is Status.RUNNING and sb.accel == "tcg" and sb.boot_s > 0
    assert sb.ready.version == 1 and sb.run_dir.is_dir()
    assert not (tmp_path / "cache" / "rootfs").exists()  # no ext4 image for the fake
    async with asyncio.timeout(T):
        res = await sb.exec(["sh", "-c", 'echo "$WHO $HOSTNAME"'])
        assert res.stdout == b"msb sb\n"
        await sb.write_file("/etc/motd", b"hi")
        assert await sb.read_file("/etc/motd") == b"hi"
        await sb.stop()
    assert sb.status is Status.STOPPED and not sb.run_dir.exists()
    assert vm_of(sb).exited() and await vm_of(sb).wait_exited() == 0  # powered off, not killed
    with pytest.raises(SandboxStateError, match="stopped"):
        await sb.exec(["true"])


async def test_context_manager_stops_the_sandbox(tmp_path: Path) -> None:
    engine = make_engine(tmp_path, FakeBackend(tmp_dir=tmp_path))
    async with asyncio.timeout(T):
        async with await engine.start(spec(tmp_path)) as sb:
            assert (await sb.exec(["true"])).success
    assert sb.status is Status.STOPPED


async def test_vm_crash_marks_the_sandbox_crashed(tmp_path: Path, sandboxes: list[Sandbox]) -> None:
    sb = await start(make_engine(tmp_path, FakeBackend(tmp_dir=tmp_path)), spec(tmp_path), sandboxes)
    async with asyncio.timeout(T):
        proc = await sb.spawn(["sleep", "30"])
        await vm_of(sb).crash(message="Kernel panic - not syncing: out of memory")
        with pytest.raises(VmCrashedError):
            await proc.wait()
        await eventually(lambda: sb.status is Status.CRASHED)
        with pytest.raises(VmCrashedError, match="marked crashed") as info:
            await sb.exec(["true"])
    assert "out of memory" in info.value.console_tail
    await sb.stop()  # safe on a crashed sandbox; it stays crashed
    assert sb.status is Status.CRASHED


async def test_guest_dying_mid_exec_is_a_crash(tmp_path: Path, sandboxes: list[Sandbox]) -> None:
    sb = await start(make_engine(tmp_path, FakeBackend(misbehave="die_mid_exec", tmp_dir=tmp_path)), spec(tmp_path),
                     sandboxes)  # fmt: skip
    async with asyncio.timeout(T):
        with pytest.raises(VmCrashedError):
            await sb.exec(["sleep", "30"])
        await eventually(lambda: sb.status is Status.CRASHED)
    assert sb.crashed


@pytest.mark.parametrize(("misbehave", "why"), [("never_ready", "did not say ready"), ("wrong_version", "protocol 2")])
async def test_boot_failures_are_boot_errors_and_leave_nothing(tmp_path: Path, misbehave: str, why: str) -> None:
    backend = FakeBackend(misbehave=misbehave, tmp_dir=tmp_path)
    engine = make_engine(tmp_path, backend)
    async with asyncio.timeout(T):
        with pytest.raises(BootError, match=why) as info:
            await engine.start(spec(tmp_path, boot_timeout_s=0.2))
    assert "msb-agent (fake)" in info.value.console_tail
    assert backend.vms[0].exited() and not backend.vms[0].root.exists()


async def test_metrics_cpu_percent_comes_from_two_samples(tmp_path: Path, sandboxes: list[Sandbox]) -> None:
    clock = FakeClock()
    sb = await start(make_engine(tmp_path, FakeBackend(clock=clock, tmp_dir=tmp_path)), spec(tmp_path, cpus=1),
                     sandboxes)  # fmt: skip
    guest = vm_of(sb).guest
    async with asyncio.timeout(T):
        guest.cpu_load = 0.1
        first = await sb.metrics()  # since boot
        guest.cpu_load = 0.5
        clock.advance(10)
        second = await sb.metrics()
        guest.cpu_load = 0.0
        clock.advance(10)
        third = await sb.metrics()
    assert first.cpu_percent == pytest.approx(10, abs=2)
    assert second.cpu_percent == pytest.approx(50, abs=1)
    assert third.cpu_percent == pytest.approx(0, abs=1)
    assert second.uptime_s - first.uptime_s == pytest.approx(10)
    assert 0 < second.memory_mib < second.memory_total_mib == 512
    assert second.processes >= 1 and second.host_rss_mib is None  # no VMM process to measure


async def test_two_sandboxes_are_isolated_from_each_other(tmp_path: Path, sandboxes: list[Sandbox]) -> None:
    engine = make_engine(tmp_path, FakeBackend(tmp_dir=tmp_path))
    a = await start(engine, spec(tmp_path, "a"), sandboxes)
    b = await start(engine, spec(tmp_path, "b"), sandboxes)
    async with asyncio.timeout(T):
        await a.write_file("/tmp/only-in-a", b"a")
        assert [e.name for e in await b.listdir("/tmp")] == []
        await a.kill()
        assert (await b.exec(["true"])).success
    assert a.status is Status.STOPPED
