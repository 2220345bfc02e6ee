"""A sandbox's console/log output, following live.

A worker iterates ``workbench.logs(name)`` and appends decoded text to a buffer; it posts
:class:`LogsScreen.Pending` (``can_replace``), and the screen moves the whole buffer into the
``Log`` widget at once, so a flood of output costs one write per frame, not one per chunk.
"""

from __future__ import annotations

import codecs
import re
from dataclasses import dataclass
from typing import TYPE_CHECKING, ClassVar, cast

from textual import on, work
from textual.app import ComposeResult
from textual.binding import Binding, BindingType
from textual.message import Message
from textual.screen import Screen
from textual.widgets import Footer, Header, Log, Static

from msb_tui.widgets.error_panel import ErrorPanel

if TYPE_CHECKING:
    from msb_tui.app import MsbApp

_ESCAPE = re.compile(r"\x1b(?:\[[0-?]*[ -/]*[@-~]|\][^\x07\x1b]*(?:\x07|\x1b\\)|[@-Z\\-_])")
"""CSI (colours, cursor moves), OSC (titles) and two-byte escapes."""
_CONTROL = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f]")
_LONGEST_ESCAPE = 256


class ConsoleText:
    """Bytes of a console log → plain text: UTF-8 decoded across chunk boundaries, escape
    sequences and control characters removed (an escape cut off by a chunk boundary is held
    until the rest arrives)."""

    def __init__(self) -> None:
        self._decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
        self._held = ""

    def feed(self, data: bytes) -> str:
        """The printable text of ``data`` (and of what was held back from the last chunk).

        Args:
            data: The next chunk of the log.

        Returns:
            Text to append (line endings kept).
        """
        text = self._held + self._decoder.decode(data)
        self._held = ""
        cut = text.rfind("\x1b")
        if cut != -1 and not _ESCAPE.match(text, cut) and len(text) - cut < _LONGEST_ESCAPE:
            text, self._held = text[:cut], text[cut:]
        return _CONTROL.sub("", _ESCAPE.sub("", text))

    def flush(self) -> str:
        """Whatever is still held back, at the end of the log."""
        text, self._held = self._held + self._decoder.decode(b"", final=True), ""
        return _CONTROL.sub("", _ESCAPE.sub("", text))


class LogsScreen(Screen[None]):
    """A sandbox's output, following."""

    HELP_TITLE = "Logs"
    BINDINGS: ClassVar[list[BindingType]] = [
        Binding("escape,q", "back", "Back", tooltip="Back to the previous screen"),
        Binding("f", "toggle_follow", "Follow", tooltip="Keep scrolling to the newest output (on/off)"),
        Binding("c", "clear", "Clear", tooltip="Clear the view (the log itself is kept)"),
    ]

    @dataclass
    class Pending(Message, bubble=False):
        """New text is in the buffer."""

        def can_replace(self, message: Message) -> bool:
            """One drain empties the buffer, so a queued newer notice makes this one moot."""
            return isinstance(message, LogsScreen.Pending)

    def __init__(self, name: str) -> None:
        """Args:
        name: The sandbox whose log to show.
        """
        super().__init__()
        self.sandbox = name
        self._buffer: list[str] = []
        self._state = "waiting"

    def compose(self) -> ComposeResult:
        yield Header()
        yield Static(id="logs-status", markup=False)
        yield Log(id="log", highlight=False, max_lines=20_000, auto_scroll=True)
        yield ErrorPanel(f"Could not read the log of {self.sandbox}", "Press escape to go back.", id="logs-error",
                         classes="hidden")  # fmt: skip
        yield Footer()

    def on_mount(self) -> None:
        self.title = f"Logs · {self.sandbox}"
        self._show_status()
        self.follow()

    @work(exclusive=True, group="logs")
    async def follow(self) -> None:
        """Read the log until it ends (or the screen closes, which cancels this worker)."""
        text = ConsoleText()
        workbench = cast("MsbApp", self.app).workbench
        try:
            async for chunk in workbench.logs(self.sandbox):
                self._append(text.feed(chunk))
        except Exception as exc:  # shown in the panel, never raised (it would end the app)
            self._append(text.flush())
            self._failed(exc)
            return
        self._append(text.flush())
        self._state = "ended"
        self.post_message(self.Pending())

    def _append(self, text: str) -> None:
        if text:
            self._buffer.append(text)
            self._state = "following"
            self.post_message(self.Pending())

    @on(Pending)
    def _drain(self) -> None:
        text, self._buffer = "".join(self._buffer), []
        self.query_one(Log).write(text)
        self._show_status()

    def _failed(self, exc: BaseException) -> None:
        self._state = "failed"
        panel = self.query_one(ErrorPanel)
        panel.show(exc)
        panel.remove_class("hidden")
        self.query_one(Log).set_class(not self.query_one(Log).line_count, "hidden")
        self._show_status()

    def _show_status(self) -> None:
        log = self.query_one(Log)
        lines = log.line_count
        follow = "following" if log.auto_scroll else "paused (f follows)"
        text = {
            "waiting": f"{self.sandbox}: waiting for output…",
            "following": f"{self.sandbox}: {lines} lines · {follow}",
            "ended": f"{self.sandbox}: end of log · {lines} lines" if lines else f"{self.sandbox}: no output yet",
            "failed": f"{self.sandbox}: the log could not be read",
        }[self._state]
        status = self.query_one("#logs-status", Static)
        status.update(text)
        status.set_class(self._state == "failed", "error")

    def action_back(self) -> None:
        self.dismiss()

    def action_toggle_follow(self) -> None:
        log = self.query_one(Log)
        log.auto_scroll = not log.auto_scroll
        if log.auto_scroll:
            log.scroll_end(animate=False)
        self._show_status()

    def action_clear(self) -> None:
        self.query_one(Log).clear()
        self._show_status()
