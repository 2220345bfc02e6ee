"""Reliability bench, load part: many sandboxes × many executions, every output checked.

Each execution prints 64 lines of a token unique to it (sandbox, index, random) and the
sha256 of those lines computed in the guest; the host recomputes both. An answer that is
missing is *lost*, one that is shorter or whose hash does not match is *truncated*, one that
carries another execution's token is *crossed*. Through the server with the SDK
(engine.client), then the same through the engine API in this process.
"""

from __future__ import annotations

import asyncio
import hashlib
import os
import signal
import socket
import statistics
import subprocess
import sys
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

LINES = 64
SCRIPT = f'x=$(yes "$0" | head -n {LINES}); printf "%s\\n" "$x"; printf "%s" "$x" | sha256sum'
"""``sh -c SCRIPT TOKEN``: the token as ``$0`` (no quoting games), 64 lines, then their hash."""
IMAGES = ("busybox", "microsandbox/python")
START_CONCURRENCY = 6
"""Starts at once: more only queues behind two cores, and stretches each start past its timeout."""


def pct(xs: list[float], p: float) -> float:
    """The ``p``-th percentile (nearest rank) of ``xs``, in the same unit, rounded."""
    if not xs:
        return float("nan")
    s = sorted(xs)
    return round(s[min(len(s) - 1, max(0, round(p / 100 * len(s)) - 1))], 2)


def check(token: str, out: str) -> str:
    """``ok``, ``lost`` (nothing came back), ``crossed`` (another token) or ``truncated``."""
    if not out:
        return "lost"
    body = "\n".join([token] * LINES)
    want = body + "\n" + hashlib.sha256(body.encode()).hexdigest() + "  -\n"
    if out == want:
        return "ok"
    first = out.split("\n", 1)[0]
    return "crossed" if first and first != token else "truncated"


@dataclass
class Tally:
    """Outcomes and latencies of one load run."""

    outcomes: dict[str, int] = field(default_factory=lambda: {"ok": 0, "lost": 0, "truncated": 0, "crossed": 0})
    errors: list[str] = field(default_factory=list)
    latencies_ms: list[float] = field(default_factory=list)
    start_ms: list[float] = field(default_factory=list)

    def error(self, what: str) -> None:
        self.errors.append(what[:300])

    def summary(self, wall_s: float) -> dict[str, Any]:
        lat = self.latencies_ms
        return {
            "executions": sum(self.outcomes.values()), **self.outcomes, "errors": len(self.errors),
            "first_errors": self.errors[:5], "p50_ms": pct(lat, 50), "p99_ms": pct(lat, 99),
            "mean_ms": round(statistics.fmean(lat), 2) if lat else None,
            "start_p50_ms": pct(self.start_ms, 50), "start_max_ms": pct(self.start_ms, 100),
            "wall_s": round(wall_s, 1), "exec_per_s": round(len(lat) / wall_s, 1) if wall_s else None,
        }  # fmt: skip


Exec = Callable[[str], Awaitable[str]]
"""Runs the script with a token; returns stdout."""


async def drive(name: str, run: Exec, execs: int, tally: Tally) -> None:
    """``execs`` executions one after another in one sandbox, each checked."""
    for i in range(execs):
        token = f"{name}-{i}-{os.urandom(4).hex()}"
        t0 = time.perf_counter()
        try:
            out = await run(token)
        except Exception as exc:  # counted, and the run goes on: the figure is how many fail
            tally.error(f"{name} exec {i}: {type(exc).__name__}: {exc}")
            continue
        tally.latencies_ms.append((time.perf_counter() - t0) * 1000)
        tally.outcomes[check(token, out)] += 1


# ---------------------------------------------------------------------------------- the server


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def start_server(storage: Path, env: dict[str, str]) -> tuple[subprocess.Popen[bytes], str]:
    """``msb server start --dev`` on loopback with ``env`` over ours; (process, URL) once healthy.

    Raises:
        RuntimeError: it exited or did not answer within 60 s.
    """
    storage.mkdir(parents=True, exist_ok=True)
    port = free_port()
    full = {**os.environ, "MSB_STORAGE_PATH": str(storage), "MSB_PORT": str(port), "MSB_LOG_LEVEL": "warning",
            **env}  # fmt: skip
    with open(storage.parent / f"{storage.name}.log", "ab") as log:
        proc = subprocess.Popen([sys.executable, "-m", "engine.cli.main", "server", "start", "--dev"], env=full,
                                stdout=log, stderr=log, start_new_session=True)  # fmt: skip
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and proc.poll() is None:
        try:
            if httpx.get(f"{url}/api/v1/health", timeout=1).status_code == 200:
                return proc, url
        except httpx.HTTPError:
            pass
        time.sleep(0.2)  # the port is not open yet: nothing to wait on but time
    stop_server(proc)
    raise RuntimeError(f"the server did not start (exit {proc.poll()}); see {storage}.log")


def stop_server(proc: subprocess.Popen[bytes]) -> None:
    """SIGTERM (it stops its sandboxes), SIGKILL after 120 s."""
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=120)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def server_env(sandboxes: int, backend: str) -> dict[str, str]:
    """Limits raised for ``sandboxes`` at once in one namespace; the cap stays ``sandboxes``."""
    return {"MSB_BACKEND": backend, "MSB_MAX_SANDBOXES": str(sandboxes), "MSB_MAX_NAMESPACE_MEMORY_MIB": str(1 << 20),
            "MSB_MAX_EXECS_PER_NAMESPACE": str(sandboxes * 4)}  # fmt: skip


async def sdk_load(url: str, sandboxes: int, execs: int, memory: int) -> dict[str, Any]:
    """``sandboxes`` SDK sandboxes (images alternating) × ``execs`` checked executions, then one
    start past the server's limit (refused cleanly?)."""
    from engine.client import BaseSandbox, PythonSandbox

    tally = Tally()
    sem = asyncio.Semaphore(START_CONCURRENCY)
    limits = httpx.Limits(max_connections=sandboxes * 2, max_keepalive_connections=sandboxes * 2)
    async with httpx.AsyncClient(timeout=300, limits=limits) as client:

        async def one(i: int) -> None:
            name = f"load-{i}"
            sb: BaseSandbox = PythonSandbox(url, "load", name, client=client)
            ok = await _start(sb, i)
            await started.wait()  # every sandbox runs while any executes: the load is concurrent
            if not ok:
                return

            async def run(token: str) -> str:
                res = await sb.command.run("sh", ["-c", SCRIPT, token], timeout=60)
                if res.exit_code != 0:
                    raise RuntimeError(f"exit {res.exit_code}: {res.stderr[:200]}")
                return res.stdout

            try:
                await drive(name, run, execs, tally)
            finally:
                await sb.stop()

        async def _start(sb: BaseSandbox, i: int) -> bool:
            try:
                async with sem:
                    t0 = time.perf_counter()
                    await sb.start(image=IMAGES[i % 2], memory=memory, ephemeral=True)
                    tally.start_ms.append((time.perf_counter() - t0) * 1000)
                    return True
            except Exception as exc:
                tally.error(f"{sb.name} start: {type(exc).__name__}: {exc}")
                return False
            finally:
                attempted.append(i)
                if len(attempted) == sandboxes:
                    started.set()

        attempted: list[int] = []
        started = asyncio.Event()
        t0 = time.perf_counter()
        refusal = asyncio.create_task(_past_the_limit(url, client, started))
        await asyncio.gather(*(one(i) for i in range(sandboxes)))
        out = tally.summary(time.perf_counter() - t0)
        out["limit_refusal"] = await refusal
    return out


async def _past_the_limit(url: str, client: httpx.AsyncClient, started: asyncio.Event) -> str:
    """Once every sandbox runs, one more start: the server's answer (its limit's error)."""
    await started.wait()
    body = {"jsonrpc": "2.0", "id": 1, "method": "sandbox.start",
            "params": {"namespace": "load", "sandbox": "one-too-many", "config": {"image": "busybox"}}}  # fmt: skip
    r = await client.post(f"{url}/api/v1/rpc", json=body)
    doc = r.json()
    if "error" in doc:
        return f"HTTP {r.status_code}, JSON-RPC {doc['error'].get('code')}: {doc['error'].get('message')}"
    await client.post(f"{url}/api/v1/rpc", json={**body, "method": "sandbox.stop"})
    return "NOT refused"


async def engine_load(sandboxes: int, execs: int, memory: int, backend: str) -> dict[str, Any]:
    """The same load through the engine API in this process (no server, no HTTP)."""
    from engine.images.resolve import resolve_root
    from engine.sandbox.engine import Engine
    from engine.sandbox.sandbox import Sandbox

    engine = Engine(backend=backend)
    roots = [await resolve_root(image) for image in IMAGES]
    tally = Tally()
    sem = asyncio.Semaphore(START_CONCURRENCY)
    boxes: list[Sandbox] = []

    async def start(i: int) -> None:
        async with sem:
            t0 = time.perf_counter()
            try:
                spec = roots[i % 2].spec(f"eload-{i}-{os.urandom(2).hex()}", memory_mib=memory)
                boxes.append(await engine.start(spec))
            except Exception as exc:
                tally.error(f"start {i}: {type(exc).__name__}: {exc}")
                return
            tally.start_ms.append((time.perf_counter() - t0) * 1000)

    def runner(sb: Sandbox) -> Exec:
        async def run(token: str) -> str:
            res = await sb.exec(["sh", "-c", SCRIPT, token], timeout=60)
            if res.exit_code != 0:
                raise RuntimeError(f"exit {res.exit_code}: {res.stderr[:200]!r}")
            return res.stdout.decode(errors="replace")

        return run

    t0 = time.perf_counter()
    try:
        await asyncio.gather(*(start(i) for i in range(sandboxes)))
        await asyncio.gather(*(drive(sb.name, runner(sb), execs, tally) for sb in boxes))
    finally:
        await asyncio.gather(*(sb.stop() for sb in boxes), return_exceptions=True)
    return tally.summary(time.perf_counter() - t0)


async def run(backend: str, sandboxes: int, execs: int, memory: int, work: Path) -> dict[str, Any]:
    """The load through the server (SDK), then through the engine, on ``backend``."""
    proc, url = await asyncio.to_thread(start_server, work / f"load-{backend}", server_env(sandboxes, backend))
    try:
        server = await sdk_load(url, sandboxes, execs, memory)
    finally:
        await asyncio.to_thread(stop_server, proc)
    direct = await engine_load(sandboxes, execs, memory, backend)
    return {"backend": backend, "sandboxes": sandboxes, "execs_each": execs, "memory_mib": memory,
            "images": list(IMAGES), "server_sdk": server, "engine": direct}  # fmt: skip
