"""The control socket of a project sandbox's supervisor.

A persistent sandbox started by ``msb run`` (or ``msb shell``) is owned by a supervisor
process (:mod:`engine.project.supervisor`); other ``msb`` invocations talk to it over a unix
socket in a private directory. The wire is JSON lines: the client's first line is a request
(``{"op": "status"|"stop"|"repl"|"repl_interrupt"|"attach"|"spawn", …}``); ``attach``/``spawn`` then become a
bidirectional stream of messages:

- client → supervisor: ``{"t": "in", "d": <base64>}``, ``{"t": "eof"}``,
  ``{"t": "resize", "rows", "cols"}``, ``{"t": "signal", "n"}``
- supervisor → client: ``{"t": "started"}``, ``{"t": "out", "s": "stdout"|"stderr", "d"}``,
  ``{"t": "exit", "code", "signal", "timed_out"}``, ``{"t": "error", "message", "hint"}``

Both sides bound a line at :data:`MAX_LINE` bytes. The socket lives in a 0700 directory, so
only the user who started the sandbox can reach it.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import signal as _signal
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any, Protocol

from engine.errors import MsbError
from engine.vm.process import ExitStatus, OutputChunk

MAX_LINE = 1 << 20
CHUNK = 48 << 10
"""Raw bytes per ``out``/``in`` message (base64 makes it 64 KiB)."""


class ControlError(MsbError):
    """The supervisor is unreachable or answered with an error."""


class StreamingProcess(Protocol):
    """What :func:`engine.cli.terminal.attach` needs from a process (local or remote)."""

    async def write(self, data: bytes) -> None: ...
    async def close_stdin(self) -> None: ...
    async def resize(self, rows: int, cols: int) -> None: ...
    def __aiter__(self) -> AsyncIterator[OutputChunk]: ...
    async def wait(self) -> ExitStatus: ...


def encode(msg: dict[str, Any]) -> bytes:
    return json.dumps(msg, separators=(",", ":")).encode() + b"\n"


async def read_msg(reader: asyncio.StreamReader) -> dict[str, Any] | None:
    """Next message, ``None`` at EOF.

    Raises:
        ControlError: a line is too long or not a JSON object.
    """
    try:
        line = await reader.readline()
    except (asyncio.LimitOverrunError, ValueError) as exc:
        raise ControlError("control message too long") from exc
    except ConnectionError:
        return None
    if not line:
        return None
    try:
        msg = json.loads(line)
    except ValueError as exc:
        raise ControlError("control message is not JSON") from exc
    if not isinstance(msg, dict):
        raise ControlError("control message is not an object")
    return msg


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def unb64(text: object) -> bytes:
    if not isinstance(text, str):
        raise ControlError("control data is not a string")
    try:
        return base64.b64decode(text, validate=True)
    except ValueError as exc:
        raise ControlError("control data is not base64") from exc


async def connect(socket_path: Path, timeout: float = 5.0) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    """Open the control socket.

    Raises:
        ControlError: nobody listens there.
    """
    try:
        return await asyncio.wait_for(asyncio.open_unix_connection(str(socket_path), limit=MAX_LINE), timeout)
    except (OSError, TimeoutError) as exc:
        raise ControlError(f"the sandbox's supervisor does not answer at {socket_path}: {exc}",
                           hint="it may have just stopped; check `msb status`") from exc  # fmt: skip


async def request(socket_path: Path, msg: dict[str, Any], timeout: float = 30.0) -> dict[str, Any]:
    """Send a one-shot request (``status``, ``stop``) and return the answer."""
    reader, writer = await connect(socket_path)
    try:
        writer.write(encode(msg))
        await writer.drain()
        answer = await asyncio.wait_for(read_msg(reader), timeout)
    except TimeoutError as exc:
        raise ControlError(f"the supervisor did not answer {msg.get('op')!r} within {timeout:.0f} s") from exc
    finally:
        writer.close()
        with contextlib.suppress(Exception):
            await writer.wait_closed()
    if answer is None:
        raise ControlError("the supervisor closed the connection without answering")
    if answer.get("t") == "error":
        raise ControlError(str(answer.get("message")), hint=answer.get("hint"))
    return answer


class RemoteProcess:
    """A process in a supervised sandbox, driven over the control socket."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self._reader = reader
        self._writer = writer
        self._status: ExitStatus | None = None

    @classmethod
    async def open(cls, socket_path: Path, msg: dict[str, Any]) -> RemoteProcess:
        """Send an ``attach``/``spawn`` request and wait for ``started``.

        Raises:
            ControlError: the supervisor refused (its message and hint).
        """
        reader, writer = await connect(socket_path)
        proc = cls(reader, writer)
        await proc._send(msg)
        answer = await read_msg(reader)
        if answer is None or answer.get("t") != "started":
            await proc.close()
            if answer is not None and answer.get("t") == "error":
                raise ControlError(str(answer.get("message")), hint=answer.get("hint"))
            raise ControlError("the supervisor closed the connection (the sandbox stopped?)",
                               hint="check `msb status` and `msb log`")  # fmt: skip
        return proc

    async def _send(self, msg: dict[str, Any]) -> None:
        try:
            self._writer.write(encode(msg))
            await self._writer.drain()
        except ConnectionError:
            pass  # the exit message (or EOF) tells the reader what happened

    async def write(self, data: bytes) -> None:
        for i in range(0, len(data), CHUNK):
            await self._send({"t": "in", "d": b64(data[i : i + CHUNK])})

    async def close_stdin(self) -> None:
        await self._send({"t": "eof"})

    async def resize(self, rows: int, cols: int) -> None:
        await self._send({"t": "resize", "rows": rows, "cols": cols})

    async def signal(self, signo: int = _signal.SIGTERM) -> None:
        await self._send({"t": "signal", "n": int(signo)})

    async def read(self) -> OutputChunk | None:
        """Next output chunk; ``None`` once the process exited (status set)."""
        while self._status is None:
            msg = await read_msg(self._reader)
            if msg is None:
                raise ControlError("lost the connection to the sandbox's supervisor",
                                   hint="the sandbox may have crashed; see `msb status` and `msb log`")  # fmt: skip
            kind = msg.get("t")
            if kind == "out":
                stream = "stderr" if msg.get("s") == "stderr" else "stdout"
                return OutputChunk(stream=stream, data=unb64(msg.get("d")))
            if kind == "exit":
                self._status = ExitStatus(exit_code=int(msg.get("code", 1)), signal=int(msg.get("signal") or 0),
                                          timed_out=bool(msg.get("timed_out")))  # fmt: skip
            elif kind == "error":
                raise ControlError(str(msg.get("message")), hint=msg.get("hint"))
        return None

    def __aiter__(self) -> AsyncIterator[OutputChunk]:
        return self._iter()

    async def _iter(self) -> AsyncIterator[OutputChunk]:
        while (chunk := await self.read()) is not None:
            yield chunk

    async def wait(self) -> ExitStatus:
        while self._status is None:
            await self.read()
        return self._status

    async def close(self) -> None:
        self._writer.close()
        with contextlib.suppress(Exception):
            await self._writer.wait_closed()
