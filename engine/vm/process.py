"""A running guest process as the host sees it, and the results of commands.

Split from :mod:`engine.vm.agent`, which creates these; :class:`Process` talks to the guest
through its :class:`~engine.vm.agent.AgentClient`.
"""

from __future__ import annotations

import asyncio
import contextlib
import signal as _signal
from collections import deque
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import TYPE_CHECKING

from pydantic import BaseModel

from engine.errors import MsbError, ProtocolError
from engine.vm import protocol as p

if TYPE_CHECKING:
    from engine.vm.agent import AgentClient


MAX_QUEUED_FRAMES = 64
"""Frames other than output or file data that one request may have waiting; no request is owed
more than a few, so a guest that sends more is flooding and loses its channel."""
MAX_QUEUED_CHUNKS = 65_536
"""Separate data pieces one request may have waiting (adjacent data of one stream is merged,
so only a guest alternating streams faster than the host reads gets near it)."""


@dataclass
class _Data:
    """Output or file data waiting for its reader: adjacent frames of one stream, merged."""

    stream: str
    """``stdout``, ``stderr`` or ``file``."""
    buf: bytearray

    def frame(self, fid: int) -> p.Output | p.FileData:
        if self.stream == "file":
            return p.FileData(id=fid, data=bytes(self.buf))
        return p.Output(id=fid, stream=self.stream, data=bytes(self.buf))  # type: ignore[arg-type]


class _Route:
    """The frames of one request, in order, bounded.

    Data (output, file data) is bounded by the request's byte limit, checked by the client as
    it routes; merging keeps its per-frame cost from growing host memory. Other frames may not
    pile up: :meth:`put` raises :class:`ProtocolError` past :data:`MAX_QUEUED_FRAMES`.
    """

    def __init__(self, fid: int, limit: int = 0) -> None:
        """Args:
        fid: the request id.
        limit: data bytes this request may have unacknowledged.
        """
        self.fid = fid
        self.limit = limit
        """Output bytes this request may still receive before the guest broke its promise."""
        self.unacked = 0
        self.entries = 0
        """Directory entries routed so far (a listing's bound is checked before decoding)."""
        self._items: deque[p.GuestFrame | _Data] = deque()
        self._frames = 0
        self._closed = False
        self._waiter = asyncio.Event()

    def put(self, frame: p.GuestFrame) -> None:
        """Queue a frame for the request.

        Raises:
            ProtocolError: too many frames are waiting (the guest is flooding).
        """
        if isinstance(frame, (p.Output, p.FileData)):
            self._put_data("file" if isinstance(frame, p.FileData) else frame.stream, frame.data)
        else:
            if self._frames >= MAX_QUEUED_FRAMES:
                raise ProtocolError(f"guest sent more than {MAX_QUEUED_FRAMES} unread frames for request {self.fid}")
            self._frames += 1
            self._items.append(frame)
        self._waiter.set()

    def _put_data(self, stream: str, data: bytes) -> None:
        last = self._items[-1] if self._items else None
        if isinstance(last, _Data) and last.stream == stream:
            last.buf += data
            return
        if len(self._items) - self._frames >= MAX_QUEUED_CHUNKS:
            raise ProtocolError(f"guest sent more than {MAX_QUEUED_CHUNKS} unread output pieces for request {self.fid}")
        self._items.append(_Data(stream, bytearray(data)))

    def close(self) -> None:
        """No more frames will come: once the waiting ones are read, :meth:`get` returns None."""
        self._closed = True
        self._waiter.set()

    async def get(self) -> p.GuestFrame | None:
        """The next frame, or None once the route is closed and empty."""
        while not self._items:
            if self._closed:
                return None
            self._waiter.clear()
            await self._waiter.wait()
        item = self._items.popleft()
        if isinstance(item, _Data):
            return item.frame(self.fid)
        self._frames -= 1
        return item


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

    async def close(self) -> None:
        """Stop caring about the process: kill its process group if it still runs and forget
        its route, so its late output is dropped on arrival instead of piling up."""
        if self._status is not None or self._client._routes.get(self._fid) is not self._route:
            return
        self._client._routes.pop(self._fid, None)
        with contextlib.suppress(MsbError):
            await self.signal(_signal.SIGKILL)

    async def wait(self) -> ExitStatus:
        """Wait for the exit, discarding output nobody read."""
        while self._status is None:
            await self.read()
        return self._status
