"""The terminal: the emulator core (msb_tui/widgets/terminal_emulator.py) and the TerminalView
widget (msb_tui/widgets/terminal.py) fed by a scripted guest process."""

from __future__ import annotations

import random

import pytest
from rich.color import Color
from rich.style import Style
from textual import events
from textual.app import App, ComposeResult

from engine.errors import MsbError
from msb_tui.widgets.terminal import TerminalView
from msb_tui.widgets.terminal_emulator import MAX_OUTBOX, MAX_PENDING_SEQUENCE, SCROLLBACK_CELLS, TerminalEmulator
from tests.unit.helpers import eventually
from tests.unit.tui.shell_fakes import ScriptedProcess, painted

# ---------------------------------------------------------------------------- keys -> bytes

KEY_TABLE = [
    ("a", "a", b"a"),
    ("A", "A", b"A"),
    ("space", " ", b" "),
    ("enter", "\r", b"\r"),
    ("tab", "\t", b"\t"),
    ("shift+tab", None, b"\x1b[Z"),
    ("backspace", "\x7f", b"\x7f"),
    ("escape", "\x1b", b"\x1b"),
    ("ctrl+a", "\x01", b"\x01"),
    ("ctrl+c", "\x03", b"\x03"),
    ("ctrl+d", "\x04", b"\x04"),
    ("ctrl+z", "\x1a", b"\x1a"),
    ("ctrl+p", "\x10", b"\x10"),
    ("ctrl+backslash", "\x1c", b"\x1c"),
    ("ctrl+at", "\x00", b"\x00"),
    ("alt+x", "x", b"\x1bx"),
    ("alt+b", "b", b"\x1bb"),
    ("up", None, b"\x1b[A"),
    ("down", None, b"\x1b[B"),
    ("right", None, b"\x1b[C"),
    ("left", None, b"\x1b[D"),
    ("ctrl+left", None, b"\x1b[1;5D"),
    ("shift+up", None, b"\x1b[1;2A"),
    ("home", None, b"\x1b[H"),
    ("end", None, b"\x1b[F"),
    ("pageup", None, b"\x1b[5~"),
    ("pagedown", None, b"\x1b[6~"),
    ("insert", None, b"\x1b[2~"),
    ("delete", None, b"\x1b[3~"),
    ("f1", None, b"\x1bOP"),
    ("f4", None, b"\x1bOS"),
    ("f5", None, b"\x1b[15~"),
    ("f10", None, b"\x1b[21~"),
    ("f12", None, b"\x1b[24~"),
    ("é", "é", "é".encode()),
]


@pytest.mark.parametrize(("key", "character", "expected"), KEY_TABLE, ids=[k for k, _, _ in KEY_TABLE])
def test_key_table(key: str, character: str | None, expected: bytes) -> None:
    term = TerminalEmulator(80, 24)
    assert term.key(key, character)
    assert term.take_output() == expected


def test_unknown_key_is_not_consumed() -> None:
    term = TerminalEmulator(80, 24)
    assert not term.key("something_odd", None)
    assert term.take_output() == b""


def test_application_cursor_keys_follow_the_guest() -> None:
    term = TerminalEmulator(80, 24)
    term.feed(b"\x1b[?1h")  # DECCKM, as vi and less set it
    term.key("up", None)
    term.key("left", None)
    assert term.take_output() == b"\x1bOA\x1bOD"


def test_paste_is_bracketed_when_asked_and_line_ends_are_cr() -> None:
    term = TerminalEmulator(80, 24)
    term.paste("ls\nls -l\r\n")
    assert term.take_output() == b"ls\rls -l\r"
    term.feed(b"\x1b[?2004h")
    term.paste("x")
    assert term.take_output() == b"\x1b[200~x\x1b[201~"


def test_query_replies_go_to_the_guest() -> None:
    term = TerminalEmulator(80, 24)
    term.feed(b"ab\x1b[6n")  # busybox's line editor asks where the cursor is
    assert term.take_output() == b"\x1b[1;3R"


# ---------------------------------------------------------------------------- output -> screen


def styles_of(term: TerminalEmulator, y: int) -> dict[str, Style]:
    return {seg.text.strip(): seg.style for seg in term.segments(y) if seg.text.strip() and seg.style}


def test_sgr_colours_map_to_rich_styles() -> None:
    term = TerminalEmulator(60, 5)
    term.feed(b"\x1b[31mred\x1b[0m \x1b[1;42mbold\x1b[0m \x1b[38;5;208m256\x1b[0m "
              b"\x1b[38;2;10;20;30mrgb\x1b[0m \x1b[7mrev\x1b[0m \x1b[4;3mui\x1b[0m plain")  # fmt: skip
    styles = styles_of(term, 0)
    assert styles["red"].color == Color.from_ansi(1)
    assert styles["bold"].bold and styles["bold"].bgcolor == Color.from_ansi(2)
    assert styles["256"].color == Color.from_ansi(208)
    assert styles["rgb"].color == Color.from_rgb(10, 20, 30)
    assert styles["rev"].reverse
    assert styles["ui"].underline and styles["ui"].italic
    plain = next(seg for seg in term.segments(0) if "plain" in seg.text)
    assert plain.style is not None and plain.style.color is None and plain.style.bgcolor is None


def test_cursor_movement_and_erase() -> None:
    term = TerminalEmulator(20, 5)
    term.feed(b"hello world\x1b[3;5HX\x1b[1;7H\x1b[Kend\x1b[2;1Hline two\x1b[2;5H\x1b[1P")
    assert term.text().splitlines() == ["hello end", "linetwo", "    X"]
    assert term.cursor == (4, 1)


def test_alternate_screen_keeps_the_shell_screen() -> None:
    term = TerminalEmulator(30, 6)
    term.feed(b"$ ls\r\nfile-a  file-b\r\n$ vi notes")
    term.feed(b"\x1b[?1049h\x1b[H\x1b[2J~\r\n~\r\n\x1b[6;1H\"notes\" [New]")
    assert term.alternate_screen
    assert "file-a" not in term.text() and '"notes" [New]' in term.text()
    term.feed(b"\x1b[?1049l")
    assert not term.alternate_screen
    assert term.text().splitlines() == ["$ ls", "file-a  file-b", "$ vi notes"]
    assert term.cursor == (10, 2)


def top_frame(uptime: str, cpu: int) -> bytes:
    """A redraw as busybox top sends it: home, then each line erased to its end."""
    lines = [f"top - {uptime} up, load average: 0.00", f"CPU: {cpu:3d}% usr", "",
             "  PID USER     STAT   VSZ %CPU COMMAND", "    1 root     S     1500   0% init"]  # fmt: skip
    return b"\x1b[H" + b"".join(f"\x1b[7m{line}\x1b[0m\x1b[K\r\n".encode() if i == 3 else
                               f"{line}\x1b[K\r\n".encode() for i, line in enumerate(lines)) + b"\x1b[J"  # fmt: skip


def test_top_like_full_redraws() -> None:
    term = TerminalEmulator(50, 8)
    term.feed(b"$ top\r\n\x1b[?1049h\x1b[?25l")
    term.feed(top_frame("10:00:01", 5))
    term.damaged_rows()
    term.feed(top_frame("10:00:02", 17))
    assert term.text().splitlines()[:2] == ["top - 10:00:02 up, load average: 0.00", "CPU:  17% usr"]
    assert {0, 1} <= term.damaged_rows()
    assert term.cursor is None  # top hides the cursor
    header = next(seg for seg in term.segments(3) if "PID" in seg.text)
    assert header.style is not None and header.style.reverse
    term.feed(b"\x1b[?25h\x1b[?1049l")
    assert term.text() == "$ top"


def test_hostile_bytes_never_raise() -> None:
    rng = random.Random(6)
    term = TerminalEmulator(40, 10)
    nasty = [b"\xff\xfe\xc3", b"\x1b[", b"\x1b[99999999999999999;99999999999H", b"\x1b[?99999h",
             b"\x1b]52;c;" + b"A" * 1000 + b"\x07", b"\x1bP" + b"q" * 5000, b"\x9b\x9d\x90",
             b"\x1b[38;5;999m", b"\x1b[38;2;999;-1;mX", b"\x1b#8", b"\x1b[8;9999;9999t", b"\x00\x07\x08"]  # fmt: skip
    for chunk in nasty:
        term.feed(chunk)
    for _ in range(200):
        term.feed(rng.randbytes(rng.randint(1, 300)))
    term.feed(b"\x1b\\\x1bc" + "ok ✓ 日本".encode())
    assert "ok ✓ 日本" in term.text()
    assert term.size == (40, 10)
    for y in range(10):
        term.segments(y)


def test_an_unterminated_sequence_is_bounded() -> None:
    term = TerminalEmulator(40, 10)
    for _ in range(3):
        term.feed(b"\x1b]0;" + b"x" * (MAX_PENDING_SEQUENCE // 2))
    assert len(term.board.parser.buffer) <= MAX_PENDING_SEQUENCE
    term.feed(b"\x07\r\nstill alive")
    assert "still alive" in term.text()


def test_replies_the_guest_does_not_read_are_bounded() -> None:
    term = TerminalEmulator(40, 10)
    term.feed(b"\x1b[6n" * (MAX_OUTBOX // 4))
    assert len(term.take_output()) <= MAX_OUTBOX


def test_scrollback_keeps_history_within_its_budget() -> None:
    term = TerminalEmulator(100, 10)
    term.feed(b"".join(f"line {i:06d} ".encode() + b"x" * 80 + b"\r\n" for i in range(20_000)))
    store = term._chrome.scrollback
    assert store.cells <= SCROLLBACK_CELLS
    assert store.first > 0  # the oldest were forgotten
    term.scroll_view(-5)
    assert term.scrolled_back == 5 and term.cursor is None
    shown = "".join(ch for _, ch in term.row_cells(0))
    assert shown.startswith("line 019986")  # the screen starts at 019991 (its last row is empty)
    term.key("a", "a")  # typing snaps back to the live screen
    assert term.scrolled_back == 0


def test_title_is_kept_printable_and_short() -> None:
    term = TerminalEmulator(40, 10)
    term.feed(b"\x1b]0;root@api: /app\x07")
    assert term.take_title_change() and term.title == "root@api: /app"
    assert not term.take_title_change()
    term.feed(b"\x1b]2;" + b"\x01evil" + b"y" * 500 + b"\x07")
    assert term.title.startswith("evil") and len(term.title) == 200


# ---------------------------------------------------------------------------- the widget


class TermApp(App[None]):
    CSS = "TerminalView { width: 1fr; height: 1fr; }"

    def compose(self) -> ComposeResult:
        yield TerminalView(id="term")

    def on_terminal_view_exited(self, message: TerminalView.Exited) -> None:
        self.exited = message


async def attached(app: TermApp, proc: ScriptedProcess, rows: int = 24, cols: int = 80) -> TerminalView:
    view = app.query_one(TerminalView)
    view.attach(proc, rows, cols)
    view.focus()
    return view


def strip_text(view: TerminalView, y: int) -> str:
    return "".join(seg.text for seg in view.render_line(y))


async def test_widget_renders_colours_and_cursor() -> None:
    app = TermApp()
    async with app.run_test(size=(40, 8)) as pilot:
        proc = ScriptedProcess(b"\x1b[1;31merror:\x1b[0m disk full\r\n$ ")
        view = await attached(app, proc, rows=8, cols=40)
        await painted(view, "$")
        await pilot.pause()
        first = view.render_line(0)
        assert strip_text(view, 0).startswith("error: disk full")
        assert first.cell_length == 40
        red = next(seg for seg in first if seg.text == "error:")
        assert red.style is not None and red.style.color == Color.from_ansi(1) and red.style.bold
        cursor = [seg for seg in view.render_line(1) if seg.style and seg.style.reverse]
        assert [seg.text for seg in cursor] == [" "]
        assert strip_text(view, 1)[:2] == "$ "


async def test_widget_sends_keys_and_paste() -> None:
    app = TermApp()
    async with app.run_test(size=(40, 8)) as pilot:
        proc = ScriptedProcess(b"$ ")
        await attached(app, proc, rows=8, cols=40)
        await pilot.press("l", "s", "enter", "ctrl+c", "up", "escape", "f2", "tab")
        app.query_one(TerminalView).post_message(events.Paste("echo 1\necho 2"))
        await eventually(lambda: proc.written.endswith(b"echo 1\recho 2"))
        assert proc.written == b"ls\r\x03\x1b[A\x1b\x1bOQ\techo 1\recho 2"


async def test_widget_resize_is_forwarded() -> None:
    app = TermApp()
    async with app.run_test(size=(40, 8)) as pilot:
        proc = ScriptedProcess(b"$ ")
        view = await attached(app, proc, rows=24, cols=80)  # opened before the layout settled
        await eventually(lambda: proc.resizes == [(8, 40)])
        await pilot.resize_terminal(100, 30)
        await eventually(lambda: proc.resizes[-1] == (30, 100))
        assert view.emulator.size == (100, 30)


async def test_widget_reports_exit_and_releases_keys() -> None:
    app = TermApp()
    async with app.run_test(size=(40, 8)):
        proc = ScriptedProcess(b"$ exit\r\n")
        view = await attached(app, proc, rows=8, cols=40)
        assert view.captures_keys
        proc.exit(3)
        await eventually(lambda: hasattr(app, "exited"))
        assert app.exited.status is not None and app.exited.status.exit_code == 3 and app.exited.error is None
        assert not view.captures_keys


async def test_widget_reports_a_broken_connection() -> None:
    app = TermApp()
    async with app.run_test(size=(40, 8)):
        proc = ScriptedProcess(b"$ ")
        await attached(app, proc, rows=8, cols=40)
        proc.fail(MsbError("lost the connection to the sandbox's supervisor", hint="see `msb status`"))
        await eventually(lambda: hasattr(app, "exited"))
        assert isinstance(app.exited.error, MsbError) and app.exited.status is None


async def test_widget_survives_garbage_and_draws_full_screen_programs() -> None:
    app = TermApp()
    async with app.run_test(size=(50, 8)) as pilot:
        proc = ScriptedProcess(b"$ top\r\n")
        view = await attached(app, proc, rows=8, cols=50)
        proc.emit(random.Random(1).randbytes(4000))
        proc.emit(b"\x1bc\x1b[?1049h" + top_frame("10:00:01", 42))
        await painted(view, "CPU:  42% usr")
        await pilot.pause()
        assert strip_text(view, 1).startswith("CPU:  42% usr")
        proc.emit(b"\x1b[?1049l$ ")  # RIS cleared the main screen: just the new prompt
        await eventually(lambda: not view.emulator.alternate_screen and not view.paint_pending)
        await pilot.pause()
        assert strip_text(view, 0).startswith("$ ") and "CPU" not in view.emulator.text()
        assert app.is_running and view.emulator.faults == 0


async def test_wheel_and_shift_pageup_scroll_history() -> None:
    app = TermApp()
    async with app.run_test(size=(40, 8)) as pilot:
        proc = ScriptedProcess(b"".join(f"row {i}\r\n".encode() for i in range(50)))
        view = await attached(app, proc, rows=8, cols=40)
        await painted(view, "row 49")
        await pilot.press("shift+pageup")
        assert view.emulator.scrolled_back == 7
        await pilot.press("shift+pagedown")
        assert view.emulator.scrolled_back == 0
        assert proc.written == b""  # scrolling is ours, not the guest's
