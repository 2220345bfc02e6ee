"""Fakes for the terminal and shell tests: a guest process the test scripts chunk by chunk,
and a FakeWorkbench whose shells are such processes (or FakeShells with a coloured prompt)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from pathlib import Path

from engine.vm.process import ExitStatus, OutputChunk
from msb_tui.fake import FakeShell, FakeWorkbench
from msb_tui.widgets.terminal import TerminalView
from tests.unit.helpers import eventually

COLOUR_PROMPT = b"\x1b[1;32mroot@api\x1b[0m:\x1b[1;34m/app\x1b[0m# "
"""What busybox ash with a coloured PS1 prints."""
COLOUR_BANNER = (b"Welcome to \x1b[1mmicrosandbox\x1b[0m (busybox ash)\r\n"
                 b"\x1b[33mwarning:\x1b[0m this sandbox has no network\r\n" + COLOUR_PROMPT)  # fmt: skip


class ScriptedProcess:
    """A :class:`~engine.project.control.StreamingProcess` whose output the test sends with
    :meth:`emit` and ends with :meth:`exit`; it records what it was written and resized to."""

    def __init__(self, *chunks: bytes) -> None:
        self.queue: asyncio.Queue[bytes | None] = asyncio.Queue()
        for chunk in chunks:
            self.queue.put_nowait(chunk)
        self.written = b""
        self.resizes: list[tuple[int, int]] = []
        self.stdin_closed = False
        self.status: ExitStatus | None = None
        self.fail_with: BaseException | None = None

    def emit(self, data: bytes) -> None:
        self.queue.put_nowait(data)

    def exit(self, code: int = 0, signal: int = 0) -> None:
        self.status = ExitStatus(exit_code=code, signal=signal)
        self.queue.put_nowait(None)

    def fail(self, exc: BaseException) -> None:
        """The connection breaks: iteration raises ``exc``."""
        self.fail_with = exc
        self.queue.put_nowait(None)

    async def write(self, data: bytes) -> None:
        self.written += data

    async def close_stdin(self) -> None:
        self.stdin_closed = True

    async def resize(self, rows: int, cols: int) -> None:
        self.resizes.append((rows, cols))

    def __aiter__(self) -> AsyncIterator[OutputChunk]:
        return self._iter()

    async def _iter(self) -> AsyncIterator[OutputChunk]:
        while (chunk := await self.queue.get()) is not None:
            yield OutputChunk(stream="stdout", data=chunk)
        if self.fail_with is not None:
            raise self.fail_with

    async def wait(self) -> ExitStatus:
        assert self.status is not None
        return self.status


class ShellWorkbench(FakeWorkbench):
    """A FakeWorkbench whose ``shell()`` returns what ``make_shell`` makes (a coloured FakeShell
    by default); every process it made is in :attr:`procs`."""

    def __init__(self, sandboxfile: Path | None = None, *,
                 make_shell: Callable[[], object] | None = None, **kwargs: object) -> None:  # fmt: skip
        super().__init__(sandboxfile, **kwargs)  # type: ignore[arg-type]
        self.make_shell = make_shell or (lambda: FakeShell(banner=COLOUR_BANNER))
        self.procs: list[object] = []
        self.opened_with: list[tuple[int, int]] = []

    async def shell(self, name: str, rows: int, cols: int) -> FakeShell:
        await super().shell(name, rows, cols)  # the fake's checks: delay, fail, not running
        proc = self.make_shell()
        self.procs.append(proc)
        self.opened_with.append((rows, cols))
        return proc  # type: ignore[return-value]


async def painted(view: TerminalView, text: str) -> None:
    """Wait until ``text`` is on the terminal's screen and every change is painted."""
    await eventually(lambda: text in view.emulator.text())
    await eventually(lambda: not view.paint_pending)
