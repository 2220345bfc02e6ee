"""The guide's seed-style MCP shapes (engine/server/mcp_app.py): ``tools/call`` with ``tool_name``
runs ``command`` through ``/bin/sh -c``; ``prompts/get`` with ``prompt_name``. The standard tool and
shapes keep "no shell unless asked" and ``name``."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest
from mcp.types import TextContent

from engine.repl.models import CommandResult
from engine.server.fake_service import FakeService
from engine.server.mcp_app import build_mcp
from engine.server.service import SandboxConfig
from tests.unit.server.test_mcp import NS, RAW_HEADERS, connect, raw, seed, serve


class RecordingService(FakeService):
    """Remembers the ``(command, args)`` of every ``run_command``."""

    def __init__(self) -> None:
        super().__init__()
        self.commands: list[tuple[str, list[str]]] = []

    async def run_command(self, namespace: str, name: str, command: str, args: list[str],
                          timeout: float | None) -> CommandResult:  # fmt: skip
        self.commands.append((command, list(args)))
        return await super().run_command(namespace, name, command, args, timeout)


@pytest.fixture
async def service() -> RecordingService:
    svc = RecordingService()
    await svc.start("default", "s1", SandboxConfig(image="microsandbox/python"))
    return svc


@pytest.fixture
async def url(service: RecordingService) -> AsyncIterator[str]:
    async with serve(build_mcp(service)) as u:
        yield u


async def test_seed_command_runs_through_the_shell(url: str, service: RecordingService) -> None:
    line = "echo one && echo two && false && echo never"
    resp = await raw(url, seed(1, tool_name="sandbox.command.run", sandbox_name="s1", command=line))
    assert resp.json()["result"] == {"stdout": "one\ntwo\n", "stderr": "", "exit_code": 1}
    assert service.commands == [("/bin/sh", ["-c", line])]


async def test_seed_command_with_args_runs_the_program_itself(url: str, service: RecordingService) -> None:
    resp = await raw(url, seed(1, tool_name="sandbox.command.run", sandbox_name="s1", command="echo",
                               args=["a && b"]))  # fmt: skip
    assert resp.json()["result"] == {"stdout": "a && b\n", "stderr": "", "exit_code": 0}
    assert service.commands == [("echo", ["a && b"])]


async def test_the_standard_tool_still_runs_no_shell(url: str, service: RecordingService) -> None:
    await service.start(NS, "s2", SandboxConfig(image="microsandbox/python"))
    async with connect(url) as session:
        got = await session.call_tool("sandbox_run_command", {"sandbox": "s2", "namespace": NS,
                                                              "command": "echo a && echo b"})  # fmt: skip
    assert got.structured_content is not None and got.structured_content["exit_code"] == 127
    assert service.commands == [("echo a && echo b", [])]


async def test_prompts_get_accepts_prompt_name(url: str) -> None:
    doc = {"jsonrpc": "2.0", "id": 4, "method": "prompts/get",
           "params": {"prompt_name": "create_python_sandbox", "arguments": {"sandbox_name": "box9"}}}  # fmt: skip
    resp = await raw(url, doc)
    assert resp.status_code == 200 and resp.json()["id"] == 4
    [message] = resp.json()["result"]["messages"]
    assert message["role"] == "user" and "box9" in message["content"]["text"]
    assert "microsandbox/python" in message["content"]["text"]


async def test_prompts_get_unknown_prompt_name_is_invalid_params(url: str) -> None:
    doc = {"jsonrpc": "2.0", "id": 5, "method": "prompts/get", "params": {"prompt_name": "python-datascience"}}
    resp = await raw(url, doc)
    assert resp.json() == {"jsonrpc": "2.0", "id": 5,
                           "error": {"code": -32602, "message": "Unknown prompt: python-datascience"}}  # fmt: skip


async def test_prompts_get_with_name_still_goes_to_the_sdk(url: str) -> None:
    async with connect(url) as session:
        got = await session.get_prompt("create_node_sandbox", {"sandbox_name": "n1", "namespace": NS})
    assert isinstance(got.messages[0].content, TextContent) and "microsandbox/node" in got.messages[0].content.text
    doc = {"jsonrpc": "2.0", "id": 6, "method": "prompts/get", "params": {"name": "nope", "prompt_name": "x"}}
    resp = await raw(url, doc, headers=RAW_HEADERS)  # "name" present: the SDK answers, not the seed path
    assert "error" in resp.json()
