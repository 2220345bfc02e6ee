"""`make bench` section "security": the attack suite, the long API/MCP fuzz, and the flood test.

- **Probes**: every test of ``tests/security/`` (black-box attacks on the real server and real
  sandboxes, hostile frames, layers, registries, paths) run once; a failed attack test is an
  escape (goal 0).
- **Fuzz**: ``bench.security_fuzz`` with ``fuzz_cases`` Hypothesis cases (goal ≥ 10,000, no 5xx,
  every answer within 1 s).
- **Flood**: ``bench.security_flood`` on each backend that works here: a well-behaved sandbox's
  exec round trip while another floods its output (goal p50 within 2× of idle).

Writes ``bench/results/security.json``.
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
import time
import xml.etree.ElementTree as ET
from pathlib import Path
from typing import Any

from bench import security_flood, security_fuzz

ROOT = Path(__file__).resolve().parent.parent
SUITE = "tests/security"


def probes() -> dict[str, Any]:
    """Run the attack suite once; count what was tried and what got through."""
    with tempfile.TemporaryDirectory() as tmp:
        report = Path(tmp) / "junit.xml"
        t0 = time.monotonic()
        subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", SUITE,
                        f"--junitxml={report}"], cwd=ROOT, capture_output=True, text=True)  # fmt: skip
        wall = time.monotonic() - t0
        tree = ET.parse(report)
    failed: list[str] = []
    per_file: dict[str, int] = {}
    total = skipped = 0
    for case in tree.iter("testcase"):
        total += 1
        name = f"{case.get('classname')}::{case.get('name')}"
        module = (case.get("classname") or "").rsplit(".", 1)[-1]
        per_file[module] = per_file.get(module, 0) + 1
        if case.find("failure") is not None or case.find("error") is not None:
            failed.append(name)
        elif case.find("skipped") is not None:
            skipped += 1
    return {"tests": total, "passed": total - len(failed) - skipped, "skipped": skipped,
            "escapes_found": len(failed), "failed": failed, "per_module": per_file,
            "wall_s": round(wall, 1)}  # fmt: skip


async def run(fuzz_cases: int, flood_n: int, backends: list[str]) -> dict[str, Any]:
    """All three parts, in this order (the flood last: it loads both cores)."""
    result: dict[str, Any] = {"host": {"cpus": os.cpu_count()}, "probes": probes()}
    result["fuzz"] = security_fuzz.run(fuzz_cases)
    result["flood"] = {b: await security_flood.run(flood_n, b) for b in backends}
    result["goals"] = {"escapes_found": 0, "http_5xx": 0, "fuzz_cases": 10_000, "flood_ratio_p50": 2.0}
    return result


def render(r: dict[str, Any]) -> str:
    """The docs/benchmarks.md section."""
    p, f = r["probes"], r["fuzz"]
    lines = [
        f"Run {r['measured_at']} on {r['host']['cpus']} CPUs. Threat model and what each test attacks: "
        "[security.md](security.md).",
        "",
        "| measure | result | goal |",
        "|---|---|---|",
        f"| attack-suite tests run (tests/security) | {p['tests']} ({p['passed']} passed, {p['skipped']} skipped) | |",
        f"| escapes found (failed attack tests) | {p['escapes_found']} | 0 |",
        f"| API + MCP fuzz cases | {f['cases_requested']} ({f['requests_total']} requests) | ≥ 10,000 |",
        f"| HTTP 5xx under fuzz | {f['http_5xx']} | 0 |",
        f"| slowest fuzz answer (ms) | {max(f['max_latency_ms'].values())} | < 1000 |",
        f"| peak memory of one fuzz request (MiB) | {f['peak_request_alloc_mib']} | |",
    ]
    for backend, fl in r["flood"].items():
        for name, one in fl["floods"].items():
            idle, busy = one["idle"]["exec_rtt_ms"]["p50"], one["flood"]["exec_rtt_ms"]["p50"]
            lines.append(f"| {backend}: `true` round trip of a quiet sandbox while another floods ({name}), "
                         f"p50 idle → flooded (ms) | {idle} → {busy} (**{one['ratio_p50']}×**) | ≤ 2× |")
    lines += ["", "The flood ratios compare numbers taken minutes apart on a shared 2-core machine; the idle "
              "figure is measured right before each flood."]
    return "\n".join(lines)
