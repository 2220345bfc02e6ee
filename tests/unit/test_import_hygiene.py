"""The engine is headless: importing every engine module pulls in no TUI library.

Run in a fresh interpreter so modules imported by other tests (or pytest plugins) cannot
hide a violation.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
FORBIDDEN = ("textual", "rich", "msb_tui")

SCRIPT = f"""
import importlib, json, pkgutil, sys
import engine
names = ["engine"]
for info in pkgutil.walk_packages(engine.__path__, "engine."):
    importlib.import_module(info.name)
    names.append(info.name)
loaded = sorted({{m.split(".")[0] for m in sys.modules}} & {set(FORBIDDEN)!r})
print(json.dumps({{"modules": names, "forbidden": loaded}}))
"""


def test_engine_imports_no_tui_library() -> None:
    proc = subprocess.run([sys.executable, "-c", SCRIPT], cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    report = json.loads(proc.stdout.strip().splitlines()[-1])
    assert report["forbidden"] == [], f"engine pulled in {report['forbidden']}"
    # The walk must have reached every corner, or the check proves little.
    for expected in ("engine.errors", "engine.vm.agent", "engine.vm.fake", "engine.sandbox.engine", "engine.cli.main"):
        assert expected in report["modules"]
