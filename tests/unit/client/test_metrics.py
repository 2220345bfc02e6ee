"""engine.client.metrics: ``sandbox.metrics.get`` request shape and the per-metric readers."""

from __future__ import annotations

import httpx

from engine.client import PythonSandbox
from engine.client.metrics import METRICS_TIMEOUT_S
from tests.unit.client.conftest import SERVER_URL
from tests.unit.client.fake_server import FakeMsbServer


async def test_metrics_readers(fake: FakeMsbServer, http: httpx.AsyncClient) -> None:
    async with PythonSandbox.create(name="m", namespace="ns", server_url=SERVER_URL, client=http) as sb:
        everything = await sb.metrics.all()
        cpu, memory, disk = await sb.metrics.cpu(), await sb.metrics.memory(), await sb.metrics.disk()
        running = await sb.metrics.is_running()
    assert everything == {
        "namespace": "ns",
        "name": "m",
        "running": True,
        "cpu_usage": 12.5,
        "memory_usage": 48.0,
        "disk_usage": 4096,
    }
    assert (cpu, memory, disk, running) == (12.5, 48.0, 4096, True)
    gets = [c for c in fake.calls if c.method == "sandbox.metrics.get"]
    assert len(gets) == 5  # every reader asks afresh
    assert all(c.params == {"sandbox": "m", "namespace": "ns"} for c in gets)
    assert gets[0].timeout["read"] == METRICS_TIMEOUT_S


async def test_only_our_own_entry_counts(fake: FakeMsbServer, http: httpx.AsyncClient) -> None:
    fake.extra_metrics = [
        {"namespace": "other", "name": "m", "running": True, "cpu_usage": 99.0, "memory_usage": 1.0, "disk_usage": 1},
        {"namespace": "ns", "name": "else", "running": True, "cpu_usage": 98.0, "memory_usage": 2.0, "disk_usage": 2},
    ]
    async with PythonSandbox.create(name="m", namespace="ns", server_url=SERVER_URL, client=http) as sb:
        assert await sb.metrics.cpu() == 12.5


async def test_unlisted_or_stopped_sandbox(fake: FakeMsbServer, http: httpx.AsyncClient) -> None:
    async with PythonSandbox.create(name="m", server_url=SERVER_URL, client=http) as sb:
        fake._metrics = lambda params: {"sandboxes": []}  # type: ignore[method-assign]
        assert await sb.metrics.all() == {} and await sb.metrics.get() is None
        assert await sb.metrics.cpu() is None and not await sb.metrics.is_running()
        stopped = {"name": "m", "running": False, "cpu_usage": None, "memory_usage": None, "disk_usage": None}
        fake._metrics = lambda params: {"sandboxes": [stopped]}  # type: ignore[method-assign]
        assert await sb.metrics.memory() is None and await sb.metrics.disk() is None
        assert not await sb.metrics.is_running()
        assert (await sb.metrics.all())["running"] is False


async def test_how_it_started(fake: FakeMsbServer, http: httpx.AsyncClient) -> None:
    """msb's ``started_by``/``start_ms`` are read typed, and ``all()`` passes them on only when
    the server sends them (a stock microsandbox server does not)."""
    async with PythonSandbox.create(name="m", server_url=SERVER_URL, client=http) as sb:
        assert await sb.metrics.started_by() is None and await sb.metrics.start_ms() is None
        assert "started_by" not in await sb.metrics.all()
        ours = {"name": "m", "running": True, "started_by": "pool", "start_ms": 3}
        fake._metrics = lambda params: {"sandboxes": [ours]}  # type: ignore[method-assign]
        assert (await sb.metrics.started_by(), await sb.metrics.start_ms()) == ("pool", 3.0)
        entry = await sb.metrics.get()
        assert entry is not None and (entry.started_by, entry.start_ms) == ("pool", 3.0)
        assert (await sb.metrics.all())["started_by"] == "pool"
