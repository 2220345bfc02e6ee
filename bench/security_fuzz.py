"""Fuzz ``/api/v1/rpc`` and ``/mcp`` at length: tests/security/test_fuzz_api.py's strategies and
properties (no 5xx, JSON-RPC errors with integer codes, < 1 s per request, bounded memory) for
``--cases`` cases in all (default 10,000), in a pytest subprocess with ``MSB_FUZZ_EXAMPLES`` set.

Writes ``bench/results/security_fuzz.json``: cases per endpoint, 5xx count, worst latency (ms),
peak memory. Run as ``.venv/bin/python -m bench.security_fuzz [--cases N]``.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "bench" / "results" / "security_fuzz.json"
TESTS = "tests/security/test_fuzz_api.py"


def run(cases: int) -> dict[str, Any]:
    """Run the fuzz tests for ``cases`` cases in all; returns the results document.

    Raises:
        RuntimeError: a property failed (pytest's output tail inside).
    """
    with tempfile.TemporaryDirectory() as tmp:
        stats_path = Path(tmp) / "stats.json"
        env = {**os.environ, "MSB_FUZZ_EXAMPLES": str(cases), "MSB_FUZZ_STATS": str(stats_path)}
        t0 = time.monotonic()
        proc = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", TESTS], cwd=ROOT,
                              env=env, capture_output=True, text=True)  # fmt: skip
        wall = time.monotonic() - t0
        stats = json.loads(stats_path.read_text()) if stats_path.exists() else {}
    if proc.returncode != 0:
        raise RuntimeError(f"fuzzing found a failure:\n{proc.stdout[-4000:]}")
    endpoints = stats["endpoints"]
    return {
        "measured_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "cases_requested": cases,
        "requests_per_endpoint": {k: int(v["cases"]) for k, v in endpoints.items()},
        "requests_total": sum(int(v["cases"]) for v in endpoints.values()),
        "http_5xx": sum(int(v["5xx"]) for v in endpoints.values()),
        "max_latency_ms": {k: round(v["max_latency_ms"], 1) for k, v in endpoints.items()},
        "peak_request_alloc_mib": round(stats["peak_request_bytes"] / 2**20, 2),
        "peak_traced_mib": round(stats["peak_traced_bytes"] / 2**20, 2),
        "wall_s": round(wall, 1),
        "goals": {"http_5xx": 0, "max_latency_ms": 1000, "peak_request_alloc_mib": 64, "peak_traced_mib": 256},
        "note": "in-process app over the FakeService with auth on; each MCP case is initialize plus up to 3 "
                "requests, so requests exceed cases",
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cases", type=int, default=10_000, help="Hypothesis cases in all (default 10000)")
    args = parser.parse_args()
    result = run(args.cases)
    RESULTS.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
