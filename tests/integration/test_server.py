"""The real server (a subprocess, `msb server start`) on an ephemeral port, real VMs:
the SDK flow, MCP through the SDK's own client, concurrency, restarts."""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

from engine.client import NodeSandbox, PythonSandbox


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class Server:
    url: str
    key: str
    storage: Path
    proc: subprocess.Popen[bytes]
    env: dict[str, str]

    def rpc(self, method: str, params: dict[str, object], timeout: float = 120) -> dict[str, object]:
        r = httpx.post(f"{self.url}/api/v1/rpc", json={"jsonrpc": "2.0", "method": method, "params": params, "id": 1},
                       headers={"Authorization": f"Bearer {self.key}"}, timeout=timeout)  # fmt: skip
        return dict(r.json())


def start_server(storage: Path, port: int, *flags: str) -> Server:
    env = {**os.environ, "MSB_STORAGE_PATH": str(storage), "MSB_PORT": str(port), "MSB_LOG_LEVEL": "info"}
    msb = [sys.executable, "-m", "engine.cli.main"]
    key = subprocess.run([*msb, "server", "keygen", "--expire", "1h"], env=env, capture_output=True, text=True,
                         check=True).stdout.strip()  # fmt: skip
    log = open(storage / "test-server.log", "ab")  # noqa: SIM115 - the process owns it
    proc = subprocess.Popen([*msb, "server", "start", *flags], env=env, stdout=log, stderr=log)
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        try:
            if httpx.get(f"{url}/api/v1/health", timeout=1).status_code == 200:
                return Server(url, key, storage, proc, env)
        except httpx.HTTPError:
            time.sleep(0.1)
    proc.kill()
    raise RuntimeError(f"server did not start: {(storage / 'test-server.log').read_text()[-2000:]}")


def stop_server(server: Server) -> None:
    server.proc.send_signal(signal.SIGTERM)
    try:
        server.proc.wait(timeout=60)
    except subprocess.TimeoutExpired:
        server.proc.kill()
        server.proc.wait()


@pytest.fixture
def server(tmp_path: Path, base_images: None) -> Iterator[Server]:
    srv = start_server(tmp_path, _free_port())
    try:
        yield srv
    finally:
        stop_server(srv)


async def test_sdk_flow_end_to_end(server: Server) -> None:
    async with PythonSandbox.create(name="sdk-py", server_url=server.url, api_key=server.key) as sb:
        first = await sb.run("x = 41")
        assert first.status == "success"
        second = await sb.run("x + 1")
        assert await second.output() == "42"
        err = await sb.run("1 / 0")
        assert err.has_error() and "ZeroDivisionError" in await err.error()
        cmd = await sb.command.run("ls", ["-la", "/"])
        assert cmd.success and "etc" in await cmd.output()
        assert await sb.metrics.is_running()
        assert (await sb.metrics.memory() or 0) > 0
    out = server.rpc("sandbox.metrics.get", {"namespace": "default", "sandbox": "sdk-py"})
    assert out["result"] == {"sandboxes": [{"namespace": "default", "name": "sdk-py", "running": False,
                                            "cpu_usage": None, "memory_usage": None, "disk_usage": None,
                                            "backend": None, "accel": None, "started_by": None, "crash_reason": None,
                                            "start_ms": None}]}  # our additions: null when stopped


async def test_node_sdk(server: Server) -> None:
    async with NodeSandbox.create(name="sdk-node", server_url=server.url, api_key=server.key) as sb:
        await sb.run("let x = 41")
        assert await (await sb.run("x + 1")).output() == "42"


async def test_mcp_with_the_sdk_client(server: Server) -> None:
    import httpx2  # the mcp SDK's HTTP client
    from mcp.client.session import ClientSession
    from mcp.client.streamable_http import streamable_http_client

    headers = {"Authorization": f"Bearer {server.key}"}
    async with httpx2.AsyncClient(headers=headers, timeout=300) as http, \
            streamable_http_client(f"{server.url}/mcp", http_client=http) as streams:  # fmt: skip
        read, write = streams[0], streams[1]
        async with ClientSession(read, write) as session:
            await session.initialize()
            names = {t.name for t in (await session.list_tools()).tools}
            assert {"sandbox_start", "sandbox_run_code", "sandbox_run_command", "sandbox_stop"} <= names
            args = {"sandbox": "mcp1", "namespace": "default"}
            r = await session.call_tool("sandbox_start", {**args, "config": {"image": "microsandbox/python"}})
            assert not r.is_error, r
            await session.call_tool("sandbox_run_code", {**args, "language": "python", "code": "y = 6"})
            r = await session.call_tool("sandbox_run_code", {**args, "language": "python", "code": "y * 7"})
            assert not r.is_error and "42" in str(r.structured_content)
            r = await session.call_tool("sandbox_run_command", {**args, "command": "uname", "args": ["-s"]})
            assert "Linux" in str(r.structured_content)
            r = await session.call_tool("sandbox_get_metrics", {"namespace": "default", "sandbox": "mcp1"})
            assert not r.is_error
            bad = await session.call_tool("sandbox_run_command", {"sandbox": "ghost", "namespace": "default",
                                                                  "command": "true"})  # fmt: skip
            assert bad.is_error
            prompts = await session.list_prompts()
            assert {p.name for p in prompts.prompts} == {"create_python_sandbox", "create_node_sandbox"}
            got = await session.get_prompt("create_python_sandbox", {"sandbox_name": "p", "namespace": "default"})
            assert got.messages
            r = await session.call_tool("sandbox_stop", args)
            assert not r.is_error


async def test_concurrency_5_sandboxes_x_20_commands(server: Server) -> None:
    names = [f"conc{i}" for i in range(5)]

    async def one(name: str) -> None:
        async with PythonSandbox.create(name=name, server_url=server.url, api_key=server.key, image="busybox",
                                        memory=256) as sb:  # fmt: skip
            results = await asyncio.gather(*(sb.command.run("sh", ["-c", f"echo {name}-{i}; echo e{i} >&2"])
                                             for i in range(20)))  # fmt: skip
            for i, res in enumerate(results):
                assert res.exit_code == 0
                assert await res.output() == f"{name}-{i}" and await res.error() == f"e{i}"

    await asyncio.gather(*(one(n) for n in names))


async def test_persistent_files_survive_a_server_crash(tmp_path: Path, base_images: None) -> None:
    port = _free_port()
    srv = start_server(tmp_path, port)
    try:
        r = srv.rpc("sandbox.start", {"sandbox": "keep", "namespace": "default", "config": {"image": "busybox"}})
        assert "result" in r, r
        r = srv.rpc("sandbox.command.run", {"sandbox": "keep", "namespace": "default", "command": "sh",
                                            "args": ["-c", "echo precious > /root/data && sync"]})  # fmt: skip
        assert r["result"]["exit_code"] == 0, r  # type: ignore[index]
    finally:
        srv.proc.kill()  # a crash: no clean stop
        srv.proc.wait()
    time.sleep(0.5)  # QEMU dies with its parent (PR_SET_PDEATHSIG)
    srv = start_server(tmp_path, port)
    try:
        r = srv.rpc("sandbox.start", {"sandbox": "keep", "namespace": "default"})  # from its saved definition
        assert "result" in r, r
        r = srv.rpc("sandbox.command.run", {"sandbox": "keep", "namespace": "default", "command": "cat",
                                            "args": ["/root/data"]})  # fmt: skip
        assert r["result"]["stdout"] == "precious\n", r  # type: ignore[index]
    finally:
        stop_server(srv)


def test_real_server_auth_and_errors(server: Server) -> None:
    rpc = f"{server.url}/api/v1/rpc"
    body = {"jsonrpc": "2.0", "id": 1, "method": "sandbox.metrics.get", "params": {"namespace": "*"}}
    assert httpx.post(rpc, json=body).status_code == 401
    assert httpx.post(rpc, json=body, headers={"Authorization": "Bearer msb_bad"}).status_code == 401
    env = {**server.env}
    other = subprocess.run([sys.executable, "-m", "engine.cli.main", "server", "keygen", "--namespace", "team"],
                           env=env, capture_output=True, text=True, check=True).stdout.strip()  # fmt: skip
    r = httpx.post(rpc, json={**body, "params": {"namespace": "default"}}, headers={"Authorization": f"Bearer {other}"})
    assert r.status_code == 403
    ok = httpx.post(rpc, json=body, headers={"Authorization": f"Bearer {server.key}"})
    assert ok.status_code == 200 and "sandboxes" in ok.json()["result"]
    bad = httpx.post(rpc, content=b"{oops", headers={"Authorization": f"Bearer {server.key}",
                                                     "Content-Type": "application/json"})  # fmt: skip
    assert bad.json()["error"]["code"] == -32700
    ghost = server.rpc("sandbox.command.run", {"sandbox": "ghost", "namespace": "default", "command": "true"})
    assert ghost["error"]["code"] == -32602  # type: ignore[index]
    assert httpx.get(f"{server.url}/api/v1/health").json() == {"message": "Service is healthy"}


def _log(server: Server) -> list[dict[str, object]]:
    import json

    lines = (server.storage / "test-server.log").read_text().splitlines()
    return [json.loads(line) for line in lines if line.startswith("{")]


def test_one_backend_per_server_chosen_at_start_and_reported(server: Server, tmp_path: Path) -> None:
    """The default server runs gVisor here; `--backend qemu` runs QEMU/TCG with its warning.
    Both say so in the log and in `server.info`, and metrics name each sandbox's backend."""
    info = server.rpc("server.info", {"namespace": "default"})["result"]
    assert info["backend"] == "gvisor" and info["label"] == "gVisor"  # type: ignore[index]
    logged = _log(server)
    messages = [str(m["msg"]) for m in logged]
    assert any(m.startswith("backend: gVisor (") and "isolation: gVisor: " in m for m in messages), messages
    assert not any(m["level"] == "warning" and "TCG" in str(m["msg"]) for m in logged)  # no TCG warning
    start = {"sandbox": "b1", "namespace": "default", "config": {"image": "microsandbox/python", "memory": 256}}
    assert "result" in server.rpc("sandbox.start", start)
    [m] = server.rpc("sandbox.metrics.get", {"namespace": "default", "sandbox": "b1"})["result"]["sandboxes"]  # type: ignore[index]
    assert (m["backend"], m["accel"]) == ("gvisor", "none")
    server.rpc("sandbox.stop", {"sandbox": "b1", "namespace": "default"})
    storage = tmp_path / "qemu-server"
    storage.mkdir()
    qemu = start_server(storage, _free_port(), "--backend", "qemu")
    try:
        info = qemu.rpc("server.info", {"namespace": "default"})["result"]
        assert info["label"] == "QEMU/TCG" and "not treat TCG as a security boundary" in info["isolation"]  # type: ignore[index]
        logged = _log(qemu)
        assert any(str(m["msg"]).startswith("backend: QEMU/TCG") for m in logged)
        assert any(m["level"] == "warning" and "accelerator: TCG" in str(m["msg"]) for m in logged)
    finally:
        stop_server(qemu)


def test_a_backend_that_does_not_work_stops_the_start(tmp_path: Path) -> None:
    env = {**os.environ, "MSB_STORAGE_PATH": str(tmp_path), "MSB_PORT": str(_free_port())}
    for flags in ([], ["--detach"]):
        out = subprocess.run([sys.executable, "-m", "engine.cli.main", "server", "start", "--backend", "krun", *flags],
                             env=env, capture_output=True, text=True, timeout=120)  # fmt: skip
        assert out.returncode == 125, out.stderr
        assert "msb: error: backend 'krun' was asked for (the request) but does not work here: " in out.stderr
        assert "msb: hint: " in out.stderr


async def test_a_warm_pool_serves_ephemeral_sandboxes_on_qemu(tmp_path: Path, base_images: None) -> None:
    srv = start_server(tmp_path, _free_port(), "--backend", "qemu", "--pool", "microsandbox/python=1")
    try:
        deadline = time.monotonic() + 240
        while True:
            pools = srv.rpc("server.info", {})["result"]["pools"]  # type: ignore[index]
            if pools and pools[0]["ready"] == 1:
                break
            assert time.monotonic() < deadline, f"the pool did not fill: {pools}"
            await asyncio.sleep(0.2)
        sb = PythonSandbox(server_url=srv.url, api_key=srv.key, name="quick")
        await sb.start(ephemeral=True)
        try:
            out = await (await sb.run("import os, socket; print(1+1, socket.gethostname(), os.environ['HOSTNAME'])"))\
                .output()  # fmt: skip
            assert out.split() == ["2", "quick", "quick"]
            got = srv.rpc("sandbox.metrics.get", {"namespace": "default", "sandbox": "quick"})["result"]
            (row,) = got["sandboxes"]  # type: ignore[index]
            assert row["started_by"] == "pool" and row["start_ms"] < 1000
            await sb.command.run("sh", ["-c", "echo gone > /root/file"])
        finally:
            await sb.stop()
        assert not (tmp_path / "sandboxes" / "default" / "quick").exists()
        # a persistent sandbox on the same server is restored from a template, with its own disk
        async with PythonSandbox.create(server_url=srv.url, api_key=srv.key, name="kept") as kept:
            assert (await (await kept.run("print(3)")).output()).strip() == "3"
            got = srv.rpc("sandbox.metrics.get", {"namespace": "default", "sandbox": "kept"})["result"]
            assert got["sandboxes"][0]["started_by"] == "restore"  # type: ignore[index]
        got = srv.rpc("sandbox.metrics.get", {"namespace": "default", "sandbox": "kept"})["result"]
        assert got["sandboxes"][0]["started_by"] is None  # type: ignore[index]  # stopped
    finally:
        stop_server(srv)
