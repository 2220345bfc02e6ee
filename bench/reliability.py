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


async def run(parts: list[str], backends: list[str], soak_minutes: float, quick: bool) -> dict[str, Any]:
    """The parts asked for, in order, on each backend; merged into the stored results so a
    part run alone keeps the others' figures."""
    out: dict[str, Any] = json.loads(RESULT.read_text()) if RESULT.exists() else {}
    out["host"] = {"cpus": os.cpu_count(), "mem_total_mib": _mem_total_mib()}
    sandboxes, execs = (6, 10) if quick else (50, 100)
    with tempfile.TemporaryDirectory(prefix="msb-rel-") as tmp:
        work = Path(tmp)
        if "load" in parts:
            out["load"] = [await reliability_load.run(b, sandboxes, execs, 256, work) for b in backends]
        if "density" in parts:
            caps = {"gvisor": 200, "qemu": 200, "krun": 100}
            out["density"] = [await reliability_density.ramp(b, 20 if quick else caps.get(b, 100), 5 if quick else 25,
                                                             128) for b in backends]  # fmt: skip
            out["start_rates"] = {b: await reliability_density.start_rates(b, 3 if quick else 10, 128)
                                  for b in backends}  # fmt: skip
        if "soak" in parts:
            out["soak"] = await reliability_soak.run(backends, 1 if quick else soak_minutes, work)
    out["measured_at"] = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())
    return out


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


def _density_rows(r: dict[str, Any]) -> list[str]:
    rows = ["| backend | N | PSS / sandbox (MiB) | MemAvailable drop / sandbox (MiB) | exec p50 / p99 ms | starts/s |",
            "|---|---|---|---|---|---|"]  # fmt: skip
    for d in r.get("density", []):
        for p in d["points"]:
            rows.append(f"| {d['backend']} | {p['n']} | {p['pss_per_sandbox_mib']} | "
                        f"{p['mem_available_drop_per_sandbox_mib']} | {p['exec_p50_ms']} / {p['exec_p99_ms']} | "
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
            out.append(f"- {d['backend']}: {d['reached']} of a cap of {d['cap']} started ({d['stopped_by']}"
                       f"{'; ' + d['error'].splitlines()[0] if d['error'] else ''}), "
                       f"{d['alive_at_end']} alive at the end, "
                       f"start kinds {d['start_kinds']}, all stopped in {d['stop_all_s']} s")  # fmt: skip
        rates = r.get("start_rates", {})
        out += [f"- sustained start+stop rate (sandboxes/s): {json.dumps(rates)}", "",
                "![PSS per sandbox and exec latency against N](img/reliability-density.svg)", ""]  # fmt: skip
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
    colours = {"gvisor": "#1f77b4", "qemu": "#d62728", "krun": "#2ca02c"}
    w, h, pad = 360, 240, 44
    parts = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{2 * w}" height="{h}" font-family="sans-serif" '
             'font-size="11">', '<rect width="100%" height="100%" fill="white"/>']  # fmt: skip
    for panel, (key, title) in enumerate((("pss_per_sandbox_mib", "PSS per sandbox (MiB)"),
                                          ("exec_p50_ms", "exec p50 (ms)"))):  # fmt: skip
        x0 = panel * w
        series = {d["backend"]: [(p["n"], p[key]) for p in d["points"]] for d in r.get("density", [])}
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


def save(r: dict[str, Any]) -> None:
    RESULT.parent.mkdir(parents=True, exist_ok=True)
    RESULT.write_text(json.dumps(r, indent=2) + "\n")
    if r.get("density"):
        PLOT.write_text(plot(r))


def main() -> None:
    from bench.run import write_doc

    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--parts", default=",".join(PARTS), help="comma-separated: load,density,soak")
    parser.add_argument("--backends", default=os.environ.get("MSB_TEST_BACKENDS", "gvisor,qemu"))
    parser.add_argument("--soak-minutes", type=float, default=30.0)
    parser.add_argument("--quick", action="store_true")
    args = parser.parse_args()
    backends = [b.strip() for b in args.backends.split(",") if b.strip()]
    r = asyncio.run(run([p for p in args.parts.split(",") if p], backends, args.soak_minutes, args.quick))
    save(r)
    write_doc("reliability", render(r))
    print(json.dumps({k: v for k, v in r.items() if k not in ("soak",)}, indent=2)[:6000])


if __name__ == "__main__":
    main()
