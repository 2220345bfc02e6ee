"""Per-backend benchmarks (issue 7), all in one run, for every backend that works on this host:

- cold start → first exec result (``Engine.start`` + ``exec(["true"])``, busybox root);
- exec round trip of ``true`` in a running sandbox;
- a fresh sandbox running ``python3 -c 'print(1+1)'`` (start from the python image, exec,
  kill), the whole thing timed;
- the reference beside it: ``runsc do /usr/bin/python3 -c 'print(1+1)'`` (gVisor running the
  host's own python3 with no msb around it), and the host's plain ``python3 -c`` as a floor.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import time
from typing import Any

from bench.engine import BUSYBOX, summary
from engine.images.resolve import resolve_root
from engine.sandbox.engine import Engine
from engine.sandbox.spec import SandboxSpec
from engine.vm.select import backend_label, probe_backends

PRINT = "print(1+1)"


async def _cold(engine: Engine, name: str, runs: int) -> list[float]:
    out = []
    for i in range(runs):
        t0 = time.perf_counter()
        sb = await engine.start(SandboxSpec(name=f"{name}-cold-{i}", rootfs=BUSYBOX, network="none", memory_mib=256))
        res = await sb.exec(["true"])
        out.append((time.perf_counter() - t0) * 1000)
        assert res.exit_code == 0
        await sb.kill()
    return out


async def _rtt(engine: Engine, name: str, runs: int) -> list[float]:
    sb = await engine.start(SandboxSpec(name=f"{name}-rtt", rootfs=BUSYBOX, network="none", memory_mib=256))
    try:
        for _ in range(10):
            await sb.exec(["true"])
        out = []
        for _ in range(runs):
            t0 = time.perf_counter()
            await sb.exec(["true"])
            out.append((time.perf_counter() - t0) * 1000)
        return out
    finally:
        await sb.kill()


async def _fresh_python(engine: Engine, name: str, runs: int) -> list[float]:
    root = await resolve_root("microsandbox/python")
    out = []
    for i in range(runs):
        t0 = time.perf_counter()
        sb = await engine.start(root.spec(f"{name}-py-{i}", memory_mib=512, network="none"))
        res = await sb.exec(["python3", "-c", PRINT])
        out.append((time.perf_counter() - t0) * 1000)
        await sb.kill()
        assert res.stdout == b"2\n", res
    return out


def _timed(argv: list[str], runs: int) -> list[float]:
    out = []
    for _ in range(runs):
        t0 = time.perf_counter()
        proc = subprocess.run(argv, capture_output=True, timeout=120)
        out.append((time.perf_counter() - t0) * 1000)
        assert proc.stdout == b"2\n", proc
    return out


def runsc_do_python(runs: int) -> dict[str, float] | None:
    """``runsc do`` of the host's python3: the reference a user could pick instead of msb."""
    from engine.vm.runsc import find_runsc

    try:
        runsc = find_runsc()
    except Exception:
        return None
    python = shutil.which("python3", path="/usr/bin") or "/usr/bin/python3"
    return summary(_timed([runsc, "--network=none", "do", python, "-c", PRINT], runs))


async def run(cold_runs: int = 10, rtt_runs: int = 200, py_runs: int = 10) -> dict[str, Any]:
    verdicts = await probe_backends()
    per: dict[str, Any] = {}
    for v in verdicts:
        if not v.usable:
            per[v.name] = {"usable": False, "reason": v.reason}
            continue
        engine = Engine(backend=v.name, templates=False)  # cold boots; restores are bench/instant.py's
        await engine.prepare()
        cold = await _cold(engine, v.name, cold_runs)
        rtt = await _rtt(engine, v.name, rtt_runs)
        py = await _fresh_python(engine, v.name, py_runs)
        per[v.name] = {
            "usable": True, "label": backend_label(v.name, v.accel), "accel": v.accel, "version": v.version,
            "cold_start_ms": summary(cold), "exec_rtt_ms": summary(rtt), "fresh_python_run_ms": summary(py),
        }  # fmt: skip
    ref = runsc_do_python(py_runs)
    host = summary(_timed(["/usr/bin/python3", "-c", PRINT], py_runs))
    for entry in per.values():
        if entry.get("usable") and ref:
            entry["fresh_python_vs_runsc_ratio"] = round(entry["fresh_python_run_ms"]["p50"] / ref["p50"], 2)
    return {
        "backends": per,
        "runsc_do_python_ms": ref,
        "host_python_ms": host,
        "host": {"cpus": os.cpu_count(), "uname": " ".join(os.uname())},
    }
