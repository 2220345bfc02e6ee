"""A real ``msb server start`` process for black-box attacks: a fresh state directory, the
user's image cache (images are built once, offline), keys made with ``msb server keygen``,
and JSON-RPC / MCP helpers that speak HTTP to it like any client would.

The server is production mode (no ``--dev``). Its stderr (JSON log lines) goes to a file
beside the state directory, never inside it, so walks of ``<state>`` see only what the
server made; :meth:`ServerProc.log_tail` puts it in failure messages.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import stat
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

REPO = Path(__file__).resolve().parents[2]
MSB = [sys.executable, "-m", "engine.cli.main"]
"""``msb`` of the tree these tests live in (so a worktree of an older commit tests its own code)."""
START_TIMEOUT_S = 60.0
STOP_TIMEOUT_S = 60.0
RPC_TIMEOUT_S = 120.0
MCP_HEADERS = {"Accept": "application/json, text/event-stream", "MCP-Protocol-Version": "2025-06-18"}


def free_port() -> int:
    """A TCP port free on loopback right now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def busybox_image() -> str:
    """The ``busybox`` image in the user's store, built offline from the host's static busybox
    when missing (no registry needed). Returns the name to pass as ``config.image``."""
    from engine.images.resolve import build_offline
    from engine.images.store import ImageStore

    store = ImageStore.default()
    if store.find("busybox") is None:
        build_offline("busybox", store)
    return "busybox"


@dataclass
class ServerProc:
    """One running server: its URL, state directory, keys by namespace and process."""

    url: str
    state: Path
    log: Path
    env: dict[str, str]
    proc: subprocess.Popen[bytes]
    keys: dict[str, str] = field(default_factory=dict)

    def keygen(self, namespace: str) -> str:
        """A key for ``namespace`` (``*`` = all), made by the CLI on the same state (cached)."""
        if namespace not in self.keys:
            out = subprocess.run([*MSB, "server", "keygen", "--namespace", namespace, "--expire", "2h"],
                                 env=self.env, cwd=REPO, capture_output=True, text=True, timeout=60)  # fmt: skip
            assert out.returncode == 0, f"keygen failed: {out.stderr}"
            self.keys[namespace] = out.stdout.strip()
        return self.keys[namespace]

    def post(self, method: str, params: dict[str, Any], key: str, timeout: float = RPC_TIMEOUT_S) -> httpx.Response:
        """POST one JSON-RPC request to /api/v1/rpc with ``key``; the raw response."""
        body = {"jsonrpc": "2.0", "method": method, "params": params, "id": 1}
        return httpx.post(f"{self.url}/api/v1/rpc", json=body, headers={"Authorization": f"Bearer {key}"},
                          timeout=timeout)  # fmt: skip

    def rpc(self, method: str, params: dict[str, Any], key: str, timeout: float = RPC_TIMEOUT_S) -> dict[str, Any]:
        """One JSON-RPC call; the decoded body with ``_status`` = the HTTP status added."""
        r = self.post(method, params, key, timeout)
        doc: dict[str, Any] = r.json() if r.content else {}
        doc["_status"] = r.status_code
        return doc

    def mcp_tool(self, tool: str, arguments: dict[str, Any], key: str) -> dict[str, Any]:
        """One MCP ``tools/call`` (stateless JSON); the decoded body with ``_status`` added."""
        body = {"jsonrpc": "2.0", "id": 1, "method": "tools/call", "params": {"name": tool, "arguments": arguments}}
        r = httpx.post(f"{self.url}/mcp", json=body, timeout=RPC_TIMEOUT_S,
                       headers={"Authorization": f"Bearer {key}", **MCP_HEADERS})  # fmt: skip
        doc: dict[str, Any] = r.json() if r.content else {}
        doc["_status"] = r.status_code
        return doc

    def mcp_seed(self, params: dict[str, Any], key: str) -> dict[str, Any]:
        """One seed-style MCP ``tools/call`` (``tool_name``, no ``name``); body with ``_status``."""
        body = {"jsonrpc": "2.0", "id": 1, "method": "tools/call", "params": params}
        r = httpx.post(f"{self.url}/mcp", json=body, timeout=RPC_TIMEOUT_S,
                       headers={"Authorization": f"Bearer {key}", **MCP_HEADERS})  # fmt: skip
        doc: dict[str, Any] = r.json() if r.content else {}
        doc["_status"] = r.status_code
        return doc

    def log_tail(self, chars: int = 3000) -> str:
        """The end of the server's stderr, for failure messages."""
        try:
            return self.log.read_text(errors="replace")[-chars:]
        except OSError:
            return "(no log)"

    def log_records(self) -> list[dict[str, Any]]:
        """The server's JSON log lines (other lines skipped)."""
        out = []
        for line in self.log.read_text(errors="replace").splitlines():
            try:
                doc = json.loads(line)
            except ValueError:
                continue
            if isinstance(doc, dict):
                out.append(doc)
        return out


def start(state: Path, log: Path, *flags: str, env: dict[str, str] | None = None) -> ServerProc:
    """Start ``msb server start --port <free> FLAGS`` on ``state`` and wait for /api/v1/health.

    Args:
        state: the state directory (``MSB_STORAGE_PATH``); made by the server if missing.
        log: where the server's stdout and stderr go (keep it outside ``state``).
        env: extra environment (``MSB_MAX_SANDBOXES`` …) over the test process's own.

    Raises:
        RuntimeError: it exited or did not answer within ``START_TIMEOUT_S`` (with its log).
    """
    port = free_port()
    full = {**os.environ, "MSB_STORAGE_PATH": str(state), "MSB_LOG_LEVEL": "info", "PYTHONPATH": str(REPO),
            **(env or {})}  # fmt: skip
    full.pop("MSB_PORT", None)
    with open(log, "ab") as out:
        proc = subprocess.Popen([*MSB, "server", "start", "--port", str(port), *flags], env=full, cwd=REPO,
                                stdout=out, stderr=out, start_new_session=True)  # fmt: skip
    srv = ServerProc(f"http://127.0.0.1:{port}", state, log, full, proc)
    deadline = time.monotonic() + START_TIMEOUT_S
    while time.monotonic() < deadline and proc.poll() is None:
        try:
            if httpx.get(f"{srv.url}/api/v1/health", timeout=1).status_code == 200:
                return srv
        except httpx.HTTPError:
            pass
        time.sleep(0.1)  # polling a port that is not open yet: nothing to wait on
    stop(srv)
    raise RuntimeError(f"the server did not start (exit {proc.poll()}):\n{srv.log_tail()}")


def stop(srv: ServerProc) -> int:
    """SIGTERM the server (its sandboxes are stopped on the way out) and wait; SIGKILL after
    ``STOP_TIMEOUT_S``. Returns its exit status."""
    if srv.proc.poll() is None:
        srv.proc.send_signal(signal.SIGTERM)
        try:
            srv.proc.wait(timeout=STOP_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            srv.proc.kill()
            srv.proc.wait()
    return int(srv.proc.returncode)


def running(srv: ServerProc, key: str, namespace: str) -> list[str]:
    """Names of the sandboxes of ``namespace`` that the server says run."""
    doc = srv.rpc("sandbox.metrics.get", {"namespace": namespace}, key)
    assert "result" in doc, f"metrics failed: {doc}"
    return [m["name"] for m in doc["result"]["sandboxes"] if m["running"]]


def served(state: Path, log: Path, *flags: str, env: dict[str, str] | None = None) -> Iterator[ServerProc]:
    """A fixture body: yield a started server, stop it after and assert it exited."""
    srv = start(state, log, *flags, env=env)
    try:
        yield srv
    finally:
        status = stop(srv)
        assert status in (0, -signal.SIGTERM), f"the server exited with {status}:\n{srv.log_tail()}"


def is_error(doc: dict[str, Any]) -> bool:
    """True if a JSON-RPC answer is a refusal: an ``error`` member or an HTTP status >= 400."""
    return "error" in doc or int(doc.get("_status", 200)) >= 400


def uniq(prefix: str) -> str:
    """A sandbox name no other test uses."""
    return f"{prefix}-{os.urandom(3).hex()}"


def sandbox_start(srv: ServerProc, key: str, ns: str, name: str, **config: Any) -> dict[str, Any]:
    """``sandbox.start`` with ``config``; the answer, error or not."""
    return srv.rpc("sandbox.start", {"namespace": ns, "sandbox": name, "config": config}, key)


def sandbox_stop(srv: ServerProc, key: str, ns: str, name: str) -> None:
    """``sandbox.stop``; asserts it worked."""
    doc = srv.rpc("sandbox.stop", {"namespace": ns, "sandbox": name}, key)
    assert "result" in doc, f"stop failed: {doc}"


def sh(srv: ServerProc, key: str, ns: str, name: str, script: str) -> dict[str, Any]:
    """Run ``sh -c script`` in a started sandbox; the command result (asserts the call worked)."""
    params = {"namespace": ns, "sandbox": name, "command": "sh", "args": ["-c", script]}
    doc = srv.rpc("sandbox.command.run", params, key)
    assert "result" in doc, f"command.run failed: {doc}\n{srv.log_tail()}"
    return dict(doc["result"])


def loose_dirs(state: Path) -> list[str]:
    """Directories under ``state`` (not under ``volumes/``) that other host users may enter
    (any group/other bit), as ``"0o755 /path"``. A sandbox's own directory (the one holding its
    layer, ``upper`` or ``upper.ext4``) is checked but not descended: below it are the guest's
    files with the guest's modes."""
    loose = []
    for dirpath, dirnames, _ in os.walk(state):
        here = Path(dirpath)
        if here == state / "volumes":
            dirnames.clear()
            continue
        mode = stat.S_IMODE(os.lstat(here).st_mode)
        if mode & 0o077:
            loose.append(f"{oct(mode)} {here}")
        if {"upper", "upper.ext4"} & set(os.listdir(here)):
            dirnames.clear()
    return loose
