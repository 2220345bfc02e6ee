"""A guest agent in pure Python that speaks the real frame protocol (for unit tests).

:class:`FakeGuest` reads host frames from a byte stream and writes guest frames back, as the C
agent (``engine/guest/agent``) does, with the host's own machinery as its counterpart: commands
run as host subprocesses (:mod:`engine.vm.fake_exec`), files live in a per-VM temporary
directory that stands for ``/``, and metrics are synthetic but move over time.

Only the FILE_* requests and the working directory are confined to that directory (FILE_*
paths under a volume's guest path reach its host directory instead; a read-only volume refuses
writes with EROFS). Commands are ordinary host processes of the current user: an absolute path
in a command reaches the host's files. This is a test double, never a sandbox; give it trusted
commands only.

It can also misbehave on purpose, to test the host's defences (``misbehave=``):

- ``"oversized_frame"``: answers the first request with a header whose ``len`` is over
  ``8 + MAX_BODY``.
- ``"garbage"``: answers the first request with random bytes (seeded, so reproducible).
- ``"ignore_window"``: an EXEC floods four windows of output without waiting for ACKs.
- ``"bad_exit"``: an EXEC ends with an EXIT whose code is out of range.
- ``"die_mid_exec"``: an EXEC starts, prints a little, then the VM dies (channel closed,
  VM exit status 1, a kernel panic on the console).
- ``"never_ready"``: READY is never sent.
- ``"wrong_version"``: READY (or HELD) claims protocol version 2.
- ``"refuse_identity"``: IDENTITY gets RESULT ``EPERM`` (as :attr:`FakeGuest.refuse_identity`).

IDENTITY is checked as the C agent checks it and recorded (:attr:`FakeGuest.identities`,
:attr:`FakeGuest.hostname`). With ``hold=True`` (a ``msb.template=root`` boot) the guest sends
HELD instead of READY and serves only IDENTITY, RESUME, PING and SHUTDOWN until RESUME.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import os
import random
import signal
import stat as st
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

from engine.errors import ConfigError, ProtocolError
from engine.sandbox.spec import VolumeMount
from engine.vm import fake_codec as enc
from engine.vm.fake_codec import HostFrame, decode_host_frame, identity_problem
from engine.vm.fake_exec import FakeExec, confine_mounted
from engine.vm.protocol import CHUNK, HEADER, MAX_FRAME_LEN, T

MISBEHAVIOURS = frozenset({"oversized_frame", "garbage", "ignore_window", "bad_exit", "die_mid_exec", "never_ready",
                           "wrong_version", "refuse_identity"})  # fmt: skip
CLK_TCK = 100
BOOT_S = 0.9
"""Pretend boot time, in seconds: uptime and CPU ticks count from here, so the first
sample is not empty."""
LIST_BATCH = 2000
"""Entries per LIST_RESULT frame (each ≤ 283 bytes, so a frame stays well under 1 MiB)."""
_REQUESTS = {T.EXEC, T.FILE_READ, T.FILE_WRITE, T.FILE_STAT, T.FILE_LIST, T.METRICS, T.PING}
_EXEC_FRAMES = {T.STDIN, T.STDIN_EOF, T.RESIZE, T.SIGNAL, T.ACK}
_HELD_SERVES = {T.IDENTITY, T.RESUME, T.PING, T.SHUTDOWN}
_HELD_EAGAIN = _REQUESTS - {T.PING}


class FakeGuest:
    """The agent side of a fake VM.

    Attributes:
        cpu_load: fraction of the vCPUs busy (0…1) reported by METRICS; ``None`` means
            "automatic" (idle plus a share per running command). Tests set it.
        execs: running commands by EXEC id.
        hostname: the guest's hostname (``msb.hostname=`` at boot, then IDENTITY or RESUME).
        identities: every IDENTITY frame accepted (``entropy``, ``realtime_ns``, ``hostname``).
        refuse_identity, answer_identity: tests set them to answer IDENTITY with ``EPERM`` (as
            if an RNG ioctl failed) or, when False, not at all (a hung guest).
        held: a template boot waiting for RESUME (HELD was sent instead of READY).
        resume_params: the boot words of the RESUME that ended the hold, if any.
    """

    def __init__(
        self,
        root: Path,
        *,
        misbehave: str | None = None,
        cpus: int = 1,
        memory_mib: int = 512,
        clock: Callable[[], float] = time.monotonic,
        seed: int = 0,
        volumes: tuple[VolumeMount, ...] = (),
        hostname: str = "localhost",
        hold: bool = False,
    ) -> None:
        """Args:
        root: directory that stands for the guest's ``/`` (must exist).
        misbehave: one of :data:`MISBEHAVIOURS`, or ``None`` for an honest agent.
        cpus, memory_mib: what METRICS reports.
        clock: monotonic seconds, for uptime and CPU ticks (tests pass a fake one).
        seed: seeds the ``"garbage"`` bytes.
        volumes: host directories visible to FILE_* requests at their guest paths.
        hostname: the hostname it boots with.
        hold: boot as a template (``msb.template=root``): HELD, then wait for RESUME.

        Raises:
            ConfigError: ``misbehave`` is not a known misbehaviour.
        """
        if misbehave is not None and misbehave not in MISBEHAVIOURS:
            raise ConfigError(f"unknown misbehaviour {misbehave!r}", hint=f"use one of {sorted(MISBEHAVIOURS)}")
        self.root = root.resolve()
        self.misbehave = misbehave
        self.volumes = volumes
        self.cpus, self.memory_mib = cpus, memory_mib
        self.cpu_load: float | None = None
        self.execs: dict[int, FakeExec] = {}
        self.hostname = hostname
        self.identities: list[HostFrame] = []
        self.refuse_identity = misbehave == "refuse_identity"
        self.answer_identity = True
        self._proto = 2 if misbehave == "wrong_version" else 1
        self.held = hold
        self.resume_params: str | None = None
        self._uploads: dict[int, list[int]] = {}  # id → [fd, first errno]
        self._clock = clock
        self._rng = random.Random(seed)
        self._boot = clock() - BOOT_S
        self._last = self._boot
        self._ticks = (0.0, 0.0)  # busy, total
        self._send: Callable[[bytes], None] = lambda _data: None
        self._die: Callable[[int, str], Awaitable[None]] | None = None
        self._reapers: set[asyncio.Task[None]] = set()
        self._groups: set[int] = set()

    # ------------------------------------------------------------------ serving

    async def serve(
        self,
        inbox: asyncio.StreamReader,
        send: Callable[[bytes], None],
        die: Callable[[int, str], Awaitable[None]],
    ) -> None:
        """Announce READY, then answer host frames until the host closes the stream.

        Args:
            inbox: host → guest bytes.
            send: writes guest → host bytes (a no-op once the channel is gone).
            die: ends the VM with an exit status and a last console line (SHUTDOWN, a crash).
        """
        self._send, self._die = send, die
        if self.held:
            send(enc.held(version=self._proto, agent_version=b"fake-1"))
        elif self.misbehave != "never_ready":
            self._ready()
        with contextlib.suppress(asyncio.IncompleteReadError, ConnectionError):
            while True:
                length, kind, _flags, _res, fid = HEADER.unpack(await inbox.readexactly(HEADER.size))
                if not 8 <= length <= MAX_FRAME_LEN:
                    send(enc.log(b"bad frame length from host; closing"))
                    return
                body = await inbox.readexactly(length - 8)
                try:
                    frame = decode_host_frame(kind, fid, body)
                except ProtocolError as exc:  # the C agent answers a bad IDENTITY as it does a refused one
                    send(enc.result(fid, errno.EINVAL, f"IDENTITY: {exc}".encode()) if kind == T.IDENTITY and fid
                         else enc.log(f"dropping a bad frame: {exc}".encode()))  # fmt: skip
                    continue
                await self._handle(frame)

    async def stop(self) -> None:
        """Kill every command and what it left in the background; drop open uploads (the VM
        is going away, and nothing of it may outlive it on the host)."""
        await asyncio.gather(*(e.aclose() for e in list(self.execs.values())))
        self.execs.clear()
        for pgid in self._groups:
            with contextlib.suppress(OSError):
                os.killpg(pgid, signal.SIGKILL)
        self._groups.clear()
        for fd, _err in self._uploads.values():
            os.close(fd)
        self._uploads.clear()

    def _ready(self) -> None:
        ns = int(BOOT_S * 1e9)
        points = [(b"init", ns // 3), (b"modules", ns // 2), (b"root", ns * 3 // 4), (b"ready", ns)]
        self._send(enc.ready(version=self._proto, agent_version=b"fake-1", timings=points))

    def _bad(self, f: HostFrame, why: str) -> None:
        self._send(enc.log(f"invalid frame type 0x{f.kind:02x} id {f.id} dropped: {why}".encode()))

    async def _handle(self, f: HostFrame) -> None:
        if self.held and f.kind not in _HELD_SERVES:  # nothing runs in a held template
            if f.id and f.kind in _HELD_EAGAIN:
                self._send(enc.result(f.id, errno.EAGAIN, b"the agent is held (a template boot): RESUME it first"))
            else:
                self._bad(f, "the agent is held (a template boot)")
            return
        if f.kind in _REQUESTS and await self._misbehave(f):
            return
        if f.kind == T.IDENTITY:
            self._identity(f)
        elif f.kind == T.RESUME:
            self._resume(f)
        elif f.kind == T.EXEC:
            await self._exec(f)
        elif f.kind in _EXEC_FRAMES:
            if (e := self.execs.get(f.id)) is not None:
                e.on_frame(f)
        elif f.kind == T.METRICS:
            self._send(self._metrics(f.id))
        elif f.kind == T.PING:
            self._send(enc.pong(f.id, f.data))
        elif f.kind == T.SHUTDOWN:
            assert self._die is not None
            await self._die(0, "reboot: Power down")
        else:
            self._files(f)

    async def _misbehave(self, f: HostFrame) -> bool:
        """Do this guest's misbehaviour if ``f`` triggers it; True when ``f`` is consumed."""
        m = self.misbehave
        if m == "oversized_frame":
            self._send(HEADER.pack(MAX_FRAME_LEN + 1, int(T.STDOUT), 0, 0, f.id))
        elif m == "garbage":
            self._send(self._rng.randbytes(64 * 1024))
        elif f.kind != T.EXEC or m not in ("ignore_window", "bad_exit", "die_mid_exec"):
            return False
        elif m == "ignore_window":
            assert f.exec is not None
            self._send(enc.started(f.id, 4242))
            chunk = b"x" * CHUNK
            for _ in range(4 * max(f.exec.window, CHUNK) // CHUNK):
                self._send(enc.output(f.id, chunk))
        elif m == "bad_exit":
            self._send(enc.started(f.id, 4242) + enc.exit_(f.id, 300))
        else:
            self._send(enc.started(f.id, 4242) + enc.output(f.id, b"partial output\n"))
            assert self._die is not None
            await self._die(1, "Kernel panic - not syncing: Attempted to kill init! exitcode=0x0000000b")
        return True

    # ------------------------------------------------------------------ identity, hold

    def _identity(self, f: HostFrame) -> None:
        """Validate as identity.c does; EINVAL (or a LOG for id 0) names what is wrong."""
        if (why := identity_problem(f)) is not None:
            if f.id:
                self._send(enc.result(f.id, errno.EINVAL, f"IDENTITY: {why}".encode()))
            else:
                self._bad(f, why)
        elif not self.answer_identity:
            return
        elif self.refuse_identity:
            self._send(enc.result(f.id, errno.EPERM, b"RNDADDENTROPY: Operation not permitted (fake refusal)"))
        else:
            self.hostname = f.hostname.decode()
            self.identities.append(f)
            self._send(enc.result(f.id))

    def _resume(self, f: HostFrame) -> None:
        if b"\0" in f.params:
            self._bad(f, "NUL byte in the parameters")
        elif not self.held:
            self._bad(f, "the agent is not held (not a template boot)")
        else:
            self.resume_params = f.params.decode("utf-8", "replace")
            words = dict(w.split("=", 1) for w in self.resume_params.split() if "=" in w)
            self.hostname, self.held = words.get("msb.hostname", self.hostname).strip('"'), False
            self._ready()

    # ------------------------------------------------------------------ exec

    async def _exec(self, f: HostFrame) -> None:
        req = f.exec
        assert req is not None
        if not req.argv:
            self._send(enc.result(f.id, 22, b"argv must be non-empty"))
            return
        if f.id in self.execs:
            self._send(enc.result(f.id, 17, f"exec id {f.id} is already running".encode()))
            return
        e = FakeExec(f.id, req, self.root, self._send)
        try:
            await e.start()
        except OSError as exc:
            self._send(enc.result(f.id, exc.errno or 5, f"{exc.strerror}: {exc.filename}".encode()))
            return
        self.execs[f.id] = e
        assert e.pid is not None
        self._groups.add(e.pid)  # the process group outlives the exec if it left children behind
        task = asyncio.create_task(self._forget(e))
        self._reapers.add(task)
        task.add_done_callback(self._reapers.discard)

    async def _forget(self, e: FakeExec) -> None:
        await e.done.wait()
        if self.execs.get(e.fid) is e:
            del self.execs[e.fid]

    # ------------------------------------------------------------------ files

    def _files(self, f: HostFrame) -> None:
        """FILE_* frames, confined to the root directory; errors become RESULT errno."""
        if f.kind in (T.FILE_DATA, T.FILE_CLOSE):
            self._upload(f)
            return
        try:
            path, readonly = confine_mounted(self.root, os.fsdecode(f.path), self.volumes)
            if readonly and f.kind == T.FILE_WRITE:
                raise OSError(30, "Read-only file system")
            if f.kind == T.FILE_READ:
                self._read(f.id, path, f.max_bytes)
            elif f.kind == T.FILE_WRITE:
                self._open_upload(f, path)
            elif f.kind == T.FILE_STAT:
                s = os.stat(path)
                self._send(enc.stat_result(f.id, mode=s.st_mode, size=s.st_size, mtime_ns=s.st_mtime_ns,
                                           uid=s.st_uid, gid=s.st_gid))  # fmt: skip
            elif f.kind == T.FILE_LIST:
                self._list(f.id, path)
        except OSError as exc:
            self._send(enc.result(f.id, exc.errno or 5, (exc.strerror or "error").encode()))

    def _read(self, fid: int, path: Path, max_bytes: int) -> None:
        with open(path, "rb") as fh:
            left = max_bytes
            while left > 0 and (data := fh.read(min(CHUNK, left))):
                self._send(enc.file_data(fid, data))
                left -= len(data)
            too_big = left == 0 and fh.read(1) != b""
        self._send(enc.result(fid, 27, b"file is larger than max_bytes") if too_big else enc.result(fid))

    def _open_upload(self, f: HostFrame, path: Path) -> None:
        if f.flags & 2:
            path.parent.mkdir(mode=0o755, parents=True, exist_ok=True)
        existed = path.exists()
        flags = os.O_WRONLY | os.O_CREAT | os.O_CLOEXEC | (os.O_APPEND if f.flags & 1 else os.O_TRUNC)
        fd = os.open(path, flags, f.mode & 0o7777)
        if not existed:
            os.fchmod(fd, f.mode & 0o7777)  # the agent creates files with umask 0
        self._uploads[f.id] = [fd, 0]

    def _upload(self, f: HostFrame) -> None:
        up = self._uploads.get(f.id)
        if up is None:
            return  # its open failed (already answered) or it never existed
        if f.kind == T.FILE_DATA:
            if up[1] == 0:
                try:
                    os.write(up[0], f.data)
                except OSError as exc:
                    up[1] = exc.errno or 5
            return
        del self._uploads[f.id]
        try:
            os.fsync(up[0])
        except OSError as exc:
            up[1] = up[1] or exc.errno or 5
        os.close(up[0])
        self._send(enc.result(f.id, up[1], os.strerror(up[1]).encode() if up[1] else b""))

    def _list(self, fid: int, path: Path) -> None:
        batch: list[tuple[bytes, int, int, int]] = []
        with os.scandir(path) as it:
            for entry in it:
                s = entry.stat(follow_symlinks=False)
                batch.append((os.fsencode(entry.name), s.st_mode, s.st_size, s.st_mtime_ns))
                if len(batch) == LIST_BATCH:
                    self._send(enc.list_result(fid, batch))
                    batch = []
        if batch:
            self._send(enc.list_result(fid, batch))
        self._send(enc.result(fid))

    # ------------------------------------------------------------------ metrics

    def _metrics(self, fid: int) -> bytes:
        now = self._clock()
        dt, self._last = max(now - self._last, 0.0), now
        running = len(self.execs)
        load = self.cpu_load if self.cpu_load is not None else min(1.0, 0.03 + 0.9 * running / self.cpus)
        ticks = dt * CLK_TCK * self.cpus
        busy, total = self._ticks
        self._ticks = (busy + ticks * load, total + ticks)
        mem_total = self.memory_mib * 1024
        used = min(40 * 1024 + 24 * 1024 * running + int(now * 7) % 512, mem_total)
        return enc.metrics_result(
            fid, int(self._ticks[0]), int(self._ticks[1]), CLK_TCK, self.cpus, mem_total, mem_total - used,
            _disk_used(self.root), 4 << 30, int((now - self._boot) * 1000), 1 + running,
        )  # fmt: skip


def _disk_used(root: Path) -> int:
    """Bytes allocated under ``root`` (the fake's writable layer)."""
    total = 0
    for dirpath, dirnames, filenames in os.walk(root):
        for name in dirnames + filenames:
            with contextlib.suppress(OSError):
                s = os.lstat(os.path.join(dirpath, name))
                total += s.st_blocks * 512 if not st.S_ISDIR(s.st_mode) else 4096
    return total
