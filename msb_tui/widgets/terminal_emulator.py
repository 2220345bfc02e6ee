"""The emulator core behind :class:`~msb_tui.widgets.terminal.TerminalView`: bittty, wrapped.

Why bittty: it is a maintained, pure-Python VT/xterm emulator with the alternate screen
(``top``, ``vi`` and ``less`` draw there and the shell's screen comes back when they quit),
DECCKM/bracketed paste/modifier-aware key encoding, query replies (busybox's line editor asks
for the cursor position) and per-row dirty tracking. pyte has no alternate screen.

This module knows nothing of Textual widgets: bytes in (:meth:`TerminalEmulator.feed`), keys
in (:meth:`TerminalEmulator.key`), bytes out for the guest (:meth:`TerminalEmulator.take_output`),
and rows of Rich segments for whoever draws them. Output from the guest is hostile, so:

- nothing it sends can raise out of :meth:`~TerminalEmulator.feed` (bad UTF-8 becomes U+FFFD;
  an emulator fault resets the parser and is logged);
- what it makes us hold is bounded: the screen, :data:`SCROLLBACK_CELLS` of history, at most
  :data:`MAX_PENDING_SEQUENCE` of an unterminated escape sequence, at most
  :data:`MAX_OUTBOX` of replies waiting for the guest to read them;
- side effects on the host are dropped: clipboard writes (OSC 52), desktop notifications,
  window operations; a guest that resizes the window (CSI 8 t, DECCOLM) is put back to the
  widget's size. Titles are kept (shown in the status line, length-capped).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any

from bittty import Board
from bittty.style import Color as BitttyColor
from bittty.style import Style as BitttyStyle
from bittty.terminals import Terminal as BitttyChrome
from bittty.terminals.scrollback import MemoryScrollback
from rich.color import Color
from rich.segment import Segment
from rich.style import Style

log = logging.getLogger(__name__)

SCROLLBACK_CELLS = 1_000_000
"""History kept above the screen, in cells (≈ 8,000 lines of 120 columns); oldest forgotten first."""
MAX_PENDING_SEQUENCE = 1 << 20
"""An escape sequence still unterminated after this many characters is dropped."""
MAX_OUTBOX = 1 << 20
"""Bytes for the guest (keys, paste, replies) held while it does not read; more are dropped."""
MAX_TITLE = 200
"""Characters of a window title kept."""

# Textual's modifier names -> xterm's modifier bits (bittty takes 1 + bits).
_MOD_BITS = {"shift": 1, "alt": 2, "meta": 2, "ctrl": 4}
# Keys bittty encodes by name (cursor/editing keypad), honouring DECCKM and modifiers.
NAMED_KEYS = frozenset({"up", "down", "left", "right", "home", "end", "pageup", "pagedown", "insert", "delete"})
# Textual key names whose character bittty wants instead (it applies DECBKM to backspace).
SPECIAL_KEYS = {"enter": "\r", "tab": "\t", "escape": "escape", "backspace": "\x08", "space": " "}


def rich_color(color: BitttyColor | None) -> Color | None:
    """A bittty colour as Rich's: indexed colours stay ANSI (so the app's ANSI theme, dark
    or light, decides their shade), true colour stays RGB, the default is ``None``.

    Args:
        color: the cell's foreground or background.

    Returns:
        The Rich colour, or ``None`` for the widget's own (theme) colour.
    """
    if color is None or color.mode == "default":
        return None
    if color.mode == "indexed" and isinstance(color.value, int) and 0 <= color.value < 256:
        return Color.from_ansi(color.value)
    if color.mode == "rgb" and isinstance(color.value, tuple):
        red, green, blue = color.value
        return Color.from_rgb(red, green, blue)
    return None


def rich_style(style: BitttyStyle) -> Style:
    """A cell's bittty style as a Rich style (unset attributes stay unset, so they inherit).

    Args:
        style: the cell's style from video memory.

    Returns:
        The equivalent Rich style (hyperlinks are not carried: a guest's link is not ours to open).
    """
    return Style(color=rich_color(style.fg), bgcolor=rich_color(style.bg), bold=style.bold, dim=style.dim,
                 italic=style.italic, underline=style.underline, blink=style.blink, reverse=style.reverse,
                 conceal=style.conceal, strike=style.strike, overline=style.overline)  # fmt: skip


class _Outbox:
    """The host cable as bittty sees it: everything the board transmits (encoded keys, paste,
    replies to queries) is queued here for the widget to forward to the guest process."""

    closed = False

    def __init__(self) -> None:
        self.pending = bytearray()
        self.dropped = 0

    def _add(self, data: bytes) -> int:
        room = MAX_OUTBOX - len(self.pending)
        self.pending += data[: max(room, 0)]
        self.dropped += max(len(data) - room, 0)
        return len(data)

    def write(self, data: str) -> int:
        return self._add(data.encode("utf-8", "surrogateescape"))

    def write_bytes(self, data: bytes) -> int:
        return self._add(bytes(data))

    def flush(self) -> None:
        """Nothing buffered below us: the widget drains :attr:`pending`."""

    async def read_bytes_async(self, size: int) -> bytes:
        return b""  # never pumped: the widget feeds the board itself

    def configure_line(self, line: object) -> None:
        """A pty has no serial line settings."""

    def resize(self, rows: int, cols: int) -> None:
        """The widget forwards resizes to the process itself (it must await them)."""

    def close(self) -> None:
        self.closed = True


class _Chrome(BitttyChrome):  # type: ignore[misc]
    """bittty's terminal base with a bounded scrollback; keeps the title, drops host side effects."""

    def __init__(self, board: Board) -> None:
        super().__init__(board, MemoryScrollback(SCROLLBACK_CELLS))
        self.title = ""
        self.title_changed = False

    def on_title(self, title: str, icon_title: str) -> None:
        clean = "".join(ch for ch in title if ch.isprintable())[:MAX_TITLE]
        self.title_changed = self.title_changed or clean != self.title
        self.title = clean


class TerminalEmulator:
    """A screen of ``cols`` × ``rows`` cells driven by a guest's output; see the module docstring.

    Args:
        cols: columns (at least 1).
        rows: rows (at least 1).
    """

    def __init__(self, cols: int = 80, rows: int = 24) -> None:
        self.board = Board(width=max(cols, 1), height=max(rows, 1))
        self._wanted = self.size
        self._outbox = _Outbox()
        self.board.host.attach(self._outbox)
        self._chrome = _Chrome(self.board)
        self._chrome.attach()
        self._styles: dict[BitttyStyle, Style] = {}
        self.faults = 0
        """Emulator errors survived (each reset the parser)."""

    # ------------------------------------------------------------------ guest -> screen

    def feed(self, data: bytes) -> None:
        """Parse the guest's output into the screen. Never raises (see the module docstring).

        Args:
            data: raw bytes from the guest's pty (any bytes at all).
        """
        try:
            self.board.feed_host_data(data)
        except Exception:  # a hostile or unforeseen sequence must not take the UI down
            self.faults += 1
            log.exception("terminal emulator fault; parser reset")
            self.board.parser.reset()
        if len(self.board.parser.buffer) > MAX_PENDING_SEQUENCE:
            self.board.parser.reset()
        if self.size != self._wanted:  # the guest resized the window (CSI 8 t, DECCOLM): the widget decides
            self.board.resize(*self._wanted)

    @property
    def size(self) -> tuple[int, int]:
        """``(cols, rows)``."""
        return self.board.width, self.board.height

    def resize(self, cols: int, rows: int) -> bool:
        """Change the screen size (the main screen reflows; history re-wraps).

        Args:
            cols: new columns; values below 1 are ignored.
            rows: new rows; values below 1 are ignored.

        Returns:
            Whether the size changed.
        """
        if cols < 1 or rows < 1 or (cols, rows) == self.size:
            return False
        self._wanted = (cols, rows)
        self.board.resize(cols, rows)
        return True

    @property
    def alternate_screen(self) -> bool:
        """Whether a full-screen program has switched to the alternate screen."""
        return bool(self.board.blitter.in_alt_screen)

    @property
    def title(self) -> str:
        """The window title the guest last set (OSC 0/2), printable characters only."""
        return str(self._chrome.title)

    def take_title_change(self) -> bool:
        """Whether the title changed since the last call."""
        changed, self._chrome.title_changed = self._chrome.title_changed, False
        return bool(changed)

    # ------------------------------------------------------------------ keyboard -> guest

    def key(self, key: str, character: str | None) -> bool:
        """Encode a Textual key press for the guest, honouring the modes the guest set.

        Args:
            key: Textual's key name (``"ctrl+c"``, ``"up"``, ``"f5"``, ``"alt+x"``, ``"a"``).
            character: the character Textual attached to it, if any.

        Returns:
            Whether the key meant something to the terminal (else the caller may let it bubble).
        """
        *mods, base = key.split("+")
        bits = 0
        for mod in mods:
            bits |= _MOD_BITS.get(mod, 0)
        board = self.board
        if len(base) > 1 and base[0] == "f" and base[1:].isdigit() and 1 <= int(base[1:]) <= 24:
            board.input_fkey(int(base[1:]), 1 + bits)
        elif base in NAMED_KEYS:
            board.input_key(base, 1 + bits)
        elif base in SPECIAL_KEYS:
            board.input_key(SPECIAL_KEYS[base], 1 + bits)
        elif character and len(character) == 1 and character.isprintable() and not bits & 4:
            board.input_key(character, 1 + (bits & ~1))  # the character is already shifted
        elif bits & 4 and len(base) == 1:
            board.input_key(base, 1 + bits)  # ctrl+letter: bittty makes the C0 code
        elif character and len(character) == 1:
            board.input(character)  # ctrl+backslash and friends arrive as their C0 code
        else:
            return False
        self.scroll_to_bottom()
        return True

    def paste(self, text: str) -> None:
        """Send pasted text (bracketed if the guest asked, line ends as CR like xterm).

        Args:
            text: the pasted text.
        """
        self.board.input_paste(text.replace("\r\n", "\r").replace("\n", "\r"))
        self.scroll_to_bottom()

    def take_output(self) -> bytes:
        """Bytes for the guest queued since the last call (keys, paste, query replies)."""
        data, self._outbox.pending = bytes(self._outbox.pending), bytearray()
        return data

    # ------------------------------------------------------------------ screen -> pixels

    def damaged_rows(self) -> set[int]:
        """Rows of the view that changed since the last call (all of them after a page flip)."""
        if self._chrome.view_offset():
            return set(range(self.board.height))
        return set(self._chrome.damaged_rows())

    @property
    def cursor(self) -> tuple[int, int] | None:
        """``(x, y)`` of the cursor on the view, or ``None`` while hidden or scrolled back."""
        if self._chrome.view_offset():
            return None
        position: tuple[int, int] | None = self.board.display.cursor
        return position

    def row_cells(self, y: int) -> Sequence[tuple[Any, str]]:
        """The cells of view row ``y`` (history when scrolled back, else the screen)."""
        if self._chrome.view_offset():
            rows = self._chrome.view_rows()
            return rows[y] if 0 <= y < len(rows) else ()
        page = self.board.display.page
        return page.grid[y] if 0 <= y < page.height else ()

    def segments(self, y: int) -> list[Segment]:
        """View row ``y`` as Rich segments, one per run of equal style.

        Args:
            y: the row, 0 at the top of the view.

        Returns:
            Segments covering the row (an empty list past the bottom).
        """
        out: list[Segment] = []
        run: list[str] = []
        run_style: BitttyStyle | None = None
        for style, char in self.row_cells(y):
            if run and style is not run_style and style != run_style:
                out.append(Segment("".join(run), self._rich(run_style)))
                run = []
            run_style = style
            run.append(char)
        if run:
            out.append(Segment("".join(run), self._rich(run_style)))
        return out

    def _rich(self, style: BitttyStyle | None) -> Style:
        if style is None:
            return Style()
        cached = self._styles.get(style)
        if cached is None:
            if len(self._styles) > 4096:  # a guest cycling through true colours must not grow this
                self._styles.clear()
            cached = self._styles[style] = rich_style(style)
        return cached

    def text(self) -> str:
        """The screen as plain text, trailing blanks trimmed (for tests and the e2e check)."""
        return str(self.board.capture_text())

    # ------------------------------------------------------------------ history

    @property
    def scrolled_back(self) -> int:
        """How many rows the view sits above the live screen (0: live)."""
        return int(self._chrome.view_offset())

    def scroll_view(self, rows: int) -> None:
        """Move the view through history (negative: back). No-op on the alternate screen.

        Args:
            rows: rows to move; clamped at either end.
        """
        if not self.alternate_screen and self._chrome.scrollback is not None:
            self._chrome.scroll_view(rows)

    def scroll_to_bottom(self) -> None:
        """Show the live screen again."""
        self._chrome.scroll_to_bottom()
