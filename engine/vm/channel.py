"""The guest channel seam: a byte stream that carries protocol frames.

:class:`GuestChannel` is what the rest of the engine sees. :class:`StreamChannel` carries the
frames over any asyncio stream pair (the virtio-serial unix socket QEMU connects to, a pipe to
``msb-agent --serve-stdio``, a vsock-mapped socket); :mod:`engine.vm.fake` has an in-memory one.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Protocol

from engine.errors import ProtocolError
from engine.vm.protocol import HEADER, GuestFrame, decode_guest_frame, parse_header

Wanted = Callable[[int, int], bool]
"""``wanted(type, id)``: whether the receiver wants a frame decoded, asked with the header alone."""


class ChannelClosed(Exception):
    """The peer closed the channel (EOF). Not an ``MsbError``: callers translate it."""


class GuestChannel(Protocol):
    """A bidirectional frame pipe to one guest agent."""

    async def send(self, data: bytes) -> None:
        """Send already-encoded frames.

        Raises:
            ChannelClosed: the channel is gone.
        """
        ...

    async def recv(self, wanted: Wanted | None = None) -> GuestFrame | None:
        """Return the next validated frame from the guest.

        Args:
            wanted: asked before a frame is decoded; a frame it refuses is read, dropped
                undecoded, and reported as ``None`` (so the caller can count it).

        Raises:
            ChannelClosed: clean EOF between frames.
            ProtocolError: a malformed, oversized or truncated frame.
        """
        ...

    def close(self) -> None:
        """Close the channel; pending ``recv`` calls end with ``ChannelClosed``."""
        ...


class StreamChannel:
    """:class:`GuestChannel` over an asyncio ``StreamReader``/``StreamWriter`` pair."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self._reader = reader
        self._writer = writer
        self._send_lock = asyncio.Lock()

    async def send(self, data: bytes) -> None:
        """Write frames and wait for the transport buffer to drain.

        Raises:
            ChannelClosed: the peer is gone.
        """
        if self._writer.is_closing():
            raise ChannelClosed("channel closed")
        try:
            self._writer.write(data)
            # Only wait when the transport is backed up: drain() costs a loop turn otherwise.
            if self._writer.transport.get_write_buffer_size() > 256 * 1024:
                async with self._send_lock:
                    await self._writer.drain()
        except (ConnectionError, RuntimeError) as exc:
            raise ChannelClosed(str(exc)) from exc

    async def recv(self, wanted: Wanted | None = None) -> GuestFrame | None:
        """Read, bound and validate one frame (``None``: one ``wanted`` refused, dropped).

        Raises:
            ChannelClosed: EOF before a header.
            ProtocolError: bad length, truncated body, or invalid content.
        """
        return await read_frame(self._reader, wanted)

    def close(self) -> None:
        """Close the underlying transport."""
        self._writer.close()


async def read_frame(reader: asyncio.StreamReader, wanted: Wanted | None = None) -> GuestFrame | None:
    """Read one guest frame from ``reader``: bound its length, then decode and validate it.

    Shared by every channel that receives bytes (the QEMU socket, the fake's in-memory pipe),
    so all of them enforce the same limits.

    Args:
        reader: the guest → host byte stream.
        wanted: asked with the header's type and id before decoding; when it says no, the
            body is skipped and ``None`` returned.

    Returns:
        The validated frame, or ``None`` for a frame ``wanted`` refused.

    Raises:
        ChannelClosed: EOF before a header.
        ProtocolError: bad length, truncated header or body, or invalid content.
    """
    try:
        header = await reader.readexactly(HEADER.size)
    except asyncio.IncompleteReadError as exc:
        if exc.partial:
            raise ProtocolError("channel closed inside a frame header") from exc
        raise ChannelClosed("guest closed the channel") from exc
    except ConnectionError as exc:
        raise ChannelClosed(str(exc)) from exc
    body_len, kind, fid = parse_header(header)
    try:
        body = await reader.readexactly(body_len) if body_len else b""
    except (asyncio.IncompleteReadError, ConnectionError) as exc:
        raise ProtocolError("channel closed inside a frame body") from exc
    if wanted is not None and not wanted(kind, fid):
        return None
    return decode_guest_frame(kind, fid, body)
