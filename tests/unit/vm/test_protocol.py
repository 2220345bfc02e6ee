"""The frame codec: round trips for every frame type, and a hostile guest's bad frames.

Guest → host frames are built with the guest-side encoder (:mod:`engine.vm.fake_codec`) and
read back through :func:`decode_guest_frame`; host → guest frames are built as
:class:`~engine.vm.agent.AgentClient` builds them and read back as the agent would.
"""

from __future__ import annotations

import asyncio
import random
import struct

import pytest

from engine.errors import ProtocolError
from engine.vm import fake_codec as enc
from engine.vm import protocol as p
from engine.vm.channel import ChannelClosed, read_frame
from engine.vm.fake_codec import decode_host_frame
from engine.vm.protocol import T


def decode(raw: bytes) -> p.GuestFrame:
    """Split one whole frame into header and body and decode it as the host does."""
    body_len, kind, fid = p.parse_header(raw[: p.HEADER.size])
    body = raw[p.HEADER.size :]
    assert len(body) == body_len
    return p.decode_guest_frame(kind, fid, body)


def split(raw: bytes) -> tuple[int, int, bytes]:
    _len, kind, fid = p.parse_header(raw[: p.HEADER.size])
    return kind, fid, raw[p.HEADER.size :]


# ---------------------------------------------------------------- guest → host round trips

METRICS = (123, 4567, 100, 2, 524288, 400000, 1 << 30, 4 << 30, 98765, 17)

GOOD_GUEST_FRAMES: dict[str, bytes] = {
    "ready": enc.ready(agent_version=b"1.2.3", timings=[(b"init", 5), (b"ready", 900_000_000)]),
    "started": enc.started(7, 4242),
    "stdout": enc.output(7, b"\x00\xffhello"),
    "stderr": enc.output(7, b"oops", stderr=True),
    "exit": enc.exit_(7, 3),
    "file_data": enc.file_data(9, b"abc" * 1000),
    "result": enc.result(9, 2, b"No such file"),
    "stat": enc.stat_result(9, mode=0o100644, size=12, mtime_ns=-5, uid=1000, gid=100),
    "list": enc.list_result(9, [(b"a", 0o40755, 4096, 1), (b"b\xff", 0o100600, 3, 2)]),
    "metrics": enc.metrics_result(9, *METRICS),
    "pong": enc.pong(11, b"ping!"),
    "log": enc.log(b"hello from the agent"),
}


def test_ready_round_trip() -> None:
    f = decode(GOOD_GUEST_FRAMES["ready"])
    assert isinstance(f, p.Ready)
    assert (f.id, f.version, f.agent_version) == (0, 1, "1.2.3")
    assert f.timings_ns == {"init": 5, "ready": 900_000_000}


def test_exec_answer_frames_round_trip() -> None:
    started = decode(GOOD_GUEST_FRAMES["started"])
    assert isinstance(started, p.Started) and (started.id, started.pid) == (7, 4242)
    out = decode(GOOD_GUEST_FRAMES["stdout"])
    assert isinstance(out, p.Output) and (out.stream, out.data) == ("stdout", b"\x00\xffhello")
    err = decode(GOOD_GUEST_FRAMES["stderr"])
    assert isinstance(err, p.Output) and (err.stream, err.data) == ("stderr", b"oops")
    ex = decode(GOOD_GUEST_FRAMES["exit"])
    assert isinstance(ex, p.Exit) and (ex.code, ex.signal, ex.timed_out) == (3, 0, False)
    killed = decode(enc.exit_(7, -1, 9, True))
    assert isinstance(killed, p.Exit) and (killed.code, killed.signal, killed.timed_out) == (-1, 9, True)


def test_file_frames_round_trip() -> None:
    data = decode(GOOD_GUEST_FRAMES["file_data"])
    assert isinstance(data, p.FileData) and data.data == b"abc" * 1000
    res = decode(GOOD_GUEST_FRAMES["result"])
    assert isinstance(res, p.Result) and (res.id, res.errno, res.message) == (9, 2, "No such file")
    st = decode(GOOD_GUEST_FRAMES["stat"])
    assert isinstance(st, p.StatResult)
    assert (st.mode, st.size, st.mtime_ns, st.uid, st.gid) == (0o100644, 12, -5, 1000, 100)
    ls = decode(GOOD_GUEST_FRAMES["list"])
    assert isinstance(ls, p.ListResult)
    assert [(e.name, e.mode, e.size, e.mtime_ns) for e in ls.entries] == [
        ("a", 0o40755, 4096, 1),
        ("b\ufffd", 0o100600, 3, 2),  # not UTF-8: shown with U+FFFD, not a dropped VM
    ]


def test_misc_frames_round_trip() -> None:
    m = decode(GOOD_GUEST_FRAMES["metrics"])
    assert isinstance(m, p.MetricsResult)
    assert m.model_dump(exclude={"id", "kind"}) == dict(
        cpu_busy_ticks=123, cpu_total_ticks=4567, clk_tck=100, ncpus=2, mem_total_kib=524288,
        mem_available_kib=400000, disk_used_bytes=1 << 30, disk_total_bytes=4 << 30, uptime_ms=98765, nprocs=17,
    )  # fmt: skip
    pong = decode(GOOD_GUEST_FRAMES["pong"])
    assert isinstance(pong, p.Pong) and (pong.id, pong.data) == (11, b"ping!")
    log = decode(GOOD_GUEST_FRAMES["log"])
    assert isinstance(log, p.Log) and log.message == "hello from the agent"


def test_empty_raw_bodies_are_valid() -> None:
    assert decode(enc.output(1, b"")) == p.Output(id=1, stream="stdout", data=b"")
    assert decode(enc.pong(1, b"")) == p.Pong(id=1, data=b"")


# ---------------------------------------------------------------- host → guest round trips


def test_exec_round_trip() -> None:
    body = p.encode_exec(
        argv=[b"sh", b"-c", b"echo \xff"], env=[b"A=1", b"PATH=/bin"], cwd=b"/work", tty=True, stdin=True,
        rows=40, cols=132, timeout_ms=1500, window=1 << 20, uid=1000, gid=p.NO_ID,
    )  # fmt: skip
    f = decode_host_frame(*split(p.frame(T.EXEC, 5, body)))
    assert f.kind == T.EXEC and f.id == 5 and f.exec is not None
    e = f.exec
    assert (e.tty, e.stdin, e.rows, e.cols, e.timeout_ms, e.window) == (True, True, 40, 132, 1500, 1 << 20)
    assert (e.uid, e.gid, e.cwd) == (1000, p.NO_ID, b"/work")
    assert (e.argv, e.env) == ([b"sh", b"-c", b"echo \xff"], [b"A=1", b"PATH=/bin"])


@pytest.mark.parametrize(
    ("kind", "body", "fields"),
    [
        (T.STDIN, b"typed", {"data": b"typed"}),
        (T.STDIN_EOF, b"", {}),
        (T.RESIZE, struct.pack(">HH", 50, 200), {"rows": 50, "cols": 200}),
        (T.SIGNAL, struct.pack(">IB", 15, 1), {"signo": 15, "group": True}),
        (T.ACK, struct.pack(">I", 65536), {"count": 65536}),
        (T.FILE_READ, p.encode_file_read(b"/etc/x", 99), {"max_bytes": 99, "path": b"/etc/x"}),
        (
            T.FILE_WRITE,
            p.encode_file_write(b"/a", 0o600, append=True, mkdirs=True),
            {"mode": 0o600, "flags": 3, "path": b"/a"},
        ),
        (T.FILE_DATA, b"\x00" * 10, {"data": b"\x00" * 10}),
        (T.FILE_CLOSE, b"", {}),
        (T.FILE_STAT, p._b(b"/x"), {"path": b"/x"}),
        (T.FILE_LIST, p._b(b"/"), {"path": b"/"}),
        (T.METRICS, b"", {}),
        (T.SHUTDOWN, b"", {}),
        (T.PING, b"p" * 4096, {"data": b"p" * 4096}),
    ],
)
def test_host_frames_round_trip(kind: T, body: bytes, fields: dict[str, object]) -> None:
    f = decode_host_frame(*split(p.frame(kind, 3, body)))
    assert (f.kind, f.id) == (kind, 3)
    for name, value in fields.items():
        assert getattr(f, name) == value


# ---------------------------------------------------------------- bad frames


FIXED_LAYOUT = ["ready", "started", "exit", "result", "stat", "list", "metrics", "log"]


@pytest.mark.parametrize("name", FIXED_LAYOUT)
def test_every_truncation_is_a_protocol_error(name: str) -> None:
    kind, fid, body = split(GOOD_GUEST_FRAMES[name])
    for cut in range(len(body)):
        with pytest.raises(ProtocolError):
            p.decode_guest_frame(kind, fid, body[:cut])


@pytest.mark.parametrize("name", FIXED_LAYOUT)
def test_trailing_bytes_are_a_protocol_error(name: str) -> None:
    kind, fid, body = split(GOOD_GUEST_FRAMES[name])
    with pytest.raises(ProtocolError, match="trailing"):
        p.decode_guest_frame(kind, fid, body + b"\0")


@pytest.mark.parametrize("kind", [T.READY, T.LIST_RESULT])
def test_huge_list_counts_are_refused_before_allocating(kind: T) -> None:
    head = struct.pack(">I", 1) + enc._b(b"v") if kind == T.READY else b""
    with pytest.raises(ProtocolError, match="does not fit"):
        p.decode_guest_frame(kind, 0, head + struct.pack(">I", 0xFFFFFFFF) + b"\0" * 64)


def test_over_long_strings_are_refused() -> None:
    with pytest.raises(ProtocolError, match="exceeds"):
        decode(enc.ready(agent_version=b"v" * 257))
    with pytest.raises(ProtocolError, match="exceeds"):
        decode(enc.result(1, 0, b"m" * 4097))
    with pytest.raises(ProtocolError, match="exceeds"):
        decode(enc.list_result(1, [(b"n" * 256, 0, 0, 0)]))


@pytest.mark.parametrize(
    "raw",
    [
        enc.exit_(1, 256),
        enc.exit_(1, -2),
        enc.exit_(1, -1, 129),
        enc.exit_(1, -1, -1),
        enc.started(1, 0),
        enc.result(1, 4096),
        enc.result(1, -1),
        enc.metrics_result(1, 0, 0, 0, 1, 0, 0, 0, 0, 0, 0),  # clk_tck 0
        enc.metrics_result(1, 0, 0, 100, 0, 0, 0, 0, 0, 0, 0),  # no CPUs
        enc.metrics_result(1, 0, 0, 100, 5000, 0, 0, 0, 0, 0, 0),  # too many CPUs
        enc.list_result(1, [(b"", 0, 0, 0)]),
        enc.list_result(1, [(b"a/b", 0, 0, 0)]),
        enc.list_result(1, [(b"..", 0, 0, 0)]),
        enc.list_result(1, [(b"a\0b", 0, 0, 0)]),
    ],
    ids=lambda raw: f"0x{raw[4]:02x}-{raw[12:].hex()[:24]}",
)
def test_out_of_range_values_are_protocol_errors(raw: bytes) -> None:
    with pytest.raises(ProtocolError, match="invalid frame"):
        decode(raw)


@pytest.mark.parametrize("kind", [0x00, int(T.EXEC), int(T.PING), 0x45, 0x4D, 0xFF])
def test_unknown_or_host_only_types_are_protocol_errors(kind: int) -> None:
    with pytest.raises(ProtocolError, match="unknown frame type"):
        p.decode_guest_frame(kind, 1, b"")


@pytest.mark.parametrize("length", [0, 7, p.MAX_FRAME_LEN + 1, 0xFFFFFFFF])
def test_header_length_out_of_bounds_is_a_protocol_error(length: int) -> None:
    with pytest.raises(ProtocolError, match="frame length"):
        p.parse_header(p.HEADER.pack(length, int(T.STDOUT), 0, 0, 1))


def test_header_length_bounds_are_inclusive() -> None:
    assert p.parse_header(p.HEADER.pack(8, int(T.STDOUT), 0, 0, 1)) == (0, T.STDOUT, 1)
    assert p.parse_header(p.HEADER.pack(p.MAX_FRAME_LEN, int(T.STDOUT), 9, 9, 2)) == (p.MAX_BODY, T.STDOUT, 2)


def test_frame_refuses_a_body_over_max_body() -> None:
    assert len(p.frame(T.STDIN, 1, b"x" * p.MAX_BODY)) == p.HEADER.size + p.MAX_BODY
    with pytest.raises(ProtocolError):
        p.frame(T.STDIN, 1, b"x" * (p.MAX_BODY + 1))


def test_host_decoder_refuses_guest_types_and_bad_bodies() -> None:
    with pytest.raises(ProtocolError):
        decode_host_frame(int(T.READY), 0, b"")
    with pytest.raises(ProtocolError):
        decode_host_frame(0x7F, 0, b"")
    with pytest.raises(ProtocolError):
        decode_host_frame(int(T.ACK), 1, b"\0\0\0")
    with pytest.raises(ProtocolError):
        decode_host_frame(int(T.SHUTDOWN), 1, b"\0")


# ---------------------------------------------------------------- reading from a stream


async def test_read_frame_rejects_truncation_inside_a_frame() -> None:
    reader = asyncio.StreamReader()
    reader.feed_data(enc.started(1, 5)[:-1])
    reader.feed_eof()
    with pytest.raises(ProtocolError, match="inside a frame body"):
        await read_frame(reader)
    reader = asyncio.StreamReader()
    reader.feed_data(b"\0\0\0")
    reader.feed_eof()
    with pytest.raises(ProtocolError, match="inside a frame header"):
        await read_frame(reader)


async def test_read_frame_clean_eof_is_channel_closed() -> None:
    reader = asyncio.StreamReader()
    reader.feed_data(enc.pong(1, b"x"))
    reader.feed_eof()
    assert isinstance(await read_frame(reader), p.Pong)
    with pytest.raises(ChannelClosed):
        await read_frame(reader)


# ---------------------------------------------------------------- fuzzing


def _mutations(rng: random.Random, good: bytes) -> bytes:
    """A random body: pure noise, or a valid body with bytes flipped, cut or appended."""
    choice = rng.randrange(4)
    if choice == 0 or not good:
        return rng.randbytes(rng.randrange(0, 80))
    body = bytearray(good)
    if choice == 1:
        for _ in range(rng.randrange(1, 4)):
            body[rng.randrange(len(body))] = rng.randrange(256)
        return bytes(body)
    if choice == 2:
        return bytes(body[: rng.randrange(len(body))])
    return bytes(body) + rng.randbytes(rng.randrange(1, 8))


@pytest.mark.parametrize("name", sorted(GOOD_GUEST_FRAMES))
def test_fuzzed_guest_bodies_only_ever_raise_protocol_error(name: str) -> None:
    kind, fid, good = split(GOOD_GUEST_FRAMES[name])
    rng = random.Random(f"guest-{name}")
    for _ in range(3000):
        body = _mutations(rng, good)
        try:
            frame = p.decode_guest_frame(kind, rng.choice([0, fid, 0xFFFFFFFF]), body)
        except ProtocolError:
            continue
        assert isinstance(frame, p._Frame)  # anything else escaping is a bug


def test_fuzzed_types_and_bodies_only_ever_raise_protocol_error() -> None:
    rng = random.Random("any-type")
    for _ in range(5000):
        try:
            p.decode_guest_frame(rng.randrange(256), rng.randrange(1 << 32), rng.randbytes(rng.randrange(0, 48)))
        except ProtocolError:
            pass


@pytest.mark.parametrize("kind", [T.EXEC, T.RESIZE, T.SIGNAL, T.ACK, T.FILE_READ, T.FILE_WRITE, T.FILE_STAT])
def test_fuzzed_host_bodies_only_ever_raise_protocol_error(kind: T) -> None:
    good = p.encode_exec(argv=[b"a", b"bb"], env=[b"X=1"], cwd=b"/", tty=False, stdin=True, rows=1, cols=2,
                         timeout_ms=3, window=4) if kind == T.EXEC else p.encode_file_write(b"/p", 0o644, append=False, mkdirs=True)  # fmt: skip  # noqa: E501
    rng = random.Random(f"host-{kind.name}")
    for _ in range(2000):
        try:
            decode_host_frame(int(kind), 1, _mutations(rng, good))
        except ProtocolError:
            pass


async def test_fuzzed_streams_end_in_protocol_error_or_eof() -> None:
    rng = random.Random("stream")
    for _ in range(300):
        reader = asyncio.StreamReader()
        reader.feed_data(rng.randbytes(rng.randrange(0, 64)))
        reader.feed_eof()
        with pytest.raises((ProtocolError, ChannelClosed)):
            while True:
                await read_frame(reader)
