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
from engine.sandbox.pool import host_available_mib

POINTS = (10, 50, 100, 200)
RESERVE_MIB = 2048
PROBES = 20
"""Exec round trips measured at each point."""
CHECK_EVERY = 10
"""Every this many starts, a few exec round trips: the ramp stops once their median passes
:data:`RESPONSIVE_MS` (the host no longer serves its sandboxes; more would only time out)."""
RESPONSIVE_MS = 1000.0
IDLE_WINDOW_S = 5.0
"""How long the idle sandboxes' CPU is measured at each point."""


def engine_for(
    backend: str, platform: str | None, max_cpu_pressure: float | None = None, templates: bool | None = None
) -> Any:
    """An engine on ``backend`` (gVisor on ``platform``), with the host capacity limits of the
    environment and, if given, a CPU pressure limit."""
    import dataclasses

    from engine.sandbox.capacity import HostCapacity
    from engine.sandbox.engine import Engine
    from engine.vm.gvisor import GvisorBackend

    capacity = HostCapacity.from_env()
    if max_cpu_pressure is not None:
        capacity = dataclasses.replace(capacity, max_cpu_pressure=max_cpu_pressure)
    chosen: Any = GvisorBackend(platform=platform) if backend == "gvisor" else backend
    return Engine(backend=chosen, capacity=capacity, templates=templates)


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


def cpu_ticks(pids: list[int]) -> int:
    """User + system clock ticks of ``pids`` (every thread), those still alive."""
    total = 0
    for p in pids:
        try:
            fields = Path(f"/proc/{p}/stat").read_text().rsplit(")", 1)[1].split()
            total += int(fields[11]) + int(fields[12])
        except (OSError, ValueError, IndexError):
            pass
    return total


async def idle_cpu_pct(boxes: list[Any], seconds: float = IDLE_WINDOW_S) -> float:
    """CPU the idle sandboxes' VMM trees use, in % of one core per sandbox, over ``seconds``."""
    pids = [p for sb in boxes if sb.vm.pid is not None for p in tree(sb.vm.pid)]
    t0, a = time.perf_counter(), cpu_ticks(pids)
    await asyncio.sleep(seconds)
    used = (cpu_ticks(pids) - a) / os.sysconf("SC_CLK_TCK")
    return round(used / (time.perf_counter() - t0) * 100 / max(1, len(boxes)), 2)


async def point(boxes: list[Any], avail0: float, since: float, started: int) -> dict[str, Any]:
    """The measurements at N = len(boxes)."""
    n = len(boxes)
    rate = round(started / (time.perf_counter() - since), 2)
    pss = sum(sandbox_pss_mib(sb.vm.pid) for sb in boxes)
    idle = await idle_cpu_pct(boxes)
    lat = await probe_execs(boxes)
    return {"n": n, "pss_total_mib": round(pss, 1), "pss_per_sandbox_mib": round(pss / n, 2),
            "idle_cpu_pct_per_sandbox": idle, "engine_fds_per_sandbox": round(len(os.listdir("/proc/self/fd")) / n, 1),
            "mem_available_drop_per_sandbox_mib": round((avail0 - host_available_mib()) / n, 2),
            "exec_p50_ms": pct(lat, 50), "exec_p99_ms": pct(lat, 99),
            "starts_per_s": rate}  # fmt: skip


async def one_more_below_the_reserve(engine: Any, root: Any, memory: int) -> str:
    """With every sandbox of the ramp running, one more start with the memory reserve set just
    above what the host has available: the documented limit must refuse it cleanly."""
    import dataclasses

    from engine.sandbox.capacity import CapacityError

    saved = engine.capacity
    engine.capacity = dataclasses.replace(saved, reserve_mib=host_available_mib() + 512, max_cpu_pressure=None)
    try:
        extra = await engine.start(root.spec(f"dens-one-more-{os.urandom(2).hex()}", memory_mib=memory))
    except CapacityError as exc:
        return f"refused (-32032): {exc.message}"
    except Exception as exc:
        return f"NOT clean: {type(exc).__name__}: {str(exc)[:200]}"
    finally:
        engine.capacity = saved
    await extra.stop()
    return "NOT refused"


async def ramp(
    backend: str, cap: int, minutes: float, memory: int, platform: str | None = None,
    max_cpu_pressure: float | None = None,
) -> dict[str, Any]:
    """Idle sandboxes on ``backend`` up to ``cap``, or until a host capacity limit refuses the
    next start (engine/sandbox/capacity.py), the host stops answering in time, or the time or
    memory bound."""
    from engine.images.resolve import resolve_root
    from engine.sandbox.capacity import CapacityError

    engine = engine_for(backend, platform, max_cpu_pressure)
    root = await resolve_root("busybox")
    boxes: list[Any] = []
    points: list[dict[str, Any]] = []
    kinds: dict[str, int] = {}
    avail0 = host_available_mib()
    deadline = time.monotonic() + minutes * 60
    stopped_by, error = "cap", None
    since, batch = time.perf_counter(), 0
    try:
        while len(boxes) < cap:
            if time.monotonic() > deadline:
                stopped_by = f"time bound ({minutes:.0f} min)"
                break
            if host_available_mib() < RESERVE_MIB:
                stopped_by = f"host reserve ({RESERVE_MIB} MiB available left)"
                break
            try:
                sb = await engine.start(root.spec(f"dens-{len(boxes)}-{os.urandom(2).hex()}", memory_mib=memory))
            except CapacityError as exc:
                stopped_by, error = "refused by a host capacity limit", str(exc)[:300]
                break
            except Exception as exc:
                stopped_by, error = "start failed", f"{type(exc).__name__}: {str(exc)[:300]}"
                break
            boxes.append(sb)
            kinds[sb.start_info.kind] = kinds.get(sb.start_info.kind, 0) + 1
            batch += 1
            if len(boxes) in POINTS:
                points.append(await point(boxes, avail0, since, batch))
                since, batch = time.perf_counter(), 0
            elif len(boxes) % CHECK_EVERY == 0:
                lat = await probe_execs(boxes, 5)
                if pct(lat, 50) > RESPONSIVE_MS:
                    stopped_by = f"exec p50 {pct(lat, 50):.0f} ms > {RESPONSIVE_MS:.0f} ms: the host is saturated"
                    break
        if boxes and len(boxes) not in POINTS:
            points.append(await point(boxes, avail0, since, max(batch, 1)))
        alive = sum(sb.status.value == "running" for sb in boxes)
        refusal = await one_more_below_the_reserve(engine, root, memory)
    finally:
        t0 = time.perf_counter()
        sem = asyncio.Semaphore(8)

        async def stop(sb: Any) -> None:
            async with sem:
                await sb.stop()

        await asyncio.gather(*(stop(sb) for sb in boxes), return_exceptions=True)
        stop_s = time.perf_counter() - t0
    return {"backend": backend, "platform": engine.backend.platform if backend == "gvisor" else None,
            "max_cpu_pressure": engine.capacity.max_cpu_pressure,
            "cap": cap, "reached": len(boxes), "reserve_refusal": refusal, "alive_at_end": alive,
            "stopped_by": stopped_by,
            "error": error, "start_kinds": kinds, "memory_mib": memory, "points": points,
            "stop_all_s": round(stop_s, 1)}  # fmt: skip


async def start_rates(backend: str, runs: int, memory: int, platform: str | None = None) -> dict[str, Any]:
    """Sustained sequential start+stop rates: ``boot`` (templates off), on QEMU ``restore``,
    and ``pool`` — sandboxes taken from a warm pool of :data:`POOL_SIZE` while it refills
    (a take that finds the pool empty starts one instead; ``pool_hits`` says how many did not)."""
    from engine.images.resolve import resolve_root
    from engine.sandbox.pool import PoolShape, WarmPool
    from engine.sandbox.sandbox import Sandbox

    root = await resolve_root("busybox")
    out: dict[str, Any] = {}
    modes = {"boot": False, "restore": True} if backend == "qemu" else {"boot": None}
    for kind, templates in modes.items():
        engine = engine_for(backend, platform, templates=templates)
        warm = await engine.start(root.spec(f"rate-warm-{os.urandom(2).hex()}", memory_mib=memory))
        await warm.stop()  # the template (if any) is built outside the timing
        t0 = time.perf_counter()
        for i in range(runs):
            sb = await engine.start(root.spec(f"rate-{i}-{os.urandom(2).hex()}", memory_mib=memory))
            await sb.stop()
        out[kind] = round(runs / (time.perf_counter() - t0), 2)
    engine = engine_for(backend, platform)
    pool = WarmPool(engine)
    pool.add(PoolShape(label="busybox", spec=root.spec("pool-member", memory_mib=memory), size=POOL_SIZE))
    pool.start()
    try:
        deadline = time.monotonic() + 120
        while pool.status()[0].ready < POOL_SIZE and time.monotonic() < deadline:
            await asyncio.sleep(0.2)  # filling: the pool has no event to wait on from outside
        hits = 0
        t0 = time.perf_counter()
        for i in range(runs):
            spec = root.spec(f"prate-{i}-{os.urandom(2).hex()}", memory_mib=memory)
            taken = await pool.take(spec)
            member: Sandbox = taken[0] if taken else await engine.start(spec)
            hits += taken is not None
            await member.stop()
        out["pool"] = round(runs / (time.perf_counter() - t0), 2)
        out["pool_hits"] = f"{hits}/{runs}"
    finally:
        await pool.close()
    return out


POOL_SIZE = 4


PLATFORM_PROBES = {
    "exec_true_p50_ms": None,
    "forks_300_s": "i=0; while [ $i -lt 300 ]; do /bin/true; i=$((i+1)); done",
    "syscall_io_s": "dd if=/dev/zero of=/tmp/x bs=4k count=20000 2>/dev/null; cat /tmp/x >/dev/null; rm /tmp/x",
}
"""What a gVisor platform costs a busy sandbox: an exec round trip, 300 fork+exec in a shell
loop, and 80 MB written and read in 4 KiB system calls."""


async def platform_costs(platform: str) -> dict[str, Any]:
    """:data:`PLATFORM_PROBES` in one gVisor sandbox on ``platform``, plus its idle CPU."""
    from engine.images.resolve import resolve_root

    engine = engine_for("gvisor", platform)
    root = await resolve_root("busybox")
    sb = await engine.start(root.spec(f"plat-{platform}-{os.urandom(2).hex()}", memory_mib=256))
    out: dict[str, Any] = {"platform": platform}
    try:
        lat = []
        for _ in range(30):
            t0 = time.perf_counter()
            await sb.exec(["true"], timeout=60)
            lat.append((time.perf_counter() - t0) * 1000)
        out["exec_true_p50_ms"] = pct(lat, 50)
        for key, script in PLATFORM_PROBES.items():
            if script is None:
                continue
            t0 = time.perf_counter()
            res = await sb.exec(["sh", "-c", script], timeout=300)
            out[key] = round(time.perf_counter() - t0, 2) if res.exit_code == 0 else f"exit {res.exit_code}"
        out["idle_cpu_pct"] = await idle_cpu_pct([sb], 10.0)
    finally:
        await sb.stop()
    return out
