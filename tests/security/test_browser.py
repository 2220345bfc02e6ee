"""Hostile web pages in the user's browser against a dev-mode server (no auth) on loopback.

Attacks: a cross-site "simple" POST (text/plain or a form: no CORS preflight), DNS rebinding (a
page at ``evil.example`` re-resolved to 127.0.0.1 sends ``Host: evil.example``), a foreign
``Origin``; and ``--dev`` bound where other machines can reach it. Each must be refused before the
service is called. In-process against the FakeService, plus one black-box run of the real server.
"""

from __future__ import annotations

import contextlib
import os
import socket
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from click.testing import CliRunner
from starlette.applications import Starlette

from engine.cli import server as server_cli
from engine.cli.common import EXIT_USAGE
from engine.errors import ConfigError
from engine.server import main
from engine.server.app import build_app
from engine.server.fake_service import FakeService
from engine.server.main import serve
from engine.server.settings import ServerSettings
from engine.server.web_guard import WebPolicy, check_dev_bind

PORT = 5555
INFO = {"jsonrpc": "2.0", "method": "server.info", "id": 1}
MCP_INIT = {"jsonrpc": "2.0", "id": 1, "method": "initialize", "params": {
    "protocolVersion": "2025-06-18", "capabilities": {}, "clientInfo": {"name": "t", "version": "1"}}}  # fmt: skip
SEED = {"jsonrpc": "2.0", "id": 1, "method": "tools/call",
        "params": {"tool_name": "sandbox.command.run", "sandbox_name": "s", "command": "echo"}}  # fmt: skip
GOOD = {"Host": f"127.0.0.1:{PORT}", "Content-Type": "application/json",
        "Accept": "application/json, text/event-stream"}


@contextlib.asynccontextmanager
async def dev_app(**settings: Any) -> AsyncIterator[tuple[httpx.AsyncClient, FakeService]]:
    """A dev-mode app on port 5555 with its lifespan (MCP) running, and an httpx client into it."""
    service = FakeService()
    app: Starlette = build_app(ServerSettings(dev=True, port=PORT, **settings), service, secret=None)
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url=f"http://127.0.0.1:{PORT}") as client:
            yield client, service


def _refused(r: httpx.Response, status: int, fragment: str) -> None:
    assert r.status_code == status, r.text
    err = r.json()["error"]
    assert r.json()["jsonrpc"] == "2.0" and err["code"] == -32600
    assert fragment in err["message"] + err["data"]["hint"]


@pytest.mark.parametrize("content_type", ["text/plain", "application/x-www-form-urlencoded",
                                          "multipart/form-data; boundary=x", None, "application/jsonp"])  # fmt: skip
@pytest.mark.parametrize("path", ["/api/v1/rpc", "/mcp"])
async def test_a_cross_site_simple_post_is_refused(path: str, content_type: str | None) -> None:
    body = SEED if path == "/mcp" else INFO  # on /mcp the seed-style call, which the SDK never sees
    async with dev_app() as (client, service):
        headers = {**GOOD, "Content-Type": content_type} if content_type else {"Host": GOOD["Host"]}
        r = await client.post(path, content=httpx.Request("POST", "/", json=body).content, headers=headers)
    _refused(r, 415, "application/json")
    assert service.calls == []


@pytest.mark.parametrize("path", ["/api/v1/rpc", "/mcp"])
@pytest.mark.parametrize("host", ["evil.example:5555", "evil.example", "localhost.evil.example:5555", "",
                                  "127.0.0.1.nip.io:5555"])  # fmt: skip
async def test_a_rebinding_host_is_refused(path: str, host: str) -> None:
    async with dev_app() as (client, service):
        r = await client.post(path, json=SEED if path == "/mcp" else INFO, headers={**GOOD, "Host": host})
    _refused(r, 421, "--allowed-host")
    assert service.calls == []


@pytest.mark.parametrize("path", ["/api/v1/rpc", "/mcp"])
@pytest.mark.parametrize("origin", ["https://evil.example", "null", "http://localhost:3000", "http://127.0.0.1"])
async def test_a_foreign_origin_is_refused(path: str, origin: str) -> None:
    async with dev_app() as (client, service):
        r = await client.post(path, json=SEED if path == "/mcp" else INFO, headers={**GOOD, "Origin": origin})
    _refused(r, 403, "--allowed-origin")
    assert service.calls == []


@pytest.mark.parametrize("host", ["127.0.0.1:5555", "localhost:5555", "[::1]:5555", "localhost", "127.0.0.1"])
@pytest.mark.parametrize("origin", [None, "http://127.0.0.1:5555", "http://localhost:5555"])
async def test_a_loopback_request_passes(host: str, origin: str | None) -> None:
    headers = {**GOOD, "Host": host, "Content-Type": "application/json; charset=utf-8"}
    if origin:
        headers["Origin"] = origin
    async with dev_app() as (client, _):
        rpc = await client.post("/api/v1/rpc", json=INFO, headers=headers)
        mcp = await client.post("/mcp", json=MCP_INIT, headers=headers)
    assert rpc.status_code == 200 and rpc.json()["result"]["backend"] == "gvisor"
    assert mcp.status_code == 200 and mcp.json()["result"]["serverInfo"]["name"] == "msb"


async def test_the_operator_allows_more_hosts_and_origins() -> None:
    headers = {**GOOD, "Host": "msb.example.com", "Origin": "https://app.example.com"}
    async with dev_app(allowed_hosts=["msb.example.com"], allowed_origins=["https://app.example.com/"]) as (c, _):
        assert (await c.post("/api/v1/rpc", json=INFO, headers=headers)).status_code == 200
        assert (await c.post("/mcp", json=MCP_INIT, headers=headers)).status_code == 200
        other = await c.post("/api/v1/rpc", json=INFO, headers={**headers, "Host": "other.example.com"})
    assert other.status_code == 421
    async with dev_app(allowed_hosts=["*"], allowed_origins=["*"]) as (c, _):
        assert (await c.post("/api/v1/rpc", json=INFO, headers={**headers, "Host": "x.example"})).status_code == 200


async def test_the_sdk_s_own_rebinding_protection_is_on() -> None:
    """Behind our guard, the MCP SDK checks Host/Origin itself too (defence in depth)."""
    async with dev_app() as (client, _):
        app = client._transport.app  # type: ignore[attr-defined]
        endpoint = next(r.endpoint.app.app for r in app.routes if r.path == "/mcp")  # WebGuard → Gate → McpEndpoint
        security = endpoint.manager.security_settings
        assert security.enable_dns_rebinding_protection
        assert "127.0.0.1:*" in security.allowed_hosts and "evil.example:*" not in security.allowed_hosts
        assert f"http://localhost:{PORT}" in security.allowed_origins


def test_mcp_security_lists_follow_the_policy() -> None:
    policy = WebPolicy.for_server("10.0.0.5", 80, ["msb.example.com:8443"], ["https://a.example"])
    security = policy.mcp_security()
    assert "10.0.0.5:*" in security.allowed_hosts and "msb.example.com:8443" in security.allowed_hosts
    assert "msb.example.com:8443:*" not in security.allowed_hosts
    assert set(security.allowed_origins) >= {"https://a.example", "http://10.0.0.5:80"}
    assert not WebPolicy.for_server("0.0.0.0", 80, ["*"]).mcp_security().enable_dns_rebinding_protection
    assert not WebPolicy.for_server("0.0.0.0", 80).host_ok("0.0.0.0:80")  # a wildcard bind is no name


@pytest.mark.parametrize("bad", [["https://x.example/path"], ["ftp://x"], ["x.example"]])
def test_malformed_allowed_origins_are_config_errors(bad: list[str]) -> None:
    with pytest.raises(ConfigError, match="allowed origin"):
        ServerSettings(allowed_origins=bad).check_web_safety()


# --- --dev off loopback ----------------------------------------------------------------------

PUBLIC = ["0.0.0.0", "::", "192.168.1.5", "msb.example.com", "[::]"]


@pytest.mark.parametrize("host", PUBLIC)
def test_dev_off_loopback_is_refused_by_the_settings(host: str) -> None:
    with pytest.raises(ConfigError, match="--dev") as err:
        ServerSettings.from_env(dev=True, host=host)
    assert "127.0.0.1" in (err.value.hint or "")


@pytest.mark.parametrize("host", ["127.0.0.1", "127.0.0.2", "::1", "[::1]", "localhost"])
def test_dev_on_loopback_is_fine(host: str) -> None:
    check_dev_bind(True, host)


class _Started(Exception):
    """Raised by a stand-in for what runs after the check: the refusal came too late."""


def _fail_if_started(*_: object, **__: object) -> None:
    raise _Started


def test_dev_off_loopback_is_refused_by_serve(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """``serve`` is also the ``--detach`` child's and ``msb-tui --headless``'s way in: it refuses
    before it probes a backend or listens."""
    monkeypatch.setattr(main, "Engine", _fail_if_started)
    with pytest.raises(ConfigError, match="--dev"):
        serve(ServerSettings(dev=True, host="0.0.0.0", storage=tmp_path))
    assert not (tmp_path / "server.pid").exists()


@pytest.mark.parametrize("args", [["--host", "0.0.0.0"], ["--host", "::"]])
def test_dev_off_loopback_is_refused_by_the_cli(args: list[str], tmp_path: Path,
                                                monkeypatch: pytest.MonkeyPatch) -> None:  # fmt: skip
    monkeypatch.setenv("MSB_STORAGE_PATH", str(tmp_path))
    monkeypatch.setattr(main, "serve", _fail_if_started)
    r = CliRunner().invoke(server_cli.server, ["start", "--dev", *args])
    assert r.exit_code == EXIT_USAGE and "--dev" in r.output, r.output
    monkeypatch.setenv("MSB_HOST", "0.0.0.0")  # the environment's host counts as much as the flag
    assert CliRunner().invoke(server_cli.server, ["start", "--dev"]).exit_code == EXIT_USAGE


# --- black box: the real server process --------------------------------------------------------


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture
def real_server(tmp_path: Path) -> Iterator[str]:
    """``msb server start --dev`` on a free port (it probes the host's backend at start: ``vm``)."""
    port = _free_port()
    env = {**os.environ, "MSB_STORAGE_PATH": str(tmp_path), "MSB_PORT": str(port)}
    log = open(tmp_path / "server.log", "ab")  # noqa: SIM115 - the process owns it
    proc = subprocess.Popen([sys.executable, "-m", "engine.cli.main", "server", "start", "--dev"], env=env,
                            stdout=log, stderr=log)  # fmt: skip
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 60
        while proc.poll() is None and time.monotonic() < deadline:
            with contextlib.suppress(httpx.HTTPError):
                if httpx.get(f"{url}/api/v1/health", timeout=1).status_code == 200:
                    break
            time.sleep(0.1)  # polling a process we cannot await: the wait is bounded by the deadline
        else:
            pytest.fail(f"server did not start: {(tmp_path / 'server.log').read_text()[-2000:]}")
        yield url
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


@pytest.mark.vm
def test_the_real_server_refuses_csrf_and_rebinding(real_server: str) -> None:
    port = real_server.rsplit(":", 1)[1]
    body = httpx.Request("POST", "/", json=INFO).content
    csrf = httpx.post(f"{real_server}/api/v1/rpc", content=body, headers={"Content-Type": "text/plain"})
    _refused(csrf, 415, "application/json")
    for path, doc in (("/api/v1/rpc", INFO), ("/mcp", MCP_INIT)):
        rebound = httpx.post(f"{real_server}{path}", json=doc, headers={**GOOD, "Host": f"evil.example:{port}"})
        _refused(rebound, 421, "--allowed-host")
        evil_origin = {**GOOD, "Host": f"127.0.0.1:{port}", "Origin": "https://evil.example"}
        foreign = httpx.post(f"{real_server}{path}", json=doc, headers=evil_origin)
        _refused(foreign, 403, "--allowed-origin")
    ok = httpx.post(f"{real_server}/api/v1/rpc", json=INFO, headers={"Origin": f"http://localhost:{port}"})
    assert ok.status_code == 200 and "backend" in ok.json()["result"]
