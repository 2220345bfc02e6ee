"""msb REPL driver for Python: runs *inside* the sandbox (stdlib only, Python >= 3.8).

The host starts it as ``python3 -u <this file>`` and speaks JSON lines with it:

* host → driver, on the driver's original stdin:
  ``{"type": "run", "id": N, "code": "...", "max_output": BYTES}``
* driver → host, on the driver's original stdout (saved with ``os.dup`` before anything else):
  ``{"type": "ready", "pid": P, "version": "3.11.2"}`` once, then per run any number of
  ``{"type": "out", "id": N, "stream": "stdout"|"stderr", "data": "text"}`` and finally
  ``{"type": "done", "id": N, "status": "success"|"error"}``.

User code never sees the protocol fds: fds 1 and 2 are pipes (so ``print``, ``os.write(1, …)``,
C extensions and child processes are all captured), read by one pump thread, and fd 0 is
``/dev/null``. Before "done" the driver flushes Python's buffers, then the main thread itself reads
the pipes (under the pump's lock) until ``FIONREAD`` says both are empty, so everything the run
wrote is forwarded before its "done" -- usually in the same write. SIGINT raises
``KeyboardInterrupt`` only while user code runs; the driver's own bookkeeping cannot be
interrupted by a late signal.
"""

from __future__ import annotations

import ast
import asyncio
import builtins
import codecs
import fcntl
import inspect
import io
import json
import linecache
import os
import select
import signal
import struct
import sys
import termios
import threading
import time
import traceback
from types import CodeType, FrameType
from typing import Any, BinaryIO

READ_CHUNK = 32 * 1024
"""Bytes read from a pipe at once; keeps each "out" message well under the host's line limit."""
DRAIN_S = 2.0
"""How long the end of a run keeps reading the pipes (only reached if user threads keep writing)."""
QUIET_S = 0.005
"""The pump leaves the first seconds of each run to the main thread (see :class:`Pump`)."""
HELD_MESSAGES = 8
"""Messages kept back to go out with "done" before they are sent on their own."""
DEFAULT_MAX_OUTPUT = 8 << 20


class Channel:
    """Protocol messages (JSON lines) to the host, whole lines at a time from any thread."""

    def __init__(self, fd: int) -> None:
        self.fd = fd
        self.lock = threading.Lock()

    def send(self, *lines: str) -> None:
        """Write ``lines`` with one ``write`` (one guest→host frame when it fits)."""
        data = memoryview("".join(lines).encode())
        with self.lock:
            while data:
                data = data[os.write(self.fd, data) :]


def message(**fields: object) -> str:
    return json.dumps(fields) + "\n"


class RunState:
    """Which run output belongs to, and how much of it may still be forwarded."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.run_id = 0
        self.budget = 0
        self.started = 0.0
        """``time.monotonic()`` at the start of the latest run."""

    def begin(self, run_id: int, max_output: int) -> None:
        with self.lock:
            self.run_id, self.budget, self.started = run_id, max_output, time.monotonic()

    def take(self, nbytes: int) -> int | None:
        """The run id to tag ``nbytes`` of output with, or None once the run's budget is spent.

        The chunk that crosses the budget is still forwarded so the host can tell that the
        output was cut."""
        with self.lock:
            if self.budget < 0:
                return None
            self.budget -= nbytes
            return self.run_id


class Pump(threading.Thread):
    """Forwards what user code writes to fds 1 and 2 (pipes) as "out" messages.

    One thread polls both pipes, so writes that are apart in time arrive in their order. Woken
    in the first :data:`QUIET_S` of a run it waits that long first: a short run reads its own
    output at the end (:meth:`finish`) and sends it with "done", without a GIL tug-of-war."""

    def __init__(self, state: RunState, chan: Channel) -> None:
        super().__init__(name="msb-pump", daemon=True)
        self.state, self.chan = state, chan
        self.pipes: dict[int, str] = {}
        """Read end -> stream name."""
        self.captured: dict[int, int] = {}
        """fd 1/2 -> inode of the pipe we put there."""
        self.lock = threading.Lock()
        self.poller = select.poll()
        self.wake_r, self.wake_w = os.pipe()
        self.poller.register(self.wake_r, select.POLLIN)
        self.decoders: dict[int, codecs.IncrementalDecoder] = {}
        self.held: list[str] | None = None

    def capture(self, fd: int, stream: str) -> None:
        """Point ``fd`` at a new pipe that the pump reads."""
        r, w = (above_stdio(end) for end in os.pipe())
        os.dup2(w, fd)
        os.close(w)
        os.set_blocking(r, False)
        with self.lock:
            self.pipes[r] = stream
            self.decoders[r] = codecs.getincrementaldecoder("utf-8")("replace")
            self.captured[fd] = os.fstat(fd).st_ino
            self.poller.register(r, select.POLLIN)
        os.write(self.wake_w, b"w")  # re-poll with the new pipe

    def recapture(self) -> None:
        """Capture fd 1 or 2 again if user code closed or redirected it."""
        for fd, stream in ((1, "stdout"), (2, "stderr")):
            try:
                ours = os.fstat(fd).st_ino == self.captured.get(fd)
            except OSError:
                ours = False
            if not ours:
                self.capture(fd, stream)

    def run(self) -> None:
        while True:
            events = self.poller.poll()
            if time.monotonic() - self.state.started < QUIET_S:
                time.sleep(QUIET_S)
            with self.lock:
                for fd, _ in sorted(events):  # both ready: stdout first
                    if fd == self.wake_r:
                        os.read(fd, 64)
                    elif fd in self.pipes:
                        self._read(fd)

    def _read(self, fd: int) -> None:
        try:
            data = os.read(fd, READ_CHUNK)
        except BlockingIOError:
            return
        if not data:  # every writer closed it: user code closed or redirected fd 1 or 2
            self.poller.unregister(fd)
            del self.pipes[fd], self.decoders[fd]
            os.close(fd)
            return
        self._forward(fd, len(data), self.decoders[fd].decode(data))

    def _forward(self, fd: int, nbytes: int, text: str) -> None:
        run_id = self.state.take(nbytes)
        if not text or run_id is None:
            return
        msg = f'{{"type": "out", "id": {run_id}, "stream": "{self.pipes[fd]}", "data": {json.dumps(text)}}}\n'
        if self.held is None:
            self.chan.send(msg)
            return
        self.held.append(msg)
        if len(self.held) >= HELD_MESSAGES:
            self.chan.send(*self.held)
            self.held.clear()

    def finish(self, deadline: float) -> list[str]:
        """Read what is still in the pipes; return the messages not sent yet, for the caller
        to send with "done". Everything written before the call is covered."""
        with self.lock:
            self.held = []
            try:
                while time.monotonic() < deadline:
                    ready = [fd for fd in self.pipes if pending_bytes(fd) > 0]
                    if not ready:
                        break
                    for fd in ready:
                        self._read(fd)
                for fd in self.pipes:
                    self._forward(fd, 0, self.decoders[fd].decode(b"", True))
                return self.held
            finally:
                self.held = None


def above_stdio(fd: int) -> int:
    """``fd`` moved to 3 or above: os.pipe() hands out 0-2 when user code closed them."""
    if fd > 2:
        return fd
    moved = fcntl.fcntl(fd, fcntl.F_DUPFD_CLOEXEC, 3)
    os.close(fd)
    return moved


def pending_bytes(fd: int) -> int:
    """Bytes waiting in a pipe (FIONREAD)."""
    raw = fcntl.ioctl(fd, termios.FIONREAD, b"\0\0\0\0")
    return int(struct.unpack("i", raw)[0])


class Armed:
    """True while user code runs: only then does SIGINT raise KeyboardInterrupt."""

    value = False


def on_sigint(signo: int, frame: FrameType | None) -> None:
    if Armed.value:
        raise KeyboardInterrupt


class Interpreter:
    """Compiles and runs cells like the interactive prompt, in one persistent namespace."""

    def __init__(self) -> None:
        self.ns: dict[str, Any] = {"__name__": "__main__", "__builtins__": builtins, "__doc__": None}
        self.count = 0
        self.loop: asyncio.AbstractEventLoop | None = None

    def compile_cell(self, code: str) -> list[CodeType]:
        """Code objects for one cell, compiled like the interactive prompt: the last statement
        in "single" mode, so ``sys.displayhook`` echoes an expression's repr (and skips None)."""
        self.count += 1
        name = f"<cell-{self.count}>"
        linecache.cache[name] = (len(code), None, code.splitlines(True), name)
        flags = ast.PyCF_ALLOW_TOP_LEVEL_AWAIT
        try:  # fast path (no Python-level AST): a cell of one statement, the usual case
            return [compile(code, name, "single", flags)]
        except SyntaxError:
            pass  # several statements, or a real error that the full parse reports below
        tree = ast.parse(code, name, "exec")
        head = ast.Module(body=tree.body[:-1], type_ignores=[])
        tail = ast.Interactive(body=tree.body[-1:])
        return [compile(head, name, "exec", flags), compile(tail, name, "single", flags)]

    def run_code(self, code: CodeType) -> None:
        if code.co_flags & inspect.CO_COROUTINE:  # top-level await
            if self.loop is None or self.loop.is_closed():
                self.loop = asyncio.new_event_loop()
            self.loop.run_until_complete(eval(code, self.ns))
        else:
            exec(code, self.ns)


def show_error(exc: BaseException, *, with_traceback: bool = True) -> None:
    """Print a traceback that starts at the user's cell, without driver or asyncio frames (nor
    the SIGINT handler's), to the captured stderr."""
    tb = exc.__traceback__ if with_traceback else None
    cell = tb
    while cell is not None and not cell.tb_frame.f_code.co_filename.startswith("<cell-"):
        cell = cell.tb_next
    try:
        out = sys.stderr if sys.stderr is not None else text_stream(2)
        report = traceback.TracebackException(type(exc), exc, cell or tb)
        report.stack = traceback.StackSummary.from_list([f for f in report.stack if f.filename != __file__])
        out.write("".join(report.format()))
    except Exception:  # a broken sys.stderr or __repr__: say something anyway
        try:
            os.write(2, f"{type(exc).__name__} (traceback unavailable)\n".encode())
        except OSError:
            pass


def flush_std() -> None:
    for stream in (sys.stdout, sys.stderr, sys.__stdout__, sys.__stderr__):
        try:
            if stream is not None:
                stream.flush()
        except Exception:
            pass


class Driver:
    """Reads requests, runs them, answers "done" after all of a run's output."""

    def __init__(self, chan: Channel, requests: BinaryIO, pump: Pump, state: RunState) -> None:
        self.chan, self.requests, self.pump, self.state = chan, requests, pump, state
        self.interp = Interpreter()

    def serve(self) -> None:
        self.chan.send(message(type="ready", pid=os.getpid(), version=sys.version.split()[0]))
        for raw in iter(self.requests.readline, b""):
            try:
                req = json.loads(raw)
                run_id, code = int(req["id"]), str(req["code"])
                max_output = int(req.get("max_output", DEFAULT_MAX_OUTPUT))
            except (ValueError, KeyError, TypeError):
                continue
            self.handle(run_id, code, max_output)

    def handle(self, run_id: int, code: str, max_output: int) -> None:
        self.pump.recapture()
        self.state.begin(run_id, max_output)
        status = "error"
        try:
            status = self.execute(code)
        except KeyboardInterrupt:  # a SIGINT that landed between user code and bookkeeping
            pass
        flush_std()
        tail = self.pump.finish(time.monotonic() + DRAIN_S)
        self.chan.send(*tail, f'{{"type": "done", "id": {run_id}, "status": "{status}"}}\n')

    def execute(self, code: str) -> str:
        if signal.getsignal(signal.SIGINT) is not on_sigint:  # user code replaced it last time
            signal.signal(signal.SIGINT, on_sigint)
        try:
            codes = self.interp.compile_cell(code)
        except (SyntaxError, ValueError, OverflowError, MemoryError, RecursionError) as exc:
            show_error(exc, with_traceback=False)
            return "error"
        try:
            Armed.value = True
            for c in codes:
                self.interp.run_code(c)
            Armed.value = False
            return "success"
        except BaseException as exc:  # user code may raise anything, SystemExit included
            Armed.value = False
            show_error(exc)
            return "error"
        finally:
            Armed.value = False


def text_stream(fd: int) -> io.TextIOWrapper:
    raw = open(fd, "wb", buffering=0, closefd=False)  # noqa: SIM115 - lives as long as the process
    return io.TextIOWrapper(raw, encoding="utf-8", errors="backslashreplace", write_through=True)


def main() -> None:
    proto_in, proto_out, proto_err = os.dup(0), os.dup(1), os.dup(2)  # dup'd fds are not inherited
    devnull = os.open(os.devnull, os.O_RDONLY)
    os.dup2(devnull, 0)
    os.close(devnull)
    chan, state = Channel(proto_out), RunState()
    pump = Pump(state, chan)
    pump.capture(1, "stdout")
    pump.capture(2, "stderr")
    pump.start()
    sys.stdout = text_stream(1)  # UTF-8 whatever the locale; unbuffered
    sys.stderr = text_stream(2)
    sys.argv = [""]
    sys.path[0] = ""  # like `python3` at a prompt: the cwd, not this driver's folder
    signal.signal(signal.SIGINT, on_sigint)
    try:
        Driver(chan, os.fdopen(proto_in, "rb"), pump, state).serve()
    except BaseException:
        os.write(proto_err, traceback.format_exc().encode())
        raise


if __name__ == "__main__":
    main()
