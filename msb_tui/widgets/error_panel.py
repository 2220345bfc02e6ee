"""The panel a screen shows when the thing it exists for failed: what failed, the engine's
message and hint, and what to do next — never a traceback. Styled by ``.error-panel`` in
``themes/base.tcss``."""

from __future__ import annotations

from textual.app import ComposeResult
from textual.containers import Vertical
from textual.widgets import Static

from engine.errors import MsbError


def explain(exc: BaseException) -> tuple[str, str | None]:
    """(message, hint) for an error: an :class:`MsbError` says both; anything else is a bug.

    Args:
        exc: What was raised.

    Returns:
        The message to show and an optional hint.
    """
    if isinstance(exc, MsbError):
        return exc.message, exc.hint
    return f"unexpected {type(exc).__name__}: {exc}", "this is a bug in msb-tui; please report it"


class ErrorPanel(Vertical):
    """A titled box with an error's message, its hint and the next step."""

    def __init__(self, title: str, next_step: str, *, id: str | None = None, classes: str | None = None) -> None:
        """Args:
        title: What failed, e.g. ``"Could not list the sandboxes"``.
        next_step: What the user can do, e.g. ``"Press r to try again."``.
        id: The widget's id.
        classes: More CSS classes.
        """
        super().__init__(id=id, classes=f"error-panel {classes or ''}".strip())
        self.border_title = "error"
        self._title, self._next_step = title, next_step

    def compose(self) -> ComposeResult:
        yield Static(self._title, classes="error-title", markup=False)
        yield Static(classes="error-message", markup=False)
        yield Static(classes="error-hint", markup=False)
        yield Static(self._next_step, classes="error-retry", markup=False)

    def show(self, exc: BaseException) -> None:
        """Fill the panel in from ``exc``."""
        message, hint = explain(exc)
        self.query_one(".error-message", Static).update(message)
        hint_widget = self.query_one(".error-hint", Static)
        hint_widget.update(hint or "")
        hint_widget.display = bool(hint)
