"""engine.client.rpc: the envelope, headers, and every failure mapped to a SandboxError."""

from __future__ import annotations

import json
import socket
from collections.abc import Callable

import httpx
import pytest

from engine.client.errors import (
    NO_CODE,
    SandboxAuthError,
    SandboxConnectionError,
    SandboxError,
    SandboxTimeoutError,
)
from engine.client.rpc import (
    CALL_MARGIN_S,
    DEFAULT_CALL_TIMEOUT_S,
    RpcClient,
    http_timeout,
    resolve_api_key,
    resolve_server_url,
)
from tests.unit.client.conftest import SERVER_URL
from tests.unit.client.fake_server import FakeMsbServer

Handler = Callable[[httpx.Request], httpx.Response]


def _client(handler: Handler, api_key: str | None = None) -> RpcClient:
    return RpcClient(SERVER_URL, api_key, httpx.AsyncClient(transport=httpx.MockTransport(handler)))


def _answer(status: int, body: object) -> Handler:
    return lambda request: httpx.Response(status, json=body)


async def _fail(rpc: RpcClient) -> SandboxError:
    with pytest.raises(SandboxError) as info:
        await rpc.call("sandbox.stop", {"sandbox": "s", "namespace": "default"}, timeout=5)
    return info.value


async def test_request_envelope_and_headers() -> None:
    seen: list[httpx.Request] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        doc = json.loads(request.content)
        return httpx.Response(200, json={"jsonrpc": "2.0", "id": doc["id"], "result": "ok"})

    rpc = _client(handler, api_key="msb_k")
    assert await rpc.call("sandbox.stop", {"sandbox": "s", "namespace": "n"}, timeout=7) == "ok"
    doc = json.loads(seen[0].content)
    assert (
        doc["jsonrpc"] == "2.0"
        and doc["method"] == "sandbox.stop"
        and doc["params"] == {"sandbox": "s", "namespace": "n"}
    )
    assert isinstance(doc["id"], str) and doc["id"]
    assert seen[0].headers["authorization"] == "Bearer msb_k"
    assert seen[0].headers["content-type"] == "application/json"
    assert seen[0].extensions["timeout"]["read"] == 7


@pytest.mark.parametrize("status", [401, 403])
async def test_auth_refusal_says_how_to_get_a_key(status: int) -> None:
    body = {"jsonrpc": "2.0", "id": None, "error": {"code": -32001, "message": "API key expired"}}
    err = await _fail(_client(_answer(status, body), api_key="msb_old"))
    assert isinstance(err, SandboxAuthError) and err.code == status
    assert "API key expired" in str(err) and "check MSB_API_KEY / msb server keygen" in str(err)


async def test_auth_refusal_without_a_key_says_none_was_sent() -> None:
    fake = FakeMsbServer(api_key="msb_right")
    err = await _fail(RpcClient(SERVER_URL, None, fake.client()))
    assert err.code == 401 and "no API key was sent" in str(err) and "Invalid or missing API key" in str(err)


async def test_rpc_error_keeps_code_message_and_hint() -> None:
    error = {"code": -32602, "message": "Invalid params: Sandbox 's' not found", "data": {"hint": "start it first"}}
    err = await _fail(_client(_answer(200, {"jsonrpc": "2.0", "id": "1", "error": error})))
    assert type(err) is SandboxError and err.code == -32602
    assert err.message == "sandbox.stop failed: Invalid params: Sandbox 's' not found"
    assert err.hint == "start it first" and err.data == {"hint": "start it first"}


async def test_connection_refused_mock() -> None:
    def handler(request: httpx.Request) -> httpx.Response:
        raise httpx.ConnectError("[Errno 111] Connection refused", request=request)

    err = await _fail(_client(handler))
    assert isinstance(err, SandboxConnectionError) and err.code == NO_CODE
    assert "is the server running? start it with `msb server start`" in str(err)
    assert SERVER_URL in str(err)


async def test_connection_refused_real_socket() -> None:
    with socket.socket() as sock:  # a port nobody listens on once closed
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    rpc = RpcClient(f"http://127.0.0.1:{port}", None)
    try:
        err = await _fail(rpc)
    finally:
        await rpc.aclose()
    assert isinstance(err, SandboxConnectionError)
    assert "is the server running? start it with `msb server start`" in str(err)


async def test_read_timeout_is_a_timeout_error() -> None:
    def handler(request: httpx.Request) -> httpx.Response:
        raise httpx.ReadTimeout("timed out", request=request)

    err = await _fail(_client(handler))
    assert isinstance(err, SandboxTimeoutError) and isinstance(err, TimeoutError)
    assert "within 5 s" in str(err)


async def test_other_transport_failures_are_connection_errors() -> None:
    def handler(request: httpx.Request) -> httpx.Response:
        raise httpx.RemoteProtocolError("peer closed connection", request=request)

    assert isinstance(await _fail(_client(handler)), SandboxConnectionError)


async def test_non_json_http_error_uses_the_status() -> None:
    err = await _fail(_client(lambda request: httpx.Response(502, text="<html>Bad Gateway</html>")))
    assert err.code == 502 and "Bad Gateway" in str(err)


@pytest.mark.parametrize("body", [[1, 2], {"jsonrpc": "2.0", "id": "1"}, "text"])
async def test_answers_without_a_result_are_errors(body: object) -> None:
    handler = (lambda r: httpx.Response(200, text="not json")) if body == "text" else _answer(200, body)
    assert isinstance(await _fail(_client(handler)), SandboxError)


async def test_null_result_is_a_result() -> None:
    rpc = _client(_answer(200, {"jsonrpc": "2.0", "id": "1", "result": None}))
    assert await rpc.call("sandbox.stop", {}, timeout=1) is None


async def test_owned_client_is_closed_and_reopened_external_one_is_left_alone() -> None:
    owned = RpcClient(SERVER_URL, None)
    first = owned._http()
    await owned.aclose()
    assert first.is_closed and owned._http() is not first
    await owned.aclose()
    external = httpx.AsyncClient()
    borrowed = RpcClient(SERVER_URL, None, external)
    await borrowed.aclose()
    assert not external.is_closed and borrowed._http() is external
    await external.aclose()


def test_http_timeout_adds_a_margin() -> None:
    assert http_timeout(None) == DEFAULT_CALL_TIMEOUT_S
    assert http_timeout(10) == 10 + CALL_MARGIN_S


def test_resolvers(monkeypatch: pytest.MonkeyPatch) -> None:
    assert resolve_server_url(None) == "http://127.0.0.1:5555"
    assert resolve_server_url("http://h:1/") == "http://h:1"
    assert resolve_api_key(None) is None
    monkeypatch.setenv("MSB_SERVER_URL", "http://env:2")
    monkeypatch.setenv("MSB_API_KEY", "msb_env")
    assert resolve_server_url(None) == "http://env:2" and resolve_api_key(None) == "msb_env"
    assert resolve_server_url("http://arg:3") == "http://arg:3" and resolve_api_key("msb_arg") == "msb_arg"
    monkeypatch.setenv("MSB_API_KEY", "")
    assert resolve_api_key(None) is None
