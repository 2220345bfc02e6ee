"""Asks for a new sandbox's name and image (the Sandboxfile editor's ctrl+n)."""

from __future__ import annotations

from typing import ClassVar

from textual.app import ComposeResult
from textual.binding import Binding, BindingType
from textual.containers import Horizontal, Vertical
from textual.screen import ModalScreen
from textual.widgets import Button, Input, Label, Static

from engine.project.schema import NAME_RE


class AddSandboxScreen(ModalScreen[tuple[str, str] | None]):
    """Dismissed with ``(name, image)``, or ``None`` when cancelled (escape). The editor
    adds the entry through the Sandboxfile code, which has the last word on validity."""

    HELP_TITLE = "New sandbox"
    BINDINGS: ClassVar[list[BindingType]] = [Binding("escape", "cancel", "Cancel")]

    def __init__(self, taken: list[str]) -> None:
        super().__init__()
        self.taken = set(taken)

    def compose(self) -> ComposeResult:
        with Vertical(id="add-dialog"):
            yield Label("New sandbox", id="add-title")
            yield Input(placeholder="name, e.g. web", id="add-name")
            yield Input(placeholder="image, e.g. microsandbox/python", id="add-image")
            yield Static(id="add-error", markup=False)
            with Horizontal(id="add-buttons"):
                yield Button("Add", id="add", variant="primary")
                yield Button("Cancel", id="cancel")

    def _problem(self, name: str, image: str) -> str | None:
        if not NAME_RE.match(name):
            return "the name must be 1–63 of [A-Za-z0-9_-], starting with a letter or digit"
        if name in self.taken:
            return f"{name!r} is already defined"
        if not image:
            return "the image is required (an OCI image such as busybox, or a ./dir)"
        return None

    def _submit(self) -> None:
        name = self.query_one("#add-name", Input).value.strip()
        image = self.query_one("#add-image", Input).value.strip()
        problem = self._problem(name, image)
        if problem is not None:
            self.query_one("#add-error", Static).update(problem)
            return
        self.dismiss((name, image))

    def on_input_submitted(self, event: Input.Submitted) -> None:
        event.stop()
        if event.input.id == "add-name":
            self.query_one("#add-image", Input).focus()
        else:
            self._submit()

    def on_button_pressed(self, event: Button.Pressed) -> None:
        event.stop()
        if event.button.id == "add":
            self._submit()
        else:
            self.dismiss(None)

    def action_cancel(self) -> None:
        self.dismiss(None)
