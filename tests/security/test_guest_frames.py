"""Attack: a hostile guest (root in the VM, owns the agent) sends the host any bytes.

The host-side decoder is fuzzed with Hypothesis; a scripted guest then floods, reorders and
oversizes frames against a real :class:`AgentClient`. Whatever it sends, the client either
ignores it as designed or drops the channel; pending requests fail with an ``MsbError`` and
never hang; host memory stays bounded; and the event loop keeps serving others.
"""

from __future__ import annotations

import asyncio
import struct
import time
import tracemalloc
from collections.abc import AsyncIterator

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from engine.errors import ExecError, MsbError, ProtocolError
from engine.vm import fake_codec as g
from engine.vm import protocol as p
from engine.vm.agent import MAX_DROPPED_PER_S, WINDOW, AgentClient
from engine.vm.channel import ChannelClosed, read_frame
from engine.vm.fake import MemoryChannel, _Pipe
from engine.vm.process import MAX_QUEUED_CHUNKS, MAX_QUEUED_FRAMES

T = 30.0
"""Seconds any one wait may take: a hang fails the test instead of stalling the suite."""
GUEST_KINDS = [int(k) for k in p.T if k >= 0x40]
FUZZ = settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])


# ---------------------------------------------------------------- the decoder


def _reader(data: bytes) -> asyncio.StreamReader:
    reader = asyncio.StreamReader()
    reader.feed_data(data)
    reader.feed_eof()
    return reader


async def _read_all(data: bytes) -> list[p.GuestFrame | None]:
    """Every frame in ``data``, up to the ProtocolError or ChannelClosed that must end it."""
    reader, frames = _reader(data), []
    while True:
        try:
            frames.append(await read_frame(reader))
        except (ProtocolError, ChannelClosed):
            return frames


@FUZZ
@given(kind=st.sampled_from(GUEST_KINDS) | st.integers(0, 255), fid=st.integers(0, 0xFFFFFFFF),
       body=st.binary(max_size=2048))  # fmt: skip
def test_decoding_any_body_gives_a_frame_or_a_protocol_error(kind: int, fid: int, body: bytes) -> None:
    tracemalloc.start()
    try:
        frame = p.decode_guest_frame(kind, fid, body)
    except ProtocolError:
        return
    finally:
        peak = tracemalloc.get_traced_memory()[1]
        tracemalloc.stop()
    assert frame.id == fid
    assert peak < 64 * len(body) + (256 << 10), peak  # no allocation beyond what the body can describe


@FUZZ
@given(st.binary(max_size=4096))
def test_random_bytes_on_the_channel_end_in_a_protocol_error_or_eof(data: bytes) -> None:
    frames = asyncio.run(_read_all(data))
    assert all(isinstance(f, p.Ready | p.Held | p.Started | p.Output | p.Exit | p.FileData | p.Result | p.StatResult
                          | p.ListResult | p.MetricsResult | p.Pong | p.Log) for f in frames)  # fmt: skip


@FUZZ
@given(kind=st.sampled_from(GUEST_KINDS), fid=st.integers(0, 0xFFFFFFFF), body=st.binary(max_size=1024),
       length=st.one_of(st.none(), st.integers(0, 0xFFFFFFFF)))  # fmt: skip
def test_valid_headers_with_random_bodies_and_lengths(kind: int, fid: int, body: bytes, length: int | None) -> None:
    header = p.HEADER.pack(8 + len(body) if length is None else length, kind, 0, 0, fid)
    for f in asyncio.run(_read_all(header + body)):
        assert f is not None and f.id == fid


async def test_an_oversized_length_is_refused_before_its_body_is_read() -> None:
    reader = asyncio.StreamReader()
    reader.feed_data(p.HEADER.pack(0xFFFFFFFF, p.T.STDOUT, 0, 0, 1))  # no body follows, no EOF either
    with pytest.raises(ProtocolError, match="outside"):
        await asyncio.wait_for(read_frame(reader), T)


async def test_an_unwanted_frame_is_skipped_without_decoding() -> None:
    bad_list = p.HEADER.pack(8 + 4, p.T.LIST_RESULT, 0, 0, 7) + struct.pack(">I", 10**9)  # a lying count
    reader = _reader(bad_list + g.pong(8, b"x"))
    assert await read_frame(reader, lambda kind, fid: fid != 7) is None
    assert isinstance(await read_frame(reader, lambda kind, fid: True), p.Pong)


# ---------------------------------------------------------------- a scripted guest


class Guest:
    """The guest end of a :class:`MemoryChannel`, written frame by frame by the test."""

    def __init__(self) -> None:
        self.to_guest, self.from_guest = _Pipe(), _Pipe()
        self.channel = MemoryChannel(self.to_guest, self.from_guest)

    def send(self, data: bytes) -> None:
        self.from_guest.write(data)

    async def recv(self) -> tuple[int, int, bytes]:
        """The next host frame: ``(type, id, body)``."""
        length, kind, _flags, _res, fid = p.HEADER.unpack(await self.to_guest.reader.readexactly(p.HEADER.size))
        return kind, fid, await self.to_guest.reader.readexactly(length - 8)

    async def expect(self, kind: p.T) -> tuple[int, bytes]:
        """Skip host frames until one of ``kind``; return its id and body."""
        while True:
            got, fid, body = await asyncio.wait_for(self.recv(), T)
            if got == kind:
                return fid, body


@pytest.fixture
async def guest() -> AsyncIterator[tuple[Guest, AgentClient]]:
    guest = Guest()
    client = AgentClient(guest.channel)
    guest.send(g.ready())
    await asyncio.wait_for(client.wait_ready(), T)
    yield guest, client
    await client.close()


async def _dead(client: AgentClient) -> MsbError:
    async with asyncio.timeout(T):
        while client.dead is None:
            await asyncio.sleep(0.001)
    return client.dead


async def test_result_before_started_fails_only_that_exec(guest: tuple[Guest, AgentClient]) -> None:
    g_, client = guest
    spawn = asyncio.ensure_future(client.spawn(["x"]))
    fid, _ = await g_.expect(p.T.EXEC)
    g_.send(g.result(fid, 0, b"") + g.started(fid, 5))  # RESULT first, then a STARTED nobody wants
    with pytest.raises(ExecError):
        await asyncio.wait_for(spawn, T)
    assert fid not in client._routes
    ping = asyncio.ensure_future(client.ping(b"ok"))
    pid, _ = await g_.expect(p.T.PING)
    g_.send(g.pong(pid, b"ok"))
    assert await asyncio.wait_for(ping, T) >= 0 and client.dead is None


async def test_exit_before_started_is_a_protocol_error_and_the_route_is_gone(guest: tuple[Guest, AgentClient]) -> None:
    g_, client = guest
    spawn = asyncio.ensure_future(client.spawn(["x"]))
    fid, _ = await g_.expect(p.T.EXEC)
    g_.send(g.exit_(fid, 0))
    with pytest.raises(ProtocolError, match="answered EXEC with exit"):
        await asyncio.wait_for(spawn, T)
    assert not client._routes


async def test_a_few_duplicate_readys_and_strays_are_ignored(guest: tuple[Guest, AgentClient]) -> None:
    g_, client = guest
    g_.send(g.ready() * 50 + b"".join(g.pong(1000 + i, b"late") for i in range(500)))
    ping = asyncio.ensure_future(client.ping(b"p"))
    pid, _ = await g_.expect(p.T.PING)
    g_.send(g.pong(pid, b"p"))
    assert await asyncio.wait_for(ping, T) >= 0 and client.dead is None


@pytest.mark.parametrize("flood", ["unknown ids", "duplicate READY", "logs"])
async def test_a_flood_of_unwanted_frames_kills_the_channel(guest: tuple[Guest, AgentClient], flood: str) -> None:
    g_, client = guest
    pending = asyncio.ensure_future(client.metrics())
    await g_.expect(p.T.METRICS)
    one = {"unknown ids": g.pong(0xDEAD, b"x" * 100), "duplicate READY": g.ready(), "logs": g.log(b"spam")}[flood]
    g_.send(one * (MAX_DROPPED_PER_S * 2))
    assert "unwanted frames" in str(await _dead(client))
    with pytest.raises(ProtocolError):
        await asyncio.wait_for(pending, T)
    with pytest.raises(ProtocolError):
        await client.ping()


async def _started(g_: Guest, client: AgentClient) -> tuple[int, asyncio.Future[object]]:
    spawn = asyncio.ensure_future(client.spawn(["yes"]))
    fid, _ = await g_.expect(p.T.EXEC)
    g_.send(g.started(fid, 42))
    return fid, spawn


async def test_non_data_frames_beyond_what_a_route_can_get_kill_the_channel(guest: tuple[Guest, AgentClient]) -> None:
    g_, client = guest
    fid, spawn = await _started(g_, client)
    await asyncio.wait_for(spawn, T)
    other = asyncio.ensure_future(client.stat("/"))
    await g_.expect(p.T.FILE_STAT)
    g_.send(g.started(fid, 42) * (MAX_QUEUED_FRAMES + 1))  # nobody reads the process
    assert "unread frames" in str(await _dead(client))
    with pytest.raises(ProtocolError):
        await asyncio.wait_for(other, T)


async def test_output_over_the_window_kills_the_channel(guest: tuple[Guest, AgentClient]) -> None:
    g_, client = guest
    fid, spawn = await _started(g_, client)
    await asyncio.wait_for(spawn, T)
    g_.send(g.output(fid, b"x" * (WINDOW // 2)) * 3)
    assert "over its limit" in str(await _dead(client))


async def test_tiny_output_frames_are_merged_not_kept_one_object_each(guest: tuple[Guest, AgentClient]) -> None:
    g_, client = guest
    fid, spawn = await _started(g_, client)
    proc = await asyncio.wait_for(spawn, T)
    tracemalloc.start()
    try:
        g_.send(g.output(fid, b"y") * 50_000)  # 50 KB of data in 650 KB of frames, nobody reading
        async with asyncio.timeout(T):
            while proc._route.unacked < 50_000:
                await asyncio.sleep(0.001)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 6 << 20, f"{peak >> 20} MiB"  # one Output object per frame: ~15 MiB
    g_.send(g.exit_(fid, 0))
    total = 0
    async with asyncio.timeout(T):
        async for chunk in proc:
            total += len(chunk.data)
    assert total == 50_000 and client.dead is None


async def test_alternating_streams_beyond_the_queue_bound_kill_the_channel(guest: tuple[Guest, AgentClient]) -> None:
    g_, client = guest
    fid, spawn = await _started(g_, client)
    await asyncio.wait_for(spawn, T)
    g_.send((g.output(fid, b"o") + g.output(fid, b"e", stderr=True)) * (MAX_QUEUED_CHUNKS // 2 + 1))
    assert "unread output pieces" in str(await _dead(client))


async def test_a_listing_past_its_bound_is_not_decoded_further(guest: tuple[Guest, AgentClient]) -> None:
    g_, client = guest
    listing = asyncio.ensure_future(client.listdir("/"))
    fid, _ = await g_.expect(p.T.FILE_LIST)
    batch = g.list_result(fid, [(f"f{i}".encode(), 0o100644, 0, 0) for i in range(30_000)])
    g_.send(batch * 12 + g.result(fid))  # 360,000 entries for a bound of 100,000
    with pytest.raises(MsbError, match="more than"):
        await asyncio.wait_for(listing, T)
    assert fid not in client._routes and client.dead is None


async def test_cancelled_requests_leave_no_route_and_kill_their_process(guest: tuple[Guest, AgentClient]) -> None:
    g_, client = guest
    metrics = asyncio.ensure_future(client.metrics())
    await g_.expect(p.T.METRICS)
    metrics.cancel()
    exec_ = asyncio.ensure_future(client.exec(["yes"]))
    fid, _ = await g_.expect(p.T.EXEC)
    g_.send(g.started(fid, 42) + g.output(fid, b"y\n" * 1000))
    await g_.expect(p.T.ACK)
    exec_.cancel()
    sig_fid, body = await g_.expect(p.T.SIGNAL)
    assert sig_fid == fid and int.from_bytes(body[:4], "big") == 9
    assert not client._routes
    g_.send(g.output(fid, b"late") * 100 + g.exit_(fid, -1, 9))  # late frames: dropped, harmless
    ping = asyncio.ensure_future(client.ping())
    pid, _ = await g_.expect(p.T.PING)
    g_.send(g.pong(pid, b""))
    assert await asyncio.wait_for(ping, T) >= 0 and client.dead is None


async def test_a_flooding_guest_does_not_starve_the_event_loop(guest: tuple[Guest, AgentClient]) -> None:
    g_, client = guest
    fid, spawn = await _started(g_, client)
    proc = await asyncio.wait_for(spawn, T)
    gaps: list[float] = []
    stop = asyncio.Event()

    async def ticker() -> None:  # another tenant's work on the same loop
        last = time.perf_counter()
        while not stop.is_set():
            await asyncio.sleep(0)
            now = time.perf_counter()
            gaps.append(now - last)
            last = now

    tick = asyncio.ensure_future(ticker())
    await asyncio.sleep(0)
    t0 = time.perf_counter()
    g_.send(g.output(fid, b"z") * 100_000 + g.exit_(fid, 0))  # all at once: 1.3 MB in the reader's buffer
    total = 0
    async with asyncio.timeout(T):
        async for chunk in proc:
            total += len(chunk.data)
    flood_s = time.perf_counter() - t0
    stop.set()
    await tick
    assert total == 100_000
    # A reader that never yields stalls the loop for the whole flood; one that yields every 64
    # frames, for a sliver of it. Relative to the flood's own time, so a loaded host (where
    # both stretch) does not decide the outcome.
    assert max(gaps) < max(0.1, flood_s / 4), f"the loop stalled {max(gaps) * 1000:.0f} ms of {flood_s * 1000:.0f}"


@settings(max_examples=40, deadline=None)
@given(st.lists(st.binary(max_size=64) | st.sampled_from([g.ready(), g.log(b"x"), g.pong(1, b""), g.exit_(1, 0)]),
                max_size=30))  # fmt: skip
def test_random_frames_never_hang_a_pending_request(pieces: list[bytes]) -> None:
    async def scenario() -> None:
        guest = Guest()
        client = AgentClient(guest.channel)
        ping = asyncio.ensure_future(client.ping(b"q"))
        for piece in pieces:
            guest.send(piece)
        guest.from_guest.close()  # then the guest dies
        try:
            await asyncio.wait_for(ping, T)
        except MsbError:
            pass
        else:
            raise AssertionError("a ping nobody answered succeeded")
        finally:
            await client.close()

    asyncio.run(scenario())
