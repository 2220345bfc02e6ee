"""Reliability bench, soak part: start/exec/stop churn through servers for a bounded time.

One server per backend, each churned by :data:`WORKERS` SDK clients: start a sandbox (images
alternating), run :data:`EXECS` checked executions, stop it, again. Every :data:`SAMPLE_S`
seconds each server's RSS and open file descriptors, and the size of the bounded caches
(engine/cachebound.py), are sampled. Flat means the RSS at the end is within 10 % of the RSS
once warm (the first samples after :data:`WARMUP_S`: imports, first templates and images).
"""

from __future__ import annotations

import asyncio
import os
import statistics
import subprocess
import time
from pathlib import Path
from typing import Any

import httpx

from bench.reliability_load import IMAGES, SCRIPT, Tally, check, server_env, start_server, stop_server

WORKERS = 2
EXECS = 5
SAMPLE_S = 30.0
WARMUP_S = 120.0
ERROR_PAUSE_S = 2.0


def rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


def fds(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/fd"))


def cache_mib() -> float:
    from engine import paths
    from engine.cachebound import all_caches

    return sum(c.usage().bytes for c in all_caches(paths.cache_dir())) / 2**20


async def churn(url: str, worker: int, deadline: float, tally: Tally, cycles: list[int]) -> None:
    """Start, exec, stop until ``deadline``."""
    from engine.client import PythonSandbox

    async with httpx.AsyncClient(timeout=300) as client:
        n = 0
        while time.monotonic() < deadline:
            name = f"soak-{worker}-{n}"
            sb = PythonSandbox(url, "soak", name, client=client)
            try:
                await sb.start(image=IMAGES[n % 2], memory=256, ephemeral=True)
                for i in range(EXECS):
                    token = f"{name}-{i}-{os.urandom(4).hex()}"
                    t0 = time.perf_counter()
                    res = await sb.command.run("sh", ["-c", SCRIPT, token], timeout=60)
                    tally.latencies_ms.append((time.perf_counter() - t0) * 1000)
                    tally.outcomes[check(token, res.stdout)] += 1
            except Exception as exc:  # counted: the soak's figure is how many fail
                tally.error(f"{name}: {type(exc).__name__}: {exc}")
                await asyncio.sleep(ERROR_PAUSE_S)  # a refused start is not retried in a tight loop
            finally:
                try:
                    await sb.stop()
                except Exception as exc:
                    tally.error(f"{name} stop: {type(exc).__name__}: {exc}")
            n += 1
            cycles.append(1)


def growth(samples: list[dict[str, Any]], key: str) -> float | None:
    """Relative growth of ``key`` from once warm (first samples after the warm-up) to the end."""
    warm = [s[key] for s in samples if s["t_s"] >= WARMUP_S]
    if len(warm) < 4:
        return None
    base = statistics.median(warm[:2])
    end = statistics.median(warm[-2:])
    return round((end - base) / base, 4) if base else None


async def run(backends: list[str], minutes: float, work: Path) -> dict[str, Any]:
    """Churn a server per backend for ``minutes``; samples and verdicts per server."""
    servers: dict[str, tuple[subprocess.Popen[bytes], str]] = {}
    try:
        for b in backends:
            servers[b] = await asyncio.to_thread(start_server, work / f"soak-{b}", server_env(8, b))
        t_start = time.monotonic()
        deadline = t_start + minutes * 60
        tallies = {b: Tally() for b in backends}
        cycles: dict[str, list[int]] = {b: [] for b in backends}
        samples: dict[str, list[dict[str, Any]]] = {b: [] for b in backends}
        workers = [asyncio.create_task(churn(url, w, deadline, tallies[b], cycles[b]))
                   for b, (_, url) in servers.items() for w in range(WORKERS)]  # fmt: skip
        while time.monotonic() < deadline:
            t = time.monotonic() - t_start
            cache = await asyncio.to_thread(cache_mib)
            for b, (proc, _) in servers.items():
                samples[b].append({"t_s": round(t), "rss_mib": round(rss_mib(proc.pid), 1), "fds": fds(proc.pid),
                                   "cache_mib": round(cache), "cycles": len(cycles[b])})  # fmt: skip
            await asyncio.sleep(min(SAMPLE_S, max(0.0, deadline - time.monotonic())))
        await asyncio.gather(*workers)
        out: dict[str, Any] = {"minutes": minutes, "workers_per_server": WORKERS, "execs_per_cycle": EXECS}
        for b in backends:
            proc = servers[b][0]
            s = samples[b] + [{"t_s": round(time.monotonic() - t_start), "rss_mib": round(rss_mib(proc.pid), 1),
                               "fds": fds(proc.pid), "cache_mib": round(await asyncio.to_thread(cache_mib)),
                               "cycles": len(cycles[b])}]  # fmt: skip
            g = growth(s, "rss_mib")
            out[b] = {"cycles": len(cycles[b]), **tallies[b].summary(minutes * 60), "samples": s,
                      "rss_growth": g, "fds_growth": growth(s, "fds"), "flat": g is not None and g < 0.10}  # fmt: skip
        return out
    finally:
        for proc, _ in servers.values():
            await asyncio.to_thread(stop_server, proc)
