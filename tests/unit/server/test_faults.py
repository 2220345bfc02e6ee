"""Faults the server must survive, on the fake backend: a sandbox whose VM dies under it is
reported crashed with the reason (metrics, list, the next command) while the others keep
serving, and its host side is torn down at once; a client that goes away mid-command."""

from __future__ import annotations

import asyncio
import errno
from pathlib import Path

import pytest

from engine.errors import VmCrashedError
from engine.sandbox.engine import Engine
from engine.server.auth import load_secret
from engine.server.manager import SandboxManager
from engine.server.service import SandboxConfig
from engine.server.settings import Limits
from engine.server.state import DiskFullError
from engine.server.tenancy import TenantPolicy
from engine.vm.fake import FakeBackend

WAIT_S = 5.0


@pytest.fixture
def rootfs(tmp_path: Path) -> Path:
    d = tmp_path / "rootfs"
    (d / "etc").mkdir(parents=True)
    return d


def manager(tmp_path: Path, backend: FakeBackend) -> SandboxManager:
    return SandboxManager(tmp_path / "state", Limits(), engine=Engine(backend=backend, accel="tcg"),
                          policy=TenantPolicy(allowed_image_dirs=(tmp_path,)))  # fmt: skip


async def _until(pred: object, what: str) -> None:
    async def poll() -> None:
        while not pred():  # type: ignore[operator]
            await asyncio.sleep(0.01)  # the manager's watch task runs between polls

    try:
        await asyncio.wait_for(poll(), WAIT_S)
    except TimeoutError:
        pytest.fail(f"timed out waiting for {what}")


async def test_a_killed_vmm_is_reported_crashed_and_the_others_keep_serving(tmp_path: Path, rootfs: Path) -> None:
    backend = FakeBackend()
    m = manager(tmp_path, backend)
    await m.start("t", "a", SandboxConfig(image=str(rootfs)))
    await m.start("t", "b", SandboxConfig(image=str(rootfs)))
    vm_a = backend.vms[0]
    run_dir = m._running[("t", "a")].sandbox.run_dir
    await vm_a.crash(code=-9, message="")
    await _until(lambda: ("t", "a") not in m._running, "the crash to be booked")
    [ma] = [x for x in await m.metrics("t", None) if x.name == "a"]
    assert not ma.running and ma.crash_reason is not None and "signal 9 (SIGKILL)" in ma.crash_reason
    [la] = [x for x in await m.list("t") if x.name == "a"]
    assert la.status == "crashed" and la.crash_reason == ma.crash_reason
    with pytest.raises(VmCrashedError, match="crashed: the VM was killed by signal 9") as err:
        await m.run_command("t", "a", "true", [], None)
    assert err.value.hint and "sandbox.start" in err.value.hint
    await _until(lambda: not run_dir.exists(), "the crashed sandbox's run directory to go")
    assert m.quotas._sandboxes.get(("t", "a")) is None  # its quota is free again
    assert (await m.run_command("t", "b", "echo", ["ok"], None)).stdout == "ok\n"
    await m.start("t", "a", None)  # again, from its definition: the crash is forgotten
    [la] = [x for x in await m.list("t") if x.name == "a"]
    assert la.status == "running" and la.crash_reason is None
    await m.shutdown()


async def test_stop_of_a_crashed_sandbox_clears_it(tmp_path: Path, rootfs: Path) -> None:
    backend = FakeBackend()
    m = manager(tmp_path, backend)
    await m.start("t", "a", SandboxConfig(image=str(rootfs)))
    await backend.vms[0].crash(code=1)
    await _until(lambda: ("t", "a") in m._crashed, "the crash to be booked")
    assert await m.stop("t", "a") == "Sandbox a stopped successfully"
    [la] = await m.list("t")
    assert la.status == "stopped" and la.crash_reason is None
    await m.shutdown()


async def test_a_full_disk_at_save_is_a_clear_error_and_stops_the_sandbox(
    tmp_path: Path, rootfs: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    backend = FakeBackend()
    m = manager(tmp_path, backend)

    def full(*_: object) -> None:
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(m.state, "save", full)
    with pytest.raises(DiskFullError, match="ENOSPC") as err:
        await m.start("t", "a", SandboxConfig(image=str(rootfs)))
    assert err.value.code == -32031 and err.value.hint and "free space" in err.value.hint
    assert m._running == {} and m.quotas._sandboxes == {}
    assert backend.vms[0].exited()  # not left running unbooked
    await m.shutdown()


def test_an_empty_server_key_left_by_a_full_disk_is_replaced(tmp_path: Path) -> None:
    (tmp_path / "server.key").write_text("")
    secret = load_secret(tmp_path, create=True)
    assert secret and (tmp_path / "server.key").read_text().strip() == secret
    assert load_secret(tmp_path, create=True) == secret
    assert sorted(p.name for p in tmp_path.iterdir()) == ["server.key"]  # no temporary file left


async def test_metrics_of_a_sandbox_that_dies_under_the_call_report_it_crashed(
    tmp_path: Path, rootfs: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The VM dies while ``sandbox.metrics.get`` asks it, before its watcher booked the crash:
    the answer lists it as crashed (and the other sandbox as running) instead of failing."""
    backend = FakeBackend()
    m = manager(tmp_path, backend)
    await m.start("t", "a", SandboxConfig(image=str(rootfs)))
    await m.start("t", "b", SandboxConfig(image=str(rootfs)))
    sb = m._running[("t", "a")].sandbox

    async def dies() -> None:
        raise sb._channel_died()

    monkeypatch.setattr(sb, "metrics", dies)
    got = {x.name: x for x in await m.metrics("t", None)}
    assert not got["a"].running and got["a"].crash_reason == "the guest's channel closed"
    assert got["b"].running
    [only] = await m.metrics("t", "a")
    assert not only.running and only.crash_reason
    await m.shutdown()
