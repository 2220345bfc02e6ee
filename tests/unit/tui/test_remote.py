"""RemoteWorkbench (``msb-tui --server``) against the real server app in-process over the
FakeService: the dashboard's rows, start/stop, the REPL, and clear errors for what the
server's API does not offer."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest

from engine.client.rpc import RpcClient
from engine.errors import MsbError
from engine.server.app import build_app
from engine.server.auth import make_key
from engine.server.fake_service import FakeService
from engine.server.service import SandboxConfig
from engine.server.settings import ServerSettings
from msb_tui.remote import RemoteWorkbench

SECRET = "k" * 32


@pytest.fixture
async def remote(tmp_path: Path) -> AsyncIterator[tuple[RemoteWorkbench, FakeService]]:
    service = FakeService()
    await service.start("default", "api", SandboxConfig(image="microsandbox/python"))
    await service.stop("default", "api")
    app = build_app(ServerSettings(storage=tmp_path, allowed_hosts=["msb.test"]), service, secret=SECRET)
    http = httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://msb.test")
    rpc = RpcClient("http://msb.test", make_key(SECRET, namespace="default"), client=http)
    workbench = RemoteWorkbench("http://msb.test", client=rpc)
    yield workbench, service
    await workbench.close()


async def test_rows_start_repl_stop(remote: tuple[RemoteWorkbench, FakeService]) -> None:
    wb, _ = remote
    assert wb.sandboxfile is None and "http://msb.test" in wb.description
    assert [(r.name, r.status) for r in await wb.sandboxes()] == [("api", "stopped")]
    await wb.start("api")
    rows = await wb.sandboxes()
    assert rows[0].status == "running" and rows[0].cpu_percent is not None
    assert (rows[0].started_by, rows[0].start_ms) == ("boot", 1100.0)  # the FakeService's cold boot
    assert (await wb.run_code("api", "python", "x = 1")).status == "success"
    assert [line.text for line in (await wb.run_code("api", "python", "x + 1")).output] == ["2"]
    await wb.stop("api")
    [row] = await wb.sandboxes()
    assert row.status == "stopped" and (row.started_by, row.start_ms) == (None, None)


async def test_server_errors_and_unsupported_operations_say_what_to_do(
    remote: tuple[RemoteWorkbench, FakeService],
) -> None:
    wb, _ = remote
    with pytest.raises(MsbError, match="not found"):
        await wb.start("ghost")
    for call in (wb.shell("api", 24, 80), wb.images(), wb.interrupt("api", "python")):
        with pytest.raises(MsbError) as info:
            await call
        assert "server's API" in info.value.message and info.value.hint
    with pytest.raises(MsbError, match="server's API"):
        await anext(wb.logs("api"))


async def test_the_servers_backend_in_the_header(remote: tuple[RemoteWorkbench, FakeService],
                                                 monkeypatch: pytest.MonkeyPatch) -> None:  # fmt: skip
    wb, _ = remote
    assert await wb.backend() == "gVisor"
    assert wb.description == "server http://msb.test · gVisor · namespace default"
    await wb.start("api")
    [row] = await wb.sandboxes()
    assert (row.backend, row.accel, row.backend_label) == ("gvisor", "none", "gVisor")


async def test_a_server_without_server_info(remote: tuple[RemoteWorkbench, FakeService],
                                            monkeypatch: pytest.MonkeyPatch) -> None:  # fmt: skip
    """An older msb (or microsandbox) has no ``server.info``: unknown, not an error; running
    sandboxes still say what they run on."""
    from engine.server import rpc

    monkeypatch.delitem(rpc.METHODS, "server.info")
    wb, _ = remote
    assert await wb.backend() is None
    assert wb.description == "server http://msb.test · namespace default"
    await wb.start("api")
    await wb.sandboxes()
    assert wb.description == "server http://msb.test · running on gVisor · namespace default"
