"""Helpers of the unit tests: a steerable clock, a bounded wait, placeholder specs."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from pathlib import Path

from engine.vm.backend import VmSpec

STEP_TIMEOUT_S = 10.0
"""Upper bound for any single wait in a unit test: a hang fails fast instead of at 300 s."""


class FakeClock:
    """A monotonic clock that only moves when a test says so."""

    def __init__(self, start: float = 1000.0) -> None:
        self.now = start

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


async def eventually(cond: Callable[[], bool], timeout: float = STEP_TIMEOUT_S) -> None:
    """Wait until ``cond()`` holds, yielding to the loop between checks; fail after ``timeout``."""
    async with asyncio.timeout(timeout):
        while not cond():
            await asyncio.sleep(0.005)


def vm_spec(tmp_path: Path, name: str = "unit", **kw: object) -> VmSpec:
    """A VmSpec with placeholder boot files (the fake boots nothing)."""
    dummy = tmp_path / "dummy"
    return VmSpec(name=name, kernel=dummy, initrd=dummy, root_image=dummy, run_dir=tmp_path, **kw)  # type: ignore[arg-type]
