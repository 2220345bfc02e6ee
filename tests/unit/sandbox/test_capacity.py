"""Host capacity limits (engine/sandbox/capacity.py): a start is refused cleanly, before
anything boots, when the host's available memory is below the reserve or its CPU pressure stays
over the limit; the server answers -32032 with the figure and the setting, and loses nothing."""

from __future__ import annotations

import resource
import time
from pathlib import Path

import pytest

from engine.errors import BootError
from engine.sandbox import capacity as cap
from engine.sandbox.capacity import CapacityError, HostCapacity, cpu_pressure, raise_fd_limit, saturation_note
from engine.sandbox.engine import Engine
from engine.sandbox.spec import SandboxSpec
from engine.server.manager import SandboxManager
from engine.server.service import SandboxConfig
from engine.server.settings import Limits
from engine.server.tenancy import TenantPolicy
from engine.vm.fake import FakeBackend


def meminfo(tmp_path: Path, total_mib: int, avail_mib: int) -> Path:
    p = tmp_path / "meminfo"
    p.write_text(f"MemTotal:       {total_mib * 1024} kB\nMemFree:        1 kB\n"
                 f"MemAvailable:   {avail_mib * 1024} kB\n")  # fmt: skip
    return p


def pressure(tmp_path: Path, avg10: float, avg60: float) -> Path:
    p = tmp_path / "cpu"
    p.write_text(f"some avg10={avg10:.2f} avg60={avg60:.2f} avg300=1.00 total=123\n"
                 "full avg10=0.00 avg60=0.00 avg300=0.00 total=0\n")  # fmt: skip
    return p


def test_default_reserve_is_five_percent_of_ram_and_at_least_a_gib(tmp_path: Path) -> None:
    assert HostCapacity.from_env({}, meminfo(tmp_path, 65536, 60000)).reserve_mib == pytest.approx(3276.8)
    assert HostCapacity.from_env({}, meminfo(tmp_path, 4096, 3000)).reserve_mib == 1024
    off = HostCapacity.from_env({"MSB_HOST_RESERVE_MIB": "0"}, meminfo(tmp_path, 4096, 10))
    off.check_memory()  # 0 turns it off
    assert HostCapacity.from_env({}, meminfo(tmp_path, 4096, 3000)).max_cpu_pressure is None


def test_bad_settings_name_the_variable(tmp_path: Path) -> None:
    with pytest.raises(CapacityError) as e:
        HostCapacity.from_env({"MSB_MAX_CPU_PRESSURE": "lots"}, meminfo(tmp_path, 4096, 3000))
    assert "MSB_MAX_CPU_PRESSURE" in str(e.value)


def test_memory_below_the_reserve_is_refused_with_the_figures(tmp_path: Path) -> None:
    c = HostCapacity.from_env({"MSB_HOST_RESERVE_MIB": "2048"}, meminfo(tmp_path, 24576, 1500))
    with pytest.raises(CapacityError) as e:
        c.check_memory()
    assert e.value.code == -32032
    assert "1500 MiB" in e.value.message and "2048 MiB" in e.value.message
    assert e.value.hint and "MSB_HOST_RESERVE_MIB" in e.value.hint
    HostCapacity.from_env({"MSB_HOST_RESERVE_MIB": "1024"}, meminfo(tmp_path, 24576, 1500)).check_memory()


def test_cpu_pressure_line_is_parsed() -> None:
    assert cpu_pressure("some avg10=63.37 avg60=19.91 avg300=8.48 total=3\nfull avg10=0.00 avg60=0.00") == (
        63.37, 19.91)  # fmt: skip
    assert cpu_pressure("") is None
    assert cpu_pressure("some avg10=x avg60=1") is None


async def test_cpu_pressure_over_the_limit_waits_then_refuses(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(cap, "PRESSURE_POLL_S", 0.01)
    c = HostCapacity(reserve_mib=0, max_cpu_pressure=50, pressure=pressure(tmp_path, 95, 90))
    t0 = time.monotonic()
    with pytest.raises(CapacityError) as e:
        await c.check_cpu(wait_s=0.2)
    assert time.monotonic() - t0 >= 0.2
    assert "90 %" in e.value.message and "MSB_MAX_CPU_PRESSURE=50" in e.value.message
    await HostCapacity(reserve_mib=0, max_cpu_pressure=95, pressure=c.pressure).check_cpu(wait_s=0)
    await HostCapacity(reserve_mib=0, pressure=c.pressure).check_cpu(wait_s=0)  # off: never refuses


def test_boot_error_names_a_saturated_host(tmp_path: Path) -> None:
    assert saturation_note(pressure(tmp_path, 40, 40)) is None
    note = saturation_note(pressure(tmp_path, 96.7, 50))
    assert note is not None and "97 %" in note and "MSB_MAX_CPU_PRESSURE" in note
    assert issubclass(CapacityError, Exception) and not issubclass(CapacityError, BootError)


@pytest.fixture
def rootfs(tmp_path: Path) -> Path:
    d = tmp_path / "rootfs"
    (d / "etc").mkdir(parents=True)
    return d


async def test_engine_refuses_before_booting_anything(tmp_path: Path, rootfs: Path) -> None:
    backend = FakeBackend()
    full = HostCapacity(reserve_mib=4096, meminfo=meminfo(tmp_path, 24576, 1000))
    engine = Engine(backend=backend, accel="tcg", capacity=full)
    with pytest.raises(CapacityError):
        await engine.start(SandboxSpec(name="x", rootfs=rootfs))
    assert backend.vms == []


async def test_server_answers_32032_keeps_nothing_and_starts_once_there_is_room(tmp_path: Path, rootfs: Path) -> None:
    mem = meminfo(tmp_path, 24576, 1000)
    engine = Engine(backend=FakeBackend(), accel="tcg", capacity=HostCapacity(reserve_mib=2048, meminfo=mem))
    m = SandboxManager(tmp_path / "state", Limits(max_sandboxes=4), engine=engine,
                       policy=TenantPolicy(allowed_image_dirs=(tmp_path,)))  # fmt: skip
    with pytest.raises(CapacityError) as e:
        await m.start("t", "a", SandboxConfig(image=str(rootfs)))
    assert e.value.code == -32032
    assert [s.name for s in await m.list("t") if s.status == "running"] == []
    assert not m.quotas._sandboxes  # the reservation was given back
    mem.write_text(mem.read_text().replace(f"{1000 * 1024} kB", f"{8000 * 1024} kB"))
    for name in "abcd":  # the quota the refused start had reserved came back: all four fit
        await m.start("t", name, SandboxConfig(image=str(rootfs)))
    await m.shutdown()


def test_the_open_file_limit_is_raised_for_many_sandboxes() -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    try:
        resource.setrlimit(resource.RLIMIT_NOFILE, (256, hard))
        want = min(4096, hard)
        assert raise_fd_limit(4096) == want
        assert resource.getrlimit(resource.RLIMIT_NOFILE) == (want, hard)
        assert raise_fd_limit(128) == want  # never lowered
    finally:
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))
