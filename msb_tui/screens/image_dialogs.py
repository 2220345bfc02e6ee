"""The Images screen's modal dialogs: the reference to pull, a confirmation, the base image
to build. Each dismisses with the answer (``None``/``False`` when cancelled)."""

from __future__ import annotations

from typing import ClassVar

from textual.app import ComposeResult
from textual.binding import Binding, BindingType
from textual.containers import Horizontal, Vertical
from textual.screen import ModalScreen
from textual.widgets import Button, Input, Label, OptionList
from textual.widgets.option_list import Option

BASE_IMAGES = {
    "microsandbox/python": "Debian + Python 3, from this host's packages",
    "microsandbox/node": "Debian + Node.js, from this host's packages",
    "busybox": "a static BusyBox, the smallest image that boots",
}
"""The offline base images ``workbench.build_base_image`` can build."""


class PullDialog(ModalScreen[str | None]):
    """Asks for an image reference; dismisses with it (stripped), or ``None``."""

    BINDINGS: ClassVar[list[BindingType]] = [Binding("escape", "cancel", "Cancel")]

    def compose(self) -> ComposeResult:
        with Vertical(classes="image-dialog"):
            yield Label("Pull an image", classes="dialog-title")
            yield Input(placeholder="docker.io/library/python:3.12-slim", id="pull-reference")
            yield Label("enter pulls · escape cancels", classes="dialog-help")

    def on_input_submitted(self, event: Input.Submitted) -> None:
        reference = event.value.strip()
        if reference:
            self.dismiss(reference)

    def action_cancel(self) -> None:
        self.dismiss(None)


class ConfirmDialog(ModalScreen[bool]):
    """A yes/no question; ``y`` or the red button confirms, ``n`` or escape cancels."""

    AUTO_FOCUS = "#confirm-no"  # enter alone must not destroy anything

    BINDINGS: ClassVar[list[BindingType]] = [
        Binding("y", "answer(True)", "Yes"),
        Binding("n,escape", "answer(False)", "No"),
    ]

    def __init__(self, question: str, confirm: str = "Remove") -> None:
        """Args:
        question: what to ask.
        confirm: the label of the confirming button.
        """
        super().__init__()
        self.question = question
        self.confirm = confirm

    def compose(self) -> ComposeResult:
        with Vertical(classes="image-dialog"):
            yield Label(self.question, markup=False, classes="dialog-title")
            with Horizontal(classes="dialog-buttons"):
                yield Button(f"{self.confirm} (y)", variant="error", id="confirm-yes")
                yield Button("Cancel (n)", id="confirm-no")

    def on_button_pressed(self, event: Button.Pressed) -> None:
        self.dismiss(event.button.id == "confirm-yes")

    def action_answer(self, yes: bool) -> None:
        self.dismiss(yes)


class BuildDialog(ModalScreen[str | None]):
    """Picks one of :data:`BASE_IMAGES`; dismisses with its name, or ``None``."""

    BINDINGS: ClassVar[list[BindingType]] = [Binding("escape", "cancel", "Cancel")]

    def compose(self) -> ComposeResult:
        with Vertical(classes="image-dialog"):
            yield Label("Build an offline base image", classes="dialog-title")
            yield OptionList(*(Option(f"{name}  —  {what}", id=name) for name, what in BASE_IMAGES.items()),
                             id="build-choice")  # fmt: skip
            yield Label("enter builds · escape cancels", classes="dialog-help")

    def on_option_list_option_selected(self, event: OptionList.OptionSelected) -> None:
        self.dismiss(event.option.id)

    def action_cancel(self) -> None:
        self.dismiss(None)
