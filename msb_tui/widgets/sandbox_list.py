"""The Sandboxfile editor's list of sandbox names."""

from __future__ import annotations

from textual.content import Content
from textual.widgets import OptionList
from textual.widgets.option_list import Option


class SandboxList(OptionList):
    """One option per sandbox (its id is the name); a sandbox with a problem is marked."""

    def show(self, names: list[str], selected: str | None, bad: str | None = None) -> None:
        """List ``names``, highlight ``selected`` and mark ``bad`` (the one with a problem)."""
        self.clear_options()
        self.add_options([Option(self._label(name, name == bad), id=name) for name in names])
        if selected in names:
            self.highlighted = names.index(selected)

    @staticmethod
    def _label(name: str, bad: bool) -> Content:
        return Content.from_markup("$name [$text-error]✗[/]", name=name) if bad else Content(name)
