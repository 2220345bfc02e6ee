"""App factory for TUI tests: the real app over a :class:`~msb_tui.fake.FakeWorkbench`.

Snapshots (``snap_compare``) are deterministic: the fake has no clocks or randomness and the
sample Sandboxfile is copied into a fresh temporary directory per test.
"""

from __future__ import annotations

import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from msb_tui.app import MsbApp
from msb_tui.fake import FakeWorkbench

DATA = Path(__file__).parent / "data"
SIZES = [(80, 24), (160, 48)]
"""Every screen state is snapshotted at both sizes (STYLE.md rule 9)."""


@pytest.fixture
def sandboxfile(tmp_path: Path) -> Path:
    path = tmp_path / "Sandboxfile"
    shutil.copy(DATA / "Sandboxfile", path)
    return path


@pytest.fixture
def make_app(sandboxfile: Path) -> Callable[..., MsbApp]:
    """``make_app(workbench=None, **FakeWorkbench kwargs)`` → an app (not yet running)."""

    def make(workbench: FakeWorkbench | None = None, theme: str = "msb-dark", **kwargs: Any) -> MsbApp:
        return MsbApp(workbench or FakeWorkbench(sandboxfile, **kwargs), theme=theme)

    return make
