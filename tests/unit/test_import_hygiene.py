"""The engine is headless: every engine module imports and works with no TUI library present.

Run in a fresh interpreter where ``textual``, ``rich`` and ``msb_tui`` cannot be imported at
all (``sys.modules[name] = None`` makes any import of them raise ImportError): an engine
module that imported one, directly or through a hard dependency, would fail here. (Third-party
packages may *optionally* use rich when it is installed — httpx's CLI does — which is why the
test blocks them rather than looking at ``sys.modules`` afterwards.) The import-linter contract
in pyproject.toml additionally forbids direct imports.
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
for name in {FORBIDDEN!r}:
    sys.modules[name] = None
import engine
names = ["engine"]
for info in pkgutil.walk_packages(engine.__path__, "engine."):
    importlib.import_module(info.name)
    names.append(info.name)
print(json.dumps({{"modules": names}}))
"""


def test_engine_imports_no_tui_library() -> None:
    proc = subprocess.run([sys.executable, "-c", SCRIPT], cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    report = json.loads(proc.stdout.strip().splitlines()[-1])
    # The walk must have reached every corner, or the check proves little.
    for expected in ("engine.errors", "engine.vm.agent", "engine.vm.fake", "engine.sandbox.engine", "engine.cli.main",
                     "engine.images.pull", "engine.server.app", "engine.client", "engine.repl.pool"):  # fmt: skip
        assert expected in report["modules"]


def test_the_blocker_bites() -> None:
    """A module that imports rich fails under the same blocker (so the test above can fail)."""
    script = "import sys\nsys.modules['rich'] = None\nimport rich.console\n"
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=60)
    assert proc.returncode != 0 and "Error" in proc.stderr and "rich" in proc.stderr
