"""The host↔driver protocol: JSON lines, one message per line, each with a ``type``.

host → driver (stdin)::

    {"type": "run", "id": 7, "code": "x + 1", "max_output": 8388608, "interruptible": true}

driver → host (stdout; the driver keeps user output off this fd)::

    {"type": "ready", "pid": 42, "version": "3.11.2"}              once, after start-up
    {"type": "out", "id": 7, "stream": "stdout", "data": "42\\n"}   any number, in order
    {"type": "done", "id": 7, "status": "success"}                 after all of run 7's output

The guest is hostile: lines are bounded (:class:`LineBuffer`) and every message is validated
(:func:`decode`); anything else is a :class:`~engine.errors.ProtocolError`.
"""

from __future__ import annotations

import json
from typing import Annotated, Literal

from pydantic import BaseModel, Field, TypeAdapter, ValidationError

from engine.errors import ProtocolError
from engine.repl.models import Stream

MAX_MESSAGE_BYTES = 1 << 20
"""Longest line the host accepts from a driver (drivers send ≤ 32 KiB of text per message)."""


class Ready(BaseModel):
    type: Literal["ready"]
    pid: int = 0
    version: str = Field("", max_length=100)
    """The interpreter's version (``sys.version`` / ``process.version``)."""


class Out(BaseModel):
    type: Literal["out"]
    id: int
    stream: Stream
    data: str


class Done(BaseModel):
    type: Literal["done"]
    id: int
    status: Literal["success", "error"]


DriverMessage = Annotated[Ready | Out | Done, Field(discriminator="type")]
_MESSAGE: TypeAdapter[Ready | Out | Done] = TypeAdapter(DriverMessage)


def encode_run(run_id: int, code: str, max_output: int, *, interruptible: bool = True) -> bytes:
    """The request line that asks the driver to run ``code`` as run ``run_id``.

    ``interruptible=False`` promises no SIGINT will come (no timeout): node then skips its
    per-call SIGINT watchdog thread, which costs over a millisecond under TCG."""
    msg = {"type": "run", "id": run_id, "code": code, "max_output": max_output, "interruptible": interruptible}
    return (json.dumps(msg) + "\n").encode()


def decode(line: bytes) -> Ready | Out | Done:
    """Parse one driver line.

    Raises:
        ProtocolError: not one of the messages above.
    """
    try:
        return _MESSAGE.validate_json(line)
    except ValidationError as exc:
        raise ProtocolError(f"the REPL driver sent a malformed message: {line[:80]!r}") from exc


class LineBuffer:
    """Splits a byte stream into lines, refusing to hold more than ``limit`` bytes of one."""

    def __init__(self, limit: int = MAX_MESSAGE_BYTES) -> None:
        self._limit = limit
        self._buf = bytearray()

    def feed(self, data: bytes) -> list[bytes]:
        """Add ``data``; return the complete lines it finished (without their newlines).

        Raises:
            ProtocolError: a line grew past the limit.
        """
        self._buf += data
        *lines, rest = self._buf.split(b"\n")
        if len(rest) > self._limit or any(len(line) > self._limit for line in lines):
            raise ProtocolError(f"the REPL driver sent a line longer than {self._limit} bytes")
        self._buf = bytearray(rest)
        return [bytes(line) for line in lines if line]
