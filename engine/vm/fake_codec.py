"""The guest's half of the frame codec, in Python, for the fake guest and for tests.

:mod:`engine.vm.protocol` encodes what the host sends and decodes (defensively) what the
guest sends. This module does the mirror image, as the C agent does: it *encodes* guest →
host frames and *decodes* host → guest frames. The fake guest (:mod:`engine.vm.fake_guest`)
speaks through it, and the protocol tests use it to build round trips for every frame type.
"""

from __future__ import annotations

import re
import struct
from dataclasses import dataclass

from engine.errors import ProtocolError
from engine.vm.protocol import PROTOCOL_VERSION, T, _Reader, frame

# ---------------------------------------------------------------- encoding (guest → host)


def _b(data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + data


def ready(
    *, version: int = PROTOCOL_VERSION, agent_version: bytes = b"fake", timings: list[tuple[bytes, int]] | None = None
) -> bytes:
    """Return a whole READY frame (id 0).

    Args:
        version: the protocol version the guest claims.
        agent_version: free-form agent version string.
        timings: ``(name, CLOCK_BOOTTIME ns)`` boot points.
    """
    items = timings or []
    body = struct.pack(">I", version) + _b(agent_version) + struct.pack(">I", len(items))
    body += b"".join(_b(name) + struct.pack(">Q", ns) for name, ns in items)
    return frame(T.READY, 0, body)


def started(fid: int, pid: int) -> bytes:
    """Return a STARTED frame for request ``fid``."""
    return frame(T.STARTED, fid, struct.pack(">I", pid))


def output(fid: int, data: bytes, *, stderr: bool = False) -> bytes:
    """Return a STDOUT (or STDERR) frame."""
    return frame(T.STDERR if stderr else T.STDOUT, fid, data)


def exit_(fid: int, code: int, signal: int = 0, timed_out: bool = False) -> bytes:
    """Return an EXIT frame (``code=-1`` when killed by ``signal``).

    Values are packed as the C agent packs them (two's complement), not range-checked, so
    tests can send out-of-range ones.
    """
    return frame(T.EXIT, fid, struct.pack(">IIB", code & 0xFFFFFFFF, signal & 0xFFFFFFFF, int(timed_out)))


def file_data(fid: int, data: bytes) -> bytes:
    """Return a FILE_DATA frame."""
    return frame(T.FILE_DATA, fid, data)


def result(fid: int, errno: int = 0, message: bytes = b"") -> bytes:
    """Return a RESULT frame (errno 0 = success)."""
    return frame(T.RESULT, fid, struct.pack(">I", errno & 0xFFFFFFFF) + _b(message))


def stat_result(fid: int, *, mode: int, size: int, mtime_ns: int, uid: int, gid: int) -> bytes:
    """Return a STAT_RESULT frame."""
    return frame(T.STAT_RESULT, fid, struct.pack(">IQqII", mode, size, mtime_ns, uid, gid))


def list_body(entries: list[tuple[bytes, int, int, int]]) -> bytes:
    """Return a LIST_RESULT body of ``(name, mode, size, mtime_ns)`` entries."""
    out = struct.pack(">I", len(entries))
    return out + b"".join(_b(name) + struct.pack(">IQq", mode, size, mtime) for name, mode, size, mtime in entries)


def list_result(fid: int, entries: list[tuple[bytes, int, int, int]]) -> bytes:
    """Return a LIST_RESULT frame."""
    return frame(T.LIST_RESULT, fid, list_body(entries))


METRICS_FIELDS = struct.Struct(">QQIIQQQQQI")
"""cpu_busy_ticks, cpu_total_ticks, clk_tck, ncpus, mem_total_kib, mem_available_kib,
disk_used_bytes, disk_total_bytes, uptime_ms, nprocs."""


def metrics_result(fid: int, *values: int) -> bytes:
    """Return a METRICS_RESULT frame; ``values`` in :data:`METRICS_FIELDS` order."""
    return frame(T.METRICS_RESULT, fid, METRICS_FIELDS.pack(*values))


def pong(fid: int, data: bytes) -> bytes:
    """Return a PONG frame."""
    return frame(T.PONG, fid, data)


def log(message: bytes) -> bytes:
    """Return a LOG frame (id 0)."""
    return frame(T.LOG, 0, _b(message))


def held(*, version: int = PROTOCOL_VERSION, agent_version: bytes = b"fake", stage: bytes = b"root") -> bytes:
    """Return a whole HELD frame (id 0): a template boot waiting for RESUME at ``stage``."""
    return frame(T.HELD, 0, struct.pack(">I", version) + _b(agent_version) + _b(stage))


# ---------------------------------------------------------------- decoding (host → guest)


@dataclass(frozen=True)
class ExecReq:
    """A decoded EXEC body."""

    tty: bool
    stdin: bool
    rows: int
    cols: int
    timeout_ms: int
    window: int
    uid: int
    gid: int
    argv: list[bytes]
    env: list[bytes]
    cwd: bytes


@dataclass(frozen=True)
class HostFrame:
    """A decoded host → guest frame.

    Only the fields that belong to ``kind`` are set: ``data`` (STDIN, FILE_DATA, PING),
    ``exec`` (EXEC), ``rows``/``cols`` (RESIZE), ``signo``/``group`` (SIGNAL), ``count``
    (ACK), ``max_bytes``/``path`` (FILE_READ), ``mode``/``flags``/``path`` (FILE_WRITE),
    ``path`` (FILE_STAT, FILE_LIST), ``entropy``/``realtime_ns``/``hostname`` (IDENTITY),
    ``params`` (RESUME). Only the structure is checked here; what the values may be (entropy
    and hostname lengths, a NUL in ``params``) is the guest's to judge.
    """

    kind: T
    id: int
    data: bytes = b""
    exec: ExecReq | None = None
    rows: int = 0
    cols: int = 0
    signo: int = 0
    group: bool = False
    count: int = 0
    max_bytes: int = 0
    mode: int = 0
    flags: int = 0
    path: bytes = b""
    entropy: bytes = b""
    realtime_ns: int = 0
    hostname: bytes = b""
    params: bytes = b""


_RAW = {T.STDIN, T.FILE_DATA, T.PING}
_EMPTY = {T.STDIN_EOF, T.FILE_CLOSE, T.METRICS, T.SHUTDOWN}


def _strings(r: _Reader) -> list[bytes]:
    return [r.bytes_() for _ in range(r.count(4))]


def _decode_exec(r: _Reader) -> ExecReq:
    tty, stdin = r.u8(), r.u8()
    rows, cols = struct.unpack(">HH", r.take(4))
    timeout_ms, window, uid, gid = r.u32(), r.u32(), r.u32(), r.u32()
    argv, env, cwd = _strings(r), _strings(r), r.bytes_()
    return ExecReq(bool(tty), bool(stdin), rows, cols, timeout_ms, window, uid, gid, argv, env, cwd)


def decode_host_frame(kind: int, fid: int, body: bytes) -> HostFrame:
    """Decode one host → guest frame, as strictly as the C agent does.

    Args:
        kind: the frame's type byte.
        fid: the frame's id.
        body: the frame's body.

    Returns:
        The decoded frame.

    Raises:
        ProtocolError: unknown type, truncated body or trailing bytes.
    """
    try:
        t = T(kind)
    except ValueError:
        raise ProtocolError(f"unknown frame type 0x{kind:02x} from host") from None
    if t in _RAW:
        return HostFrame(t, fid, data=body)
    r = _Reader(body)
    out = HostFrame(t, fid)
    if t == T.EXEC:
        out = HostFrame(t, fid, exec=_decode_exec(r))
    elif t == T.RESIZE:
        rows, cols = struct.unpack(">HH", r.take(4))
        out = HostFrame(t, fid, rows=rows, cols=cols)
    elif t == T.SIGNAL:
        out = HostFrame(t, fid, signo=r.u32(), group=bool(r.u8()))
    elif t == T.ACK:
        out = HostFrame(t, fid, count=r.u32())
    elif t == T.FILE_READ:
        out = HostFrame(t, fid, max_bytes=r.u64(), path=r.bytes_())
    elif t == T.FILE_WRITE:
        out = HostFrame(t, fid, mode=r.u32(), flags=r.u8(), path=r.bytes_())
    elif t in (T.FILE_STAT, T.FILE_LIST):
        out = HostFrame(t, fid, path=r.bytes_())
    elif t == T.IDENTITY:
        out = HostFrame(t, fid, entropy=r.bytes_(), realtime_ns=r.u64(), hostname=r.bytes_())
    elif t == T.RESUME:
        out = HostFrame(t, fid, params=r.bytes_())
    elif t not in _EMPTY:
        raise ProtocolError(f"frame type 0x{kind:02x} is not sent by the host")
    r.done()
    return out


_HOSTNAME = re.compile(rb"[A-Za-z0-9._-]{1,64}")


def identity_problem(f: HostFrame) -> str | None:
    """What the C agent (identity.c) finds wrong with a decoded IDENTITY, or None.

    Checked in its order: entropy of 32–512 bytes, a hostname of 1–64 ``[A-Za-z0-9._-]``, a
    request id other than 0.
    """
    if not 32 <= len(f.entropy) <= 512:
        return "entropy must be 32-512 bytes"
    if not _HOSTNAME.fullmatch(f.hostname):
        return "hostname must be 1-64 of [A-Za-z0-9._-]"
    if not f.id:
        return "request id 0"
    return None
