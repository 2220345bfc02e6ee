"""Instant sandboxes (issue 8), all in one run, on QEMU (TCG here):

- cold boot → first exec result (templates off), for the ratio;
- building a template (boot + save), once;
- restore → first exec result (``Engine.start`` from the template + ``exec(["true"])``);
- pool hit → first exec result (``WarmPool.take`` + ``exec(["true"])``), members' memory;
- a fresh sandbox running ``print(1+1)`` through the SDK: an msb server (its own process,
  ``--pool microsandbox/python=2``), ``PythonSandbox.start(ephemeral=True)`` + ``run`` until
  the output is back; the stop after it is timed separately;
- beside it, ``runsc do /usr/bin/python3 -c 'print(1+1)'`` (bench/backends.py).

Two shapes, network ``none``: busybox (256 MiB; its ``true`` is a static binary, so the rows
measure the start path) and ``microsandbox/python`` (512 MiB; its ``true`` is dynamically
linked, whose loader alone costs ~20 ms per exec under TCG).
"""

from __future__ import annotations

import asyncio
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx

from bench.backends import runsc_do_python
from bench.engine import BUSYBOX, summary
from engine.images.resolve import resolve_root
from engine.sandbox.engine import Engine
from engine.sandbox.instant import Restorer
from engine.sandbox.metrics import process_pss_mib, process_rss_mib
from engine.sandbox.pool import PoolShape, WarmPool
from engine.sandbox.spec import SandboxSpec
from engine.vm.template import TemplateStore

IMAGE = "microsandbox/python"
POOL_SIZE = 2


async def _until(cond: Any, timeout: float = 300) -> None:
    end = time.monotonic() + timeout
    while not cond():
        if time.monotonic() > end:
            raise TimeoutError("bench: condition not reached")
        await asyncio.sleep(0.02)


async def _first_exec(engine: Engine, spec: SandboxSpec, runs: int) -> tuple[list[float], list[float]]:
    """Start → ready, and start → first exec result, per run."""
    ready, first = [], []
    for i in range(runs):
        t0 = time.perf_counter()
        sb = await engine.start(spec.model_copy(update={"name": f"{spec.name}-{i}"}))
        t1 = time.perf_counter()
        res = await sb.exec(["true"])
        t2 = time.perf_counter()
        assert res.exit_code == 0
        ready.append((t1 - t0) * 1000)
        first.append((t2 - t0) * 1000)
        await sb.kill()
    return ready, first


async def _pool(engine: Engine, spec: SandboxSpec, runs: int) -> dict[str, Any]:
    pool = WarmPool(engine)
    pool.add(PoolShape(label=IMAGE, spec=spec, size=POOL_SIZE))
    pool.start()
    take, first = [], []
    try:
        await _until(lambda: pool.status()[0].ready == POOL_SIZE)
        pids = [m.sandbox.vm.pid for m in pool._slots[0].members]
        rss = [process_rss_mib(p) or 0.0 for p in pids]
        pss = [process_pss_mib(p) or 0.0 for p in pids]
        for i in range(runs):
            await _until(lambda: pool.status()[0].ready == POOL_SIZE)
            t0 = time.perf_counter()
            got = await pool.take(spec.model_copy(update={"name": f"bench-take-{i}"}))
            t1 = time.perf_counter()
            assert got is not None, "pool miss"
            res = await got[0].exec(["true"])
            t2 = time.perf_counter()
            assert res.exit_code == 0 and got[0].start_info.kind == "pool"
            take.append((t1 - t0) * 1000)
            first.append((t2 - t0) * 1000)
            await got[0].kill()
        return {
            "take_ms": summary(take), "pool_hit_to_first_exec_ms": summary(first),
            "pool_member_rss_mib": round(max(rss), 1), "pool_member_pss_mib": round(max(pss), 1),
        }  # fmt: skip
    finally:
        await pool.close()


def _port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


async def _sdk_fresh_python(runs: int) -> dict[str, Any]:
    """Through the SDK against a server with a warm pool of the python image."""
    from engine.client import PythonSandbox

    storage = Path(tempfile.mkdtemp(prefix="msb-bench-instant-"))
    port = _port()
    env = {**os.environ, "MSB_STORAGE_PATH": str(storage), "MSB_PORT": str(port), "MSB_LOG_LEVEL": "warning"}
    log = open(storage / "server.log", "ab")  # noqa: SIM115 - the child owns it
    proc = subprocess.Popen([sys.executable, "-m", "engine.cli.main", "server", "start", "--dev", "--backend",
                             "qemu", "--pool", f"{IMAGE}={POOL_SIZE}"], env=env, stdout=log, stderr=log)  # fmt: skip
    base = f"http://127.0.0.1:{port}"
    run_ms, stop_ms, kinds = [], [], []
    try:
        async with httpx.AsyncClient(timeout=60) as http:

            async def pool_ready() -> bool:
                try:
                    r = await http.post(f"{base}/api/v1/rpc", json={"jsonrpc": "2.0", "id": 1,
                                                                   "method": "server.info", "params": {}})  # fmt: skip
                    pools = r.json().get("result", {}).get("pools") or []
                    return bool(pools) and all(p["ready"] == p["size"] for p in pools)
                except httpx.HTTPError:
                    return False

            async def wait_pool() -> None:
                end = time.monotonic() + 300
                while not await pool_ready():
                    if proc.poll() is not None or time.monotonic() > end:
                        raise RuntimeError(f"bench server did not fill its pool; see {storage / 'server.log'}")
                    await asyncio.sleep(0.05)

            await wait_pool()
            for i in range(runs):
                await wait_pool()
                sb = PythonSandbox(server_url=base, name=f"bench-fresh-{i}")
                t0 = time.perf_counter()
                await sb.start(ephemeral=True)
                exe = await sb.run("print(1+1)")
                out = await exe.output()
                t1 = time.perf_counter()
                assert out.strip() == "2", out
                kinds.append(await sb.metrics.started_by())
                await sb.stop()
                t2 = time.perf_counter()
                run_ms.append((t1 - t0) * 1000)
                stop_ms.append((t2 - t1) * 1000)
    finally:
        proc.terminate()
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.kill()
        shutil.rmtree(storage, ignore_errors=True)
    return {"fresh_python_run_ms": summary(run_ms), "fresh_python_stop_ms": summary(stop_ms), "started_by": kinds}


async def _shape(spec: SandboxSpec, boot_runs: int, restore_runs: int, pool_runs: int) -> dict[str, Any]:
    """Every engine row for one sandbox shape, with a template built in this run."""
    cold = Engine(backend="qemu", templates=False)
    engine = Engine(backend="qemu")
    await engine.prepare()
    store_dir = Path(tempfile.mkdtemp(prefix="msb-bench-templates-"))
    engine._restorer = Restorer(engine.backend, TemplateStore(store_dir))
    out: dict[str, Any] = {"memory_mib": spec.memory_mib}
    try:
        _, boot_first = await _first_exec(cold, spec, boot_runs)
        t0 = time.perf_counter()
        first = await engine.start(spec.model_copy(update={"name": f"{spec.name}-template"}))
        out["first_start_with_template_build_ms"] = round((time.perf_counter() - t0) * 1000, 1)
        assert first.start_info.kind == "restore", first.start_info
        await first.kill()
        (tpl,) = [d for d in (store_dir / "templates").iterdir() if d.is_dir()]
        meta = TemplateStore(store_dir).find(tpl.name)
        assert meta is not None
        out["template"] = {"build_ms": round(meta.build_ms, 1), "state_kib": meta.state_bytes >> 10,
                           "ram_file_mib_on_disk": round(os.stat(meta.ram).st_blocks * 512 / 2**20, 1)}  # fmt: skip
        ready, restore_first = await _first_exec(engine, spec, restore_runs)
        out["boot_to_first_exec_ms"] = summary(boot_first)
        out["restore_to_ready_ms"] = summary(ready)
        out["restore_to_first_exec_ms"] = summary(restore_first)
        out["restore_vs_boot_ratio"] = round(summary(restore_first)["p50"] / summary(boot_first)["p50"], 3)
        out.update(await _pool(engine, spec, pool_runs))
        out["exec_rtt_ms"] = await _rtt(engine, spec)
    finally:
        shutil.rmtree(store_dir, ignore_errors=True)
    return out


async def _rtt(engine: Engine, spec: SandboxSpec, runs: int = 50) -> dict[str, float]:
    """Steady-state exec round trip of ``true`` in this shape (the floor under a first exec)."""
    sb = await engine.start(spec.model_copy(update={"name": f"{spec.name}-rtt"}))
    try:
        for _ in range(5):
            await sb.exec(["true"])
        xs = []
        for _ in range(runs):
            t0 = time.perf_counter()
            await sb.exec(["true"])
            xs.append((time.perf_counter() - t0) * 1000)
        return summary(xs)
    finally:
        await sb.kill()


async def run(boot_runs: int = 5, restore_runs: int = 20, pool_runs: int = 30, py_runs: int = 15) -> dict[str, Any]:
    root = await resolve_root(IMAGE)
    shapes = {
        "busybox": SandboxSpec(name="bench-bb", rootfs=BUSYBOX, memory_mib=256, network="none"),
        IMAGE: root.spec("bench-py", memory_mib=512, network="none"),
    }
    accel = (await Engine(backend="qemu").prepare()).accel.accel
    out: dict[str, Any] = {"backend": "qemu", "accel": accel, "shapes": {}}
    for label, spec in shapes.items():
        out["shapes"][label] = await _shape(spec, boot_runs, restore_runs, pool_runs)
    # the keys: the busybox shape, whose `true` is a static binary, so the rows measure
    # the start path and not a dynamic loader under emulation (the python image's are beside)
    main = out["shapes"]["busybox"]
    for key in ("restore_to_first_exec_ms", "pool_hit_to_first_exec_ms", "pool_member_rss_mib",
                "pool_member_pss_mib"):  # fmt: skip
        out[key] = main[key]
    out.update(await _sdk_fresh_python(py_runs))
    ref = runsc_do_python(py_runs)
    out["runsc_do_python_ms"] = ref
    if ref:
        out["fresh_python_vs_runsc_ratio"] = round(out["fresh_python_run_ms"]["p50"] / ref["p50"], 3)
    return out


def render(r: dict[str, Any], row: Any) -> str:
    """The docs/benchmarks.md section of a run (``row`` makes one table row)."""
    shapes: dict[str, dict[str, Any]] = r["shapes"]

    def stat(d: dict[str, Any], k: str) -> str:
        return f"p50 {d[k]['p50']} / p95 {d[k]['p95']} (n={d[k]['n']})"

    def template(d: dict[str, Any]) -> str:
        t = d["template"]
        return f"{t['build_ms']} (state {t['state_kib']} KiB, RAM file {t['ram_file_mib_on_disk']} MiB on disk)"

    def memory(d: dict[str, Any]) -> str:
        return f"{d['pool_member_rss_mib']} / {d['pool_member_pss_mib']}"

    def line(name: str, cell: Any, target: str = "") -> str:
        return f"| {name} | " + " | ".join(cell(d) for d in shapes.values()) + f" | {target} |"

    head = " | ".join(f"{label} ({d['memory_mib']} MiB)" for label, d in shapes.items())
    ref = r.get("runsc_do_python_ms")
    lines = [
        f"Run {r['measured_at']} on {r['host']['cpus']} CPUs, QEMU with accelerator **{r['accel']}**, all rows in "
        "one run. Restore = a new QEMU process that maps the template's RAM file copy-on-write, loads its device "
        "state and takes a fresh identity (entropy, clock, hostname); then `true` runs. Pool hit = `WarmPool.take` "
        "(identity included) + `true` in a member restored and warmed earlier. Busybox's `true` is a static binary; "
        "the python image's is dynamically linked, and its loader costs ~20 ms per exec under TCG (the "
        "steady-state exec row is that floor).",
        "",
        f"| measure | {head} | target under TCG |",
        "|---|" + "---|" * len(shapes) + "---|",
        line("cold boot → first exec result (templates off, ms)", lambda d: stat(d, "boot_to_first_exec_ms")),
        line("template build, once per shape (boot + warm-up + save, ms)", template),
        line("restore → ready (ms)", lambda d: stat(d, "restore_to_ready_ms")),
        line("**restore → first exec result (ms)**", lambda d: stat(d, "restore_to_first_exec_ms"), "≤ 100 ms p50"),
        line("ratio restore / cold boot (first exec)", lambda d: str(d["restore_vs_boot_ratio"])),
        line("pool take, identity included (ms)", lambda d: stat(d, "take_ms")),
        line("**pool hit → first exec result (ms)**", lambda d: stat(d, "pool_hit_to_first_exec_ms"), "≤ 5 ms p50"),
        line("steady-state exec round trip of `true` (ms)", lambda d: stat(d, "exec_rtt_ms")),
        line("idle pool member: RSS / PSS of its QEMU (MiB)", memory),
        "",
        f"Fresh python through the SDK: an msb server (`--backend qemu --pool {IMAGE}={POOL_SIZE}`, its own "
        "process); `PythonSandbox.start(ephemeral=True)` + `run('print(1+1)')` until the output is back, each run "
        "after the pool has refilled.",
        "",
        "| measure | result | target |",
        "|---|---|---|",
        row("**fresh sandbox running `print(1+1)` through the SDK (ms)**", stat(r, "fresh_python_run_ms")),
        row("… its stop afterwards (ms)", stat(r, "fresh_python_stop_ms")),
    ]
    if ref:
        lines.append(row("reference: `runsc do /usr/bin/python3 -c 'print(1+1)'` (ms)",
                         f"p50 {ref['p50']} / p95 {ref['p95']} (n={ref['n']})"))  # fmt: skip
        lines.append(row("**ratio fresh python via SDK / runsc do**", r["fresh_python_vs_runsc_ratio"], "≤ 0.5"))
    lines += [
        "",
        "PSS counts the template's shared pages by share: it is what one more member costs the host. "
        f"The SDK's sandboxes reported `started_by`: {sorted(set(map(str, r.get('started_by', []))))}. "
        "The top-level keys of bench/results/instant.json (`restore_to_first_exec_ms`, "
        "`pool_hit_to_first_exec_ms`, `pool_member_*`) are the busybox shape's.",
    ]
    return "\n".join(lines)
