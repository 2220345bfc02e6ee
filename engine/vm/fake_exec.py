"""One EXEC of the fake guest: a host subprocess behaving as the C agent's exec does.

The process runs on the host (``asyncio.create_subprocess_exec``) as the leader of a new
session, in the VM's temporary root directory, with the environment it was given. Output is
read from raw non-blocking fds so flow control can be honoured exactly like the agent does:
a stream is only read while the exec has window credit, so a host that does not ACK makes the
process block on a full pipe. After the process is reaped, its pipes are drained of what was
already in them (``FIONREAD``), and only then EXIT is sent.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import fcntl
import os
import posixpath
import pty
import shutil
import signal
import struct
import termios
from collections.abc import Callable
from pathlib import Path

from engine.sandbox.spec import VolumeMount
from engine.vm import fake_codec as enc
from engine.vm.fake_codec import ExecReq, HostFrame
from engine.vm.protocol import CHUNK, T

DEFAULT_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
TTY_DRAIN_CAP = 1 << 20
"""Bytes read from a pty after exit at most (a background writer must not delay EXIT)."""


def confine(root: Path, guest_path: str) -> Path:
    """Map an absolute guest path into ``root``, refusing anything that resolves outside.

    Args:
        root: the VM's root directory on the host (already resolved).
        guest_path: a guest path; relative ones count from ``/``.

    Returns:
        The host path (symlinks resolved).

    Raises:
        PermissionError: the path (or a symlink in it) leads out of ``root`` (errno EACCES).
    """
    host = Path(os.path.realpath(root / guest_path.lstrip("/")))
    if host != root and root not in host.parents:
        raise PermissionError(errno.EACCES, "path leads outside the sandbox", guest_path)
    return host


def confine_mounted(root: Path, guest_path: str, volumes: tuple[VolumeMount, ...] = ()) -> tuple[Path, bool]:
    """Like :func:`confine`, but a path under a volume's guest path maps into its host directory.

    Args:
        root: the VM's root directory on the host (already resolved).
        guest_path: a guest path; relative ones count from ``/``.
        volumes: the VM's volumes (``..`` is resolved first, as the guest would).

    Returns:
        The host path, and whether it lies in a read-only volume.

    Raises:
        PermissionError: the path leads out of ``root`` or out of its volume (errno EACCES).
    """
    norm = posixpath.normpath("/" + guest_path.lstrip("/"))
    for v in volumes:
        if norm == v.guest or norm.startswith(v.guest + "/"):
            return confine(Path(os.path.realpath(v.host)), norm[len(v.guest) :]), v.readonly
    return confine(root, guest_path), False


def _take_ctty() -> None:
    """In the child, after setsid: make the pty on fd 0 the controlling terminal."""
    fcntl.ioctl(0, termios.TIOCSCTTY, 0)


def _set_winsize(fd: int, rows: int, cols: int) -> None:
    fcntl.ioctl(fd, termios.TIOCSWINSZ, struct.pack("HHHH", rows, cols, 0, 0))


def _fionread(fd: int) -> int:
    buf = fcntl.ioctl(fd, termios.FIONREAD, b"\0\0\0\0")
    return int(struct.unpack("i", buf)[0])


class FakeExec:
    """A running command of the fake guest (one EXEC id)."""

    def __init__(self, fid: int, req: ExecReq, root: Path, send: Callable[[bytes], None]) -> None:
        """Args:
        fid: the EXEC's frame id.
        req: the decoded EXEC body.
        root: the VM's root directory; ``cwd`` is confined to it.
        send: writes encoded frames to the host.
        """
        self.fid = fid
        self.req = req
        self._root = root
        self._send = send
        self._proc: asyncio.subprocess.Process | None = None
        self._out: list[int] = []
        self._stdin_fd = -1
        self._fds: list[int] = []
        self._drain: list[int | None] = []
        self._wake: list[asyncio.Event] = []
        self._unacked = 0
        self._stdin: asyncio.Queue[bytes | None] = asyncio.Queue()
        self._tasks: list[asyncio.Task[None]] = []
        self._timer: asyncio.TimerHandle | None = None
        self.reaped = False
        self.timed_out = False
        self.done = asyncio.Event()
        """Set once EXIT has been sent (or the exec was abandoned)."""

    @property
    def pid(self) -> int | None:
        """Host pid of the process (None before it started)."""
        return None if self._proc is None else self._proc.pid

    # ------------------------------------------------------------------ start

    def _resolve(self) -> tuple[str, Path, dict[str, str]]:
        env: dict[str, str] = {}
        for entry in self.req.env:
            key, eq, value = os.fsdecode(entry).partition("=")
            if eq:
                env[key] = value
        cwd = confine(self._root, os.fsdecode(self.req.cwd) or "/")
        if not cwd.is_dir():
            raise FileNotFoundError(errno.ENOENT, "no such directory", os.fsdecode(self.req.cwd))
        prog = os.fsdecode(self.req.argv[0])
        found = prog if "/" in prog else shutil.which(prog, path=env.get("PATH", DEFAULT_PATH))
        if not found or not os.path.exists(found):
            raise FileNotFoundError(errno.ENOENT, "command not found", prog)
        return found, cwd, env

    async def start(self) -> None:
        """Spawn the process and send STARTED.

        Raises:
            OSError: it could not be started (the caller answers RESULT with ``errno``).
        """
        prog, cwd, env = self._resolve()
        child: list[int] = []
        try:
            if self.req.tty:
                master, slave = pty.openpty()
                _set_winsize(slave, self.req.rows, self.req.cols)
                self._fds, child = [master], [slave]
                self._out, self._stdin_fd = [master], master
                stdio: tuple[int, int, int] = (slave, slave, slave)
            else:
                (out_r, out_w), (err_r, err_w) = os.pipe(), os.pipe()
                self._fds, child, self._out = [out_r, err_r], [out_w, err_w], [out_r, err_r]
                in_child = asyncio.subprocess.DEVNULL
                if self.req.stdin:
                    in_r, in_w = os.pipe()
                    self._fds.append(in_w)
                    child.append(in_r)
                    self._stdin_fd, in_child = in_w, in_r
                stdio = (in_child, out_w, err_w)
            for fd in self._fds:
                os.set_blocking(fd, False)
            argv = [os.fsdecode(a) for a in self.req.argv]
            self._proc = await asyncio.create_subprocess_exec(
                *argv, executable=prog, stdin=stdio[0], stdout=stdio[1], stderr=stdio[2], env=env, cwd=cwd,
                start_new_session=True, preexec_fn=_take_ctty if self.req.tty else None,
            )  # fmt: skip
        except BaseException:
            for fd in self._fds:
                os.close(fd)
            self._fds = []
            raise
        finally:
            for fd in child:
                os.close(fd)
        self._send(enc.started(self.fid, self._proc.pid))
        self._drain = [None] * len(self._out)
        self._wake = [asyncio.Event() for _ in self._out]
        if self.req.timeout_ms:
            self._timer = asyncio.get_running_loop().call_later(self.req.timeout_ms / 1000, self._on_timeout)
        self._tasks = [asyncio.create_task(self._run()), asyncio.create_task(self._stdin_writer())]

    # ------------------------------------------------------------------ frames from the host

    def on_frame(self, f: HostFrame) -> None:
        """Handle STDIN, STDIN_EOF, RESIZE, SIGNAL or ACK for this exec."""
        if f.kind == T.ACK:
            self._unacked = max(self._unacked - f.count, 0)
            for wake in self._wake:
                wake.set()
        elif f.kind == T.STDIN and (self.req.stdin or self.req.tty):
            self._stdin.put_nowait(f.data)
        elif f.kind == T.STDIN_EOF:
            self._stdin.put_nowait(None)
        elif f.kind == T.RESIZE and self.req.tty and not self.reaped:
            with contextlib.suppress(OSError):
                _set_winsize(self._out[0], f.rows, f.cols)
        elif f.kind == T.SIGNAL:
            self._signal(f.signo, f.group)

    def _signal(self, signo: int, group: bool) -> None:
        if not 1 <= signo <= signal.SIGRTMAX:
            self._send(enc.log(b"SIGNAL with an invalid signal number"))
            return
        if self.reaped or self._proc is None:
            return  # the pid may be reused: never signal it after reaping
        with contextlib.suppress(ProcessLookupError, PermissionError):
            if group:
                os.killpg(self._proc.pid, signo)
            else:
                os.kill(self._proc.pid, signo)

    def _on_timeout(self) -> None:
        if not self.reaped:
            self.timed_out = True
            self.kill()

    def kill(self) -> None:
        """SIGKILL the process group (timeout, shutdown, VM death)."""
        if self._proc is not None and not self.reaped:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(self._proc.pid, signal.SIGKILL)

    # ------------------------------------------------------------------ output and exit

    def _credit(self) -> int:
        if not self.req.window:
            return CHUNK
        return max(self.req.window - self._unacked, 0)

    async def _wait_readable(self, fd: int, wake: asyncio.Event) -> None:
        loop = asyncio.get_running_loop()
        wake.clear()
        loop.add_reader(fd, wake.set)
        try:
            await wake.wait()
        finally:
            if fd in self._fds:  # after close() the number may already belong to someone else
                loop.remove_reader(fd)

    async def _pump(self, s: int) -> None:
        fd, wake = self._out[s], self._wake[s]
        while self._drain[s] != 0:
            credit = self._credit()
            if credit == 0:
                wake.clear()
                await wake.wait()  # an ACK (or the reaper) sets it
                continue
            left = self._drain[s]
            want = min(CHUNK, credit, CHUNK if left is None else left)
            try:
                data = os.read(fd, want)
            except BlockingIOError:
                if self._drain[s] is not None:
                    return  # reaped and nothing more was written before the exit
                await self._wait_readable(fd, wake)
                continue
            except OSError:
                return  # EIO: every holder of the pty slave is gone
            if not data:
                return
            if self.req.window:
                self._unacked += len(data)
            self._send(enc.output(self.fid, data, stderr=s == 1))
            if left is not None:
                self._drain[s] = left - len(data)

    async def _run(self) -> None:
        assert self._proc is not None
        pumps = [asyncio.create_task(self._pump(s)) for s in range(len(self._out))]
        rc = await self._proc.wait()
        self.reaped = True
        if self._timer is not None:
            self._timer.cancel()
        for s, fd in enumerate(self._out):
            if not pumps[s].done():
                self._drain[s] = TTY_DRAIN_CAP if self.req.tty else _fionread(fd)
            self._wake[s].set()
        await asyncio.gather(*pumps)
        code, sig = (rc, 0) if rc >= 0 else (-1, -rc)
        self._send(enc.exit_(self.fid, code, sig, self.timed_out))
        self.close()

    async def _stdin_writer(self) -> None:
        while (data := await self._stdin.get()) is not None:
            if not await self._write_stdin(data):
                return
        if self.req.tty:
            await self._write_stdin(b"\x04")  # STDIN_EOF on a tty: the terminal's EOF character
        elif self._stdin_fd >= 0:
            self._fds.remove(self._stdin_fd)
            os.close(self._stdin_fd)
            self._stdin_fd = -1

    async def _write_stdin(self, data: bytes) -> bool:
        """Write all of ``data`` to the process's stdin; False once nobody reads it."""
        loop = asyncio.get_running_loop()
        view = memoryview(data)
        while view:
            fd = self._stdin_fd
            if fd < 0:
                return False
            try:
                view = view[os.write(fd, view) :]
            except BlockingIOError:
                ready = asyncio.Event()
                loop.add_writer(fd, ready.set)
                try:
                    await ready.wait()
                finally:
                    if fd in self._fds:
                        loop.remove_writer(fd)
            except OSError:  # EPIPE / EIO: nobody reads stdin any more; drop the rest
                return False
        return True

    async def aclose(self, timeout: float = 5.0) -> None:
        """Kill the process group, reap the process, then :meth:`close` (VM shutdown)."""
        self.kill()
        if self._proc is not None:
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(asyncio.shield(self._proc.wait()), timeout)
        self.close()

    def close(self) -> None:
        """Stop the tasks and close every fd (after EXIT, or when the VM goes away)."""
        self.kill()
        current = asyncio.current_task()
        for task in self._tasks:
            if task is not current:
                task.cancel()
        loop = asyncio.get_running_loop()
        for fd in self._fds:
            loop.remove_reader(fd)
            loop.remove_writer(fd)
            os.close(fd)
        self._fds = []
        self._stdin_fd = -1
        self.done.set()
