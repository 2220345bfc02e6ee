"""The log screen (msb_tui/screens/logs.py): decoding console bytes, following live, errors."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable

from textual.widgets import Log

from msb_tui.app import MsbApp
from msb_tui.fake import FakeWorkbench
from msb_tui.screens.logs import ConsoleText, LogsScreen
from tests.unit.helpers import eventually

MakeApp = Callable[..., MsbApp]


def test_console_text_strips_escapes_and_joins_split_chunks() -> None:
    text = ConsoleText()
    out = text.feed(b"\x1b[1;32mok\x1b[0m caf\xc3")  # a colour, and half of "é"
    out += text.feed(b"\xa9 \x1b[3")  # the rest of "é", half of an escape
    out += text.feed(b"1mred\x1b[0m\x07\r\n\x1b]0;title\x07done")
    assert out + text.flush() == "ok café red\r\ndone"


def test_console_text_flushes_a_dangling_escape() -> None:
    text = ConsoleText()
    assert text.feed(b"tail \x1b[") == "tail "
    assert text.flush() == "["  # an escape that never finished: the ESC goes, the rest is text


class StreamingLogs(FakeWorkbench):
    """A log that grows while the test watches."""

    def __init__(self, *args: object, **kwargs: object) -> None:
        super().__init__(*args, **kwargs)  # type: ignore[arg-type]
        self.queue: asyncio.Queue[bytes | None] = asyncio.Queue()

    async def logs(self, name: str) -> AsyncIterator[bytes]:  # type: ignore[override]
        while (chunk := await self.queue.get()) is not None:
            yield chunk


async def test_follows_live_output(sandboxfile: object) -> None:
    workbench = StreamingLogs(sandboxfile)
    app = MsbApp(workbench)
    app.metrics_interval = None
    async with app.run_test() as pilot:
        await app.push_screen(LogsScreen("api"))
        screen = app.screen
        log = screen.query_one(Log)
        status = screen.query_one("#logs-status")
        assert "waiting for output" in str(status.render())
        workbench.queue.put_nowait(b"first line\nsecond ")
        await eventually(lambda: log.lines[:1] == ["first line"])
        workbench.queue.put_nowait(b"half\n")
        await eventually(lambda: "second half" in log.lines)
        assert "2 lines · following" in str(status.render())
        await pilot.press("f")
        assert not log.auto_scroll and "paused" in str(status.render())
        workbench.queue.put_nowait(None)
        await eventually(lambda: "end of log" in str(status.render()))
        await pilot.press("q")
        await eventually(lambda: not isinstance(app.screen, LogsScreen))


async def test_a_failing_log_shows_the_error_panel(make_app: MakeApp) -> None:
    app = make_app(fail={"logs": "no such sandbox"})
    app.metrics_interval = None
    async with app.run_test():
        await app.push_screen(LogsScreen("ghost"))
        screen = app.screen
        await eventually(lambda: not screen.query_one("#logs-error").has_class("hidden"))
        assert "no such sandbox" in str(screen.query_one("#logs-error .error-message").render())
        assert "could not be read" in str(screen.query_one("#logs-status").render())
