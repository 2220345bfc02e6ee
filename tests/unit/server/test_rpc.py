"""JSON-RPC and auth matrices against the real app (in-process) over the FakeService."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from engine.server.app import build_app
from engine.server.auth import make_key
from engine.server.fake_service import FakeService
from engine.server.settings import Limits, ServerSettings

SECRET = "k" * 32
URL = "http://msb.test/api/v1/rpc"


def _client(tmp_path: Path, *, dev: bool = False, limit: int = 10 << 20) -> httpx.AsyncClient:
    settings = ServerSettings(dev=dev, storage=tmp_path, limits=Limits(max_body_bytes=limit),
                              allowed_hosts=["msb.test"])  # the ASGI client's Host
    app = build_app(settings, FakeService(), secret=None if dev else SECRET)
    return httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://msb.test")


@pytest.fixture
async def client(tmp_path: Path) -> AsyncIterator[httpx.AsyncClient]:
    async with _client(tmp_path) as c:
        c.headers["Authorization"] = "Bearer " + make_key(SECRET)
        yield c


def call(method: str, params: Any = None, id_: Any = 1) -> dict[str, Any]:
    doc: dict[str, Any] = {"jsonrpc": "2.0", "method": method, "id": id_}
    if params is not None:
        doc["params"] = params
    return doc


async def test_health_needs_no_key(tmp_path: Path) -> None:
    async with _client(tmp_path) as c:
        r = await c.get("/api/v1/health")
    assert r.status_code == 200 and r.json() == {"message": "Service is healthy"}


async def test_full_flow(client: httpx.AsyncClient) -> None:
    start = call("sandbox.start", {"sandbox": "s1", "namespace": "default", "config": {"image": "microsandbox/python"}})
    r = await client.post(URL, json=start)
    assert r.json() == {"jsonrpc": "2.0", "result": "Sandbox s1 started successfully", "id": 1}
    await client.post(URL, json=call("sandbox.repl.run", {"sandbox": "s1", "namespace": "default",
                                                          "language": "python", "code": "x = 41"}))  # fmt: skip
    r = await client.post(URL, json=call("sandbox.repl.run", {"sandbox": "s1", "language": "python", "code": "x + 1"}))
    res = r.json()["result"]
    assert res["status"] == "success" and {"stream": "stdout", "text": "42"} in res["output"]
    r = await client.post(URL, json=call("sandbox.command.run", {"sandbox": "s1", "namespace": "default",
                                                                 "command": "echo", "args": ["hi"]}))  # fmt: skip
    assert r.json()["result"]["exit_code"] == 0
    r = await client.post(URL, json=call("sandbox.metrics.get", {"namespace": "*"}))
    assert r.json()["result"]["sandboxes"][0]["name"] == "s1"
    r = await client.post(URL, json=call("sandbox.stop", {"sandbox": "s1", "namespace": "default"}))
    assert r.json()["result"] == "Sandbox s1 stopped successfully"


@pytest.mark.parametrize(
    ("body", "code", "fragment"),
    [
        (b"{not json", -32700, "Parse error"),
        (b'[{"jsonrpc": "2.0", "method": "x", "id": 1}]', -32600, "batch"),
        (b'"just a string"', -32600, "object"),
        (b'{"jsonrpc": "1.0", "method": "sandbox.stop", "id": 1}', -32600, "jsonrpc"),
        (b'{"jsonrpc": "2.0", "method": 5, "id": 1}', -32600, "method"),
        (b'{"jsonrpc": "2.0", "method": "sandbox.nope", "id": 1}', -32601, "Method not found"),
        (b'{"jsonrpc": "2.0", "method": "sandbox.stop", "id": 1}', -32602, "Invalid params"),
        (b'{"jsonrpc": "2.0", "method": "sandbox.stop", "params": [1], "id": 1}', -32602, "expected an object"),
        (b'{"jsonrpc": "2.0", "method": "sandbox.stop", "params": {"sandbox": "a", "namespace": "b", "x": 1},'
         b' "id": 1}', -32602, "unknown field"),
        (b'{"jsonrpc": "2.0", "method": "sandbox.stop", "params": {"sandbox": "ghost", "namespace": "d"}, "id": 1}',
         -32602, "Invalid params: Sandbox 'ghost' not found"),
        (b'{"jsonrpc": "2.0", "method": "sandbox.command.run", "params": {"sandbox": "a", "command": "x",'
         b' "timeout": -1}, "id": 1}', -32602, "timeout"),
    ],
)
async def test_rpc_error_matrix(client: httpx.AsyncClient, body: bytes, code: int, fragment: str) -> None:
    r = await client.post(URL, content=body, headers={"Content-Type": "application/json"})
    assert r.status_code == 200
    err = r.json()["error"]
    assert err["code"] == code and fragment in err["message"], err


async def test_notification_gets_no_body(client: httpx.AsyncClient) -> None:
    r = await client.post(URL, json={"jsonrpc": "2.0", "method": "sandbox.metrics.get", "params": {"namespace": "*"}})
    assert r.status_code == 204 and r.content == b""


async def test_oversized_body(tmp_path: Path) -> None:
    async with _client(tmp_path, limit=2048) as c:
        c.headers["Authorization"] = "Bearer " + make_key(SECRET)
        r = await c.post(URL, content=b"x" * 5000, headers={"Content-Type": "application/json"})
    assert r.status_code == 413 and r.json()["error"]["code"] == -32600


async def test_get_is_not_allowed(client: httpx.AsyncClient) -> None:
    r = await client.get(URL)
    assert r.status_code == 405


@pytest.mark.parametrize(
    ("header", "status", "fragment"),
    [
        (None, 401, "missing"),
        ("Bearer not-msb", 401, "malformed"),
        ("Bearer msb_abc.def.ghi", 401, "malformed"),
        ("Bearer " + make_key("x" * 32), 401, "signature"),
        ("Bearer " + make_key(SECRET, expire_s=10, now=1000), 401, "expired"),
    ],
)
async def test_auth_matrix(tmp_path: Path, header: str | None, status: int, fragment: str) -> None:
    async with _client(tmp_path) as c:
        headers = {"Authorization": header} if header else {}
        r = await c.post(URL, json=call("sandbox.metrics.get", {"namespace": "*"}), headers=headers)
    assert r.status_code == status
    assert fragment in r.json()["error"]["message"]


async def test_wrong_namespace_is_403_and_right_one_works(tmp_path: Path) -> None:
    async with _client(tmp_path) as c:
        c.headers["Authorization"] = "Bearer " + make_key(SECRET, namespace="team")
        r = await c.post(URL, json=call("sandbox.start", {"sandbox": "a", "namespace": "other",
                                                          "config": {"image": "busybox"}}))  # fmt: skip
        assert r.status_code == 403 and "namespace" in r.json()["error"]["message"]
        r = await c.post(URL, json=call("sandbox.start", {"sandbox": "a", "namespace": "team",
                                                          "config": {"image": "busybox"}}))  # fmt: skip
        assert r.status_code == 200 and "result" in r.json()
        bare = make_key(SECRET, namespace="team")  # a bare key without "Bearer" is accepted too
        r = await c.post(URL, json=call("sandbox.stop", {"sandbox": "a", "namespace": "team"}),
                         headers={"Authorization": bare})  # fmt: skip
        assert r.status_code == 200


async def test_dev_mode_needs_no_key(tmp_path: Path) -> None:
    async with _client(tmp_path, dev=True) as c:
        r = await c.post(URL, json=call("sandbox.metrics.get", {"namespace": "*"}))
    assert r.status_code == 200 and r.json()["result"] == {"sandboxes": []}


def test_refuses_to_build_without_secret(tmp_path: Path) -> None:
    from engine.server.auth import ApiAuthError

    with pytest.raises(ApiAuthError):
        build_app(ServerSettings(storage=tmp_path), FakeService(), secret=None)


async def test_server_timing_header(client: httpx.AsyncClient) -> None:
    r = await client.post(URL, json=call("sandbox.metrics.get", {"namespace": "*"}))
    assert r.headers["server-timing"].startswith("app;dur=")
    assert float(r.headers["server-timing"].split("dur=")[1]) >= 0


async def test_the_backend_is_reported_as_additions(tmp_path: Path) -> None:
    """``server.info`` (ours) says what isolates the sandboxes; metrics gain backend/accel next
    to microsandbox's fields, which keep their names and meaning."""
    async with _client(tmp_path) as c:
        c.headers["Authorization"] = "Bearer " + make_key(SECRET, namespace="team")
        r = await c.post(URL, json=call("server.info", {"namespace": "team"}))
        assert r.json()["result"] | {"isolation": ""} == {"backend": "gvisor", "accel": "none", "label": "gVisor",
                                                          "isolation": "", "pools": []}  # fmt: skip
        assert (await c.post(URL, json=call("server.info", {"namespace": "other"}))).status_code == 403
        start = {"sandbox": "s1", "namespace": "team", "config": {"image": "microsandbox/python"}}
        await c.post(URL, json=call("sandbox.start", start))
        r = await c.post(URL, json=call("sandbox.metrics.get", {"namespace": "team"}))
        [m] = r.json()["result"]["sandboxes"]
        assert set(m) == {"namespace", "name", "running", "cpu_usage", "memory_usage", "disk_usage", "backend", "accel",
                          "started_by", "start_ms", "crash_reason"}  # fmt: skip
        assert (m["backend"], m["accel"], m["started_by"]) == ("gvisor", "none", "boot")


async def test_ephemeral_starts_and_pools_are_reported(tmp_path: Path) -> None:
    """``config.ephemeral`` (ours) is accepted; ``started_by``/``start_ms`` and ``server.info``'s
    ``pools`` say what the (fake) pool did."""
    settings = ServerSettings(dev=True, storage=tmp_path, allowed_hosts=["msb.test"])
    app = build_app(settings, FakeService(pools={"microsandbox/python": 2}), secret=None)
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://msb.test") as c:
        for name, ephemeral in (("e", True), ("p", False)):
            config = {"image": "microsandbox/python", "ephemeral": ephemeral}
            params = {"sandbox": name, "namespace": "default", "config": config}
            r = await c.post(URL, json=call("sandbox.start", params))
            assert r.json()["result"] == f"Sandbox {name} started successfully"
        r = await c.post(URL, json=call("sandbox.metrics.get", {"namespace": "default"}))
        got = {m["name"]: (m["started_by"], m["start_ms"]) for m in r.json()["result"]["sandboxes"]}
        assert got == {"e": ("pool", 3.0), "p": ("boot", 1100.0)}
        [pool] = (await c.post(URL, json=call("server.info", {}))).json()["result"]["pools"]
        assert (pool["label"], pool["size"], pool["ready"], pool["taken"]) == ("microsandbox/python", 2, 2, 1)
        await c.post(URL, json=call("sandbox.stop", {"sandbox": "e", "namespace": "default"}))
        r = await c.post(URL, json=call("sandbox.metrics.get", {"namespace": "default"}))
        [p] = r.json()["result"]["sandboxes"]  # the ephemeral one is gone, files and all
        assert p["name"] == "p"
        await c.post(URL, json=call("sandbox.stop", {"sandbox": "p", "namespace": "default"}))
        r = await c.post(URL, json=call("sandbox.metrics.get", {"namespace": "default"}))
        [p] = r.json()["result"]["sandboxes"]
        assert (p["running"], p["started_by"], p["start_ms"]) == (False, None, None)
