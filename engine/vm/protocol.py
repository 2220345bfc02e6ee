"""Frame codec for the host ↔ guest protocol (see ``docs/protocol.md``).

The guest is hostile: :func:`decode_guest_frame` reads guest bodies with a bounds-checked
reader, requires exact consumption, and returns a validated pydantic model. Anything else
raises :class:`~engine.errors.ProtocolError`, after which the caller drops the VM.
"""

from __future__ import annotations

import enum
import struct
from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

from engine.errors import ProtocolError

PROTOCOL_VERSION = 1
HEADER = struct.Struct(">IBBHI")  # len, type, flags, reserved, id
MAX_BODY = 1 << 20
"""Largest body either side may send, in bytes."""
MAX_FRAME_LEN = 8 + MAX_BODY
CHUNK = 64 * 1024
"""Largest data chunk the host sends in one frame (stdin, file data), in bytes."""
NO_ID = 0xFFFFFFFF
"""``uid``/``gid`` value meaning "keep root"."""


class T(enum.IntEnum):
    """Frame types."""

    EXEC = 0x01
    STDIN = 0x02
    STDIN_EOF = 0x03
    RESIZE = 0x04
    SIGNAL = 0x05
    ACK = 0x06
    FILE_READ = 0x10
    FILE_WRITE = 0x11
    FILE_DATA = 0x12
    FILE_CLOSE = 0x13
    FILE_STAT = 0x14
    FILE_LIST = 0x15
    METRICS = 0x20
    SHUTDOWN = 0x21
    PING = 0x22
    IDENTITY = 0x23
    RESUME = 0x24
    READY = 0x40
    STARTED = 0x41
    STDOUT = 0x42
    STDERR = 0x43
    EXIT = 0x44
    RESULT = 0x46
    STAT_RESULT = 0x47
    LIST_RESULT = 0x48
    METRICS_RESULT = 0x49
    PONG = 0x4A
    LOG = 0x4B
    HELD = 0x4C


# ---------------------------------------------------------------- encoding (host → guest)


def frame(kind: T, fid: int, body: bytes = b"") -> bytes:
    """Return one complete frame.

    Args:
        kind: the frame type.
        fid: the request id (0 … 2**32-1).
        body: the encoded body, at most :data:`MAX_BODY` bytes.

    Raises:
        ProtocolError: the body is too large.
    """
    if len(body) > MAX_BODY:
        raise ProtocolError(f"frame body of {len(body)} bytes exceeds {MAX_BODY}")
    return HEADER.pack(8 + len(body), int(kind), 0, 0, fid) + body


def _b(data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + data


def _list(items: list[bytes]) -> bytes:
    return struct.pack(">I", len(items)) + b"".join(_b(i) for i in items)


def encode_exec(
    *,
    argv: list[bytes],
    env: list[bytes],
    cwd: bytes,
    tty: bool,
    stdin: bool,
    rows: int,
    cols: int,
    timeout_ms: int,
    window: int,
    uid: int = NO_ID,
    gid: int = NO_ID,
) -> bytes:
    """Encode an EXEC body (see the protocol doc for the meaning of each field)."""
    head = struct.pack(">BBHHIIII", int(tty), int(stdin), rows, cols, timeout_ms, window, uid, gid)
    return head + _list(argv) + _list(env) + _b(cwd)


def encode_file_read(path: bytes, max_bytes: int) -> bytes:
    """Encode a FILE_READ body."""
    return struct.pack(">Q", max_bytes) + _b(path)


def encode_file_write(path: bytes, mode: int, *, append: bool, mkdirs: bool) -> bytes:
    """Encode a FILE_WRITE body."""
    flags = (1 if append else 0) | (2 if mkdirs else 0)
    return struct.pack(">IB", mode, flags) + _b(path)


def encode_identity(entropy: bytes, realtime_ns: int, hostname: str) -> bytes:
    """Encode an IDENTITY body: fresh entropy (32–512 bytes), the wall clock, the hostname."""
    if not 32 <= len(entropy) <= 512:
        raise ProtocolError("IDENTITY entropy must be 32-512 bytes")
    return _b(entropy) + struct.pack(">Q", realtime_ns) + _b(hostname.encode())


def encode_resume(params: str) -> bytes:
    """Encode a RESUME body: the ``msb.*`` boot words of the restored sandbox."""
    return _b(params.encode())


# ---------------------------------------------------------------- decoding (guest → host)


class _Reader:
    """Bounds-checked reader over an untrusted body."""

    __slots__ = ("buf", "pos")

    def __init__(self, buf: bytes) -> None:
        self.buf = buf
        self.pos = 0

    def take(self, n: int) -> bytes:
        end = self.pos + n
        if n < 0 or end > len(self.buf):
            raise ProtocolError("truncated frame body")
        out = self.buf[self.pos : end]
        self.pos = end
        return out

    def u8(self) -> int:
        return self.take(1)[0]

    def u32(self) -> int:
        return int(struct.unpack(">I", self.take(4))[0])

    def i32(self) -> int:
        return int(struct.unpack(">i", self.take(4))[0])

    def u64(self) -> int:
        return int(struct.unpack(">Q", self.take(8))[0])

    def i64(self) -> int:
        return int(struct.unpack(">q", self.take(8))[0])

    def bytes_(self, limit: int = MAX_BODY) -> bytes:
        n = self.u32()
        if n > limit:
            raise ProtocolError(f"string of {n} bytes exceeds {limit}")
        return self.take(n)

    def count(self, min_item: int) -> int:
        n = self.u32()
        # Every item takes at least min_item bytes, so a huge count is a lie we can spot early.
        if n * min_item > len(self.buf) - self.pos:
            raise ProtocolError(f"list count {n} does not fit the frame")
        return n

    def done(self) -> None:
        if self.pos != len(self.buf):
            raise ProtocolError(f"{len(self.buf) - self.pos} trailing bytes in frame body")


class _Frame(BaseModel):
    model_config = ConfigDict(frozen=True)
    id: int = Field(ge=0, le=0xFFFFFFFF)


class Ready(_Frame):
    """The agent is up: root mounted, channel open."""

    kind: Literal["ready"] = "ready"
    version: int
    agent_version: str = Field(max_length=256)
    timings_ns: dict[str, int]
    """Named ``CLOCK_BOOTTIME`` points of the guest boot, in nanoseconds."""


class Held(_Frame):
    """A template boot stopped at its stage and waits for RESUME (the host saves it now)."""

    kind: Literal["held"] = "held"
    version: int
    agent_version: str = Field(max_length=256)
    stage: Literal["root"]


class Started(_Frame):
    kind: Literal["started"] = "started"
    pid: int = Field(ge=1)


class Output(_Frame):
    kind: Literal["output"] = "output"
    stream: Literal["stdout", "stderr"]
    data: bytes


class Exit(_Frame):
    kind: Literal["exit"] = "exit"
    code: int = Field(ge=-1, le=255)
    """Exit status, or -1 when the process was killed by ``signal``."""
    signal: int = Field(ge=0, le=128)
    timed_out: bool


class FileData(_Frame):
    kind: Literal["file_data"] = "file_data"
    data: bytes


class Result(_Frame):
    kind: Literal["result"] = "result"
    errno: int = Field(ge=0, le=4095)
    message: str = Field(max_length=4096)


class StatResult(_Frame):
    kind: Literal["stat"] = "stat"
    mode: int = Field(ge=0, le=0xFFFFFFFF)
    size: int = Field(ge=0)
    """Bytes."""
    mtime_ns: int
    uid: int = Field(ge=0)
    gid: int = Field(ge=0)


class ListEntry(BaseModel):
    model_config = ConfigDict(frozen=True)
    name: str = Field(min_length=1, max_length=255)
    """One path component: never ``.``, ``..``, or anything holding ``/`` or NUL (callers
    join it to the listed directory)."""
    mode: int
    size: int = Field(ge=0)
    """Bytes."""
    mtime_ns: int

    @field_validator("name")
    @classmethod
    def _one_component(cls, v: str) -> str:
        if v in (".", "..") or "/" in v or "\0" in v:
            raise ValueError("a directory entry name must be one path component")
        return v


class ListResult(_Frame):
    kind: Literal["list"] = "list"
    entries: list[ListEntry]


class MetricsResult(_Frame):
    kind: Literal["metrics"] = "metrics"
    cpu_busy_ticks: int = Field(ge=0)
    cpu_total_ticks: int = Field(ge=0)
    clk_tck: int = Field(ge=1, le=100_000)
    ncpus: int = Field(ge=1, le=1024)
    mem_total_kib: int = Field(ge=0)
    mem_available_kib: int = Field(ge=0)
    disk_used_bytes: int = Field(ge=0)
    disk_total_bytes: int = Field(ge=0)
    uptime_ms: int = Field(ge=0)
    nprocs: int = Field(ge=0)


class Pong(_Frame):
    kind: Literal["pong"] = "pong"
    data: bytes


class Log(_Frame):
    kind: Literal["log"] = "log"
    message: str


GuestFrame = Annotated[
    Ready | Held | Started | Output | Exit | FileData | Result | StatResult | ListResult | MetricsResult | Pong | Log,
    Field(discriminator="kind"),
]


def _text(raw: bytes, limit: int) -> str:
    return raw[:limit].decode("utf-8", "replace")


def _decode_ready(fid: int, r: _Reader) -> Ready:
    version = r.u32()
    agent_version = _text(r.bytes_(256), 256)
    timings: dict[str, int] = {}
    for _ in range(r.count(12)):
        name = _text(r.bytes_(64), 64)
        timings[name] = r.u64()
    return Ready(id=fid, version=version, agent_version=agent_version, timings_ns=timings)


def _decode_list(fid: int, r: _Reader) -> ListResult:
    entries = []
    for _ in range(r.count(24)):
        name = r.bytes_(255)
        entries.append(
            ListEntry(
                # Not "surrogateescape": pydantic refuses lone surrogates, and a file name
                # that is not UTF-8 must not cost the sandbox its channel.
                name=name.decode("utf-8", "replace"),
                mode=r.u32(),
                size=r.u64(),
                mtime_ns=r.i64(),
            )
        )
    return ListResult(id=fid, entries=entries)


def _decode_metrics(fid: int, r: _Reader) -> MetricsResult:
    return MetricsResult(
        id=fid,
        cpu_busy_ticks=r.u64(),
        cpu_total_ticks=r.u64(),
        clk_tck=r.u32(),
        ncpus=r.u32(),
        mem_total_kib=r.u64(),
        mem_available_kib=r.u64(),
        disk_used_bytes=r.u64(),
        disk_total_bytes=r.u64(),
        uptime_ms=r.u64(),
        nprocs=r.u32(),
    )


def decode_guest_frame(kind: int, fid: int, body: bytes) -> GuestFrame:
    """Decode and validate one frame from the guest.

    Args:
        kind: the frame's type byte.
        fid: the frame's id.
        body: the frame's body (already bounded by the reader).

    Returns:
        The validated frame model.

    Raises:
        ProtocolError: unknown type, truncated/over-long body, or values out of range.
    """
    from pydantic import ValidationError

    r = _Reader(body)
    try:
        out: GuestFrame
        if kind in (T.STDOUT, T.STDERR):
            return Output(id=fid, stream="stdout" if kind == T.STDOUT else "stderr", data=body)
        if kind == T.FILE_DATA:
            return FileData(id=fid, data=body)
        if kind == T.PONG:
            return Pong(id=fid, data=body)
        if kind == T.EXIT:
            out = Exit(id=fid, code=r.i32(), signal=r.i32(), timed_out=bool(r.u8()))
        elif kind == T.STARTED:
            out = Started(id=fid, pid=r.u32())
        elif kind == T.RESULT:
            out = Result(id=fid, errno=r.i32(), message=_text(r.bytes_(4096), 4096))
        elif kind == T.STAT_RESULT:
            out = StatResult(id=fid, mode=r.u32(), size=r.u64(), mtime_ns=r.i64(), uid=r.u32(), gid=r.u32())
        elif kind == T.LIST_RESULT:
            out = _decode_list(fid, r)
        elif kind == T.METRICS_RESULT:
            out = _decode_metrics(fid, r)
        elif kind == T.READY:
            out = _decode_ready(fid, r)
        elif kind == T.HELD:
            out = Held(id=fid, version=r.u32(), agent_version=_text(r.bytes_(256), 256),
                       stage=_text(r.bytes_(16), 16))  # type: ignore[arg-type]  # fmt: skip
        elif kind == T.LOG:
            out = Log(id=fid, message=_text(r.bytes_(), 1024))
        else:
            raise ProtocolError(f"unknown frame type 0x{kind:02x} from guest")
        r.done()
        return out
    except ValidationError as exc:
        raise ProtocolError(f"invalid frame 0x{kind:02x} from guest: {exc.errors()[0]['msg']}") from None


def parse_header(header: bytes) -> tuple[int, int, int]:
    """Parse an 8+4-byte header; return ``(body_len, type, id)``.

    Raises:
        ProtocolError: the length is outside ``8 … 8 + MAX_BODY``.
    """
    length, kind, _flags, _res, fid = HEADER.unpack(header)
    if length < 8 or length > MAX_FRAME_LEN:
        raise ProtocolError(f"frame length {length} outside 8..{MAX_FRAME_LEN}")
    return length - 8, kind, fid
