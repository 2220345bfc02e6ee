"""Connect the user's terminal (or pipes) to a guest process.

In a terminal: raw mode, window-size changes forwarded, the terminal restored on every exit
path. With pipes: stdin streamed to the process, stdout/stderr kept apart.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import signal
import sys
import termios
import tty
from collections.abc import Iterator

from engine.project.control import StreamingProcess as Process


def terminal_size() -> tuple[int, int]:
    """(rows, cols) of the terminal on stdin/stdout, else ``$LINES``/``$COLUMNS``, else 24×80.

    The terminal itself comes first: exported ``LINES``/``COLUMNS`` are a snapshot from
    whenever the shell set them and would turn every window resize into a no-op.
    """
    for stream in (sys.stdin, sys.stdout):
        try:
            size = os.get_terminal_size(stream.fileno())
        except (OSError, ValueError, AttributeError):
            continue
        if size.lines > 0 and size.columns > 0:
            return size.lines, size.columns
    fallback = shutil.get_terminal_size((80, 24))
    return fallback.lines, fallback.columns


@contextlib.contextmanager
def raw_terminal(fd: int) -> Iterator[None]:
    """Put ``fd`` in raw mode for the duration; always restore it."""
    saved = termios.tcgetattr(fd)
    try:
        tty.setraw(fd)
        yield
    finally:
        termios.tcsetattr(fd, termios.TCSADRAIN, saved)


async def _pump_stdin(proc: Process, fd: int, *, eof_closes: bool) -> None:
    loop = asyncio.get_running_loop()
    queue: asyncio.Queue[bytes] = asyncio.Queue()

    def readable() -> None:
        try:
            data = os.read(fd, 65536)
        except BlockingIOError:
            return
        except OSError:
            data = b""
        queue.put_nowait(data)
        if not data:
            loop.remove_reader(fd)

    try:
        loop.add_reader(fd, readable)
    except (PermissionError, OSError):
        # Regular files and /dev/null cannot be polled: read them in a thread instead.
        await _pump_blocking(proc, fd, eof_closes=eof_closes)
        return
    try:
        while data := await queue.get():
            await proc.write(data)
        if eof_closes:
            await proc.close_stdin()
    finally:
        with contextlib.suppress(Exception):
            loop.remove_reader(fd)


async def _pump_blocking(proc: Process, fd: int, *, eof_closes: bool) -> None:
    while data := await asyncio.to_thread(os.read, fd, 65536):
        await proc.write(data)
    if eof_closes:
        await proc.close_stdin()


async def attach(proc: Process, *, interactive: bool, forward_stdin: bool) -> int:
    """Stream a process's I/O to ours until it exits; return its exit code.

    Args:
        proc: a running guest process (started with ``tty=interactive``).
        interactive: our stdin is a terminal and ``proc`` has a pty.
        forward_stdin: send our stdin to the process.
    """
    loop = asyncio.get_running_loop()
    stdin_fd = sys.stdin.fileno()
    pump = None
    if forward_stdin:
        pump = asyncio.create_task(_pump_stdin(proc, stdin_fd, eof_closes=not interactive))
    pending: set[asyncio.Future[None]] = set()  # keep resize tasks referenced until done
    if interactive:

        def on_winch() -> None:
            rows, cols = terminal_size()
            pending.add(task := asyncio.ensure_future(proc.resize(rows, cols)))
            task.add_done_callback(pending.discard)

        loop.add_signal_handler(signal.SIGWINCH, on_winch)
    out, err = sys.stdout.buffer, sys.stderr.buffer
    try:
        async for chunk in proc:
            target = err if chunk.stream == "stderr" else out
            target.write(chunk.data)
            target.flush()
        status = await proc.wait()
    finally:
        if pump is not None:
            pump.cancel()
        if interactive:
            loop.remove_signal_handler(signal.SIGWINCH)
    return status.exit_code
