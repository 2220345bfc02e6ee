"""Host side of the guest agent: request routing, processes, files, metrics.

:class:`AgentClient` owns one :class:`~engine.vm.channel.GuestChannel`. A reader task routes
every guest frame to the request that owns its id. The guest is hostile, so the client also
enforces what the guest promised: output within the flow-control window, file reads within
``max_bytes``, bounded listings and logs. A guest that breaks a promise loses its channel.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import os
import time
from collections.abc import Callable

from pydantic import BaseModel, Field

from engine.errors import ExecError, GuestFileError, MsbError, ProtocolError, VmCrashedError
from engine.vm import protocol as p
from engine.vm.channel import ChannelClosed, GuestChannel
from engine.vm.process import ExecResult, ExitStatus, OutputChunk, Process, _Route

__all__ = ["AgentClient", "ExecResult", "ExitStatus", "FileStat", "GuestMetrics", "OutputChunk", "Process"]

log = logging.getLogger(__name__)

WINDOW = 1 << 20
"""Output credit per exec, in bytes (see flow control in docs/protocol.md)."""
MAX_LIST_ENTRIES = 100_000
MAX_LOG_LINES_PER_S = 50
MAX_DROPPED_PER_S = 10_000
"""Frames nobody asked for (unknown ids, repeated READY, logs over their rate) a guest may send
per second; more is a flood and costs it its channel."""
YIELD_EVERY = 64
"""Frames the reader handles before it lets the event loop run others: a guest whose frames
arrive faster than they are handled must not starve the other sandboxes' tasks."""


class FileStat(BaseModel):
    mode: int
    size: int = Field(ge=0)
    """Bytes."""
    mtime_ns: int
    uid: int
    gid: int

    @property
    def is_dir(self) -> bool:
        return (self.mode & 0o170000) == 0o040000


class GuestMetrics(BaseModel):
    """One raw metrics sample (see :class:`engine.sandbox.metrics.Metrics` for rates)."""

    cpu_busy_ticks: int
    cpu_total_ticks: int
    clk_tck: int
    ncpus: int
    mem_total_kib: int
    mem_available_kib: int
    disk_used_bytes: int
    disk_total_bytes: int
    uptime_ms: int
    nprocs: int


class AgentClient:
    """Routes frames between the engine and one guest agent."""

    def __init__(self, channel: GuestChannel, *, on_dead: Callable[[], MsbError] | None = None):
        """Args:
        channel: an open channel to the agent.
        on_dead: builds the error pending requests get when the channel dies (the VM layer
            passes one that includes the console tail).
        """
        self._channel = channel
        self._routes: dict[int, _Route] = {}
        self._ids = itertools.count(1)
        self._ready: asyncio.Future[p.Ready] = asyncio.get_running_loop().create_future()
        self._held: asyncio.Future[p.Held] = asyncio.get_running_loop().create_future()
        self._dead: MsbError | None = None
        self._on_dead = on_dead
        self._logs = _Allowance(MAX_LOG_LINES_PER_S)
        self._drops = _Allowance(MAX_DROPPED_PER_S)
        self._reader = asyncio.create_task(self._read_loop(), name="agent-reader")

    # ------------------------------------------------------------------ plumbing

    def set_on_dead(self, on_dead: Callable[[], MsbError]) -> None:
        """Set the factory of the error pending requests get when the channel dies."""
        self._on_dead = on_dead

    @property
    def dead(self) -> MsbError | None:
        """Why the channel is gone, or ``None`` while it works."""
        return self._dead

    async def wait_ready(self) -> p.Ready:
        """Wait for the agent's READY frame (callers bound this with a timeout).

        Raises:
            ProtocolError: READY has another protocol version.
            VmCrashedError: the channel died first.
        """
        ready = await self._ready
        if ready.version != p.PROTOCOL_VERSION:
            raise ProtocolError(f"guest agent speaks protocol {ready.version}, host speaks {p.PROTOCOL_VERSION}")
        return ready

    async def wait_held(self) -> p.Held:
        """Wait for the HELD frame of a template boot (callers bound this with a timeout).

        Raises:
            ProtocolError: HELD has another protocol version.
            VmCrashedError: the channel died first.
        """
        held = await self._held
        if held.version != p.PROTOCOL_VERSION:
            raise ProtocolError(f"guest agent speaks protocol {held.version}, host speaks {p.PROTOCOL_VERSION}")
        return held

    def _new_route(self, limit: int = 0) -> tuple[int, _Route]:
        self._check()
        fid = next(self._ids) & 0xFFFFFFFF or next(self._ids)
        route = _Route(fid, limit=limit)
        self._routes[fid] = route
        return fid, route

    def _check(self) -> None:
        if self._dead is not None:
            raise self._dead

    async def _send(self, data: bytes) -> None:
        self._check()
        try:
            await self._channel.send(data)
        except ChannelClosed:
            self._fail(self._dead_error("the guest channel closed"))
            self._check()

    def _dead_error(self, why: str) -> MsbError:
        if self._on_dead is not None:
            return self._on_dead()
        return VmCrashedError(f"sandbox VM is gone: {why}")

    async def _read_loop(self) -> None:
        try:
            for n in itertools.count(1):
                frame = await self._channel.recv(self._wanted)
                if frame is None:
                    self._count_drop()
                else:
                    self._dispatch(frame)
                if n % YIELD_EVERY == 0:
                    await asyncio.sleep(0)
        except ChannelClosed:
            self._fail(self._dead_error("the guest closed its channel"))
        except ProtocolError as exc:
            log.warning("dropping guest: %s", exc)
            self._fail(exc)
            self._channel.close()
        except Exception as exc:  # a bug of ours: never leave requests hanging
            log.exception("agent reader crashed")
            self._fail(VmCrashedError(f"guest channel reader failed: {exc}"))
            self._channel.close()

    def _wanted(self, kind: int, fid: int) -> bool:
        """Whether a frame is worth decoding, from its header alone (the body is dropped
        unread otherwise): a hostile guest must not make the host parse what nobody awaits."""
        if kind == p.T.READY:
            return not self._ready.done()
        if kind == p.T.HELD:
            return not self._held.done()
        if kind == p.T.LOG:
            return self._logs.take()
        route = self._routes.get(fid)
        if route is None:
            return False  # late output of a finished request, or a guest's invention
        # Past its bound a listing fails anyway: the rest need not be parsed.
        return not (kind == p.T.LIST_RESULT and route.entries > MAX_LIST_ENTRIES)

    def _count_drop(self) -> None:
        if not self._drops.take():
            raise ProtocolError(f"guest sent more than {MAX_DROPPED_PER_S} unwanted frames in a second")

    def _dispatch(self, frame: p.GuestFrame) -> None:
        if isinstance(frame, p.Ready):
            self._ready.set_result(frame)  # _wanted lets only the first one through
        elif isinstance(frame, p.Held):
            self._held.set_result(frame)
        elif isinstance(frame, p.Log):
            log.info("guest agent: %s", frame.message[:512])
        elif (route := self._routes.get(frame.id)) is not None:
            if isinstance(frame, (p.Output, p.FileData)):
                route.unacked += len(frame.data)
                if route.unacked > route.limit:
                    raise ProtocolError(
                        f"guest sent {route.unacked} bytes for request {frame.id}, over its limit of {route.limit}"
                    )
            elif isinstance(frame, p.ListResult):
                route.entries += len(frame.entries)
            route.put(frame)

    def _fail(self, exc: MsbError) -> None:
        if self._dead is not None:
            return
        self._dead = exc
        for fut in (self._ready, self._held):
            if not fut.done():
                fut.set_exception(exc)
                fut.exception()  # mark retrieved: nobody may be waiting
        for route in self._routes.values():
            route.close()
        self._routes.clear()  # the requests hold their routes; nothing more is routed

    async def _next(self, route: _Route) -> p.GuestFrame:
        frame = await route.get()
        if frame is None:
            raise self._dead or ExecError("the process was closed")
        return frame

    async def close(self) -> None:
        """Stop the reader and close the channel."""
        self._fail(VmCrashedError("the sandbox was stopped"))
        self._channel.close()
        self._reader.cancel()
        try:
            await self._reader
        except (asyncio.CancelledError, Exception):
            pass

    # ------------------------------------------------------------------ processes

    async def spawn(
        self,
        argv: list[str],
        *,
        env: dict[str, str] | None = None,
        cwd: str = "",
        tty: bool = False,
        stdin: bool = False,
        rows: int = 24,
        cols: int = 80,
        timeout: float | None = None,
        uid: int | None = None,
        gid: int | None = None,
    ) -> Process:
        """Start a process in the guest and return once it runs.

        Args:
            argv: the program and its arguments; ``argv[0]`` is looked up in ``PATH``.
            env: the whole environment of the process.
            cwd: working directory in the guest ("" = /).
            tty: run on a new pseudo-terminal of ``rows`` × ``cols``.
            stdin: the caller will write stdin (otherwise it is /dev/null).
            timeout: seconds after which the guest kills the process group.
            uid, gid: run as this user/group (default root).

        Raises:
            ExecError: the guest could not start it (``errno`` set; 2 = not found).
            VmCrashedError: the VM is gone.
        """
        if not argv:
            raise ExecError("cannot run an empty command", hint="pass at least the program name")
        env_list = [f"{k}={v}".encode() for k, v in (env or {}).items()]
        body = p.encode_exec(
            argv=[a.encode() for a in argv],
            env=env_list,
            cwd=cwd.encode(),
            tty=tty,
            stdin=stdin,
            rows=rows,
            cols=cols,
            timeout_ms=0 if timeout is None else max(1, int(timeout * 1000)),
            window=WINDOW,
            uid=p.NO_ID if uid is None else uid,
            gid=p.NO_ID if gid is None else gid,
        )
        fid, route = self._new_route(limit=WINDOW)
        try:
            await self._send(p.frame(p.T.EXEC, fid, body))
            first = await self._next(route)
            if isinstance(first, p.Result):
                raise _exec_error(argv, first)
            if not isinstance(first, p.Started):
                raise ProtocolError(f"guest answered EXEC with {first.kind}")
        except BaseException:
            self._routes.pop(fid, None)
            raise
        return Process(self, fid, route, first.pid, argv)

    async def exec(
        self,
        argv: list[str],
        *,
        stdin_data: bytes | None = None,
        max_output: int = 64 << 20,
        **kwargs: object,
    ) -> ExecResult:
        """Run a command to completion and collect its output.

        Args:
            argv: the program and its arguments.
            stdin_data: bytes piped to the process's stdin (then EOF).
            max_output: bytes kept per stream; more is discarded and ``truncated`` set.
            **kwargs: as for :meth:`spawn` (env, cwd, timeout, uid, gid).

        Returns:
            The exit status and the separate stdout/stderr bytes.

        Raises:
            ExecError, VmCrashedError: as for :meth:`spawn`.
        """
        t0 = time.perf_counter()
        proc = await self.spawn(argv, stdin=stdin_data is not None, **kwargs)  # type: ignore[arg-type]
        writer = None
        if stdin_data is not None:
            writer = asyncio.create_task(proc.feed(stdin_data))
        out: dict[str, bytearray] = {"stdout": bytearray(), "stderr": bytearray()}
        truncated = False
        try:
            async for chunk in proc:
                buf = out[chunk.stream]
                room = max_output - len(buf)
                if room < len(chunk.data):
                    truncated = True
                buf += chunk.data[: max(room, 0)]
            status = await proc.wait()
        finally:
            await proc.close()  # a no-op once it exited; else (cancelled) kill it and drop its route
            if writer is not None:
                # The process may exit without reading all its stdin; that is not an error,
                # but a dead channel is, and the wait above has raised it already.
                writer.cancel()
                with contextlib.suppress(asyncio.CancelledError, MsbError):
                    await writer
        return ExecResult(
            exit_code=status.exit_code,
            signal=status.signal,
            timed_out=status.timed_out,
            stdout=bytes(out["stdout"]),
            stderr=bytes(out["stderr"]),
            truncated=truncated,
            duration_s=time.perf_counter() - t0,
        )

    # ------------------------------------------------------------------ files

    async def read_file(self, path: str, *, max_bytes: int = 64 << 20) -> bytes:
        """Return a guest file's content.

        Raises:
            GuestFileError: the guest could not read it, or it is larger than ``max_bytes``.
        """
        fid, route = self._new_route(limit=max_bytes)
        try:
            await self._send(p.frame(p.T.FILE_READ, fid, p.encode_file_read(path.encode(), max_bytes)))
            data = bytearray()
            while True:
                frame = await self._next(route)
                if isinstance(frame, p.FileData):
                    data += frame.data
                elif isinstance(frame, p.Result):
                    _raise_file(frame, "read", path, max_bytes)
                    return bytes(data)
                else:
                    raise ProtocolError(f"unexpected {frame.kind} during file read")
        finally:
            self._routes.pop(fid, None)

    async def write_file(
        self, path: str, data: bytes, *, mode: int = 0o644, append: bool = False, mkdirs: bool = True
    ) -> None:
        """Create or replace (or append to) a guest file, fsynced when this returns.

        Raises:
            GuestFileError: the guest could not open or write it.
        """
        fid, route = self._new_route()
        try:
            msgs = [
                p.frame(p.T.FILE_WRITE, fid, p.encode_file_write(path.encode(), mode, append=append, mkdirs=mkdirs))
            ]
            view = memoryview(data)
            msgs += [p.frame(p.T.FILE_DATA, fid, bytes(view[i : i + p.CHUNK])) for i in range(0, len(data), p.CHUNK)]
            msgs.append(p.frame(p.T.FILE_CLOSE, fid))
            for m in msgs:
                await self._send(m)
            frame = await self._next(route)
            if not isinstance(frame, p.Result):
                raise ProtocolError(f"unexpected {frame.kind} during file write")
            _raise_file(frame, "write", path)
        finally:
            self._routes.pop(fid, None)

    async def stat(self, path: str) -> FileStat:
        """Stat a guest path (following symlinks).

        Raises:
            GuestFileError: it does not exist or cannot be reached.
        """
        fid, route = self._new_route()
        try:
            await self._send(p.frame(p.T.FILE_STAT, fid, p._b(path.encode())))
            frame = await self._next(route)
            if isinstance(frame, p.Result):
                _raise_file(frame, "stat", path)
                raise ProtocolError("guest answered FILE_STAT with success but no stat")
            if not isinstance(frame, p.StatResult):
                raise ProtocolError(f"unexpected {frame.kind} during stat")
            return FileStat(**frame.model_dump(exclude={"id", "kind"}))
        finally:
            self._routes.pop(fid, None)

    async def listdir(self, path: str) -> list[p.ListEntry]:
        """List a guest directory (entries sorted by name, without ``.`` and ``..``).

        Raises:
            GuestFileError: it does not exist or is not a directory.
        """
        fid, route = self._new_route()
        entries: list[p.ListEntry] = []
        try:
            await self._send(p.frame(p.T.FILE_LIST, fid, p._b(path.encode())))
            while True:
                frame = await self._next(route)
                if isinstance(frame, p.ListResult):
                    entries += frame.entries
                    if len(entries) > MAX_LIST_ENTRIES:
                        raise GuestFileError(f"{path}: more than {MAX_LIST_ENTRIES} entries")
                elif isinstance(frame, p.Result):
                    _raise_file(frame, "list", path)
                    return sorted(entries, key=lambda e: e.name)
                else:
                    raise ProtocolError(f"unexpected {frame.kind} during listing")
        finally:
            self._routes.pop(fid, None)

    # ------------------------------------------------------------------ misc

    async def metrics(self) -> GuestMetrics:
        """Return one raw metrics sample from the guest."""
        fid, route = self._new_route()
        try:
            await self._send(p.frame(p.T.METRICS, fid))
            frame = await self._next(route)
            if not isinstance(frame, p.MetricsResult):
                raise ProtocolError(f"unexpected {frame.kind} for METRICS")
            return GuestMetrics(**frame.model_dump(exclude={"id", "kind"}))
        finally:
            self._routes.pop(fid, None)

    async def ping(self, data: bytes = b"") -> float:
        """Round-trip a PING; return the seconds it took."""
        fid, route = self._new_route()
        t0 = time.perf_counter()
        try:
            await self._send(p.frame(p.T.PING, fid, data))
            frame = await self._next(route)
            if not isinstance(frame, p.Pong) or frame.data != data:
                raise ProtocolError("guest answered PING wrongly")
            return time.perf_counter() - t0
        finally:
            self._routes.pop(fid, None)

    async def identify(self, *, entropy: bytes, realtime_ns: int, hostname: str) -> None:
        """Give a restored guest its own identity: ``entropy`` mixed into its kernel RNG
        (and a reseed), the wall clock and the hostname.

        Raises:
            ProtocolError: the guest refused it (a restored VM that failed this is dropped).
        """
        fid, route = self._new_route()
        try:
            await self._send(p.frame(p.T.IDENTITY, fid, p.encode_identity(entropy, realtime_ns, hostname)))
            frame = await self._next(route)
            if not isinstance(frame, p.Result):
                raise ProtocolError(f"unexpected {frame.kind} for IDENTITY")
            if frame.errno:
                raise ProtocolError(f"the guest could not take a fresh identity: {frame.message}")
        finally:
            self._routes.pop(fid, None)

    async def resume(self, params: str) -> None:
        """Let a held template boot go on with these ``msb.*`` boot words; READY follows
        (:meth:`wait_ready`)."""
        await self._send(p.frame(p.T.RESUME, 0, p.encode_resume(params)))

    async def shutdown(self) -> None:
        """Ask the agent to stop every process, sync and power off (no answer comes)."""
        if self._dead is None:
            await self._send(p.frame(p.T.SHUTDOWN, 0))


class _Allowance:
    """Events allowed per second, counted in one-second windows."""

    def __init__(self, per_s: int) -> None:
        self._per_s = per_s
        self._start = 0.0
        self._count = 0

    def take(self) -> bool:
        """Count one event; False once this second's allowance is spent."""
        now = time.monotonic()
        if now - self._start > 1.0:
            self._start, self._count = now, 0
        self._count += 1
        return self._count <= self._per_s


def _exec_error(argv: list[str], res: p.Result) -> ExecError:
    name = os.strerror(res.errno) if res.errno else res.message
    if res.errno == 2:
        return ExecError(
            f"command not found in the sandbox: {argv[0]}",
            hint="check the program name and PATH inside the image",
            errno=res.errno,
        )
    return ExecError(f"could not start {argv[0]!r} in the sandbox: {name} {res.message}".strip(), errno=res.errno)


def _raise_file(res: p.Result, op: str, path: str, max_bytes: int = 0) -> None:
    if res.errno == 0:
        return
    if res.errno == 27 and op == "read":
        raise GuestFileError(f"{path} is larger than {max_bytes} bytes", hint="raise max_bytes", errno=27)
    raise GuestFileError(f"cannot {op} {path} in the sandbox: {os.strerror(res.errno)}", errno=res.errno)
