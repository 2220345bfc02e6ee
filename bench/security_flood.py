"""Flood isolation: does one sandbox flooding output slow another tenant's commands?

Starts two real sandboxes through one :class:`Engine` (default backend), measures the exec
round trip of ``true`` in the quiet one while idle, then while the other floods output
through each host path a tenant can drive:

- ``command.run``: ``yes`` at full speed through the server's collector
  (:func:`engine.server.output.collect_command`, bounded, drained past the bound);
- ``spawn``: ``cat /dev/zero`` through a spawned process whose output is read and dropped.

Goal: p50 under flood within 2x of idle. Writes ``bench/results/security_flood.json``.
Run as ``.venv/bin/python -m bench.security_flood``.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

from bench.engine import BUSYBOX, pct, summary
from engine.sandbox.engine import Engine
from engine.sandbox.sandbox import Sandbox
from engine.sandbox.spec import SandboxSpec
from engine.server.output import collect_command
from engine.server.settings import Limits

RESULTS = Path(__file__).resolve().parent / "results" / "security_flood.json"
GOAL_RATIO = 2.0


async def rtts(sb: Sandbox, n: int) -> list[float]:
    """``n`` sequential round trips of ``true``, in ms."""
    out = []
    for _ in range(n):
        t0 = time.perf_counter()
        res = await sb.exec(["true"])
        out.append((time.perf_counter() - t0) * 1000)
        assert res.exit_code == 0
    return out


async def flood_command(sb: Sandbox, counter: list[int]) -> None:
    """``yes`` through the server's collector until cancelled."""
    res = await collect_command(sb, "yes", [], 600, Limits())
    counter[0] += len(res.stdout)


async def flood_spawn(sb: Sandbox, counter: list[int]) -> None:
    """``cat /dev/zero`` read as fast as it comes, until cancelled."""
    proc = await sb.spawn(["cat", "/dev/zero"], timeout=600)
    try:
        async for chunk in proc:
            counter[0] += len(chunk.data)
    finally:
        await proc.close()


class LoopLag:
    """How late a 1 ms timer fires on the host's event loop: what every other tenant waits."""

    def __init__(self) -> None:
        self.lags: list[float] = []
        self._task = asyncio.ensure_future(self._tick())

    async def _tick(self) -> None:
        while True:
            t0 = time.perf_counter()
            await asyncio.sleep(0.001)
            self.lags.append((time.perf_counter() - t0 - 0.001) * 1000)

    async def stop(self) -> dict[str, float]:
        self._task.cancel()
        try:
            await self._task
        except asyncio.CancelledError:
            pass
        return {**summary(self.lags), "max": round(max(self.lags), 2), "p99": pct(self.lags, 0.99)}


async def measure(quiet: Sandbox, n: int) -> dict[str, Any]:
    """Round trips of ``true`` in ``quiet`` and the event loop's lag meanwhile."""
    lag = LoopLag()
    values = await rtts(quiet, n)
    return {"exec_rtt_ms": summary(values), "loop_lag_ms": await lag.stop()}


async def under_flood(quiet: Sandbox, noisy: Sandbox, n: int,
                      flood: Callable[[Sandbox, list[int]], Awaitable[None]]) -> dict[str, Any]:  # fmt: skip
    """Measure ``quiet`` while ``flood`` runs in ``noisy``; stop the flood after."""
    counter = [0]
    task = asyncio.ensure_future(flood(noisy, counter))
    await asyncio.sleep(1.0)  # let the flood reach full speed
    t0 = time.perf_counter()
    out = await measure(quiet, n)
    secs = time.perf_counter() - t0
    running = not task.done()  # else the flood ended early and the numbers mean nothing
    task.cancel()
    try:
        await task
    except asyncio.CancelledError:
        pass
    out["flood_ran_throughout"] = running
    if counter[0]:
        out["flood_mb_s"] = round(counter[0] / secs / 1e6, 1)
    return out


async def run(n: int, backend: str | None = None) -> dict[str, Any]:
    """Both sandboxes up, then for each flood: idle numbers, numbers under flood."""
    engine = Engine(backend=backend)
    tag = os.urandom(3).hex()
    quiet = await engine.start(SandboxSpec(name=f"flood-quiet-{tag}", rootfs=BUSYBOX, memory_mib=256))
    noisy = await engine.start(SandboxSpec(name=f"flood-noisy-{tag}", rootfs=BUSYBOX, memory_mib=256))
    try:
        await rtts(quiet, 5)  # warm up
        await rtts(noisy, 5)
        floods: dict[str, dict[str, Any]] = {}
        for name, flood in (("command_run_yes", flood_command), ("spawn_cat_dev_zero", flood_spawn)):
            # Idle right before each flood: the shared host's speed drifts between minutes.
            idle = await measure(quiet, n)
            floods[name] = {"idle": idle, "flood": await under_flood(quiet, noisy, n, flood)}
            ratio = floods[name]["flood"]["exec_rtt_ms"]["p50"] / idle["exec_rtt_ms"]["p50"]
            floods[name]["ratio_p50"] = round(ratio, 2)
            floods[name]["within_goal"] = floods[name]["ratio_p50"] <= GOAL_RATIO
    finally:
        await quiet.kill()
        await noisy.kill()
    return {
        "measured_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "backend": engine.backend.name,
        "host": {"cpus": os.cpu_count()},
        "goal": f"p50 exec round trip of `true` under flood within {GOAL_RATIO}x of idle",
        "floods": floods,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("-n", type=int, default=30, help="round trips per measurement")
    parser.add_argument("--backend", default=None, help="qemu, gvisor, krun (default: the engine's choice)")
    args = parser.parse_args()
    result = asyncio.run(run(args.n, args.backend))
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    # One entry per backend, so runs on several backends sit side by side.
    old = json.loads(RESULTS.read_text()) if RESULTS.exists() else {}
    RESULTS.write_text(json.dumps({**old, result["backend"]: result}, indent=2) + "\n")
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
