"""The serial console of a QEMU VM: a bounded ring (shown in boot errors) and a capped log.

A guest that floods its serial port cannot fill the host's memory or disk.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections import deque
from pathlib import Path

CONSOLE_RING = 64 * 1024
CONSOLE_LOG_MAX = 1 << 20
"""Bytes of console kept in ``console.log`` per VM start."""


class Console:
    """Bounded sink for the guest's serial console."""

    def __init__(self, path: Path) -> None:
        self.ring: deque[bytes] = deque()
        self.ring_size = 0
        self.path = path
        self.written = 0
        self.file = open(path, "ab", buffering=0)  # noqa: SIM115 - lives as long as the VM

    def feed(self, data: bytes) -> None:
        self.ring.append(data)
        self.ring_size += len(data)
        while self.ring_size > CONSOLE_RING and len(self.ring) > 1:
            self.ring_size -= len(self.ring.popleft())
        room = CONSOLE_LOG_MAX - self.written
        if room > 0:
            self.file.write(data[:room])
            self.written += min(room, len(data))
            if self.written >= CONSOLE_LOG_MAX:
                self.file.write(b"\n[msb: console log truncated]\n")

    def tail(self, max_bytes: int) -> str:
        data = b"".join(self.ring)[-max_bytes:]
        return data.decode("utf-8", "replace")

    def close(self) -> None:
        self.file.close()


async def pump_console(reader: asyncio.StreamReader, console: Console, prefix: bytes = b"") -> None:
    """Copy ``reader`` into ``console`` until EOF, each line prefixed with ``prefix``."""
    with contextlib.suppress(ConnectionError, asyncio.CancelledError):
        while data := await reader.read(16384):
            if prefix:
                data = b"".join(prefix + line for line in data.splitlines(keepends=True))
            console.feed(data)
