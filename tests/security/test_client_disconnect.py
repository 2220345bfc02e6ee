"""A client that goes away mid-command, and a slow client: the command is stopped, its slot and
output budget come back; nothing is left waiting for a reader that is gone."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

from engine.repl.models import CommandResult
from engine.server.app import build_app
from engine.server.fake_service import FakeService
from engine.server.service import SandboxConfig
from engine.server.settings import ServerSettings

TIMEOUT_S = 10.0


class _Hanging(FakeService):
    """``command.run`` that runs until cancelled, counting what is in flight."""

    def __init__(self) -> None:
        super().__init__()
        self.running = 0
        self.cancelled = asyncio.Event()
        self.started = asyncio.Event()

    async def run_command(self, namespace: str, name: str, command: str, args: list[str],
                          timeout: float | None) -> CommandResult:  # fmt: skip
        self.running += 1
        self.started.set()
        try:
            await asyncio.sleep(3600)
            raise AssertionError("never")
        except asyncio.CancelledError:
            self.cancelled.set()
            raise
        finally:
            self.running -= 1


async def _call(app: Any, body: dict[str, Any], disconnect_after: asyncio.Event) -> list[dict[str, Any]]:
    """Drive the ASGI app as uvicorn would; the client disconnects once ``disconnect_after`` is set."""
    raw = json.dumps(body).encode()
    sent: list[dict[str, Any]] = []
    first = True

    async def receive() -> dict[str, Any]:
        nonlocal first
        if first:
            first = False
            return {"type": "http.request", "body": raw, "more_body": False}
        await disconnect_after.wait()
        return {"type": "http.disconnect"}

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    scope = {"type": "http", "method": "POST", "path": "/api/v1/rpc", "raw_path": b"/api/v1/rpc",
             "query_string": b"", "root_path": "", "scheme": "http", "server": ("127.0.0.1", 5555),
             "client": ("127.0.0.1", 40000), "http_version": "1.1", "asgi": {"version": "3.0"},
             "headers": [(b"host", b"127.0.0.1:5555"), (b"content-type", b"application/json"),
                         (b"content-length", str(len(raw)).encode())]}  # fmt: skip
    await app(scope, receive, send)
    return sent


async def test_a_client_that_disconnects_mid_command_stops_it(tmp_path: Path) -> None:
    service = _Hanging()
    app = build_app(ServerSettings(dev=True, storage=tmp_path), service, secret=None)
    gone = asyncio.Event()
    body = {"jsonrpc": "2.0", "id": 1, "method": "sandbox.command.run",
            "params": {"namespace": "default", "sandbox": "s", "command": "sleep", "args": ["1d"]}}  # fmt: skip
    call = asyncio.ensure_future(_call(app, body, gone))
    await asyncio.wait_for(service.started.wait(), TIMEOUT_S)
    gone.set()  # the client hangs up
    sent = await asyncio.wait_for(call, TIMEOUT_S)
    assert service.cancelled.is_set() and service.running == 0
    assert sent == []  # nobody to answer


async def test_a_slow_client_still_gets_its_whole_answer(tmp_path: Path) -> None:
    """Without a disconnect the answer is sent whole, however slowly it is read (uvicorn's flow
    control pauses the writer; the server keeps at most one answer per request in memory)."""
    service = FakeService()
    app = build_app(ServerSettings(dev=True, storage=tmp_path), service, secret=None)
    await service.start("default", "s", SandboxConfig(image="busybox"))
    never = asyncio.Event()
    body = {"jsonrpc": "2.0", "id": 1, "method": "sandbox.command.run",
            "params": {"namespace": "default", "sandbox": "s", "command": "echo", "args": ["hi"]}}  # fmt: skip
    sent = await asyncio.wait_for(_call(app, body, never), TIMEOUT_S)
    answer = json.loads(b"".join(m.get("body", b"") for m in sent if m["type"] == "http.response.body"))
    assert answer["result"]["stdout"] == "hi\n"
