"""The raw YAML view of the Sandboxfile editor: a code editor with YAML highlighting and the
file's first problem (file:line:col) under it."""

from __future__ import annotations

from textual.app import ComposeResult
from textual.containers import Vertical
from textual.message import Message
from textual.timer import Timer
from textual.widgets import Static, TextArea

from msb_tui.sandboxfile_edit import Problem, problem_text


class YamlPane(Vertical):
    """Posts :class:`Edited` once typing pauses for :attr:`DEBOUNCE` seconds."""

    DEBOUNCE = 0.3

    class Edited(Message):
        """The user changed the YAML; ``text`` is all of it."""

        def __init__(self, text: str) -> None:
            super().__init__()
            self.text = text

    def __init__(self, *, id: str | None = None) -> None:
        super().__init__(id=id)
        self._shown = ""
        self._timer: Timer | None = None

    def compose(self) -> ComposeResult:
        yield TextArea.code_editor(language="yaml", id="yaml")
        yield Static(id="yaml-problem", markup=False)

    def on_mount(self) -> None:
        self.watch(self.app, "theme", self._match_theme)

    def _match_theme(self) -> None:
        """Syntax colours that read on the theme's background (both are named themes)."""
        self.query_one(TextArea).theme = "css" if self.app.current_theme.dark else "github_light"

    @property
    def text(self) -> str:
        return self.query_one(TextArea).text

    def show_text(self, text: str) -> None:
        """Show ``text`` (a pending edit is dropped)."""
        self._cancel()
        self._shown = text
        area = self.query_one(TextArea)
        if area.text != text:
            area.load_text(text)

    def show_problem(self, problem: Problem | None) -> None:
        line = self.query_one("#yaml-problem", Static)
        line.update(problem_text(problem) if problem else "")
        line.set_class(problem is not None, "-shown")

    def flush(self) -> str | None:
        """The text, if an edit is waiting for its debounce (which is cancelled)."""
        if self._timer is None:
            return None
        self._cancel()
        return self.text

    def _cancel(self) -> None:
        if self._timer is not None:
            self._timer.stop()
            self._timer = None

    def on_text_area_changed(self, event: TextArea.Changed) -> None:
        event.stop()
        if event.text_area.text == self._shown:
            return
        self._cancel()
        self._timer = self.set_timer(self.DEBOUNCE, self._edited)

    def _edited(self) -> None:
        self._timer = None
        self._shown = self.text
        self.post_message(self.Edited(self._shown))
