"""`make bench`: run the benchmarks, write bench/results/<name>.json and docs/benchmarks.md.

Every number in docs/benchmarks.md is produced here, in one run; targets are printed beside
results, never in place of them.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import re
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "bench" / "results"
DOC = ROOT / "docs" / "benchmarks.md"


def _row(name: str, value: object, target: str = "") -> str:
    return f"| {name} | {value} | {target} |"


def render_engine(r: dict[str, Any]) -> str:
    lines = [
        f"Run {r['measured_at']} on {r['host']['cpus']} CPUs, accelerator **{r['accel']}**, "
        f"default kernel **{r['default_kernel']}**.",
        "",
    ]
    for kind, k in r["kernels"].items():
        tgt_cold = "≤ 2000 ms p50 (Debian kernel)" if kind == "debian" else "≤ 800 ms p50 (minimal kernel)"
        lines += [
            f"### Kernel: {kind} ({k['kernel']['version']})",
            "",
            "| measure | result | target under TCG |",
            "|---|---|---|",
            _row("cold start → first exec result (ms)",
                 f"p50 {k['cold_start_ms']['p50']} / p95 {k['cold_start_ms']['p95']} (n={k['cold_start_ms']['n']})",
                 tgt_cold),
            _row("floor: raw QEMU boot of this kernel to a trivial /init (ms)",
                 f"p50 {k['floor_qemu_boot_ms']['p50']}", ""),
            _row("exec round trip of `true` (ms)",
                 f"p50 {k['exec_rtt_ms']['p50']} / p95 {k['exec_rtt_ms']['p95']} (n={k['exec_rtt_ms']['n']})",
                 "≤ 2 ms p50"),
            _row("channel PING round trip, 100 B (ms)",
                 f"p50 {k['channel_rtt_ms']['p50']} / p95 {k['channel_rtt_ms']['p95']}", ""),
            _row("stdout throughput (MB/s, 100 MiB)", k["stdout_mb_s"], "≥ 100 MB/s"),
            _row("host RSS of an idle 512 MiB sandbox (MiB)", k["idle_rss_mib"], ""),
            _row("ratio: cold start / raw boot floor",
                 round(k["cold_start_ms"]["p50"] / k["floor_qemu_boot_ms"]["p50"], 2), ""),
            _row("ratio: exec RTT / host subprocess floor",
                 round(k["exec_rtt_ms"]["p50"] / r["floor_subprocess_ms"]["p50"], 2), ""),
            "",
        ]
    lines += [
        "The machine is a shared 2-core VM whose speed drifts from hour to hour (TCG numbers "
        "moved by up to 2x between runs on the same day), so compare the ratios to the floors "
        "measured in the same run rather than absolute numbers across runs.",
        "",
        "Floor in the same run: host `subprocess.run([\"true\"])` "
        f"p50 {r['floor_subprocess_ms']['p50']} ms / p95 {r['floor_subprocess_ms']['p95']} ms.",
    ]
    return "\n".join(lines)


def render_images(r: dict[str, Any]) -> str:
    mb = r["image_bytes"] / 1e6
    lines = [
        f"Run {r['measured_at']} on {r['host']['cpus']} CPUs. A {mb:.0f} MB image in {r['layers']} gzip layers, "
        "served by Debian's docker-registry on 127.0.0.1; each client pulls into an empty store/directory "
        "(runs interleaved).",
        "",
        "| measure | result | target |",
        "|---|---|---|",
        _row("`msb` pull (ms)", f"p50 {r['msb_pull_ms']['p50']} (min {r['msb_pull_ms']['min']}, "
             f"n={r['msb_pull_ms']['n']})", ""),
        _row("`skopeo copy docker://… oci:…` (ms)", f"p50 {r['skopeo_copy_ms']['p50']} "
             f"(min {r['skopeo_copy_ms']['min']}, n={r['skopeo_copy_ms']['n']})", ""),
        _row("ratio msb / skopeo", r["pull_vs_skopeo_ratio"], "≤ 1.2"),
        _row("second pull of a cached image, API (ms)", f"p50 {r['cached_pull']['p50']} "
             f"/ max {r['cached_pull']['max']}", "≤ 50 ms"),
        _row("same through the CLI, incl. Python start-up (ms)", f"p50 {r['cached_pull_cli_ms']['p50']}", ""),
    ]
    for label, v in r["rootfs"].items():
        lines.append(_row(f"rootfs build (layers → tree → ext4), {label} (ms)", f"p50 {v['build_ms']['p50']}", ""))
        lines.append(_row(f"rootfs cache hit, {label} (ms)", f"p50 {v['cache_hit_ms']['p50']}", ""))
    lines += [
        "",
        "Both clients verify every blob's digest; msb fetches up to 4 layers at once. The cached pull "
        "is one manifest request plus local checks; through the CLI most of the time is Python "
        "start-up and imports. A rootfs build applies the layers (hostile-input checks, diff_id "
        "verification) and makes the ext4 image; it happens once per image manifest.",
    ]
    return "\n".join(lines)


def render_server(r: dict[str, Any]) -> str:
    c = r["concurrent"]
    lines = [
        f"Run {r['measured_at']} on {r['host']['cpus']} CPUs, backend **{r.get('backend', 'qemu')}** (the "
        f"default here; accelerator {r['accel']}). The server runs as "
        "its own process (`msb server start --dev`, uvicorn with uvloop/httptools) on 127.0.0.1; the client "
        "is httpx in the bench process; \"direct\" is the bench process's own engine on an identical "
        "busybox sandbox, runs interleaved.",
        "",
        "| measure | result | target |",
        "|---|---|---|",
        _row("`true` via direct engine exec (ms)",
             f"p50 {r['direct_exec_ms']['p50']} / p95 {r['direct_exec_ms']['p95']}", ""),
        _row("`true` via `sandbox.command.run` over HTTP (ms)",
             f"p50 {r['rpc_command_ms']['p50']} / p95 {r['rpc_command_ms']['p95']}", ""),
        _row("… of which the server's own handling (`Server-Timing` header, incl. the exec) (ms)",
             f"p50 {r['rpc_command_server_ms']['p50']}", ""),
        _row("RPC overhead (difference of p50s, ms)", r["rpc_overhead_ms_p50"], "≤ 1 ms"),
        _row("`true` over HTTP with a minimal keep-alive client instead of httpx (ms)",
             f"p50 {r['rpc_command_raw_ms']['p50']} / p95 {r['rpc_command_raw_ms']['p95']}", ""),
        _row("RPC overhead with that client (difference of p50s, ms)", r["rpc_overhead_raw_ms_p50"], "≤ 1 ms"),
        _row("floor: HTTP round trip of `GET /api/v1/health` (ms)", f"p50 {r['http_health_ms']['p50']}", ""),
        _row("REPL round trip, python `1+1` over HTTP, httpx (ms)",
             f"p50 {r['repl_rtt_ms']['p50']} / p95 {r['repl_rtt_ms']['p95']}", "≤ 3 ms"),
        _row("… with the minimal client (ms)", f"p50 {r['repl_rtt_raw_ms']['p50']} / p95 {r['repl_rtt_raw_ms']['p95']}",
             "≤ 3 ms"),
        _row("floor: the same REPL call in-process, no HTTP (ms)",
             f"p50 {r['repl_direct_ms']['p50']} / p95 {r['repl_direct_ms']['p95']}", ""),
        _row(f"{c['clients']} concurrent clients × {c['requests'] // c['clients']} commands, one sandbox",
             f"{c['requests']} requests, {c['errors']} errors, {c['throughput_rps']} req/s", "no errors"),
    ]
    lines += [
        "",
        "Reading the rows: the server's own part (`Server-Timing`: parsing, auth, params, the exec, "
        "JSON) is within ~0.5 ms of the direct exec. The minimal client shows how much of the rest is "
        "httpx's own per-request work in the client (the SDK's transport) rather than the server. "
        "Under TCG on 2 cores the client, the server and the busy QEMU vCPU thread compete for the "
        "CPUs, so differences of p50s between two VMs carry about ±0.5 ms of noise (a negative "
        "overhead means the RPC path's VM was the faster one in that run).",
    ]
    return "\n".join(lines)


def render_tui(r: dict[str, Any]) -> str:
    lines = [
        f"Run {r['measured_at']} on {r['host']['cpus']} CPUs. Start-up: the `msb-tui` console script "
        "(embedded engine, this repository's Sandboxfile) in a fresh tmux pane, from spawning it until "
        "`tmux capture-pane` shows the dashboard's footer (polled every 5 ms); the floor is the same "
        "measurement of a `python3 -c 'print(\"ready\")'`. Typing: the REPL screen over the fake "
        "workbench while four running sandboxes' metrics change and the dashboard polls every 50 ms.",
        "",
        "| measure | result | target |",
        "|---|---|---|",
        _row("start-up to first frame (ms)", f"p50 {r['tui_first_frame_ms']['p50']} / max "
             f"{r['tui_first_frame_ms']['max']} (n={r['tui_first_frame_ms']['n']})", "≤ 1000 ms"),
        _row("floor: python3 start-up to a printed line (ms)", f"p50 {r['python_floor_ms']['p50']}", ""),
        _row("ratio: first frame / python floor",
             round(r["tui_first_frame_ms"]["p50"] / r["python_floor_ms"]["p50"], 1), ""),
        _row("key event → character in the REPL input, 4 sandboxes streaming (ms)",
             f"p50 {r['key_latency_ms']['p50']} / max {r['key_latency_ms']['max']} (n={r['key_latency_ms']['n']})",
             ""),
    ]
    return "\n".join(lines)


def render_backends(r: dict[str, Any]) -> str:
    ref = r["runsc_do_python_ms"]
    lines = [
        f"Run {r['measured_at']} on {r['host']['cpus']} CPUs, every backend that works on this host in the "
        "same run (`msb doctor` says which and why). Cold start and exec: busybox root, network `none`. "
        "Fresh python: start a sandbox from `microsandbox/python`, run `python3 -c 'print(1+1)'`, kill it — "
        "timed as a whole; the reference beside it is `runsc --network=none do /usr/bin/python3 -c "
        "'print(1+1)'` (gVisor on the host's own python3, no msb), and the host's plain python3 is the floor.",
        "",
        "| backend | cold start → first exec (ms) | exec RTT `true` (ms) | fresh python sandbox run (ms) "
        "| ÷ `runsc do` |",
        "|---|---|---|---|---|",
    ]
    for name, b in r["backends"].items():
        if not b.get("usable"):
            lines.append(f"| {name} | not usable here: {b['reason']} | | | |")
            continue
        lines.append(
            f"| {b['label']} | p50 {b['cold_start_ms']['p50']} / p95 {b['cold_start_ms']['p95']} "
            f"(n={b['cold_start_ms']['n']}) | p50 {b['exec_rtt_ms']['p50']} / p95 {b['exec_rtt_ms']['p95']} "
            f"(n={b['exec_rtt_ms']['n']}) | p50 {b['fresh_python_run_ms']['p50']} / p95 "
            f"{b['fresh_python_run_ms']['p95']} (n={b['fresh_python_run_ms']['n']}) "
            f"| {b.get('fresh_python_vs_runsc_ratio', '–')} |"
        )
    if ref:
        lines.append(f"| reference: `runsc do` python3 | | | p50 {ref['p50']} / p95 {ref['p95']} (n={ref['n']}) | 1 |")
    host = r["host_python_ms"]
    lines.append(f"| floor: host python3 | | | p50 {host['p50']} / p95 {host['p95']} (n={host['n']}) | |")
    return "\n".join(lines)


def render_instant(r: dict[str, Any]) -> str:
    from bench.instant import render

    return render(r, _row)


def render_security(r: dict[str, Any]) -> str:
    from bench import security

    return security.render(r)


def render_reliability(r: dict[str, Any]) -> str:
    from bench import reliability

    return reliability.render(r)


RENDERERS = {
    "engine": render_engine, "backends": render_backends, "instant": render_instant, "images": render_images,
    "server": render_server, "tui": render_tui, "security": render_security, "reliability": render_reliability,
}  # fmt: skip


def write_doc(name: str, section: str) -> None:
    """Replace (or add) the ``name`` section of docs/benchmarks.md."""
    head = "# Benchmarks\n\nProduced by `make bench` (bench/run.py); raw data in `bench/results/`.\n"
    text = DOC.read_text() if DOC.exists() else head
    begin, end = f"<!-- bench:{name} -->", f"<!-- /bench:{name} -->"
    block = f"{begin}\n## {name}\n\n{section}\n{end}"
    if begin in text:
        text = re.sub(re.escape(begin) + r".*?" + re.escape(end), lambda _m: block, text, flags=re.S)
    else:
        text = text.rstrip() + "\n\n" + block + "\n"
    DOC.write_text(text)


async def _run(which: list[str], quick: bool) -> None:
    RESULTS.mkdir(parents=True, exist_ok=True)
    if "engine" in which:
        from bench import engine

        r = await engine.run(cold_runs=3 if quick else 10, rtt_runs=50 if quick else 300)
        r["measured_at"] = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())
        (RESULTS / "engine.json").write_text(json.dumps(r, indent=2) + "\n")
        write_doc("engine", render_engine(r))
        print(json.dumps({k: v for k, v in r.items() if k != "kernels"}, indent=2))
    if "backends" in which:
        from bench import backends

        r = await backends.run(cold_runs=3 if quick else 10, rtt_runs=50 if quick else 200, py_runs=3 if quick else 10)
        r["measured_at"] = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())
        (RESULTS / "backends.json").write_text(json.dumps(r, indent=2) + "\n")
        write_doc("backends", render_backends(r))
        print(json.dumps(r, indent=2))
    if "instant" in which:
        import os

        from bench import instant

        r = await instant.run(boot_runs=2 if quick else 5, restore_runs=5 if quick else 20,
                              pool_runs=5 if quick else 30, py_runs=3 if quick else 15)  # fmt: skip
        r["measured_at"] = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())
        r["host"] = {"cpus": os.cpu_count()}
        (RESULTS / "instant.json").write_text(json.dumps(r, indent=2) + "\n")
        write_doc("instant", render_instant(r))
        print(json.dumps(r, indent=2))
    if "server" in which:
        import os

        from bench import server

        r = await server.run(rtt_runs=50 if quick else 300, clients=100, per_client=2 if quick else 5)
        r["measured_at"] = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())
        r["host"] = {"cpus": os.cpu_count()}
        (RESULTS / "server.json").write_text(json.dumps(r, indent=2) + "\n")
        write_doc("server", render_server(r))
        print(json.dumps(r, indent=2))
    if "tui" in which:
        import os

        from bench import tui

        r = await tui.run(runs=3 if quick else 7, keys=50 if quick else 200)
        r["measured_at"] = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())
        r["host"] = {"cpus": os.cpu_count()}
        (RESULTS / "tui.json").write_text(json.dumps(r, indent=2) + "\n")
        write_doc("tui", render_tui(r))
        print(json.dumps(r, indent=2))
    if "images" in which:
        import os

        from bench import images

        r = await images.run(runs=3 if quick else 7)
        r["measured_at"] = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())
        r["host"] = {"cpus": os.cpu_count()}
        (RESULTS / "images.json").write_text(json.dumps(r, indent=2) + "\n")
        write_doc("images", render_images(r))
        print(json.dumps({k: v for k, v in r.items() if k != "rootfs"}, indent=2))


async def _run_security(quick: bool) -> None:
    import os

    from bench import security

    backends = [b.strip() for b in os.environ.get("MSB_TEST_BACKENDS", "gvisor,qemu").split(",") if b.strip()]
    r = await security.run(fuzz_cases=500 if quick else 10_000, flood_n=10 if quick else 30, backends=backends)
    r["measured_at"] = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())
    (RESULTS / "security.json").write_text(json.dumps(r, indent=2) + "\n")
    write_doc("security", render_security(r))
    print(json.dumps({k: v for k, v in r.items() if k != "flood"}, indent=2))


async def _run_reliability(quick: bool, soak_minutes: float) -> None:
    import os

    from bench import reliability

    backends = [b.strip() for b in os.environ.get("MSB_TEST_BACKENDS", "gvisor,qemu").split(",") if b.strip()]
    r = await reliability.run(list(reliability.PARTS), backends, soak_minutes, quick)
    reliability.save(r)
    write_doc("reliability", render_reliability(r))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("which", nargs="*", default=list(RENDERERS))
    parser.add_argument("--quick", action="store_true", help="fewer runs (smoke test of the bench itself)")
    parser.add_argument("--soak-minutes", type=float, default=30.0, help="length of the reliability soak")
    args = parser.parse_args()
    asyncio.run(_run(args.which, args.quick))
    if "security" in args.which:
        asyncio.run(_run_security(args.quick))
    if "reliability" in args.which:
        asyncio.run(_run_reliability(args.quick, args.soak_minutes))


if __name__ == "__main__":
    main()
