"""Host-side smoke tests of the real guest agent, without a VM.

`msb-agent --serve-stdio` speaks the protocol of docs/protocol.md over its stdin/stdout, so
these tests drive it with raw frames (a tiny encoder/decoder lives in this file on purpose:
it checks the agent against the document, not against engine/vm/protocol.py).

Build the agent first: `make -C engine/guest/agent` (or set MSB_AGENT to the binary).
"""

from __future__ import annotations

import asyncio
import errno
import os
import socket
import stat
import struct
import subprocess
import time
from pathlib import Path

import pytest

AGENT = Path(os.environ.get("MSB_AGENT", Path.home() / ".cache/msb/agent/msb-agent"))

pytestmark = pytest.mark.skipif(
    not (AGENT.is_file() and os.access(AGENT, os.X_OK)),
    reason=f"guest agent not built at {AGENT}: run `make -C engine/guest/agent`",
)

MAX_BODY = 1 << 20
KEEP = 0xFFFFFFFF

# host -> guest
EXEC, STDIN, STDIN_EOF, RESIZE, SIGNAL, ACK = 0x01, 0x02, 0x03, 0x04, 0x05, 0x06
FILE_READ, FILE_WRITE, FILE_DATA, FILE_CLOSE, FILE_STAT, FILE_LIST = 0x10, 0x11, 0x12, 0x13, 0x14, 0x15
METRICS, SHUTDOWN, PING, IDENTITY, RESUME = 0x20, 0x21, 0x22, 0x23, 0x24
# guest -> host
READY, STARTED, STDOUT, STDERR, EXIT = 0x40, 0x41, 0x42, 0x43, 0x44
RESULT, STAT_RESULT, LIST_RESULT, METRICS_RESULT, PONG, LOG, HELD = 0x46, 0x47, 0x48, 0x49, 0x4A, 0x4B, 0x4C


# ---- encoding ----


def frame(type_: int, id_: int, body: bytes = b"") -> bytes:
    return struct.pack(">IBBHI", 8 + len(body), type_, 0, 0, id_) + body


def bts(x: bytes | str) -> bytes:
    if isinstance(x, str):
        x = x.encode()
    return struct.pack(">I", len(x)) + x


def lst(items: list[bytes]) -> bytes:
    return struct.pack(">I", len(items)) + b"".join(items)


def exec_body(
    argv, *, tty=0, stdin=0, rows=24, cols=80, timeout_ms=0, window=1 << 20, uid=KEEP, gid=KEEP, env=None, cwd=""
) -> bytes:
    if env is None:
        env = ["PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"]
    return (
        struct.pack(">BBHHIIII", tty, stdin, rows, cols, timeout_ms, window, uid, gid)
        + lst([bts(a) for a in argv])
        + lst([bts(e) for e in env])
        + bts(cwd)
    )


class Body:
    """Bounds-checked decoder; done() asserts the body was consumed exactly."""

    def __init__(self, data: bytes):
        self.d, self.o = data, 0

    def take(self, n: int) -> bytes:
        assert self.o + n <= len(self.d), "body too short"
        v = self.d[self.o : self.o + n]
        self.o += n
        return v

    def u8(self):
        return self.take(1)[0]

    def u32(self):
        return struct.unpack(">I", self.take(4))[0]

    def i32(self):
        return struct.unpack(">i", self.take(4))[0]

    def u64(self):
        return struct.unpack(">Q", self.take(8))[0]

    def i64(self):
        return struct.unpack(">q", self.take(8))[0]

    def bytes(self):
        return self.take(self.u32())

    def done(self):
        assert self.o == len(self.d), "trailing bytes"


# ---- agent process ----


class Agent:
    def __init__(self, proc: asyncio.subprocess.Process):
        self.proc = proc
        self.logs: list[str] = []

    @classmethod
    async def start(cls) -> Agent:
        proc = await asyncio.create_subprocess_exec(
            str(AGENT), "--serve-stdio", stdin=subprocess.PIPE, stdout=subprocess.PIPE
        )
        return cls(proc)

    def send(self, type_: int, id_: int, body: bytes = b"") -> None:
        self.proc.stdin.write(frame(type_, id_, body))

    def send_raw(self, data: bytes) -> None:
        self.proc.stdin.write(data)

    async def recv_any(self, timeout: float = 10.0) -> tuple[int, int, bytes]:
        async def read():
            (n,) = struct.unpack(">I", await self.proc.stdout.readexactly(4))
            assert 8 <= n <= 8 + MAX_BODY, f"bad frame length {n}"
            rest = await self.proc.stdout.readexactly(n)
            type_, flags, reserved, id_ = struct.unpack(">BBHI", rest[:8])
            assert flags == 0 and reserved == 0
            return type_, id_, rest[8:]

        return await asyncio.wait_for(read(), timeout)

    async def recv(self, timeout: float = 10.0) -> tuple[int, int, bytes]:
        """Next frame that is not a LOG (LOGs are collected in self.logs)."""
        while True:
            t, i, b = await self.recv_any(timeout)
            if t != LOG:
                return t, i, b
            body = Body(b)
            self.logs.append(body.bytes().decode())
            body.done()

    async def expect(self, type_: int, id_: int, timeout: float = 10.0) -> Body:
        t, i, b = await self.recv(timeout)
        assert (t, i) == (type_, id_), f"expected {type_:#x}/{id_}, got {t:#x}/{i}: {b[:200]!r}"
        return Body(b)

    async def expect_result(self, id_: int, timeout: float = 10.0) -> tuple[int, str]:
        body = await self.expect(RESULT, id_, timeout)
        err, msg = body.i32(), body.bytes().decode()
        body.done()
        return err, msg

    async def ping(self, id_: int, data: bytes = b"ping") -> None:
        self.send(PING, id_, data)
        body = await self.expect(PONG, id_)
        assert body.take(len(data)) == data
        body.done()

    async def shutdown(self) -> None:
        self.send(SHUTDOWN, 0)
        await self.proc.stdin.drain()
        assert await asyncio.wait_for(self.proc.wait(), 10) == 0

    def kill(self) -> None:
        if self.proc.returncode is None:
            self.proc.kill()


class ExecResult:
    def __init__(self):
        self.pid = 0
        self.stdout = bytearray()
        self.stderr = bytearray()
        self.code = self.signal = self.timed_out = None
        self.max_unacked = 0


async def run_exec(
    agent: Agent,
    id_: int,
    argv,
    *,
    stdin_data: bytes | None = None,
    window: int = 1 << 20,
    ack: bool = True,
    timeout: float = 10.0,
    **kw,
) -> ExecResult:
    """EXEC, feed stdin, collect output (ACKing it) until EXIT, checking flow control."""
    agent.send(EXEC, id_, exec_body(argv, window=window, stdin=int(stdin_data is not None), **kw))
    r = ExecResult()
    body = await agent.expect(STARTED, id_, timeout)
    r.pid = body.u32()
    body.done()
    if stdin_data is not None:
        if stdin_data:
            agent.send(STDIN, id_, stdin_data)
        agent.send(STDIN_EOF, id_)
    unacked = 0
    while True:
        t, i, b = await agent.recv(timeout)
        assert i == id_, f"frame {t:#x} for id {i}"
        if t in (STDOUT, STDERR):
            assert 0 < len(b) <= 65536
            unacked += len(b)
            r.max_unacked = max(r.max_unacked, unacked)
            assert unacked <= window, f"agent exceeded the window: {unacked} > {window}"
            if t == STDOUT:
                r.stdout += b
            else:
                r.stderr += b
            if ack:
                agent.send(ACK, id_, struct.pack(">I", len(b)))
                unacked -= len(b)
        elif t == EXIT:
            body = Body(b)
            r.code, r.signal, r.timed_out = body.i32(), body.i32(), body.u8()
            body.done()
            return r
        else:
            raise AssertionError(f"unexpected frame {t:#x}: {b[:200]!r}")


def agent_test(fn):
    """Runs an async test with a fresh agent, in its own event loop (no pytest-asyncio needed)."""

    def wrapper():
        async def main():
            agent = await Agent.start()
            try:
                body = await agent.expect(READY, 0)
                assert body.u32() == 1
                assert body.bytes()
                for _ in range(body.u32()):
                    body.bytes()
                    body.u64()
                body.done()
                await asyncio.wait_for(fn(agent), 60)
                await agent.shutdown()
            finally:
                agent.kill()
                await agent.proc.wait()

        asyncio.run(main())

    # No functools.wraps: pytest would read the wrapped signature and look for an `agent` fixture.
    wrapper.__name__ = fn.__name__
    wrapper.__doc__ = fn.__doc__
    return wrapper


async def wait_until(pred, timeout: float = 5.0, what: str = "condition") -> None:
    deadline = time.monotonic() + timeout
    while not pred():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        await asyncio.sleep(0.02)


def pgrep(pattern: str) -> list[str]:
    p = subprocess.run(["pgrep", "-f", pattern], capture_output=True, text=True)
    return p.stdout.split()


# ---- tests ----


def test_ready():
    async def main():
        agent = await Agent.start()
        try:
            body = await agent.expect(READY, 0)
            assert body.u32() == 1
            version = body.bytes().decode()
            assert version
            timings = {body.bytes().decode(): body.u64() for _ in range(body.u32())}
            body.done()
            assert set(timings) == {"init", "modules", "root", "ready"}
            assert timings["init"] <= timings["ready"]
            await agent.shutdown()
        finally:
            agent.kill()

    asyncio.run(main())


@agent_test
async def test_echo(agent):
    r = await run_exec(agent, 1, ["echo", "hi"])
    assert (r.stdout, r.stderr, r.code, r.signal, r.timed_out) == (b"hi\n", b"", 0, 0, 0)
    assert r.pid > 0


@agent_test
async def test_exit_code_and_stderr_apart(agent):
    r = await run_exec(agent, 1, ["sh", "-c", "exit 3"])
    assert (r.code, r.signal, r.timed_out) == (3, 0, 0)
    r = await run_exec(agent, 2, ["sh", "-c", "echo out; echo err >&2; echo out2"])
    assert (r.stdout, r.stderr, r.code) == (b"out\nout2\n", b"err\n", 0)


@agent_test
async def test_stdin_to_cat(agent):
    data = b"hello\n" + bytes(range(256)) * 1000
    r = await run_exec(agent, 1, ["cat"], stdin_data=data)
    assert r.stdout == data and r.code == 0
    r = await run_exec(agent, 2, ["cat"], stdin_data=b"")
    assert r.stdout == b"" and r.code == 0
    # more than any pipe holds, in many frames: exercises the agent's pending-stdin buffer
    agent.send(EXEC, 4, exec_body(["wc", "-c"], stdin=1))
    await agent.expect(STARTED, 4)
    for _ in range(48):
        agent.send(STDIN, 4, b"x" * 65536)
    agent.send(STDIN_EOF, 4)
    body = await agent.expect(STDOUT, 4)
    assert int(body.take(len(body.d))) == 48 * 65536
    body = await agent.expect(EXIT, 4)
    assert body.i32() == 0
    # stdin=0 is /dev/null: cat ends at once
    r = await run_exec(agent, 3, ["cat"])
    assert r.stdout == b"" and r.code == 0


@agent_test
async def test_cwd_env_and_path_from_env(agent):
    import tempfile

    with tempfile.TemporaryDirectory() as d:
        r = await run_exec(agent, 1, ["sh", "-c", 'pwd; echo "$FOO"'], cwd=d, env=["PATH=/usr/bin:/bin", "FOO=bar"])
        assert r.stdout == f"{os.path.realpath(d)}\n".encode() + b"bar\n"
        # PATH is taken from the exec's env; a script without #! runs under /bin/sh
        script = Path(d, "myscript")
        script.write_text("echo from-script $1\n")
        script.chmod(0o755)
        r = await run_exec(agent, 2, ["myscript", "x"], env=[f"PATH=/nonexistent:{d}"])
        assert (r.stdout, r.code) == (b"from-script x\n", 0)


@agent_test
async def test_exec_errors(agent):
    agent.send(EXEC, 1, exec_body(["definitely-not-a-command-xyz"]))
    err, msg = await agent.expect_result(1)
    assert err == errno.ENOENT and msg
    agent.send(EXEC, 2, exec_body(["true"], cwd="/nonexistent-dir-xyz"))
    err, _ = await agent.expect_result(2)
    assert err == errno.ENOENT
    agent.send(EXEC, 3, exec_body([]))
    err, _ = await agent.expect_result(3)
    assert err == errno.EINVAL
    await agent.ping(4)


@agent_test
async def test_timeout_kills_group(agent):
    marker = "sleep 3077"
    start = time.monotonic()
    r = await run_exec(agent, 1, ["sh", "-c", f"{marker} & {marker}"], timeout_ms=500)
    assert time.monotonic() - start < 5
    assert (r.code, r.signal, r.timed_out) == (-1, 9, 1)
    await wait_until(lambda: not pgrep(marker), what=f"no '{marker}' left")


@agent_test
async def test_signal(agent):
    agent.send(EXEC, 1, exec_body(["sleep", "3079"]))
    await agent.expect(STARTED, 1)
    agent.send(SIGNAL, 1, struct.pack(">IB", 15, 1))
    body = await agent.expect(EXIT, 1)
    assert (body.i32(), body.i32(), body.u8()) == (-1, 15, 0)
    body.done()


@agent_test
async def test_exit_does_not_wait_for_background(agent):
    # The background subshell keeps stdout open for 3 s; EXIT must not wait for it.
    start = time.monotonic()
    r = await run_exec(agent, 1, ["sh", "-c", "(sleep 3; echo late) & echo early"])
    assert r.stdout == b"early\n" and r.code == 0
    assert time.monotonic() - start < 2.5


@agent_test
async def test_tty_size_and_resize(agent):
    r = await run_exec(agent, 1, ["stty", "size"], tty=1, rows=33, cols=101)
    assert r.stdout == b"33 101\r\n" and r.code == 0
    # RESIZE while running, then read the new size; STDIN goes through the tty
    agent.send(EXEC, 2, exec_body(["sh", "-c", "read x; stty size; echo got $x"], tty=1, stdin=1, rows=10, cols=20))
    await agent.expect(STARTED, 2)
    agent.send(RESIZE, 2, struct.pack(">HH", 40, 120))
    agent.send(STDIN, 2, b"abc\n")
    out = b""
    while True:
        t, _, b = await agent.recv()
        if t == STDOUT:
            out += b
            agent.send(ACK, 2, struct.pack(">I", len(b)))
        else:
            assert t == EXIT
            break
    assert b"40 120\r\n" in out and b"got abc" in out


@agent_test
async def test_tty_stdin_eof(agent):
    r = await run_exec(agent, 1, ["cat"], tty=1, stdin_data=b"line\n")
    assert r.code == 0, (r.code, r.signal, bytes(r.stdout))
    assert r.stdout.count(b"line") == 2  # echo + cat's output


@agent_test
async def test_files_roundtrip(agent):
    import tempfile

    with tempfile.TemporaryDirectory() as d:
        path = f"{d}/sub/dir/file.bin"
        data = os.urandom(200_000)
        agent.send(FILE_WRITE, 1, struct.pack(">IB", 0o640, 2) + bts(path))
        for off in range(0, len(data), 65536):
            agent.send(FILE_DATA, 1, data[off : off + 65536])
        agent.send(FILE_CLOSE, 1)
        assert (await agent.expect_result(1))[0] == 0
        assert Path(path).read_bytes() == data
        assert stat.S_IMODE(os.stat(path).st_mode) == 0o640

        # append
        agent.send(FILE_WRITE, 2, struct.pack(">IB", 0o600, 1) + bts(path))
        agent.send(FILE_DATA, 2, b"tail")
        agent.send(FILE_CLOSE, 2)
        assert (await agent.expect_result(2))[0] == 0
        data += b"tail"

        agent.send(FILE_READ, 3, struct.pack(">Q", 1 << 30) + bts(path))
        got = b""
        while True:
            t, i, b = await agent.recv()
            assert i == 3
            if t == FILE_DATA:
                assert len(b) <= 65536
                got += b
            else:
                assert t == RESULT
                body = Body(b)
                assert body.i32() == 0
                break
        assert got == data

        # max_bytes shorter than the file: that many bytes, then EFBIG
        agent.send(FILE_READ, 4, struct.pack(">Q", 100) + bts(path))
        body = await agent.expect(FILE_DATA, 4)
        assert body.take(100) == data[:100]
        assert (await agent.expect_result(4))[0] == errno.EFBIG

        agent.send(FILE_STAT, 5, bts(path))
        body = await agent.expect(STAT_RESULT, 5)
        mode, size, mtime_ns, uid, gid = body.u32(), body.u64(), body.i64(), body.u32(), body.u32()
        body.done()
        st = os.stat(path)
        assert (mode, size, mtime_ns, uid, gid) == (st.st_mode, len(data), st.st_mtime_ns, st.st_uid, st.st_gid)

        os.symlink("file.bin", f"{d}/sub/dir/link")
        os.mkdir(f"{d}/sub/dir/child")
        agent.send(FILE_LIST, 6, bts(f"{d}/sub/dir"))
        entries = {}
        while True:
            t, i, b = await agent.recv()
            assert i == 6
            if t == RESULT:
                assert Body(b).i32() == 0
                break
            assert t == LIST_RESULT
            body = Body(b)
            for _ in range(body.u32()):
                name = body.bytes().decode()
                entries[name] = (body.u32(), body.u64(), body.i64())
            body.done()
        assert set(entries) == {"file.bin", "link", "child"}
        assert stat.S_ISREG(entries["file.bin"][0]) and entries["file.bin"][1] == len(data)
        assert stat.S_ISLNK(entries["link"][0]) and stat.S_ISDIR(entries["child"][0])

        # errors: stat/list/read of a missing path; write into a missing dir without flag 2
        agent.send(FILE_STAT, 7, bts(f"{d}/missing"))
        assert (await agent.expect_result(7))[0] == errno.ENOENT
        agent.send(FILE_LIST, 8, bts(f"{d}/missing"))
        assert (await agent.expect_result(8))[0] == errno.ENOENT
        agent.send(FILE_READ, 9, struct.pack(">Q", 10) + bts(f"{d}/missing"))
        assert (await agent.expect_result(9))[0] == errno.ENOENT
        agent.send(FILE_WRITE, 10, struct.pack(">IB", 0o644, 0) + bts(f"{d}/nodir/x"))
        assert (await agent.expect_result(10))[0] == errno.ENOENT
        agent.send(FILE_DATA, 10, b"ignored")
        agent.send(FILE_CLOSE, 10)
        await agent.ping(11)  # no second RESULT for id 10 came before the PONG


@agent_test
async def test_metrics(agent):
    agent.send(METRICS, 1)
    b = await agent.expect(METRICS_RESULT, 1)
    busy, total, tck, ncpus = b.u64(), b.u64(), b.u32(), b.u32()
    mem_total, mem_avail, disk_used, disk_total, uptime_ms, nprocs = (
        b.u64(),
        b.u64(),
        b.u64(),
        b.u64(),
        b.u64(),
        b.u32(),
    )
    b.done()
    assert 0 < busy <= total
    assert tck == os.sysconf("SC_CLK_TCK") and ncpus == os.cpu_count()
    assert 0 < mem_avail <= mem_total
    assert 0 < disk_used <= disk_total
    assert uptime_ms > 0 and nprocs > 0


@agent_test
async def test_malformed_frames_are_logged_and_dropped(agent):
    bad = [
        frame(EXEC, 1, exec_body(["true"])[:-3]),  # truncated body
        frame(EXEC, 2, exec_body(["true"]) + b"x"),  # trailing bytes
        frame(EXEC, 3, struct.pack(">BBHHIIII", 0, 0, 0, 0, 0, 0, 0, 0) + struct.pack(">I", 0xFFFFFFF0)),
        frame(ACK, 4, b"\x00"),  # wrong size
        frame(PING, 5, b"x" * 5000),  # PING larger than 4 KiB
        frame(0x7F, 6),  # unknown type
        frame(EXEC, 0, exec_body(["true"])),  # request id 0
        frame(METRICS, 7, b"junk"),
    ]
    for f in bad:
        agent.send_raw(f)
    await agent.ping(100)
    assert len(agent.logs) == len(bad), agent.logs
    # an oversized length: the agent logs and skips that many bytes, then goes on
    agent.send_raw(struct.pack(">I", 8 + MAX_BODY + 1) + b"\0" * (8 + MAX_BODY + 1))
    await agent.ping(101)
    assert len(agent.logs) == len(bad) + 1
    # frames for ids that are not (or no longer) running are ignored without a LOG
    agent.send(STDIN, 777, b"late input")
    agent.send(STDIN_EOF, 777)
    agent.send(ACK, 777, struct.pack(">I", 10))
    agent.send(RESIZE, 777, struct.pack(">HH", 1, 1))
    agent.send(SIGNAL, 777, struct.pack(">IB", 15, 1))
    agent.send(FILE_DATA, 777, b"x")
    agent.send(FILE_CLOSE, 777)
    await agent.ping(103)
    assert len(agent.logs) == len(bad) + 1
    r = await run_exec(agent, 102, ["echo", "still alive"])
    assert r.stdout == b"still alive\n"


@agent_test
async def test_10mib_output_with_flow_control(agent):
    n = 10 * 1024 * 1024
    window = 256 * 1024
    start = time.monotonic()
    r = await run_exec(agent, 1, ["head", "-c", str(n), "/dev/urandom"], window=window)
    elapsed = time.monotonic() - start
    assert r.code == 0 and len(r.stdout) == n
    assert r.max_unacked <= window
    print(f"\n10 MiB through the agent in {elapsed * 1000:.0f} ms ({n / elapsed / 1e6:.0f} MB/s)")


@agent_test
async def test_window_stalls_until_ack(agent):
    window = 1000
    agent.send(EXEC, 1, exec_body(["head", "-c", "5000", "/dev/zero"], window=window))
    await agent.expect(STARTED, 1)
    got = 0
    while got < window:
        t, i, b = await agent.recv()
        assert (t, i) == (STDOUT, 1)
        got += len(b)
    assert got == window
    # without an ACK nothing more may come: the next frame must be our PONG
    await agent.ping(2)
    agent.send(ACK, 1, struct.pack(">I", got))
    while True:
        t, _, b = await agent.recv()
        if t == EXIT:
            break
        assert len(b) <= window
        got += len(b)
        agent.send(ACK, 1, struct.pack(">I", len(b)))
    assert got == 5000


@agent_test
async def test_many_execs_and_latency(agent):
    # sequential round trips of `true`; the number is informative (host, not TCG)
    times = []
    for k in range(50):
        t0 = time.perf_counter()
        r = await run_exec(agent, 1000 + k, ["/bin/true"])
        times.append(time.perf_counter() - t0)
        assert r.code == 0
    times.sort()
    print(f"\nexec round trip of /bin/true: median {times[len(times) // 2] * 1e3:.2f} ms")
    # concurrent execs
    for k in range(20):
        agent.send(EXEC, 2000 + k, exec_body(["sh", "-c", f"echo {k}"]))
    outs, exits = {}, set()
    while len(exits) < 20:
        t, i, b = await agent.recv()
        if t == STDOUT:
            outs[i] = outs.get(i, b"") + b
        elif t == EXIT:
            exits.add(i)
    assert all(outs[2000 + k] == f"{k}\n".encode() for k in range(20))


@agent_test
async def test_no_fd_leaks_into_children(agent):
    r = await run_exec(agent, 1, ["sh", "-c", "ls /proc/self/fd"], stdin_data=b"")
    fds = sorted(int(x) for x in r.stdout.split())
    # 0-2, plus the fd ls uses to read the directory
    assert len(fds) <= 4 and fds[:3] == [0, 1, 2], fds


@agent_test
async def test_uid_gid(agent):
    if os.geteuid() != 0:
        pytest.skip("needs root to switch users")
    r = await run_exec(agent, 1, ["sh", "-c", "id -u; id -g; id -G"], uid=65534, gid=65534)
    assert r.stdout.split() == [b"65534", b"65534", b"65534"]


@agent_test
async def test_orphans_are_reaped(agent):
    # The background child outlives its shell; the agent (PID 1, or a subreaper in this mode)
    # must reap it, leaving no zombie behind.
    r = await run_exec(agent, 1, ["sh", "-c", "sleep 0.3 & echo $!"])
    orphan = int(r.stdout)

    def gone() -> bool:
        # a zombie still has /proc/<pid>; only a reaped process is gone
        return not os.path.exists(f"/proc/{orphan}")

    await wait_until(gone, what=f"orphan {orphan} reaped")


@agent_test
async def test_limits(agent):
    # file transfers: the 65th open one is refused with EMFILE
    import tempfile

    with tempfile.TemporaryDirectory() as d:
        for k in range(64):
            agent.send(FILE_WRITE, 100 + k, struct.pack(">IB", 0o644, 0) + bts(f"{d}/f{k}"))
        agent.send(FILE_WRITE, 999, struct.pack(">IB", 0o644, 0) + bts(f"{d}/extra"))
        assert (await agent.expect_result(999))[0] == errno.EMFILE
        for k in range(64):
            agent.send(FILE_CLOSE, 100 + k)
            assert (await agent.expect_result(100 + k))[0] == 0
    # execs: the 257th concurrent one is refused with EAGAIN
    for k in range(256):
        agent.send(EXEC, 1000 + k, exec_body(["sleep", "3081"]))
        await agent.expect(STARTED, 1000 + k)
    agent.send(EXEC, 5000, exec_body(["true"]))
    assert (await agent.expect_result(5000))[0] == errno.EAGAIN
    agent.send(EXEC, 1000, exec_body(["true"]))  # id still in flight
    assert (await agent.expect_result(1000))[0] == errno.EEXIST
    for k in range(256):
        agent.send(SIGNAL, 1000 + k, struct.pack(">IB", 9, 1))
    exited = set()
    while len(exited) < 256:
        t, i, _ = await agent.recv()
        assert t == EXIT
        exited.add(i)


# ---- IDENTITY and RESUME outside a VM: the agent must refuse to touch the host's clock, RNG
# and name (these tests run as whatever user runs the suite, root included) ----


def identity_body(entropy: bytes = b"\x5a" * 32, hostname: bytes | str = "msb-test-identity") -> bytes:
    # The current time: were the refusal ever broken, the host's clock would not move.
    return bts(entropy) + struct.pack(">Q", time.time_ns()) + bts(hostname)


class HostnameGuard:
    """Fails the test if the host's hostname changed, after putting it back."""

    def __enter__(self) -> HostnameGuard:
        self.before = socket.gethostname()
        return self

    def __exit__(self, *exc: object) -> None:
        after = socket.gethostname()
        if after != self.before:
            socket.sethostname(self.before)
            raise AssertionError(f"the agent renamed the host to {after!r} (restored {self.before!r})")


@agent_test
async def test_identity_is_refused_under_plain_serve_stdio(agent):
    with HostnameGuard():
        agent.send(IDENTITY, 1, identity_body())
        err, msg = await agent.expect_result(1)
        assert err == errno.EINVAL and "only the init of a VM" in msg, msg
        await agent.ping(2)
    assert agent.logs == []


@agent_test
async def test_malformed_identity_gets_einval_naming_the_problem(agent):
    good = identity_body()
    cases = [
        (good[:-3], "body too short"),
        (good + b"x", "trailing bytes"),
        (identity_body(entropy=b"e" * 31), "entropy must be 32-512 bytes"),
        (identity_body(entropy=b"e" * 513), "entropy must be 32-512 bytes"),
        (identity_body(hostname=""), "hostname must be 1-64"),
        (identity_body(hostname="h" * 65), "hostname must be 1-64"),
        (identity_body(hostname="bad name"), "hostname must be 1-64"),
        (identity_body(hostname="a/b"), "hostname must be 1-64"),
        (identity_body(hostname=b"nul\0"), "hostname must be 1-64"),
    ]
    with HostnameGuard():
        for k, (body, why) in enumerate(cases, start=1):
            agent.send(IDENTITY, k, body)
            err, msg = await agent.expect_result(k)
            assert err == errno.EINVAL and msg.startswith("IDENTITY: ") and why in msg, (k, msg)
        # id 0 gets no RESULT (nothing could carry it back), only a LOG
        agent.send(IDENTITY, 0, good)
        agent.send(IDENTITY, 0, good[:-1])
        await agent.ping(100)
    assert len(agent.logs) == 2 and "request id 0" in agent.logs[0], agent.logs


@agent_test
async def test_resume_when_not_held_is_logged_and_the_agent_keeps_serving(agent):
    with HostnameGuard():
        agent.send(RESUME, 0, bts("msb.upper=tmpfs msb.hostname=msb-must-not-be-set"))
        await agent.ping(1)  # a PONG, not a READY: nothing was resumed
        assert len(agent.logs) == 1 and "not held" in agent.logs[0], agent.logs
        agent.send(RESUME, 7, bts("msb.hostname=x")[:-1])  # truncated
        agent.send(RESUME, 8, bts("msb.hostname=x") + b"!")  # trailing bytes
        agent.send(RESUME, 9, bts("msb.hostname=x\0y"))  # NUL inside
        await agent.ping(2)
        assert len(agent.logs) == 4, agent.logs
        assert "NUL" in agent.logs[3]
        r = await run_exec(agent, 3, ["echo", "still serving"])
        assert r.stdout == b"still serving\n"
