"""What the Sandboxfile editor shows in remote mode, where there is no file of ours."""

from __future__ import annotations

from textual.app import ComposeResult
from textual.containers import Vertical
from textual.widgets import Label, Static

REMOTE_TEXT = (
    "This workbench is connected to an msb server, which keeps its own sandboxes: there is no "
    "project file here to edit. To edit a project's Sandboxfile, run msb-tui (or `msb add`, "
    "`msb remove`) in that project's directory."
)


class NoSandboxfile(Vertical):
    """A titled notice: no local Sandboxfile in remote mode, and where to edit one instead."""

    def compose(self) -> ComposeResult:
        yield Label("No local Sandboxfile in remote mode", id="editor-remote-title")
        yield Static(REMOTE_TEXT, markup=False)
