"""A running guest process as the host sees it, and the results of commands.

Split from :mod:`engine.vm.agent`, which creates these; :class:`Process` talks to the guest
through its :class:`~engine.vm.agent.AgentClient`.
"""

from __future__ import annotations

import asyncio
import signal as _signal
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from pydantic import BaseModel

from engine.errors import ProtocolError
from engine.vm import protocol as p

if TYPE_CHECKING:
    from engine.vm.agent import AgentClient


_CLOSED = object()


@dataclass
class _Route:
    queue: asyncio.Queue[object] = field(default_factory=asyncio.Queue)
    unacked: int = 0
    limit: int = 0
    """Output bytes this request may still receive before the guest broke its promise."""


class ExecResult(BaseModel):
    """Outcome of a finished command."""

    exit_code: int
    """Exit status; 128 + signal number when the process was killed by a signal."""
    signal: int = 0
    timed_out: bool = False
    stdout: bytes = b""
    stderr: bytes = b""
    truncated: bool = False
    """Output went past ``max_output`` bytes and the rest was discarded."""
    duration_s: float = 0.0
    """Wall time from request to exit, in seconds."""

    @property
    def success(self) -> bool:
        return self.exit_code == 0 and not self.timed_out


class OutputChunk(BaseModel):
    """A piece of a running command's output."""

    stream: str
    data: bytes


class ExitStatus(BaseModel):
    exit_code: int
    """Exit status; 128 + signal number when killed by a signal."""
    signal: int = 0
    timed_out: bool = False


class Process:
    """A running guest process: iterate it for output, write stdin, resize, signal, wait.

    Output is acknowledged as the caller takes it, so a slow consumer slows the process
    instead of growing host memory.
    """

    def __init__(self, client: AgentClient, fid: int, route: _Route, pid: int, argv: list[str]):
        self._client = client
        self._fid = fid
        self._route = route
        self.pid = pid
        self.argv = argv
        self._status: ExitStatus | None = None
        self._exited = asyncio.Event()

    @property
    def returncode(self) -> int | None:
        return None if self._status is None else self._status.exit_code

    async def write(self, data: bytes) -> None:
        """Send bytes to the process's stdin (or its terminal)."""
        view = memoryview(data)
        for i in range(0, len(data), p.CHUNK):
            await self._client._send(p.frame(p.T.STDIN, self._fid, bytes(view[i : i + p.CHUNK])))

    async def feed(self, data: bytes) -> None:
        """Write all of ``data`` then close stdin."""
        await self.write(data)
        await self.close_stdin()

    async def close_stdin(self) -> None:
        await self._client._send(p.frame(p.T.STDIN_EOF, self._fid))

    async def resize(self, rows: int, cols: int) -> None:
        """Set the terminal size (tty processes get SIGWINCH)."""
        await self._client._send(p.frame(p.T.RESIZE, self._fid, rows.to_bytes(2, "big") + cols.to_bytes(2, "big")))

    async def signal(self, signo: int = _signal.SIGTERM, *, group: bool = True) -> None:
        """Send a signal to the process (by default its whole process group)."""
        body = signo.to_bytes(4, "big") + bytes([1 if group else 0])
        await self._client._send(p.frame(p.T.SIGNAL, self._fid, body))

    async def read(self) -> OutputChunk | None:
        """Return the next output chunk, or ``None`` once the process has exited."""
        if self._status is not None:
            return None
        frame = await self._client._next(self._route)
        if isinstance(frame, p.Output):
            self._route.unacked -= len(frame.data)
            await self._client._send(p.frame(p.T.ACK, self._fid, len(frame.data).to_bytes(4, "big")))
            return OutputChunk(stream=frame.stream, data=frame.data)
        if isinstance(frame, p.Exit):
            code = frame.code if frame.signal == 0 else 128 + frame.signal
            self._status = ExitStatus(exit_code=code, signal=frame.signal, timed_out=frame.timed_out)
            self._client._routes.pop(self._fid, None)
            self._exited.set()
            return None
        raise ProtocolError(f"unexpected {frame.kind} for a running process")

    def __aiter__(self) -> AsyncIterator[OutputChunk]:
        return self._iter()

    async def _iter(self) -> AsyncIterator[OutputChunk]:
        while (chunk := await self.read()) is not None:
            yield chunk

    async def wait(self) -> ExitStatus:
        """Wait for the exit, discarding output nobody read."""
        while self._status is None:
            await self.read()
        return self._status
