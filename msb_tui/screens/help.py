"""Every key binding that works right now, generated from the bindings themselves.

The list is read from the screen below (``Screen.active_bindings``: the focused widget, its
containers, the screen and the app), so it can never drift from what the keys do. Keys bound
to the same action are shown together (``F1 / ?``); greyed rows are bound but not possible at
the moment (e.g. *Start* on a running sandbox).
"""

from __future__ import annotations

from typing import Any, ClassVar, NamedTuple

from textual.app import App, ComposeResult
from textual.binding import Binding, BindingType
from textual.containers import Horizontal, Vertical, VerticalScroll
from textual.dom import DOMNode
from textual.screen import ModalScreen, Screen
from textual.widgets import Label, Static


class HelpEntry(NamedTuple):
    """One line of the help: keys, what they do, and whether they do it now."""

    keys: str
    description: str
    tooltip: str
    enabled: bool


def group_title(node: DOMNode) -> str:
    """A heading for the bindings of ``node``: its ``HELP_TITLE``, else its class name."""
    return str(getattr(node, "HELP_TITLE", "") or type(node).__name__)


def binding_groups(app: App[Any], screen: Screen[Any]) -> list[tuple[str, list[HelpEntry]]]:
    """The bindings active on ``screen``, grouped by the node that defines them: the screen
    first, then focused widgets, the app last.

    Args:
        app: The app (it formats keys for display).
        screen: The screen whose bindings to list.

    Returns:
        (heading, entries) per node that has bindings.
    """
    grouped: dict[DOMNode, dict[tuple[str, str], HelpEntry]] = {}
    for key, active in screen.active_bindings.items():
        binding: Binding = active.binding
        entries = grouped.setdefault(active.node, {})
        ident = (binding.action, binding.description)
        shown = app.get_key_display(Binding(key, binding.action, key_display=binding.key_display))
        description = binding.description or binding.action.replace("_", " ")
        if ident in entries:
            old = entries[ident]
            entries[ident] = old._replace(keys=f"{old.keys} / {shown}", enabled=old.enabled or active.enabled)
        else:
            entries[ident] = HelpEntry(shown, description, active.tooltip or "", active.enabled)

    def rank(node: DOMNode) -> int:
        return 0 if node is screen else 2 if node is app else 1

    return [(group_title(node), list(entries.values())) for node, entries in sorted(grouped.items(),
            key=lambda item: rank(item[0]))]  # fmt: skip


class HelpScreen(ModalScreen[None]):
    """Key bindings of the app and of the screen below."""

    HELP_TITLE = "Help"
    BINDINGS: ClassVar[list[BindingType]] = [
        Binding("escape,q,f1", "close", "Close", tooltip="Close the help"),
    ]

    def compose(self) -> ComposeResult:
        with Vertical(id="help-dialog") as dialog:
            dialog.border_title = "Key bindings"
            dialog.border_subtitle = "esc closes · ctrl+p: every command"
            yield VerticalScroll(id="help-body")

    def on_mount(self) -> None:
        stack = self.app.screen_stack
        below = stack[stack.index(self) - 1] if self in stack and stack.index(self) > 0 else self
        body = self.query_one("#help-body", VerticalScroll)
        rows: list[Label | Horizontal | Static] = []
        for title, entries in binding_groups(self.app, below):
            rows.append(Label(title, classes="help-group", markup=False))
            for entry in entries:
                rows.append(
                    Horizontal(
                        Label(entry.keys, classes="help-key", markup=False),
                        Label(entry.description, classes="help-description", markup=False),
                        Label(entry.tooltip, classes="help-tooltip", markup=False),
                        classes="help-row" + ("" if entry.enabled else " -disabled"),
                    )
                )
        body.mount_all(rows)
        body.focus()

    def action_close(self) -> None:
        self.dismiss()
