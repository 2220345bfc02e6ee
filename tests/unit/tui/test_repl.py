"""Pilot tests of the REPL screen (msb_tui/screens/repl.py) over the FakeWorkbench."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from pathlib import Path

from textual.pilot import Pilot
from textual.widgets import Static

from msb_tui.app import MsbApp
from msb_tui.fake import FakeWorkbench
from msb_tui.history import history_path
from msb_tui.screens.repl import RUN_TIMEOUT_S, ReplScreen
from msb_tui.widgets.repl_cell import ReplCell
from msb_tui.widgets.repl_input import ReplInput
from tests.unit.helpers import eventually

MakeApp = Callable[..., MsbApp]


class StepClock:
    """A clock that moves 0.25 s each time it is read: every cell takes exactly 250 ms."""

    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        self.now += 0.25
        return self.now


async def open_repl(pilot: Pilot[None], language: str = "python") -> ReplScreen:
    screen = ReplScreen("api", language, clock=StepClock())  # type: ignore[arg-type]
    await pilot.app.push_screen(screen)
    await eventually(lambda: screen.is_current and screen.query(ReplInput).first().has_focus)
    return screen


async def run_cell(pilot: Pilot[None], screen: ReplScreen, code: str) -> ReplCell:
    editor = screen.query_one(ReplInput)
    editor.load_text(code)
    before = len(screen.query(ReplCell))
    await pilot.press("ctrl+r")
    await eventually(lambda: len(screen.query(ReplCell)) == before + 1)
    cell = list(screen.query(ReplCell))[-1]
    await eventually(lambda: cell.status not in ("running", "interrupting"))
    return cell


def output_of(cell: ReplCell, stream: str) -> list[str]:
    return [str(s.render()) for s in cell.query(f".cell-output.-{stream}").results(Static)]


async def test_state_persists_between_cells(make_app: MakeApp) -> None:
    app = make_app()
    async with app.run_test() as pilot:
        screen = await open_repl(pilot)
        first = await run_cell(pilot, screen, "x = 1")
        second = await run_cell(pilot, screen, "x + 1")
        assert first.status == "success" and output_of(first, "stdout") == []
        assert second.status == "success"
        assert output_of(second, "stdout") == ["2"]
        assert "250 ms" in str(second.query_one(".cell-status", Static).render())
        calls = [c for c in app.workbench.calls if c[0] == "run_code"]  # type: ignore[attr-defined]
        assert calls == [("run_code", ("api", "python", "x = 1")), ("run_code", ("api", "python", "x + 1"))]
        assert screen.query_one(ReplInput).text == ""


async def test_error_cell_shows_stderr_apart(make_app: MakeApp) -> None:
    app = make_app()
    async with app.run_test() as pilot:
        screen = await open_repl(pilot)
        cell = await run_cell(pilot, screen, "print('hi')\nraise RuntimeError('boom')")
        assert cell.status == "error" and cell.has_class("-error")
        assert output_of(cell, "stdout") == ["hi"]
        assert output_of(cell, "stderr") == ["Traceback (most recent call last):\nRuntimeError: boom"]


async def test_workbench_error_is_a_notification(make_app: MakeApp) -> None:
    app = make_app(fail={"run_code": "sandbox 'api' is not running"})
    async with app.run_test() as pilot:
        screen = await open_repl(pilot)
        cell = await run_cell(pilot, screen, "x = 1")
        assert cell.status == "failed"
        await eventually(lambda: len(app._notifications) == 1)
        (note,) = app._notifications
        assert note.severity == "error" and "not running" in note.message and "fake was told" in note.message


async def test_history_recalls_and_persists(make_app: MakeApp, sandboxfile: Path) -> None:
    workbench = FakeWorkbench(sandboxfile)
    app = make_app(workbench)
    async with app.run_test() as pilot:
        screen = await open_repl(pilot)
        await run_cell(pilot, screen, "x = 1")
        await run_cell(pilot, screen, "x + 1")
        editor = screen.query_one(ReplInput)
        editor.load_text("draft")
        await pilot.press("up")
        assert editor.text == "x + 1"
        await pilot.press("up")
        assert editor.text == "x = 1"
        await pilot.press("down", "down")
        assert editor.text == "draft"
        await pilot.press("escape")
        await eventually(lambda: not screen.is_attached)

        again = await open_repl(pilot)
        await pilot.press("up")
        assert again.query_one(ReplInput).text == "x + 1"
    path = history_path(sandboxfile, "api", "python")
    assert path == sandboxfile.parent / ".menv" / "tui" / "history-api-python.jsonl"
    assert path.read_text().splitlines() == ['{"code": "x = 1"}', '{"code": "x + 1"}']


async def test_up_moves_within_a_multiline_input(make_app: MakeApp) -> None:
    app = make_app()
    async with app.run_test() as pilot:
        screen = await open_repl(pilot)
        await run_cell(pilot, screen, "x = 1")
        editor = screen.query_one(ReplInput)
        editor.load_text("a = 1\nb = 2")
        editor.move_cursor((1, 0))
        await pilot.press("up")
        assert editor.text == "a = 1\nb = 2" and editor.cursor_location == (0, 0)
        await pilot.press("up")
        assert editor.text == "x = 1"


async def test_interrupt_calls_the_workbench(make_app: MakeApp) -> None:
    gate = asyncio.Event()
    app = make_app(delay=gate)
    async with app.run_test() as pilot:
        screen = await open_repl(pilot)
        screen.query_one(ReplInput).load_text("while True: pass")
        await pilot.press("ctrl+r")
        await eventually(lambda: ("run_code", ("api", "python", "while True: pass")) in app.workbench.calls)  # type: ignore[attr-defined]
        cell = screen.query_one(ReplCell)
        assert cell.status == "running"
        await pilot.press("ctrl+c")
        await eventually(lambda: app.workbench.interrupted == ["api/python"])  # type: ignore[attr-defined]
        assert cell.status == "interrupting"
        gate.set()
        await eventually(lambda: cell.status == "success")
        assert screen.check_action("interrupt", ()) is None


async def test_cells_run_with_a_generous_timeout(make_app: MakeApp) -> None:
    seen: list[float | None] = []

    class Recording(FakeWorkbench):
        async def run_code(self, name, language, code, timeout=None):  # type: ignore[no-untyped-def]
            seen.append(timeout)
            return await super().run_code(name, language, code, timeout)

    app = make_app(Recording())
    async with app.run_test() as pilot:
        screen = await open_repl(pilot)
        await run_cell(pilot, screen, "x = 1")
    assert seen == [RUN_TIMEOUT_S] and RUN_TIMEOUT_S >= 600


async def test_switch_language_uses_node_and_its_own_history(make_app: MakeApp) -> None:
    app = make_app()
    async with app.run_test() as pilot:
        screen = await open_repl(pilot)
        await run_cell(pilot, screen, "x = 1")
        await pilot.press("ctrl+l")
        assert screen.language == "node"
        cell = await run_cell(pilot, screen, "y = 2")
        assert cell.language == "node"
        assert ("run_code", ("api", "node", "y = 2")) in app.workbench.calls  # type: ignore[attr-defined]
        await pilot.press("up")
        assert screen.query_one(ReplInput).text == "y = 2"
        await pilot.press("up")
        assert screen.query_one(ReplInput).text == "y = 2"  # x = 1 is Python's


async def test_one_cell_at_a_time(make_app: MakeApp) -> None:
    gate = asyncio.Event()
    app = make_app(delay=gate)
    async with app.run_test() as pilot:
        screen = await open_repl(pilot)
        screen.query_one(ReplInput).load_text("x = 1")
        await pilot.press("ctrl+r")
        await eventually(lambda: len(screen.query(ReplCell)) == 1)
        screen.query_one(ReplInput).load_text("x + 1")
        await pilot.press("ctrl+r")
        await eventually(lambda: len(app._notifications) == 1)
        assert len(screen.query(ReplCell)) == 1 and screen.query_one(ReplInput).text == "x + 1"
        gate.set()


async def test_ctrl_j_runs_too(make_app: MakeApp) -> None:
    app = make_app()
    async with app.run_test() as pilot:
        screen = await open_repl(pilot)
        screen.query_one(ReplInput).load_text("x = 5")
        await pilot.press("ctrl+j")
        await eventually(lambda: ("run_code", ("api", "python", "x = 5")) in app.workbench.calls)  # type: ignore[attr-defined]


async def test_unreadable_history_is_reported_and_the_repl_still_works(make_app: MakeApp, sandboxfile: Path) -> None:
    history_path(sandboxfile, "api", "python").mkdir(parents=True)  # a directory: cannot be read or appended
    app = make_app()
    async with app.run_test() as pilot:
        screen = await open_repl(pilot)
        await eventually(lambda: len(app._notifications) == 1)
        assert "reading the REPL history failed" in next(iter(app._notifications)).title
        cell = await run_cell(pilot, screen, "x = 1")
        assert cell.status == "success"
        await eventually(lambda: len(app._notifications) == 2)
        assert any("saving the REPL history failed" in n.title for n in app._notifications)


async def test_leaving_interrupts_the_running_cell(make_app: MakeApp) -> None:
    gate = asyncio.Event()
    app = make_app(delay=gate)
    async with app.run_test() as pilot:
        screen = await open_repl(pilot)
        screen.query_one(ReplInput).load_text("while True: pass")
        await pilot.press("ctrl+r")
        await eventually(lambda: len(screen.query(ReplCell)) == 1)
        await pilot.press("escape")
        await eventually(lambda: app.workbench.interrupted == ["api/python"])  # type: ignore[attr-defined]
        await eventually(lambda: not screen.is_attached)
        gate.set()
