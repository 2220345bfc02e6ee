"""Snapshots of the REPL screen: empty, with cells (one raised), a cell running — at 80×24
and 160×48, over the FakeWorkbench with a clock that makes every cell take 250 ms."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any

import pytest
from textual.pilot import Pilot

from msb_tui.app import MsbApp
from msb_tui.screens.repl import ReplScreen
from msb_tui.widgets.repl_cell import ReplCell
from msb_tui.widgets.repl_input import ReplInput
from tests.unit.helpers import eventually
from tests.unit.tui.conftest import SIZES

MakeApp = Callable[..., MsbApp]
SnapCompare = Callable[..., bool]

CELLS = ["x = 1", "x + 1", "print('hello from the sandbox')\nraise RuntimeError('boom')"]


class StepClock:
    """Moves 0.25 s per reading: every cell takes exactly 250 ms."""

    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        self.now += 0.25
        return self.now


def open_repl(cells: list[str], *, wait: bool = True, draft: str = "") -> Callable[[Pilot[Any]], Awaitable[None]]:
    """A ``run_before`` that opens the REPL on ``api``, runs ``cells`` and types ``draft``."""

    async def run_before(pilot: Pilot[Any]) -> None:
        screen = ReplScreen("api", clock=StepClock())
        await pilot.app.push_screen(screen)
        editor = screen.query_one(ReplInput)
        editor.cursor_blink = False
        for number, code in enumerate(cells, 1):
            editor.load_text(code)
            await pilot.press("ctrl+r")
            await eventually(lambda n=number: len(screen.query(ReplCell)) == n)  # type: ignore[misc]
            if wait:
                cell = list(screen.query(ReplCell))[-1]
                await eventually(lambda c=cell: c.status not in ("running", "interrupting"))  # type: ignore[misc]
        editor.load_text(draft)
        await pilot.pause()

    return run_before


@pytest.mark.parametrize("size", SIZES, ids=lambda s: f"{s[0]}x{s[1]}")
def test_repl_empty(snap_compare: SnapCompare, make_app: MakeApp, size: tuple[int, int]) -> None:
    assert snap_compare(make_app(), terminal_size=size, run_before=open_repl([]))


@pytest.mark.parametrize("size", SIZES, ids=lambda s: f"{s[0]}x{s[1]}")
def test_repl_cells(snap_compare: SnapCompare, make_app: MakeApp, size: tuple[int, int]) -> None:
    assert snap_compare(make_app(), terminal_size=size, run_before=open_repl(CELLS, draft="x + 41"))


@pytest.mark.parametrize("size", SIZES, ids=lambda s: f"{s[0]}x{s[1]}")
def test_repl_running(snap_compare: SnapCompare, make_app: MakeApp, size: tuple[int, int]) -> None:
    app = make_app(delay=asyncio.Event())  # never set: the cell runs until the app closes
    assert snap_compare(app, terminal_size=size, run_before=open_repl(["while True: pass"], wait=False))


def test_repl_cells_light(snap_compare: SnapCompare, make_app: MakeApp) -> None:
    assert snap_compare(make_app(theme="msb-light"), terminal_size=(80, 24), run_before=open_repl(CELLS))
