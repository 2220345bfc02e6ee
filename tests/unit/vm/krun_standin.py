"""Build and read the C stand-in libkrun used by the tests/unit/vm/test_krun_* files:
krun_standin.c records the calls, krun_standin_guest.c emulates the guest (KRUN_STANDIN_BOOT)."""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest

SOURCES = [Path(__file__).with_name(n) for n in ("krun_standin.c", "krun_standin_guest.c")]
CTX = 7
"""The stand-in's context id."""


def build(out_dir: Path) -> Path:
    """Compile the stand-in into ``out_dir/libkrun.so`` (skips the test without a compiler)."""
    gcc = shutil.which("gcc") or shutil.which("cc")
    if gcc is None:
        pytest.skip("no C compiler to build the libkrun stand-in")
    out = out_dir / "libkrun.so"
    cmd = [gcc, "-shared", "-fPIC", "-O1", "-Wall", "-Wextra", "-Werror", "-o", str(out), *map(str, SOURCES)]
    subprocess.run(cmd, check=True)
    return out


def use(monkeypatch: pytest.MonkeyPatch, lib: Path, log: Path) -> None:
    """Point libkrun lookups at the stand-in, log its calls to ``log``, default behaviour."""
    monkeypatch.setenv("KRUN_STANDIN_LOG", str(log))
    monkeypatch.setenv("MSB_LIBKRUN", str(lib))
    for var in ("KRUN_STANDIN_FAIL", "KRUN_STANDIN_EXIT", "KRUN_STANDIN_BOOT"):
        monkeypatch.delenv(var, raising=False)


def recorded(log: Path) -> list[tuple[str, list[Any]]]:
    """The calls the stand-in logged, in order: (name, arguments)."""
    if not log.exists():
        return []
    return [(d["call"], d["args"]) for d in map(json.loads, log.read_text().splitlines())]
