"""The REPL screen: Python or Node cells against a sandbox's persistent interpreter.

Pushed from the dashboard as ``ReplScreen("api", "python")``. State persists between cells
(the interpreter lives in the sandbox). Keys — ctrl+enter does not reach most terminals, so:

- ``ctrl+r`` (or ``ctrl+j``; ``ctrl+enter`` where the terminal reports it) runs the input;
- ``↑``/``↓`` on its first/last line walk the history, persisted per project
  (:mod:`msb_tui.history`);
- ``ctrl+c`` interrupts the running cell (elsewhere it copies, as usual);
- ``ctrl+l`` switches between Python and Node; ``escape`` goes back.

Cells run in a worker, so the screen stays responsive while one runs; only one runs at a time.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import TYPE_CHECKING, ClassVar, cast

from textual import work
from textual.app import ComposeResult
from textual.binding import Binding, BindingType
from textual.containers import VerticalScroll
from textual.screen import Screen
from textual.widgets import Footer, Header, Label, Static

from engine.errors import MsbError
from engine.repl.models import Language
from msb_tui.history import History, history_path
from msb_tui.widgets.repl_cell import ReplCell
from msb_tui.widgets.repl_input import ReplInput

if TYPE_CHECKING:
    from msb_tui.app import MsbApp

RUN_TIMEOUT_S = 3600.0
"""Generous on purpose: a long cell is stopped with ctrl+c, not by a timeout."""


class ReplScreen(Screen[None]):
    """See the module docstring."""

    HELP_TITLE = "REPL"
    BINDINGS: ClassVar[list[BindingType]] = [
        Binding("ctrl+r,ctrl+j,ctrl+enter", "run", "Run", priority=True, tooltip="Run the input as a cell"),
        Binding("ctrl+c", "interrupt", "Interrupt", priority=True, tooltip="Interrupt the running cell"),
        Binding("ctrl+l", "switch_language", "Python/Node", priority=True, tooltip="Switch the interpreter"),
        Binding("escape", "back", "Back", priority=True, tooltip="Back to the previous screen"),
    ]

    def __init__(self, name: str, language: Language = "python", *,
                 clock: Callable[[], float] = time.monotonic) -> None:  # fmt: skip
        """Args:
        name: the sandbox whose interpreter runs the cells.
        language: the interpreter to start with.
        clock: seconds, monotonic (tests inject one to make elapsed times deterministic).
        """
        super().__init__()
        self.sandbox = name
        self.language: Language = language
        self._clock = clock
        self._count = 0
        self._active_cell: ReplCell | None = None

    @property
    def _app(self) -> MsbApp:
        return cast("MsbApp", self.app)

    def compose(self) -> ComposeResult:
        yield Header()
        with VerticalScroll(id="repl-cells"):
            yield Static(self._empty_text(), id="repl-empty")
        yield Label(self._bar_text(), id="repl-bar", markup=False)
        yield ReplInput(self._open_history(self.language), self.language, id="repl-input")
        yield Footer()

    def on_mount(self) -> None:
        self.sub_title = f"REPL · {self.sandbox}"
        self.query_one(ReplInput).focus()

    def _empty_text(self) -> str:
        return (f"No cells yet. Type {self.language} code below and press ctrl+r to run it in {self.sandbox!r}.\n"
                "Variables persist between cells; ↑/↓ recall earlier cells; ctrl+l switches Python/Node.")  # fmt: skip

    def _bar_text(self) -> str:
        return f"{self.language} ▸ {self.sandbox}"

    def _open_history(self, language: Language) -> History:
        """This sandbox's history for ``language``; unreadable → reported, and an empty one."""
        path = history_path(self._app.workbench.sandboxfile, self.sandbox, language)
        try:
            return History(path)
        except OSError as exc:
            self._app.report(_history_error(path, exc), "reading the REPL history")
            return History(path, load=False)

    def check_action(self, action: str, parameters: tuple[object, ...]) -> bool | None:
        """Interrupt only while a cell runs (``None``: shown greyed, and ctrl+c copies)."""
        if action == "interrupt" and self._active_cell is None:
            return None
        return True

    async def action_run(self) -> None:
        """Run the input as a new cell (one at a time)."""
        editor = self.query_one(ReplInput)
        code = editor.text
        if not code.strip():
            return
        if self._active_cell is not None:
            self.notify("a cell is still running — ctrl+c interrupts it", severity="warning")
            return
        try:
            editor.repl_history.add(code)
        except OSError as exc:
            self._app.report(_history_error(editor.repl_history.path, exc), "saving the REPL history")
        editor.clear()
        self._count += 1
        cell = ReplCell(self._count, self.language, code)
        self._active_cell = cell
        self.query_one("#repl-empty").display = False
        cells = self.query_one("#repl-cells", VerticalScroll)
        await cells.mount(cell)  # the worker updates the cell's widgets, so they must exist first
        cells.scroll_end(animate=False)
        self.refresh_bindings()
        self._run_cell(cell)

    @work(exclusive=True, group="repl-run")
    async def _run_cell(self, cell: ReplCell) -> None:
        started = self._clock()
        try:
            result = await self._app.workbench.run_code(self.sandbox, cell.language, cell.code, timeout=RUN_TIMEOUT_S)
        except Exception as exc:  # shown in the cell and as a notification, never a traceback
            cell.show_failure(exc.message if isinstance(exc, MsbError) else str(exc), self._clock() - started)
            self._app.report(exc, "running the cell")
        else:
            cell.show_result(result, self._clock() - started)
        finally:
            self._active_cell = None
            self.refresh_bindings()
        self.query_one("#repl-cells", VerticalScroll).scroll_end(animate=False)

    def action_interrupt(self) -> None:
        """Ask the interpreter to interrupt the running cell."""
        if self._active_cell is not None:
            self._active_cell.mark_interrupting()
            self._interrupt(self._active_cell.language)

    @work(exclusive=True, group="repl-interrupt")
    async def _interrupt(self, language: Language) -> None:
        await self._send_interrupt(language)

    async def _send_interrupt(self, language: Language) -> None:
        try:
            await self._app.workbench.interrupt(self.sandbox, language)
        except Exception as exc:
            self._app.report(exc, "interrupting the cell")

    def action_switch_language(self) -> None:
        """Switch between the Python and the Node interpreter (each with its own history)."""
        self.language = "node" if self.language == "python" else "python"
        editor = self.query_one(ReplInput)
        editor.repl_history = self._open_history(self.language)
        editor.set_language(self.language)
        self.query_one("#repl-bar", Label).update(self._bar_text())
        self.query_one("#repl-empty", Static).update(self._empty_text())

    def action_back(self) -> None:
        """Leave the REPL. A running cell is interrupted: leaving cancels this screen's workers,
        and the interpreter must not keep running code nobody is waiting for."""
        if self._active_cell is not None:
            self.app.run_worker(self._send_interrupt(self._active_cell.language), group="repl-leave")
        self.app.pop_screen()


def _history_error(path: object, exc: OSError) -> MsbError:
    return MsbError(f"REPL history {path}: {exc.strerror or exc}",
                    hint="check the permissions of that file and its folder")  # fmt: skip
