"""Processes a supervisor runs for its clients: the main process and ad-hoc spawns.

The main process's output always goes to ``output.log`` (bounded, rotated once) and, while a
client is attached, to that client too; it keeps running when the client goes away. A
spawned process (``msb shell``) belongs to its connection: when the client disconnects, the
process group is killed.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
from pathlib import Path

from engine.project.control import ControlError, b64, encode, read_msg, unb64
from engine.sandbox.sandbox import Sandbox
from engine.vm.process import ExitStatus, Process

LOG_MAX_BYTES = 16 << 20
"""``output.log`` is rotated to ``output.log.1`` past this size (so at most twice it on disk)."""


class BoundedLog:
    """An append-only log file that rotates once it passes ``max_bytes``."""

    def __init__(self, path: Path, max_bytes: int = LOG_MAX_BYTES) -> None:
        self.path = path
        self.max_bytes = max_bytes
        self.file = open(path, "ab", buffering=0)  # noqa: SIM115 - lives as long as the process
        self.size = self.file.tell()

    def write(self, data: bytes) -> None:
        if self.size + len(data) > self.max_bytes:
            self.file.close()
            os.replace(self.path, self.path.with_name(self.path.name + ".1"))
            self.file = open(self.path, "ab", buffering=0)  # noqa: SIM115
            self.size = 0
        self.file.write(data)
        self.size += len(data)

    def close(self) -> None:
        self.file.close()


async def _client_input(proc: Process, reader: asyncio.StreamReader) -> None:
    """Apply a client's stdin/resize/signal messages to ``proc`` until the client goes."""
    while (msg := await read_msg(reader)) is not None:
        kind = msg.get("t")
        if kind == "in":
            await proc.write(unb64(msg.get("d")))
        elif kind == "eof":
            await proc.close_stdin()
        elif kind == "resize":
            rows, cols = msg.get("rows"), msg.get("cols")
            if isinstance(rows, int) and isinstance(cols, int) and 0 < rows < 10000 and 0 < cols < 10000:
                await proc.resize(rows, cols)
        elif kind == "signal":
            n = msg.get("n")
            if isinstance(n, int) and 0 < n < 65:
                await proc.signal(n)


def _exit_msg(status: ExitStatus) -> bytes:
    return encode({"t": "exit", "code": status.exit_code, "signal": status.signal, "timed_out": status.timed_out})


class MainProcess:
    """The sandbox's main process (its start script or the command given to ``msb run``)."""

    def __init__(self, proc: Process, log: BoundedLog) -> None:
        self.proc = proc
        self.log = log
        self.client: asyncio.StreamWriter | None = None
        self.status: ExitStatus | None = None
        self._exited = asyncio.Event()
        self._pump = asyncio.create_task(self._run())

    @classmethod
    async def start(cls, sandbox: Sandbox, argv: list[str], log_path: Path, *, tty: bool, rows: int,
                    cols: int) -> MainProcess:  # fmt: skip
        log = BoundedLog(log_path)
        try:
            proc = await sandbox.spawn(argv, tty=tty, stdin=True, rows=rows, cols=cols)
        except Exception as exc:
            log.write(f"[msb: could not start {argv!r}: {exc}]\n".encode())
            log.close()
            raise
        return cls(proc, log)

    @property
    def exited(self) -> bool:
        return self._exited.is_set()

    async def _send(self, data: bytes) -> None:
        client = self.client
        if client is None:
            return
        try:
            client.write(data)
            await client.drain()
        except (ConnectionError, RuntimeError):
            self.client = None  # the client went away; the process keeps running

    async def _run(self) -> None:
        try:
            async for chunk in self.proc:
                self.log.write(chunk.data)
                await self._send(encode({"t": "out", "s": chunk.stream, "d": b64(chunk.data)}))
            self.status = await self.proc.wait()
        except Exception as exc:  # the VM died under it
            self.status = ExitStatus(exit_code=255)
            self.log.write(f"\n[msb: lost the main process: {exc}]\n".encode())
        self.log.write(f"\n[msb: main process exited with {self.status.exit_code}]\n".encode())
        await self._send(_exit_msg(self.status))
        self._exited.set()

    async def finished(self) -> int:
        await self._exited.wait()
        assert self.status is not None
        return self.status.exit_code

    async def attach(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        """Stream to this client (replacing an earlier one) until the process exits or the
        client leaves."""
        if self.exited:
            raise ControlError("the main process has already exited")
        self.client = writer
        writer.write(encode({"t": "started"}))
        await writer.drain()
        inputs = asyncio.create_task(_client_input(self.proc, reader))
        exited = asyncio.create_task(self._exited.wait())
        try:
            await asyncio.wait({inputs, exited}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            inputs.cancel()
            exited.cancel()
            if self.client is writer:
                self.client = None

    def close(self) -> None:
        self._pump.cancel()
        self.log.close()


async def serve_spawn(sandbox: Sandbox, argv: list[str], reader: asyncio.StreamReader,
                      writer: asyncio.StreamWriter, *, tty: bool, rows: int, cols: int) -> None:  # fmt: skip
    """Run ``argv`` for one client connection; kill it if the client leaves first."""
    proc = await sandbox.spawn(argv, tty=tty, stdin=True, rows=rows, cols=cols)
    writer.write(encode({"t": "started"}))
    await writer.drain()

    async def output() -> None:
        async for chunk in proc:
            writer.write(encode({"t": "out", "s": chunk.stream, "d": b64(chunk.data)}))
            await writer.drain()
        writer.write(_exit_msg(await proc.wait()))

    inputs = asyncio.create_task(_client_input(proc, reader))
    pump = asyncio.create_task(output())
    try:
        await asyncio.wait({inputs, pump}, return_when=asyncio.FIRST_COMPLETED)
        if not pump.done():  # the client left (or sent garbage): the process goes with it
            with contextlib.suppress(Exception):
                await proc.signal(signal.SIGKILL)
        await pump
    finally:
        inputs.cancel()
        if inputs.done() and not inputs.cancelled():
            inputs.exception()  # a client's bad message ends its session; nothing more to say
        if not pump.done():
            pump.cancel()
            with contextlib.suppress(Exception):
                await proc.signal(signal.SIGKILL)
