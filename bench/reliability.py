"""`make bench` section "reliability": load, density and growth, soak (issue 17).

- **Load** (bench/reliability_load.py): 50 sandboxes (busybox and microsandbox/python) × 100
  executions each through the server with the SDK, every output checked (goal: 0 lost,
  truncated or crossed, 0 errors), then the same through the engine API; and one start past
  the server's sandbox limit, which must be refused with its error.
- **Density** (bench/reliability_density.py): idle sandboxes per backend up to a cap (goal
  ≥ 200 on at least one backend), PSS per sandbox and exec latency at N = 10, 50, 100, 200,
  and sustained start rates.
- **Soak** (bench/reliability_soak.py): start/exec/stop churn through a server per backend
  for ``--soak-minutes`` (default 30); server RSS, fds and cache size sampled (goal: RSS
  growth < 10 %).

Writes ``bench/results/reliability.json`` and ``docs/img/reliability-density.svg``. Run one
part alone with ``python -m bench.reliability --parts density``.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import tempfile
import time
from pathlib import Path
from typing import Any

from bench import reliability_density, reliability_load, reliability_soak

ROOT = Path(__file__).resolve().parent.parent
RESULT = ROOT / "bench" / "results" / "reliability.json"
PLOT = ROOT / "docs" / "img" / "reliability-density.svg"
PARTS = ("load", "density", "soak")
DENSITY_RUNS: tuple[tuple[str, str | None, float | None], ...] = (
    ("gvisor", "systrap", 50.0),
    ("gvisor", "ptrace", None),
    ("qemu", None, None),
    ("krun", None, None),
)
"""(backend, gVisor platform, MSB_MAX_CPU_PRESSURE) per density run: systrap idles at a few %
of a core per sandbox, so its run has the CPU pressure limit on (the limit that refuses the
next start cleanly); the others are bounded by memory (the host reserve)."""


async def run(parts: list[str], backends: list[str], soak_minutes: float, quick: bool) -> dict[str, Any]:
    """The parts asked for, in order, on each backend; merged into the stored results so a
    part run alone keeps the others' figures."""
    out: dict[str, Any] = json.loads(RESULT.read_text()) if RESULT.exists() else {}
    out["host"] = {"cpus": os.cpu_count(), "mem_total_mib": _mem_total_mib()}
    sandboxes, execs = (6, 10) if quick else (50, 100)
    with tempfile.TemporaryDirectory(prefix="msb-rel-") as tmp:
        work = Path(tmp)
        if "load" in parts:
            for b in backends:
                _merge(out, "load", await reliability_load.run(b, sandboxes, execs, 256, work))
        if "density" in parts:
            out["density"] = [e for e in out.get("density", []) if "platform" in e]  # older runs' format
            for backend, platform, pressure in DENSITY_RUNS:
                if backend not in backends:
                    continue
                entry = await reliability_density.ramp(backend, 20 if quick else 200, 5 if quick else 25, 128,
                                                       platform=platform, max_cpu_pressure=pressure)  # fmt: skip
                entry["start_rates"] = await reliability_density.start_rates(backend, 3 if quick else 10, 128,
                                                                             platform=platform)  # fmt: skip
                _merge(out, "density", entry)
            out.pop("start_rates", None)  # kept per run now
            if "gvisor" in backends:
                out["gvisor_platforms"] = [await reliability_density.platform_costs(p) for p in ("systrap", "ptrace")]
        if "soak" in parts:
            out["soak"] = await reliability_soak.run(backends, 1 if quick else soak_minutes, work)
    out["measured_at"] = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())
    return out


def _merge(out: dict[str, Any], part: str, entry: dict[str, Any]) -> None:
    """Put ``entry`` into the list ``out[part]``, replacing the one of the same backend (and gVisor
    platform), so a backend run alone keeps the others' figures."""
    key = (entry["backend"], entry.get("platform"))
    rest = [e for e in out.get(part, []) if (e["backend"], e.get("platform")) != key]
    out[part] = [*rest, entry]


def _mem_total_mib() -> int:
    with open("/proc/meminfo") as f:
        return int(f.readline().split()[1]) // 1024


# ---------------------------------------------------------------------------------- report


def _load_rows(r: dict[str, Any]) -> list[str]:
    rows = ["| backend | path | sandboxes × execs | ok | lost | truncated | crossed | errors | p50 ms | p99 ms "
            "| exec/s |", "|---|---|---|---|---|---|---|---|---|---|---|"]  # fmt: skip
    for run in r.get("load", []):
        for path, key in (("server + SDK", "server_sdk"), ("engine API", "engine")):
            x = run[key]
            rows.append(f"| {run['backend']} | {path} | {run['sandboxes']} × {run['execs_each']} | {x['ok']} | "
                        f"{x['lost']} | {x['truncated']} | {x['crossed']} | {x['errors']} | {x['p50_ms']} | "
                        f"{x['p99_ms']} | {x['exec_per_s']} |")  # fmt: skip
    return rows


def label(d: dict[str, Any]) -> str:
    """``gvisor/systrap``, ``qemu``: a density run's name."""
    return f"{d['backend']}/{d['platform']}" if d.get("platform") else str(d["backend"])


def _density_rows(r: dict[str, Any]) -> list[str]:
    rows = ["| backend | N | PSS / sandbox (MiB) | MemAvailable drop / sandbox (MiB) | idle CPU / sandbox "
            "(% of a core) | exec p50 / p99 ms | starts/s |", "|---|---|---|---|---|---|---|"]  # fmt: skip
    for d in r.get("density", []):
        for p in d["points"]:
            rows.append(f"| {label(d)} | {p['n']} | {p['pss_per_sandbox_mib']} | "
                        f"{p['mem_available_drop_per_sandbox_mib']} | {p.get('idle_cpu_pct_per_sandbox', '–')} | "
                        f"{p['exec_p50_ms']} / {p['exec_p99_ms']} | "
                        f"{p['starts_per_s']} |")  # fmt: skip
    return rows


def render(r: dict[str, Any]) -> str:
    """The docs/benchmarks.md section."""
    host = r.get("host", {})
    out = [f"Measured {r.get('measured_at', '?')} on {host.get('cpus')} cores, "
           f"{host.get('mem_total_mib', 0) / 1024:.0f} GiB (bench/reliability.py).", ""]  # fmt: skip
    if r.get("load"):
        out += ["**Load**: every execution prints 64 lines of a token of its own and their sha256, checked "
                "on the host.", "", *_load_rows(r), ""]  # fmt: skip
        for run in r["load"]:
            out.append(f"- {run['backend']}: one start past the server's limit (MSB_MAX_SANDBOXES="
                       f"{run['sandboxes']}): {run['server_sdk'].get('limit_refusal')}")  # fmt: skip
        out.append("")
    if r.get("density"):
        out += ["**Density** (idle busybox sandboxes of 128 MiB, started one after another):", "",
                *_density_rows(r), ""]  # fmt: skip
        for d in r["density"]:
            limit = f"MSB_MAX_CPU_PRESSURE={d['max_cpu_pressure']:g}" if d.get("max_cpu_pressure") else "memory reserve"
            why = d["stopped_by"] + (": " + d["error"].splitlines()[0] if d["error"] else "")
            out.append(f"- **{label(d)}** (limit in force: {limit}): {d['reached']} of a cap of {d['cap']} started "
                       f"(stopped by: {why}); {d['alive_at_end']} alive at the end, start kinds {d['start_kinds']}, "
                       f"all stopped in {d['stop_all_s']} s. With all of them running, one more start with the "
                       f"memory reserve set above what was available: {d.get('reserve_refusal')}. Sustained "
                       f"start+stop rates (sandboxes/s): {json.dumps(d.get('start_rates', {}))}")  # fmt: skip
        out += ["", "![PSS per sandbox and exec latency against N](img/reliability-density.svg)", ""]
    if r.get("gvisor_platforms"):
        out += ["**gVisor platforms** (MSB_GVISOR_PLATFORM; one busybox sandbox each):", "",
                "| platform | exec `true` p50 ms | 300 fork+exec (s) | 80 MB in 4 KiB syscalls (s) | idle CPU "
                "(% of a core) |", "|---|---|---|---|---|"]  # fmt: skip
        for g in r["gvisor_platforms"]:
            out.append(f"| {g['platform']} | {g['exec_true_p50_ms']} | {g['forks_300_s']} | {g['syscall_io_s']} | "
                       f"{g['idle_cpu_pct']} |")  # fmt: skip
        out.append("")
    soak = r.get("soak")
    if soak:
        out += [f"**Soak**: {soak['minutes']:.0f} min of start/exec/stop churn ({soak['workers_per_server']} "
                "clients per server):", "",
                "| backend | cycles | execs ok | errors | RSS start → end (MiB) | RSS growth | fds start → end "
                "| flat |",
                "|---|---|---|---|---|---|---|---|"]  # fmt: skip
        for b, s in soak.items():
            if isinstance(s, dict) and "samples" in s:
                a, z = s["samples"][0], s["samples"][-1]
                g = "n/a" if s["rss_growth"] is None else f"{s['rss_growth'] * 100:+.1f} %"
                out.append(f"| {b} | {s['cycles']} | {s['ok']} | {s['errors']} | {a['rss_mib']} → {z['rss_mib']} "
                           f"| {g} | {a['fds']} → {z['fds']} | {'yes' if s['flat'] else 'NO'} |")  # fmt: skip
        out.append("")
    return "\n".join(out)


def plot(r: dict[str, Any]) -> str:
    """A hand-written SVG: PSS per sandbox (left) and exec p50 (right) against N, per backend."""
    colours = {"gvisor/systrap": "#1f77b4", "gvisor/ptrace": "#17becf", "gvisor": "#1f77b4", "qemu": "#d62728",
               "krun": "#2ca02c"}  # fmt: skip
    w, h, pad = 360, 240, 44
    parts = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{2 * w}" height="{h}" font-family="sans-serif" '
             'font-size="11">', '<rect width="100%" height="100%" fill="white"/>']  # fmt: skip
    for panel, (key, title) in enumerate((("pss_per_sandbox_mib", "PSS per sandbox (MiB)"),
                                          ("exec_p50_ms", "exec p50 (ms)"))):  # fmt: skip
        x0 = panel * w
        series = {label(d): [(p["n"], p[key]) for p in d["points"]] for d in r.get("density", [])}
        xs = [n for pts in series.values() for n, _ in pts] or [1]
        ys = [v for pts in series.values() for _, v in pts] or [1]
        xmax, ymax = max(xs), max(ys) * 1.15 or 1

        def sx(n: float, x0: int = x0, xmax: float = xmax) -> float:
            return x0 + pad + (n / xmax) * (w - 2 * pad)

        def sy(v: float, ymax: float = ymax) -> float:
            return h - pad - (v / ymax) * (h - 2 * pad)

        parts += [f'<text x="{x0 + w / 2}" y="16" text-anchor="middle">{title} vs idle sandboxes N</text>',
                  f'<line x1="{x0 + pad}" y1="{h - pad}" x2="{x0 + w - pad}" y2="{h - pad}" stroke="black"/>',
                  f'<line x1="{x0 + pad}" y1="{pad}" x2="{x0 + pad}" y2="{h - pad}" stroke="black"/>',
                  f'<text x="{x0 + pad - 4}" y="{pad + 4}" text-anchor="end">{ymax:.0f}</text>',
                  f'<text x="{x0 + pad - 4}" y="{h - pad}" text-anchor="end">0</text>',
                  f'<text x="{x0 + w - pad}" y="{h - pad + 14}" text-anchor="end">N = {xmax}</text>']  # fmt: skip
        for i, (backend, pts) in enumerate(series.items()):
            c = colours.get(backend, "#555")
            line = " ".join(f"{sx(n):.1f},{sy(v):.1f}" for n, v in pts)
            parts.append(f'<polyline points="{line}" fill="none" stroke="{c}" stroke-width="2"/>')
            parts += [f'<circle cx="{sx(n):.1f}" cy="{sy(v):.1f}" r="3" fill="{c}"/>' for n, v in pts]
            parts.append(f'<text x="{x0 + pad + 8}" y="{pad + 14 * (i + 1)}" fill="{c}">{backend}</text>')
    parts.append("</svg>")
    return "\n".join(parts) + "\n"


def save(r: dict[str, Any], parts: list[str]) -> dict[str, Any]:
    """Merge this run's parts into the stored results as they are now (another part may have
    been saved while this one ran) and write them; the merged results."""
    RESULT.parent.mkdir(parents=True, exist_ok=True)
    stored: dict[str, Any] = json.loads(RESULT.read_text()) if RESULT.exists() else {}
    keys = {"load": ["load"], "density": ["density", "gvisor_platforms"], "soak": ["soak"]}
    for part in parts:
        for key in keys.get(part, []):
            if key in r:
                stored[key] = r[key]
    stored.pop("start_rates", None)
    stored["host"], stored["measured_at"] = r["host"], r["measured_at"]
    r = stored
    RESULT.write_text(json.dumps(r, indent=2) + "\n")
    if r.get("density"):
        PLOT.write_text(plot(r))
    return r


def main() -> None:
    from bench.run import write_doc

    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--parts", default=",".join(PARTS), help="comma-separated: load,density,soak")
    parser.add_argument("--backends", default=os.environ.get("MSB_TEST_BACKENDS", "gvisor,qemu"))
    parser.add_argument("--soak-minutes", type=float, default=30.0)
    parser.add_argument("--quick", action="store_true")
    args = parser.parse_args()
    backends = [b.strip() for b in args.backends.split(",") if b.strip()]
    parts = [p for p in args.parts.split(",") if p]
    r = save(asyncio.run(run(parts, backends, args.soak_minutes, args.quick)), parts)
    write_doc("reliability", render(r))
    print(json.dumps({k: v for k, v in r.items() if k not in ("soak",)}, indent=2)[:6000])


if __name__ == "__main__":
    main()
