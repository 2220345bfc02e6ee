"""``msb --version`` / ``msb -V``: the guide's first check after installing, cheap to run."""

from __future__ import annotations

import importlib.metadata
import subprocess
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner

from engine.cli.main import cli

REPO = Path(__file__).resolve().parents[3]
HEAVY = ("uvicorn", "starlette", "jwt", "mcp", "engine.server.main", "engine.server.app", "engine.sandbox.engine")
"""Layers a version check has no business loading (the server, the VM engine)."""


@pytest.mark.parametrize("flag", ["--version", "-V"])
def test_version_prints_the_package_version(flag: str) -> None:
    r = CliRunner().invoke(cli, [flag])
    assert r.exit_code == 0, r.output
    assert r.output == f"msb {importlib.metadata.version('msb')}\n"


def test_version_loads_no_server_or_vm_layer() -> None:
    probe = ("import sys; sys.argv = ['msb', '--version']\n"
             "from engine.cli.main import main\n"
             "try:\n    main()\nexcept SystemExit:\n    pass\n"
             f"print(sorted(m for m in sys.modules if m.split('.')[0] in {HEAVY!r} or m in {HEAVY!r}))")  # fmt: skip
    out = subprocess.run([sys.executable, "-c", probe], cwd=REPO, capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert out.stdout.splitlines() == [f"msb {importlib.metadata.version('msb')}", "[]"]
