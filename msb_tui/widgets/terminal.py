"""``TerminalView``: a real terminal in a Textual widget, fed by a guest process.

The byte source is pluggable: anything that is a
:class:`~engine.project.control.StreamingProcess` (the supervisor's pty session, a fake).
The emulator core is bittty (see :mod:`msb_tui.widgets.terminal_emulator` for why, and for
how hostile output is bounded). Drawing uses the line API, as textual-tty does: output only
marks rows dirty; a paint, at most once per frame (:data:`FRAME_S`), refreshes just the rows
that changed plus the cursor's.

Keys: every key goes to the guest, encoded as xterm does (arrows, Home/End, PgUp/PgDn, F1–F24,
ctrl+letters including ctrl+c, alt+key, tab, backspace, enter, escape; paste is bracketed when
the guest asks). Exceptions: the keys the app or screen binds with ``priority`` (ctrl+q quits,
the shell screen's ctrl+] leaves) and shift+PgUp/PgDn, which scroll the history like xterm
(so does the mouse wheel).
"""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING

from rich.style import Style
from textual import events, work
from textual.geometry import Region
from textual.message import Message
from textual.strip import Strip
from textual.widget import Widget

from engine.errors import MsbError
from engine.project.control import StreamingProcess
from engine.vm.process import ExitStatus

if TYPE_CHECKING:
    from msb_tui.widgets.terminal_emulator import TerminalEmulator

FRAME_S = 1 / 60
"""At most one paint per frame, however fast the guest writes."""
WHEEL_ROWS = 3
"""History rows one notch of the mouse wheel moves."""


def _cursor_style(style: Style | None) -> Style:
    """The cursor's cell: its own colours swapped (so it shows on any theme and any SGR)."""
    base = style or Style()
    return base + Style(reverse=not base.reverse)


class TerminalView(Widget, can_focus=True):
    """A terminal screen bound to a guest process; see the module docstring.

    Args:
        cols: initial columns (the widget's layout size replaces it once known).
        rows: initial rows.
    """

    class Exited(Message):
        """The guest process ended (``status``) or the connection to it failed (``error``)."""

        def __init__(self, view: TerminalView, status: ExitStatus | None, error: BaseException | None) -> None:
            super().__init__()
            self.view = view
            self.status = status
            self.error = error

        @property
        def control(self) -> TerminalView:
            return self.view

    class TitleChanged(Message):
        """The guest set the window title (OSC 0/2)."""

        def __init__(self, title: str) -> None:
            super().__init__()
            self.title = title

    def __init__(self, cols: int = 80, rows: int = 24, *, name: str | None = None, id: str | None = None,
                 classes: str | None = None) -> None:  # fmt: skip
        super().__init__(name=name, id=id, classes=classes)
        # Imported here so the app starts without loading the emulator (~0.1 s) until a shell opens.
        from msb_tui.widgets.terminal_emulator import TerminalEmulator

        self.emulator: TerminalEmulator = TerminalEmulator(cols, rows)
        self.proc: StreamingProcess | None = None
        self.running = False
        """A process is attached and has not exited."""
        self._wake = asyncio.Event()
        self._resize_pending: tuple[int, int] | None = None
        self._paint_pending = False
        self._last_cursor: tuple[int, int] | None = None

    @property
    def captures_keys(self) -> bool:
        """While a guest is attached, keys belong to it: the app hides and skips its own
        non-priority bindings (help, modes, theme, palette) while this widget has focus."""
        return self.running

    @property
    def paint_pending(self) -> bool:
        """Output or keys changed the screen and the paint (next frame) has not run yet."""
        return self._paint_pending

    # ------------------------------------------------------------------ the process

    def attach(self, proc: StreamingProcess, rows: int, cols: int) -> None:
        """Start showing ``proc``'s output and sending it keys.

        Args:
            proc: the guest process (a pty session).
            rows: the size the process was opened with; if the widget is another size by now,
                the process is resized.
            cols: see ``rows``.
        """
        self.proc, self.running = proc, True
        self.emulator.take_output()  # replies meant for no one: the guest was not there yet
        self._resize_pending = self.emulator.size if self.emulator.size != (cols, rows) else None
        self._read(proc)
        self._write(proc)
        self._wake.set()
        self.refresh_bindings()

    @work(exclusive=True, group="terminal-read")
    async def _read(self, proc: StreamingProcess) -> None:
        """Feed the guest's output to the emulator until it exits, then post :class:`Exited`."""
        status: ExitStatus | None = None
        error: BaseException | None = None
        try:
            async for chunk in proc:
                self.feed(chunk.data)
                await asyncio.sleep(0)  # a flooding guest must not starve the keyboard (ctrl+c)
            status = await proc.wait()
        except Exception as exc:  # MsbError: a lost connection; anything else is a bug — both shown, not raised
            error = exc
        self.running = False
        self._wake.set()  # lets the writer finish
        self.refresh_bindings()
        self.post_message(self.Exited(self, status, error))

    @work(exclusive=True, group="terminal-write")
    async def _write(self, proc: StreamingProcess) -> None:
        """Forward keys, pastes, query replies and resizes to the guest, in order."""
        while self.running:
            await self._wake.wait()
            self._wake.clear()
            data, resize, self._resize_pending = self.emulator.take_output(), self._resize_pending, None
            try:
                if data:
                    await proc.write(data)
                if resize is not None:
                    await proc.resize(resize[1], resize[0])
            except Exception:
                return  # a dead connection: the reader sees the same failure and reports it

    def _flush(self) -> None:
        """Wake the writer if the emulator has something for the guest."""
        self._wake.set()

    async def close_process(self) -> None:
        """Stop showing the process and end the session (stdin closed, connection released)."""
        proc, self.proc, self.running = self.proc, None, False
        self.workers.cancel_group(self, "terminal-read")
        self.workers.cancel_group(self, "terminal-write")
        if proc is None:
            return
        try:
            await asyncio.wait_for(proc.close_stdin(), timeout=2.0)
            close = getattr(proc, "close", None)  # RemoteProcess: release the socket now
            if close is not None:
                await close()
        except (MsbError, OSError, TimeoutError):
            pass  # already gone: nothing left to release

    # ------------------------------------------------------------------ output -> screen

    def feed(self, data: bytes) -> None:
        """Show ``data`` as if the guest wrote it (also used for our own "[exited]" line).

        Args:
            data: terminal output bytes.
        """
        self.emulator.feed(data)
        if self.emulator.take_title_change():
            self.post_message(self.TitleChanged(self.emulator.title))
        self._flush()  # the emulator may have replied (cursor position, device attributes)
        self._schedule_paint()

    def note(self, text: str) -> None:
        """Print a line of our own (``[exited with 0]``) in bold on a fresh line, back on the
        main screen if the guest left the alternate one behind.

        Args:
            text: plain text (control characters are not interpreted).
        """
        clean = "".join(ch for ch in text if ch.isprintable())
        prefix = b"\x1b[?1049l" if self.emulator.alternate_screen else b""
        prefix += b"\r\n" if self.emulator.board.cursor.x else b""
        self.feed(prefix + b"\x1b[0;1m" + clean.encode() + b"\x1b[0m\r\n")

    def _schedule_paint(self) -> None:
        if not self._paint_pending:
            self._paint_pending = True
            self.set_timer(FRAME_S, self._paint)

    def _paint(self) -> None:
        """Refresh the rows that changed since the last paint, and the cursor's old and new row."""
        self._paint_pending = False
        rows = self.emulator.damaged_rows()
        cursor = self._cursor()
        if cursor != self._last_cursor:
            rows.update(c[1] for c in (cursor, self._last_cursor) if c is not None)
            self._last_cursor = cursor
        if len(rows) >= self.size.height:
            self.refresh()
        elif rows:
            self.refresh(*(Region(0, y, self.size.width, 1) for y in rows))

    def _cursor(self) -> tuple[int, int] | None:
        return self.emulator.cursor if self.has_focus and self.running else None

    def render_line(self, y: int) -> Strip:
        """One row of the terminal: the emulator's cells, the cursor drawn in reverse video."""
        width = self.size.width
        base = self.rich_style  # the theme's text and background under the guest's own colours
        strip = Strip(self.emulator.segments(y)).apply_style(base).adjust_cell_length(width, base)
        cursor = self._cursor()
        if cursor is None or cursor[1] != y or not 0 <= cursor[0] < width:
            return strip
        before, cell, after = strip.divide([cursor[0], cursor[0] + 1, width])
        flipped = Strip([seg._replace(style=_cursor_style(seg.style)) for seg in cell])
        return Strip.join([before, flipped, after])

    # ------------------------------------------------------------------ events

    def on_resize(self, event: events.Resize) -> None:
        if self.emulator.resize(self.size.width, self.size.height):
            self._resize_pending = self.emulator.size
            self._flush()
        self._last_cursor = None
        self.refresh()

    def on_key(self, event: events.Key) -> None:
        if not self.running:
            return  # let the screen's bindings (close, reopen) have it
        if event.key in ("shift+pageup", "shift+pagedown"):
            self._scroll((-1 if event.key == "shift+pageup" else 1) * max(self.size.height - 1, 1))
        elif not self.emulator.key(event.key, event.character):
            return
        event.stop()
        event.prevent_default()
        self._flush()
        self._schedule_paint()

    def on_paste(self, event: events.Paste) -> None:
        if self.running:
            self.emulator.paste(event.text)
            event.stop()
            self._flush()
            self._schedule_paint()

    def _scroll(self, rows: int) -> None:
        self.emulator.scroll_view(rows)
        self._schedule_paint()

    def on_mouse_scroll_up(self, event: events.MouseScrollUp) -> None:
        self._scroll(-WHEEL_ROWS)
        event.stop()

    def on_mouse_scroll_down(self, event: events.MouseScrollDown) -> None:
        self._scroll(WHEEL_ROWS)
        event.stop()

    def on_focus(self) -> None:
        self.emulator.board.display.focus_in()  # reported to the guest only if it asked (DECSET 1004)
        self._flush()
        self._schedule_paint()

    def on_blur(self) -> None:
        self.emulator.board.display.focus_out()
        self._flush()
        self._schedule_paint()
