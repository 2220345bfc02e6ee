"""One REPL cell: the code that ran, its output (stdout and stderr styled apart), its status
and how long it took.

States (CSS classes on the cell, styled in ``themes/repl.tcss``): ``-running``,
``-interrupting``, ``-success``, ``-error`` (the code raised) and ``-failed`` (the workbench
could not run it at all).
"""

from __future__ import annotations

from textual.app import ComposeResult
from textual.containers import Horizontal, Vertical
from textual.widgets import Label, Static

from engine.repl.models import Language, OutputLine, ReplResult

MAX_OUTPUT_LINES = 2000
"""Lines of output a cell shows; a runaway loop must not make the screen crawl."""

_STATES = ("-running", "-interrupting", "-success", "-error", "-failed")


def format_elapsed(seconds: float) -> str:
    """A short, human duration.

    Args:
        seconds: the duration.

    Returns:
        ``"250 ms"``, ``"1.25 s"`` or ``"2m 03s"``.
    """
    if seconds < 1:
        return f"{seconds * 1000:.0f} ms"
    if seconds < 60:
        return f"{seconds:.2f} s"
    minutes, rest = divmod(int(seconds), 60)
    return f"{minutes}m {rest:02d}s"


def output_blocks(lines: list[OutputLine], limit: int = MAX_OUTPUT_LINES) -> list[tuple[str, str]]:
    """Group consecutive lines of the same stream, keeping the newest ``limit`` lines.

    Args:
        lines: the cell's output in order.
        limit: how many lines to keep (older ones are summarised in a first ``"note"`` block).

    Returns:
        ``(stream, text)`` pairs; ``stream`` is ``"stdout"``, ``"stderr"`` or ``"note"``.
    """
    blocks: list[tuple[str, str]] = []
    if len(lines) > limit:
        blocks.append(("note", f"… {len(lines) - limit} earlier lines not shown"))
        lines = lines[-limit:]
    run: list[str] = []
    for index, line in enumerate(lines):
        run.append(line.text)
        if index + 1 == len(lines) or lines[index + 1].stream != line.stream:
            blocks.append((line.stream, "\n".join(run)))
            run = []
    return blocks


class ReplCell(Vertical):
    """A cell; the screen creates it running and then calls :meth:`show_result` or
    :meth:`show_failure` once."""

    def __init__(self, number: int, language: Language, code: str) -> None:
        """Args:
        number: the cell's execution count (shown as ``In [n]``).
        language: the interpreter it ran in.
        code: its source.
        """
        super().__init__(classes="-running")
        self.number = number
        self.language = language
        self.code = code
        self.status = "running"

    def compose(self) -> ComposeResult:
        with Horizontal(classes="cell-header"):
            yield Label(f"In [{self.number}] {self.language}", markup=False, classes="cell-prompt")
            yield Label("running… (ctrl+c interrupts)", markup=False, classes="cell-status")
        yield Static(self.code, markup=False, classes="cell-code")

    def _set_state(self, state: str, status: str) -> None:
        self.remove_class(*_STATES)
        self.add_class(f"-{state}")
        self.status = state
        self.query_one(".cell-status", Label).update(status)

    def mark_interrupting(self) -> None:
        """Say that an interrupt was sent and the cell has not ended yet."""
        if self.status == "running":
            self._set_state("interrupting", "interrupting…")

    def show_result(self, result: ReplResult, elapsed: float) -> None:
        """Show what the interpreter answered.

        Args:
            result: its status and output.
            elapsed: seconds the cell took.
        """
        mark = "✓" if result.status == "success" else "✗"
        self._set_state(result.status, f"{mark} {result.status} · {format_elapsed(elapsed)}")
        blocks = output_blocks(result.output)
        self.mount_all(Static(text, markup=False, classes=f"cell-output -{stream}") for stream, text in blocks)

    def show_failure(self, message: str, elapsed: float) -> None:
        """Show that the cell could not be run (the workbench raised).

        Args:
            message: what went wrong (the notification carries the hint).
            elapsed: seconds until it failed.
        """
        self._set_state("failed", f"✗ not run · {format_elapsed(elapsed)}")
        self.mount(Static(message, markup=False, classes="cell-output -note"))
