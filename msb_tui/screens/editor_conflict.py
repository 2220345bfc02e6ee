"""The Sandboxfile changed on disk while the editor holds unsaved edits: which to keep?"""

from __future__ import annotations

from typing import ClassVar, Literal

from textual.app import ComposeResult
from textual.binding import Binding, BindingType
from textual.containers import Horizontal, Vertical
from textual.screen import ModalScreen
from textual.widgets import Button, Label, Static

Choice = Literal["reload", "keep"]


class ConflictScreen(ModalScreen[Choice]):
    """Asks whether to reload the file from disk or keep the editor's version; dismissed
    with ``"reload"`` or ``"keep"`` (escape keeps)."""

    HELP_TITLE = "Changed on disk"
    BINDINGS: ClassVar[list[BindingType]] = [
        Binding("r", "choose('reload')", "Reload from disk"),
        Binding("k,escape", "choose('keep')", "Keep mine"),
    ]

    def __init__(self, filename: str) -> None:
        super().__init__()
        self.filename = filename

    def compose(self) -> ComposeResult:
        with Vertical(id="conflict-dialog"):
            yield Label(f"{self.filename} changed on disk", id="conflict-title")
            yield Static(
                "You have unsaved edits. Reload the file from disk (your edits are lost), "
                "or keep your version (saving then overwrites the file)?",
                id="conflict-text",
                markup=False,
            )
            with Horizontal(id="conflict-buttons"):
                yield Button("Reload from disk (r)", id="reload", variant="warning")
                yield Button("Keep mine (k)", id="keep", variant="primary")

    def on_mount(self) -> None:
        self.query_one("#keep", Button).focus()

    def on_button_pressed(self, event: Button.Pressed) -> None:
        event.stop()
        self.dismiss("reload" if event.button.id == "reload" else "keep")

    def action_choose(self, choice: Choice) -> None:
        self.dismiss(choice)
