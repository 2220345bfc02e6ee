"""The operator's static API key (``msb server start --api-key KEY`` / ``MSB_API_KEY``) as a
hostile client meets it: near-miss keys, a client's own ``msb_`` key left in ``MSB_API_KEY``,
a namespace-bound key passed as ``--api-key`` to widen it, a short key, secrets on a command line.

In-process against the FakeService, plus one black-box run of the real server (``vm``: it
probes the host's backend at start) that also checks ``msb server keygen`` against it.
"""

from __future__ import annotations

import contextlib
import hashlib
import hmac
import logging
import subprocess
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from engine.cli import server as server_cli
from engine.errors import ConfigError
from engine.server import auth, main
from engine.server.app import build_app
from engine.server.auth import authenticate, check_static_key, make_key
from engine.server.fake_service import FakeService
from engine.server.settings import ServerSettings
from tests.security import server_proc

SECRET = "s" * 32
STATIC = "operator-static-key-6d1f0c2b9e"
URL = "http://msb.test"
INFO = {"jsonrpc": "2.0", "method": "server.info", "id": 1}


def _start(ns: str) -> dict[str, Any]:
    return {"jsonrpc": "2.0", "id": 1, "method": "sandbox.start",
            "params": {"sandbox": "s", "namespace": ns, "config": {"image": "microsandbox/python"}}}  # fmt: skip


@contextlib.asynccontextmanager
async def _client(tmp_path: Path, api_key: str | None = STATIC) -> AsyncIterator[httpx.AsyncClient]:
    """The app (its lifespan running: MCP) with ``api_key`` as the static key, and a client into it."""
    settings = ServerSettings(storage=tmp_path, api_key=api_key, allowed_hosts=["msb.test"])
    app = build_app(settings, FakeService(), secret=SECRET)
    transport = httpx.ASGITransport(app=app)
    async with app.router.lifespan_context(app), httpx.AsyncClient(transport=transport, base_url=URL) as c:
        yield c


def _bearer(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}", "Accept": "application/json, text/event-stream"}


async def test_the_static_key_opens_every_namespace_and_mcp(tmp_path: Path) -> None:
    init = {"jsonrpc": "2.0", "id": 1, "method": "initialize", "params": {
        "protocolVersion": "2025-06-18", "capabilities": {}, "clientInfo": {"name": "t", "version": "1"}}}  # fmt: skip
    async with _client(tmp_path) as c:
        for ns in ("a", "b"):
            r = await c.post("/api/v1/rpc", json=_start(ns), headers=_bearer(STATIC))
            assert r.status_code == 200 and "result" in r.json(), r.text
        assert (await c.post("/mcp", json=init, headers=_bearer(STATIC))).status_code == 200
        assert (await c.post("/api/v1/rpc", json=INFO, headers={"Authorization": STATIC})).status_code == 200


@pytest.mark.parametrize("key", [STATIC[:-1], STATIC + "x", STATIC.upper(), STATIC[:16], "x" * len(STATIC),
                                 STATIC + "\x00", "msb_" + STATIC, ""])  # fmt: skip
async def test_near_misses_are_refused(tmp_path: Path, key: str) -> None:
    async with _client(tmp_path) as c:
        r = await c.post("/api/v1/rpc", json=_start("a"), headers=_bearer(key))
    assert r.status_code == 401 and r.json()["error"]["code"] == -32020, r.text


async def test_signed_keys_keep_working_beside_it_with_their_namespace(tmp_path: Path) -> None:
    only_a = make_key(SECRET, namespace="a")
    async with _client(tmp_path) as c:
        assert (await c.post("/api/v1/rpc", json=_start("a"), headers=_bearer(only_a))).status_code == 200
        assert (await c.post("/api/v1/rpc", json=_start("b"), headers=_bearer(only_a))).status_code == 403


async def test_a_namespace_key_given_as_api_key_is_not_widened(tmp_path: Path) -> None:
    """``--api-key msb_…`` (the guide: keygen, then start with that key) keeps the key's namespace and
    expiry: it is checked by its signature, never compared as an all-namespace static key."""
    only_a = make_key(SECRET, namespace="a")
    check_static_key(only_a, SECRET, dev=False)  # accepted at start: this server signed it
    async with _client(tmp_path, only_a) as c:
        assert (await c.post("/api/v1/rpc", json=_start("b"), headers=_bearer(only_a))).status_code == 403
    expired = make_key(SECRET, expire_s=1, now=0)
    with pytest.raises(ConfigError, match="expired"):
        check_static_key(expired, SECRET, dev=False)


async def test_a_client_key_in_msb_api_key_does_not_open_the_server(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                                    ) -> None:  # fmt: skip
    """The shell that starts the server has the client key of ANOTHER server in MSB_API_KEY."""
    foreign = make_key("another-server-secret-0123456789")
    monkeypatch.setenv("MSB_API_KEY", foreign)
    monkeypatch.setenv("MSB_STORAGE_PATH", str(tmp_path))
    settings = ServerSettings.from_env()
    assert settings.api_key is None
    async with _client(tmp_path, settings.api_key) as c:
        r = await c.post("/api/v1/rpc", json=INFO, headers=_bearer(foreign))
        assert r.status_code == 401 and "signature is invalid" in r.json()["error"]["message"]


@pytest.mark.parametrize(("key", "dev", "fragment"), [
    ("short-key", False, "shorter than 16 characters"),
    (STATIC, True, "--dev turns authentication off"),
    (make_key("another-server-secret-0123456789"), False, "msb_ key this server does not accept"),
    ("msb_not-a-jwt-at-all-0000", False, "msb_ key this server does not accept"),
])  # fmt: skip
def test_keys_the_server_could_not_honour_are_refused_at_start(key: str, dev: bool, fragment: str) -> None:
    with pytest.raises(ConfigError, match=fragment) as err:
        check_static_key(key, SECRET, dev=dev)
    assert err.value.hint


def test_the_comparison_is_constant_time_over_digests(monkeypatch: pytest.MonkeyPatch) -> None:
    seen: list[tuple[bytes, bytes]] = []
    real = hmac.compare_digest

    def spy(a: bytes, b: bytes) -> bool:
        seen.append((a, b))
        return real(a, b)

    monkeypatch.setattr(hmac, "compare_digest", spy)  # auth looks it up at each call
    assert authenticate(SECRET, STATIC, static_key=STATIC).namespace == "*"
    with pytest.raises(auth.ApiAuthError):
        authenticate(SECRET, "short", static_key=STATIC)
    assert seen[1] == (hashlib.sha256(b"short").digest(), hashlib.sha256(STATIC.encode()).digest())


def test_the_log_never_holds_the_keys(monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture) -> None:
    client_key = make_key(SECRET)
    monkeypatch.setenv("MSB_API_KEY", client_key)
    with caplog.at_level(logging.INFO, logger="msb.server"):
        main._log_key_sources(ServerSettings(api_key=STATIC))
        main._log_key_sources(ServerSettings())
    text = caplog.text
    assert "static API key" in text and "client's msb_ key" in text
    assert STATIC not in text and client_key not in text


def test_detach_passes_secrets_on_stdin_not_the_command_line(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A process's argv is readable by every local user (/proc/PID/cmdline)."""
    seen: dict[str, Any] = {}

    class Child:
        returncode = 1

        def __init__(self, args: list[str], **kw: Any) -> None:
            seen["args"], seen["stdin"] = args, kw.get("stdin")
            self.stdin = self

        def write(self, data: bytes) -> None:
            seen["data"] = data

        def close(self) -> None:
            pass

        def poll(self) -> int:
            return 1  # "exited at start": _start_detached reports and exits

    monkeypatch.setattr(subprocess, "Popen", Child)
    settings = ServerSettings(storage=tmp_path, key="server-secret-0123456789", api_key=STATIC)
    with pytest.raises(SystemExit):
        server_cli._start_detached(settings)
    assert seen["stdin"] == subprocess.PIPE
    assert not any(s in a for a in seen["args"] for s in ("server-secret", STATIC))
    assert ServerSettings.model_validate_json(seen["data"]) == settings


# --- black box: the real server process --------------------------------------------------------


@pytest.mark.vm
def test_the_real_server_takes_api_key_and_keygen_matches_its_key(tmp_path: Path) -> None:
    """``msb server start --key K --api-key STATIC`` with a foreign client key in MSB_API_KEY; then
    keygen without --key is refused with the fix, and with --key K makes a key the server takes."""
    secret = "operator-server-secret-0123456789"
    foreign = make_key("another-server-secret-0123456789")
    env = {"MSB_API_KEY": foreign}
    srv = server_proc.start(tmp_path / "state", tmp_path / "server.log", "--key", secret, "--api-key", STATIC,
                            env=env)  # fmt: skip
    try:
        assert srv.post("server.info", {}, STATIC).status_code == 200
        assert srv.post("server.info", {}, STATIC[:-1]).status_code == 401
        assert srv.post("server.info", {}, foreign).status_code == 401
        keygen = [*server_proc.MSB, "server", "keygen", "--expire", "1h"]
        refused = subprocess.run(keygen, env=srv.env, cwd=server_proc.REPO, capture_output=True, text=True,
                                 timeout=60)  # fmt: skip
        assert refused.returncode == 2 and not refused.stdout, refused.stderr
        assert "this server was started with --key; pass the same --key to keygen" in refused.stderr
        made = subprocess.run([*keygen, "--key", secret], env=srv.env, cwd=server_proc.REPO, capture_output=True,
                              text=True, timeout=60)  # fmt: skip
        assert made.returncode == 0, made.stderr
        assert srv.post("server.info", {}, made.stdout.strip()).status_code == 200
        wrong = subprocess.run([*keygen, "--key", "not-the-server-secret-0123456789"], env=srv.env,
                               cwd=server_proc.REPO, capture_output=True, text=True, timeout=60)  # fmt: skip
        assert wrong.returncode == 2 and "rejects keys signed with this secret" in wrong.stderr
        assert STATIC not in srv.log_tail(100_000) and secret not in srv.log_tail(100_000)
    finally:
        server_proc.stop(srv)
