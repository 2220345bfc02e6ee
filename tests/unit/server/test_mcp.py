"""MCP at ``/mcp`` (engine/server/mcp_app.py) against FakeService, over real HTTP: uvicorn on an
ephemeral port, the SDK's own clients (handshake and 2026-07-28 eras) and raw httpx."""

from __future__ import annotations

import asyncio
import base64
import json
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import Any

import httpx
import httpx2
import pytest
import uvicorn
from mcp import Client, ClientSession
from mcp.client.streamable_http import streamable_http_client
from mcp.types import CallToolResult, TextContent
from mcp.types.version import LATEST_HANDSHAKE_VERSION, LATEST_MODERN_VERSION
from starlette.applications import Starlette
from starlette.routing import Route
from starlette.types import Scope

from engine.server.auth import ForbiddenError
from engine.server.fake_service import FakeService
from engine.server.mcp_app import McpEndpoint, build_mcp
from engine.server.service import SandboxConfig
from tests.unit.helpers import STEP_TIMEOUT_S, eventually

NS = "team"
PY = {"image": "microsandbox/python"}
ALL_TOOLS = {
    "sandbox_start", "sandbox_stop", "sandbox_run_code", "sandbox_run_command", "sandbox_get_metrics",
    "sandbox_list", "sandbox_file_read", "sandbox_file_write",
}  # fmt: skip
RAW_HEADERS = {"accept": "application/json, text/event-stream"}


@asynccontextmanager
async def serve(endpoint: McpEndpoint) -> AsyncIterator[str]:
    """Run ``endpoint`` at ``/mcp`` of a Starlette app under uvicorn; yields the URL."""
    app = Starlette(routes=[Route("/mcp", endpoint=endpoint.asgi)], lifespan=lambda _: endpoint.lifespan())
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=0, log_level="warning", lifespan="on"))
    task = asyncio.create_task(server.serve())
    try:
        await eventually(lambda: server.started or task.done())
        assert server.started, "uvicorn did not start"
        port = server.servers[0].sockets[0].getsockname()[1]
        yield f"http://127.0.0.1:{port}/mcp"
    finally:
        server.should_exit = True
        await asyncio.wait_for(task, STEP_TIMEOUT_S)


@pytest.fixture
def service() -> FakeService:
    return FakeService()


@pytest.fixture
async def url(service: FakeService) -> AsyncIterator[str]:
    async with serve(build_mcp(service)) as u:
        yield u


@asynccontextmanager
async def connect(url: str) -> AsyncIterator[ClientSession]:
    """The SDK's streamable-HTTP client after the ``initialize`` handshake.

    Entered inside each test (not a fixture): the SDK's anyio task groups must be left in the
    task that entered them.
    """
    async with streamable_http_client(url) as (read, write), ClientSession(
        read, write, read_timeout_seconds=STEP_TIMEOUT_S
    ) as session:
        init = await session.initialize()
        assert init.protocol_version == LATEST_HANDSHAKE_VERSION
        yield session


def text(result: CallToolResult) -> str:
    block = result.content[0]
    assert isinstance(block, TextContent)
    return block.text


async def call(session: ClientSession, tool: str, **arguments: Any) -> dict[str, Any]:
    """Call a tool that must succeed; returns its structuredContent (checked against the text)."""
    result = await session.call_tool(tool, arguments)
    assert not result.is_error, text(result)
    assert isinstance(result.structured_content, dict)
    assert json.loads(text(result)) == result.structured_content
    return result.structured_content


async def test_tools_list_has_all_eight_with_object_schemas(url: str) -> None:
    async with connect(url) as session:
        tools = (await session.list_tools()).tools
    assert {t.name for t in tools} == ALL_TOOLS
    for tool in tools:
        assert tool.description
        assert tool.input_schema["type"] == "object"
        assert "$ref" not in json.dumps(tool.input_schema)
    run_code = next(t for t in tools if t.name == "sandbox_run_code")
    assert set(run_code.input_schema["required"]) == {"sandbox", "namespace", "language", "code"}


async def test_an_ephemeral_start_through_mcp_is_reported(service: FakeService) -> None:
    service.pools = {PY["image"]: 1}
    service.pool_taken = {PY["image"]: 0}
    async with serve(build_mcp(service)) as url, connect(url) as session:
        start = next(t for t in (await session.list_tools()).tools if t.name == "sandbox_start")
        assert start.input_schema["properties"]["config"]["anyOf"][0]["properties"]["ephemeral"]
        await call(session, "sandbox_start", sandbox="e", namespace=NS, config={**PY, "ephemeral": True})
        [listed] = (await call(session, "sandbox_list", namespace=NS))["sandboxes"]
        assert (listed["started_by"], listed["start_ms"]) == ("pool", 3.0)


async def test_sandbox_lifecycle_with_shared_repl_state(url: str) -> None:
    async with connect(url) as session:
        started = await call(session, "sandbox_start", sandbox="py", namespace=NS, config=PY)
        assert started == {"message": "Sandbox py started successfully"}
        await call(session, "sandbox_run_code", sandbox="py", namespace=NS, language="python", code="x = 41")
        out = await call(session, "sandbox_run_code", sandbox="py", namespace=NS, language="python", code="x + 1")
        assert out["status"] == "success"
        assert {"stream": "stdout", "text": "42"} in out["output"]

        cmd = await call(session, "sandbox_run_command", sandbox="py", namespace=NS, command="echo", args=["hi"])
        assert (cmd["exit_code"], cmd["stdout"], cmd["success"]) == (0, "hi\n", True)
        failed = await call(session, "sandbox_run_command", sandbox="py", namespace=NS, command="false")
        assert (failed["exit_code"], failed["success"]) == (1, False)

        metrics = await call(session, "sandbox_get_metrics", namespace=NS)
        [m] = metrics["sandboxes"]
        assert m["name"] == "py" and m["running"] and m["cpu_usage"] > 0 and m["memory_usage"] > 0

        stopped = await call(session, "sandbox_stop", sandbox="py", namespace=NS)
        assert stopped == {"message": "Sandbox py stopped successfully"}
        listed = await call(session, "sandbox_list", namespace=NS)
        assert [(s["name"], s["status"]) for s in listed["sandboxes"]] == [("py", "stopped")]


async def test_files_round_trip_as_text_or_base64(url: str) -> None:
    async with connect(url) as session:
        await call(session, "sandbox_start", sandbox="f", namespace=NS, config=PY)
        await call(session, "sandbox_file_write", sandbox="f", namespace=NS, path="/a.txt", content="héllo")
        read = await call(session, "sandbox_file_read", sandbox="f", namespace=NS, path="/a.txt")
        assert (read["encoding"], read["content"], read["size"]) == ("utf-8", "héllo", 6)

        blob = bytes([0, 255, 254, 10])
        b64 = base64.b64encode(blob).decode() + "\n"
        await call(session, "sandbox_file_write", sandbox="f", namespace=NS, path="/b", content=b64, encoding="base64")
        read = await call(session, "sandbox_file_read", sandbox="f", namespace=NS, path="/b")
        assert (read["encoding"], base64.b64decode(read["content"])) == ("base64", blob)

        bad = await session.call_tool("sandbox_file_write", {"sandbox": "f", "namespace": NS, "path": "/c",
                                                             "content": "%%%", "encoding": "base64"})  # fmt: skip
        assert bad.is_error and "base64" in text(bad)


async def test_prompts_list_and_get(url: str) -> None:
    async with connect(url) as session:
        prompts = (await session.list_prompts()).prompts
        assert {p.name for p in prompts} == {"create_python_sandbox", "create_node_sandbox"}
        assert all({a.name for a in p.arguments or []} == {"sandbox_name", "namespace"} for p in prompts)
        images = {"create_python_sandbox": "microsandbox/python", "create_node_sandbox": "microsandbox/node"}
        for name, image in images.items():
            got = await session.get_prompt(name, {"sandbox_name": "box1", "namespace": NS})
            [message] = got.messages
            assert message.role == "user" and isinstance(message.content, TextContent)
            assert all(s in message.content.text for s in (image, "box1", NS, "sandbox_start", "sandbox_run_code"))


async def test_failures_are_error_results_and_the_server_keeps_serving(url: str, service: FakeService) -> None:
    async with connect(url) as session:
        missing = await session.call_tool("sandbox_run_code", {"sandbox": "ghost", "namespace": NS,
                                                               "language": "python", "code": "1"})  # fmt: skip
        assert missing.is_error
        assert "Sandbox 'ghost' not found" in text(missing)
        assert missing.structured_content == {"error": {
            "code": -32602, "message": "Invalid params: Sandbox 'ghost' not found",
            "hint": f"start it first in namespace {NS!r}"}}  # fmt: skip

        invalid = await session.call_tool("sandbox_stop", {"sandbox": "bad name!", "namespace": NS})
        assert invalid.is_error and text(invalid).startswith("Invalid params: sandbox:")
        extra = await session.call_tool("sandbox_list", {"namespace": NS, "surprise": 1})
        assert extra.is_error and "surprise: unknown field" in text(extra)

        service.fail("list", RuntimeError("secret detail"))
        crashed = await session.call_tool("sandbox_list", {"namespace": NS})
        assert crashed.is_error and "Internal error" in text(crashed) and "secret" not in text(crashed)
        service.fail("list", None)

        assert await call(session, "sandbox_list", namespace=NS) == {"sandboxes": []}


async def test_modern_client_speaks_the_current_protocol(url: str) -> None:
    async with Client(url, read_timeout_seconds=STEP_TIMEOUT_S) as client:
        assert client.protocol_version == LATEST_MODERN_VERSION
        assert len((await client.list_tools()).tools) == len(ALL_TOOLS)
        await client.call_tool("sandbox_start", {"sandbox": "m", "namespace": NS, "config": PY})
        result = await client.call_tool("sandbox_run_code", {"sandbox": "m", "namespace": NS, "language": "node",
                                                             "code": "console.log(6 * 7)"})  # fmt: skip
        assert not result.is_error
        assert result.structured_content["output"] == [{"stream": "stdout", "text": "42"}]


@pytest.mark.parametrize(("asked", "answered"), [
    ("2024-11-05", "2024-11-05"), ("2025-03-26", "2025-03-26"), ("1999-01-01", LATEST_HANDSHAKE_VERSION),
])  # fmt: skip
async def test_older_clients_negotiate_over_raw_http(url: str, asked: str, answered: str) -> None:
    init = {"protocolVersion": asked, "capabilities": {}, "clientInfo": {"name": "old", "version": "1"}}
    async with httpx.AsyncClient(timeout=STEP_TIMEOUT_S) as http:
        resp = await http.post(url, headers=RAW_HEADERS, json={"jsonrpc": "2.0", "id": 1, "method": "initialize",
                                                               "params": init})  # fmt: skip
        assert resp.status_code == 200 and resp.headers["content-type"].startswith("application/json")
        assert resp.json()["result"]["protocolVersion"] == answered
        assert "mcp-session-id" not in resp.headers  # stateless

        headers = {**RAW_HEADERS, "mcp-protocol-version": answered}
        await http.post(url, headers=headers, json={"jsonrpc": "2.0", "method": "notifications/initialized"})
        resp = await http.post(url, headers=headers, json={"jsonrpc": "2.0", "id": 2, "method": "tools/call",
                               "params": {"name": "sandbox_list", "arguments": {"namespace": NS}}})  # fmt: skip
        result = resp.json()["result"]
        assert not result["isError"] and json.loads(result["content"][0]["text"]) == {"sandboxes": []}


async def raw(url: str, doc: dict[str, Any], headers: dict[str, str] | None = None) -> httpx.Response:
    async with httpx.AsyncClient(timeout=STEP_TIMEOUT_S) as http:
        return await http.post(url, json=doc, headers=headers)


def seed(id_: int | None = 1, **params: Any) -> dict[str, Any]:
    doc = {"jsonrpc": "2.0", "method": "tools/call", "params": params}
    return doc if id_ is None else {**doc, "id": id_}


async def test_seed_style_calls_are_answered(url: str, service: FakeService) -> None:
    await service.start("default", "s1", SandboxConfig(image="microsandbox/python"))
    resp = await raw(url, seed(7, tool_name="sandbox.command.run", sandbox_name="s1", command="echo hello world"))
    assert resp.status_code == 200
    assert resp.json() == {"jsonrpc": "2.0", "id": 7,
                           "result": {"stdout": "hello world\n", "stderr": "", "exit_code": 0}}  # fmt: skip

    resp = await raw(url, seed(8, tool_name="sandbox.metrics.get", sandbox_name="s1", namespace="default"))
    metrics = resp.json()["result"]
    assert metrics["name"] == "s1" and metrics["running"] is True
    assert metrics["cpu_usage"] > 0 and metrics["memory_usage"] > 0 and "disk_usage" in metrics

    resp = await raw(url, seed(None, tool_name="sandbox.command.run", sandbox_name="s1", command="true"))
    assert (resp.status_code, resp.content) == (202, b"")


async def test_seed_style_unknown_sandbox_is_invalid_params(url: str) -> None:
    for tool in ("sandbox.command.run", "sandbox.metrics.get"):
        resp = await raw(url, seed(3, tool_name=tool, sandbox_name="nope", command="ls"))
        assert resp.json() == {"jsonrpc": "2.0", "id": 3, "error": {
            "code": -32602, "message": "Invalid params: Sandbox 'nope' not found."}}  # fmt: skip


async def test_oversized_bodies_get_413_and_other_methods_405(service: FakeService) -> None:
    async with serve(build_mcp(service, max_body_bytes=1024)) as url:
        resp = await raw(url, seed(1, tool_name="sandbox.command.run", sandbox_name="s", command="x" * 2048))
        assert resp.status_code == 413 and resp.json()["error"]["code"] == -32600
        async with httpx.AsyncClient(timeout=STEP_TIMEOUT_S) as http:
            for method in ("GET", "DELETE", "PUT"):
                resp = await http.request(method, url, headers=RAW_HEADERS)
                assert resp.status_code == 405 and resp.headers["allow"] == "POST"


def only_header_namespace(seen: list[Scope]) -> Callable[[Scope], Callable[[str], None]]:
    """An authorize callback: the request's ``x-ns`` header names the one namespace it may touch."""

    def authorize(scope: Scope) -> Callable[[str], None]:
        seen.append(scope)
        allowed = dict(scope["headers"]).get(b"x-ns", b"").decode()

        def check(namespace: str) -> None:
            if namespace != allowed:
                raise ForbiddenError(f"this API key is for namespace {allowed!r}, not {namespace!r}")

        return check

    return authorize


@pytest.mark.parametrize("mode", ["legacy", "auto"])
async def test_authorize_is_asked_with_the_request_scope(service: FakeService, mode: Any) -> None:
    seen: list[Scope] = []
    mine = {"x-ns": "mine"}
    async with serve(build_mcp(service, authorize=only_header_namespace(seen))) as url:
        async with httpx2.AsyncClient(headers=mine, timeout=STEP_TIMEOUT_S) as sdk_http, Client(
            streamable_http_client(url, http_client=sdk_http), read_timeout_seconds=STEP_TIMEOUT_S, mode=mode
        ) as client:
            assert not (await client.call_tool("sandbox_list", {"namespace": "mine"})).is_error
            denied = await client.call_tool("sandbox_list", {"namespace": "theirs"})
            assert denied.is_error and "not 'theirs'" in text(denied)

        doc = seed(1, tool_name="sandbox.command.run", sandbox_name="s", namespace="theirs", command="ls")
        resp = await raw(url, doc, headers=mine)
        assert resp.status_code == 403 and resp.json()["error"]["code"] == ForbiddenError.code
    assert seen and all(s["type"] == "http" for s in seen)
    assert service.calls == ["list"]


async def test_requests_before_the_lifespan_get_503() -> None:
    endpoint = build_mcp(FakeService())
    transport = httpx.ASGITransport(app=endpoint.asgi)
    async with httpx.AsyncClient(transport=transport, base_url="http://127.0.0.1") as http:
        resp = await http.post("/mcp", json={"jsonrpc": "2.0", "id": 1, "method": "ping"})
    assert resp.status_code == 503
    for _ in range(2):  # a fresh SDK session manager each time: the app may start again
        async with endpoint.lifespan():
            assert endpoint.manager is not None
        assert endpoint.manager is None
