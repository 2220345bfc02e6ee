"""Server benchmarks: JSON-RPC overhead over a direct engine exec, REPL round trip, and 100
concurrent clients against one sandbox.

The server runs as its own process (`msb server start --dev` on 127.0.0.1), like it does for
real clients; "direct" is this process's engine on an identical sandbox, interleaved.
"""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx

from engine.images.resolve import resolve_root
from engine.sandbox.engine import Engine


def _stats(xs: list[float]) -> dict[str, Any]:
    xs = sorted(xs)
    return {"p50": round(statistics.median(xs), 3), "p95": round(xs[int(len(xs) * 0.95) - 1], 3), "n": len(xs)}


def _port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class RawHttp:
    """A minimal HTTP/1.1 keep-alive client (one connection, JSON bodies): the transport cost
    without httpx's own per-request work, to tell the server's overhead from the client's."""

    def __init__(self, port: int) -> None:
        self.port = port
        self.reader: asyncio.StreamReader | None = None
        self.writer: asyncio.StreamWriter | None = None

    async def post(self, path: str, doc: dict[str, Any]) -> tuple[dict[str, str], Any]:
        if self.writer is None:
            self.reader, self.writer = await asyncio.open_connection("127.0.0.1", self.port)
        assert self.reader is not None
        body = json.dumps(doc).encode()
        self.writer.write(f"POST {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
                          f"Content-Length: {len(body)}\r\n\r\n".encode() + body)  # fmt: skip
        head = (await self.reader.readuntil(b"\r\n\r\n")).decode("latin-1").split("\r\n")
        headers = {k.strip().lower(): v.strip() for k, _, v in (line.partition(":") for line in head[1:] if line)}
        data = await self.reader.readexactly(int(headers["content-length"]))
        return headers, json.loads(data)

    async def close(self) -> None:
        if self.writer is not None:
            self.writer.close()


def _start_server(storage: Path, port: int) -> subprocess.Popen[bytes]:
    env = {**os.environ, "MSB_STORAGE_PATH": str(storage), "MSB_PORT": str(port), "MSB_LOG_LEVEL": "warning"}
    log = open(storage / "server.log", "ab")  # noqa: SIM115 - the child owns it
    return subprocess.Popen([sys.executable, "-m", "engine.cli.main", "server", "start", "--dev"], env=env,
                            stdout=log, stderr=log)  # fmt: skip


async def _direct_repl(runs: int) -> dict[str, Any]:
    """The same REPL call in this process's engine (no HTTP), on an identical sandbox."""
    from engine.repl.pool import ReplPool

    root = await resolve_root("microsandbox/python")
    sb = await Engine().start(root.spec("bench-repl", memory_mib=512))
    pool = ReplPool(sb)
    try:
        await pool.run("python", "0")
        xs = []
        for _ in range(runs):
            t0 = time.perf_counter()
            await pool.run("python", "1+1")
            xs.append((time.perf_counter() - t0) * 1000)
        return _stats(xs)
    finally:
        await pool.close()
        await sb.kill()


async def run(rtt_runs: int = 200, clients: int = 100, per_client: int = 5) -> dict[str, Any]:
    storage = Path(tempfile.mkdtemp(prefix="msb-bench-server-"))
    port = _port()
    proc = _start_server(storage, port)
    base = f"http://127.0.0.1:{port}"
    url = f"{base}/api/v1/rpc"
    out: dict[str, Any] = {}
    direct_sb = None
    try:
        async with httpx.AsyncClient(timeout=600) as http:
            for _ in range(300):
                try:
                    if (await http.get(f"{base}/api/v1/health")).status_code == 200:
                        break
                except httpx.HTTPError:
                    await asyncio.sleep(0.1)

            app_ms: list[float] = []

            async def rpc(method: str, params: dict[str, Any]) -> Any:
                r = await http.post(url, json={"jsonrpc": "2.0", "method": method, "params": params, "id": 1})
                app_ms.append(float(r.headers.get("server-timing", "app;dur=0").split("dur=")[1]))
                doc = r.json()
                if "error" in doc:
                    raise RuntimeError(doc["error"])
                return doc["result"]

            # commands: busybox sandboxes (static binaries: little guest-side noise); the server
            # runs in its own process, as it does for real clients; "direct" is this process's
            # engine on an identical sandbox
            cfg = {"image": "busybox", "memory": 256}
            await rpc("sandbox.start", {"sandbox": "b", "namespace": "bench", "config": cfg})
            root = await resolve_root("busybox")
            # persistent like the server's sandboxes (its writable layer is on a disk, not tmpfs)
            direct_sb = await Engine().start(root.spec("bench-direct", memory_mib=256, persist_dir=storage / "direct"))
            direct, over_http, over_raw = [], [], []
            params = {"sandbox": "b", "namespace": "bench", "command": "true"}
            raw = RawHttp(port)
            call = {"jsonrpc": "2.0", "method": "sandbox.command.run", "params": params, "id": 1}
            for _ in range(20):  # warm up every path
                await direct_sb.exec(["true"])
                await rpc("sandbox.command.run", params)
                await raw.post("/api/v1/rpc", call)
            app_ms.clear()
            for _ in range(rtt_runs):
                t0 = time.perf_counter()
                await direct_sb.exec(["true"])
                direct.append((time.perf_counter() - t0) * 1000)
                t0 = time.perf_counter()
                await rpc("sandbox.command.run", params)
                over_http.append((time.perf_counter() - t0) * 1000)
                t0 = time.perf_counter()
                _, doc = await raw.post("/api/v1/rpc", call)
                over_raw.append((time.perf_counter() - t0) * 1000)
                assert doc["result"]["exit_code"] == 0, doc
            health = []
            for _ in range(rtt_runs):
                t0 = time.perf_counter()
                await http.get(f"{base}/api/v1/health")
                health.append((time.perf_counter() - t0) * 1000)
            accel = direct_sb.accel
            out["backend"] = direct_sb.backend  # the default one (auto), for the server and the direct engine
            out["direct_exec_ms"] = _stats(direct)
            out["rpc_command_ms"] = _stats(over_http)
            out["rpc_command_server_ms"] = _stats(app_ms)  # Server-Timing: the server's own part
            out["http_health_ms"] = _stats(health)
            out["rpc_overhead_ms_p50"] = round(statistics.median(over_http) - statistics.median(direct), 3)
            out["rpc_command_raw_ms"] = _stats(over_raw)
            out["rpc_overhead_raw_ms_p50"] = round(statistics.median(over_raw) - statistics.median(direct), 3)

            await direct_sb.kill()  # idle VMs cost CPU under TCG: only what a phase needs runs
            direct_sb = None
            await rpc("sandbox.stop", {"sandbox": "b", "namespace": "bench"})
            await rpc("sandbox.start", {"sandbox": "py", "namespace": "bench",
                                        "config": {"image": "microsandbox/python", "memory": 512}})  # fmt: skip
            repl, repl_raw = [], []
            py = {"sandbox": "py", "namespace": "bench", "language": "python"}
            repl_call = {"jsonrpc": "2.0", "method": "sandbox.repl.run", "params": {**py, "code": "1+1"}, "id": 1}
            await rpc("sandbox.repl.run", {**py, "code": "0"})
            for _ in range(rtt_runs):
                t0 = time.perf_counter()
                res = await rpc("sandbox.repl.run", {**py, "code": "1+1"})
                repl.append((time.perf_counter() - t0) * 1000)
                assert res["output"] == [{"stream": "stdout", "text": "2"}], res
                t0 = time.perf_counter()
                _, doc = await raw.post("/api/v1/rpc", repl_call)
                repl_raw.append((time.perf_counter() - t0) * 1000)
                assert doc["result"]["output"] == [{"stream": "stdout", "text": "2"}], doc
            out["repl_rtt_ms"] = _stats(repl)
            out["repl_rtt_raw_ms"] = _stats(repl_raw)
            await raw.close()
            await rpc("sandbox.stop", {"sandbox": "py", "namespace": "bench"})
            out["repl_direct_ms"] = await _direct_repl(rtt_runs)
            await rpc("sandbox.start", {"sandbox": "b", "namespace": "bench"})

        errors = 0
        done = 0

        async def client(i: int) -> None:
            nonlocal errors, done
            async with httpx.AsyncClient(timeout=600) as c:
                for j in range(per_client):
                    r = await c.post(url, json={"jsonrpc": "2.0", "id": 1, "method": "sandbox.command.run",
                                                "params": {"sandbox": "b", "namespace": "bench", "command": "echo",
                                                           "args": [f"{i}-{j}"]}})  # fmt: skip
                    doc = r.json()
                    if "error" in doc or doc["result"]["stdout"] != f"{i}-{j}\n":
                        errors += 1
                    done += 1

        t0 = time.perf_counter()
        await asyncio.gather(*(client(i) for i in range(clients)))
        wall = time.perf_counter() - t0
        out["concurrent"] = {"clients": clients, "requests": done, "errors": errors, "wall_s": round(wall, 2),
                             "throughput_rps": round(done / wall, 1)}  # fmt: skip
        out["accel"] = accel
    finally:
        if direct_sb is not None:
            await direct_sb.kill()
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=60)
        shutil.rmtree(storage, ignore_errors=True)
    return out


if __name__ == "__main__":
    import json

    print(json.dumps(asyncio.run(run(rtt_runs=30, clients=20, per_client=2)), indent=2))
