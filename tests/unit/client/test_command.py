"""engine.client.command: ``sandbox.command.run`` request shape and results."""

from __future__ import annotations

import httpx
import pytest

from engine.client import PythonSandbox, SandboxError
from engine.client.rpc import CALL_MARGIN_S, DEFAULT_CALL_TIMEOUT_S
from tests.unit.client.conftest import SERVER_URL
from tests.unit.client.fake_server import FakeMsbServer


async def test_command_request_shape_and_result(fake: FakeMsbServer, http: httpx.AsyncClient) -> None:
    async with PythonSandbox.create(name="c", server_url=SERVER_URL, client=http) as sb:
        cmd = await sb.command.run("ls", ["-la", "/"], timeout=30)
    call = fake.calls[1]
    assert call.method == "sandbox.command.run"
    assert call.params == {"sandbox": "c", "namespace": "default", "command": "ls", "args": ["-la", "/"], "timeout": 30}
    assert call.timeout["read"] == pytest.approx(30 + CALL_MARGIN_S)
    assert cmd.exit_code == 0 and cmd.success
    assert await cmd.output() == "bin\netc\nusr" and await cmd.error() == ""
    assert cmd.command == "ls" and cmd.args == ["-la", "/"]
    assert cmd.result.stdout == "bin\netc\nusr\n"


async def test_args_default_to_empty_and_timeout_is_omitted(fake: FakeMsbServer, http: httpx.AsyncClient) -> None:
    async with PythonSandbox.create(name="c", server_url=SERVER_URL, client=http) as sb:
        await sb.command.run("echo")
        await sb.command.run("echo", ("a", "b"))
    assert fake.calls[1].params == {"sandbox": "c", "namespace": "default", "command": "echo", "args": []}
    assert fake.calls[1].timeout["read"] == DEFAULT_CALL_TIMEOUT_S
    assert fake.calls[2].params["args"] == ["a", "b"]


async def test_failing_command_is_a_result(http: httpx.AsyncClient) -> None:
    async with PythonSandbox.create(server_url=SERVER_URL, client=http) as sb:
        cmd = await sb.command.run("fail")
        missing = await sb.command.run("nope")
    assert cmd.exit_code == 2 and not cmd.success
    assert await cmd.output() == "partial" and await cmd.error() == "boom\nbang"
    assert missing.exit_code == 127 and await missing.error() == "nope: not found"


async def test_malformed_result_is_a_sandbox_error(fake: FakeMsbServer, http: httpx.AsyncClient) -> None:
    fake._command = lambda params: {"exit_code": "not a number"}  # type: ignore[method-assign]
    async with PythonSandbox.create(server_url=SERVER_URL, client=http) as sb:
        with pytest.raises(SandboxError, match=r"sandbox\.command\.run: the server.s result is malformed"):
            await sb.command.run("ls")
