"""The REPL's multi-line input: a :class:`~textual.widgets.TextArea` with shell-like history.

↑ on the first (visual) line recalls the previous cell, ↓ on the last line the next one (and,
past the newest, what was being typed). Everywhere else the arrows move the cursor as usual.

No syntax highlighting, on purpose: Textual's tree-sitter highlighting segfaults the whole
process with tree-sitter ≥ 0.25 when the language is switched to JavaScript (reproduced with
tree-sitter 0.26.1 / tree-sitter-javascript 0.25.0; see Textualize/textual#5976), and a REPL
that can kill the app is worse than one without colours.
"""

from __future__ import annotations

from typing import Literal

from textual.widgets import TextArea

from msb_tui.history import History


class ReplInput(TextArea):
    """Multi-line code input whose ↑/↓ walk the :class:`~msb_tui.history.History` at its edges."""

    def __init__(self, history: History, language: Literal["python", "node"], *, id: str | None = None) -> None:
        """Args:
        history: the history to walk (replace it with :attr:`repl_history` when the language changes).
        language: the interpreter's language (named in the placeholder).
        id: the widget id.
        """
        super().__init__(tab_behavior="indent", soft_wrap=True, id=id, placeholder=_placeholder(language))
        self.repl_history = history
        self.set_language(language)

    def set_language(self, language: Literal["python", "node"]) -> None:
        """Say in the placeholder which interpreter the input goes to.

        Args:
            language: the interpreter's language.
        """
        self.placeholder = _placeholder(language)

    def action_cursor_up(self, select: bool = False) -> None:
        """Move up a line, or recall the previous history entry from the first line."""
        if not select and self.navigator.is_first_wrapped_line(self.cursor_location):
            entry = self.repl_history.previous(self.text)
            if entry is not None:
                self.load_text(entry)
                self.move_cursor((0, len(self.document.get_line(0))))
            return
        super().action_cursor_up(select)

    def action_cursor_down(self, select: bool = False) -> None:
        """Move down a line, or recall the next history entry from the last line."""
        if not select and self.navigator.is_last_wrapped_line(self.cursor_location):
            entry = self.repl_history.next()
            if entry is not None:
                self.load_text(entry)
                self.move_cursor(self.document.end)
            return
        super().action_cursor_down(select)


def _placeholder(language: str) -> str:
    return f"{language} code — ctrl+r runs it, ↑/↓ on the first/last line walk the history"
