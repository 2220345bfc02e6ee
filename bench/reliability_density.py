"""Reliability bench, density part: idle sandboxes per backend, up to a cap, and what each costs.

Sandboxes are started one after another and left idle. At N = 10, 50, 100, 200 (those up to
the cap): the host memory they take — the proportional set size (PSS, from
``/proc/PID/smaps_rollup``) of every process of each sandbox's VMM tree, so pages shared
between them (a template's RAM, QEMU's code) count once in total — and the drop of the host's
``MemAvailable``; the exec round trip of ``true`` in sandboxes picked at random; and the rate of
starts since the previous point. Bounded in count (the cap), in time, and by the host: below
:data:`RESERVE_MIB` of available memory no more start. Every sandbox is stopped at the end.
"""

from __future__ import annotations

import asyncio
import os
import random
import time
from pathlib import Path
from typing import Any

from bench.reliability_load import pct

POINTS = (10, 50, 100, 200)
RESERVE_MIB = 2048
PROBES = 20
"""Exec round trips measured at each point."""


def available_mib() -> float:
    with open("/proc/meminfo") as f:
        for line in f:
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) / 1024
    return float("inf")


def tree(pid: int) -> list[int]:
    """``pid`` and all its descendants (via each task's ``children``)."""
    out, todo = [], [pid]
    while todo:
        p = todo.pop()
        out.append(p)
        try:
            tids = os.listdir(f"/proc/{p}/task")
        except OSError:
            continue
        for tid in tids:
            try:
                todo += [int(c) for c in Path(f"/proc/{p}/task/{tid}/children").read_text().split()]
            except (OSError, ValueError):
                pass
    return out


def pss_kib(pid: int) -> int:
    try:
        for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines():
            if line.startswith("Pss:"):
                return int(line.split()[1])
    except (OSError, ValueError):
        pass
    return 0


def sandbox_pss_mib(pid: int | None) -> float:
    """PSS of a sandbox's whole VMM process tree, MiB."""
    return 0.0 if pid is None else sum(pss_kib(p) for p in tree(pid)) / 1024


async def probe_execs(boxes: list[Any], n: int = PROBES) -> list[float]:
    """Round trips (ms) of ``true`` in ``n`` sandboxes picked at random, one at a time."""
    out = []
    for sb in random.sample(boxes, min(n, len(boxes))):
        t0 = time.perf_counter()
        await sb.exec(["true"], timeout=60)
        out.append((time.perf_counter() - t0) * 1000)
    return out


async def point(boxes: list[Any], avail0: float, since: float, started: int) -> dict[str, Any]:
    """The measurements at N = len(boxes)."""
    n = len(boxes)
    pss = sum(sandbox_pss_mib(sb.vm.pid) for sb in boxes)
    lat = await probe_execs(boxes)
    return {"n": n, "pss_total_mib": round(pss, 1), "pss_per_sandbox_mib": round(pss / n, 2),
            "mem_available_drop_per_sandbox_mib": round((avail0 - available_mib()) / n, 2),
            "exec_p50_ms": pct(lat, 50), "exec_p99_ms": pct(lat, 99),
            "starts_per_s": round(started / (time.perf_counter() - since), 2)}  # fmt: skip


async def ramp(backend: str, cap: int, minutes: float, memory: int) -> dict[str, Any]:
    """Idle sandboxes on ``backend`` up to ``cap`` (or the time or memory bound)."""
    from engine.images.resolve import resolve_root
    from engine.sandbox.engine import Engine

    engine = Engine(backend=backend)
    root = await resolve_root("busybox")
    boxes: list[Any] = []
    points: list[dict[str, Any]] = []
    kinds: dict[str, int] = {}
    avail0 = available_mib()
    deadline = time.monotonic() + minutes * 60
    stopped_by, error = "cap", None
    since, batch = time.perf_counter(), 0
    try:
        while len(boxes) < cap:
            if time.monotonic() > deadline:
                stopped_by = f"time bound ({minutes:.0f} min)"
                break
            if available_mib() < RESERVE_MIB:
                stopped_by = f"host reserve ({RESERVE_MIB} MiB available left)"
                break
            try:
                sb = await engine.start(root.spec(f"dens-{len(boxes)}-{os.urandom(2).hex()}", memory_mib=memory))
            except Exception as exc:
                stopped_by, error = "start failed", f"{type(exc).__name__}: {str(exc)[:300]}"
                break
            boxes.append(sb)
            kinds[sb.start_info.kind] = kinds.get(sb.start_info.kind, 0) + 1
            batch += 1
            if len(boxes) in POINTS:
                points.append(await point(boxes, avail0, since, batch))
                since, batch = time.perf_counter(), 0
        if boxes and len(boxes) not in POINTS:
            points.append(await point(boxes, avail0, since, max(batch, 1)))
        alive = sum(sb.status.value == "running" for sb in boxes)
    finally:
        t0 = time.perf_counter()
        sem = asyncio.Semaphore(8)

        async def stop(sb: Any) -> None:
            async with sem:
                await sb.stop()

        await asyncio.gather(*(stop(sb) for sb in boxes), return_exceptions=True)
        stop_s = time.perf_counter() - t0
    return {"backend": backend, "cap": cap, "reached": len(boxes), "alive_at_end": alive, "stopped_by": stopped_by,
            "error": error, "start_kinds": kinds, "memory_mib": memory, "points": points,
            "stop_all_s": round(stop_s, 1)}  # fmt: skip


async def start_rates(backend: str, runs: int, memory: int) -> dict[str, Any]:
    """Sustained sequential start+stop rate: ``boot`` (templates off) and, on QEMU, ``restore``."""
    from engine.images.resolve import resolve_root
    from engine.sandbox.engine import Engine

    root = await resolve_root("busybox")
    out: dict[str, Any] = {}
    modes = {"boot": False, "restore": True} if backend == "qemu" else {"boot": None}
    for kind, templates in modes.items():
        engine = Engine(backend=backend, templates=templates)
        warm = await engine.start(root.spec(f"rate-warm-{os.urandom(2).hex()}", memory_mib=memory))
        await warm.stop()  # the template (if any) is built outside the timing
        t0 = time.perf_counter()
        for i in range(runs):
            sb = await engine.start(root.spec(f"rate-{i}-{os.urandom(2).hex()}", memory_mib=memory))
            await sb.stop()
        out[kind] = round(runs / (time.perf_counter() - t0), 2)
    return out
