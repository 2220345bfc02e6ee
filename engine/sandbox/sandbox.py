"""A running sandbox: one VM, its agent, and the operations users run in it."""

from __future__ import annotations

import asyncio
import contextlib
import enum
import logging
import shutil
import signal
import time
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from types import TracebackType

from engine.cachebound import Leases
from engine.errors import SandboxStateError, VmCrashedError
from engine.sandbox.instant import StartInfo
from engine.sandbox.metrics import Metrics, MetricsTracker, process_rss_mib
from engine.sandbox.spec import SandboxSpec
from engine.vm import protocol as p
from engine.vm.agent import AgentClient, ExecResult, FileStat, OutputChunk, Process
from engine.vm.backend import VmHandle

log = logging.getLogger(__name__)

STOP_GRACE_S = 10.0


class Status(enum.StrEnum):
    RUNNING = "running"
    STOPPING = "stopping"
    STOPPED = "stopped"
    CRASHED = "crashed"


def exit_reason(code: int) -> str:
    """The words for a VMM's exit status: negative, the signal that killed it; 128 + n, what
    runsc (and a shell) report when signal n killed the process they ran."""
    signo = -code if code < 0 else code - 128 if 128 < code < 128 + 65 else 0
    try:
        name = signal.Signals(signo).name
    except ValueError:
        return f"the VM exited (status {code})"
    why = " (by hand, or by the host's OOM killer at its cgroup's memory limit)" if signo == signal.SIGKILL else ""
    return f"the VM was killed by signal {signo} ({name}){why}"


class Sandbox:
    """A started sandbox. Create it with :meth:`engine.sandbox.engine.Engine.start`."""

    def __init__(
        self,
        spec: SandboxSpec,
        vm: VmHandle,
        client: AgentClient,
        run_dir: Path,
        *,
        accel: str,
        boot_s: float,
        ready: p.Ready,
        backend: str = "qemu",
        start: StartInfo | None = None,
        sandbox_id: str | None = None,
    ) -> None:
        self.spec = spec
        self.vm = vm
        self.client = client
        self.run_dir = run_dir
        self.accel = accel
        self.backend = backend
        """The backend's name: ``qemu``, ``gvisor``, ``krun`` or ``fake``."""
        self.boot_s = boot_s
        """Seconds from the start request to the agent's READY."""
        self.start_info = start or StartInfo(kind="boot", ms=boot_s * 1000)
        """How it started (``pool``, ``restore`` or ``boot``) and how long that took."""
        self.id = sandbox_id or uuid.uuid4().hex[:16]
        """Unique per start; commands see it as ``MSB_SANDBOX_ID``."""
        self.ready = ready
        self.started_at = time.time()
        self._status = Status.RUNNING
        self.crash_reason: str | None = None
        """Why it crashed (``the VM was killed by signal 9 (SIGKILL)`` …), once it has."""
        self._metrics = MetricsTracker()
        self.leases = Leases()
        """Cache entries it runs from, kept from eviction until it stops (engine/cachebound.py)."""
        client.set_on_dead(self._channel_died)
        self._watcher = asyncio.create_task(self._watch(), name=f"watch-{spec.name}")

    # ------------------------------------------------------------------ state

    @property
    def name(self) -> str:
        return self.spec.name

    @property
    def status(self) -> Status:
        return self._status

    @property
    def crashed(self) -> bool:
        return self._status is Status.CRASHED

    def crash_error(self, what: str = "the sandbox VM exited unexpectedly") -> VmCrashedError:
        """The error operations get once the VM is gone (with the console tail)."""
        return VmCrashedError(
            f"sandbox {self.name!r}: {what}; it is marked crashed",
            hint=f"start it again; if it keeps crashing, look at its console log ({self.run_dir / 'console.log'})",
            console_tail=self.vm.console_tail(2048),
        )

    def _channel_died(self) -> VmCrashedError:
        if self._status is Status.RUNNING:
            self._status = Status.CRASHED
            self.crash_reason = "the guest's channel closed"
        return self.crash_error("the guest's channel closed")

    async def _watch(self) -> None:
        code = await self.vm.wait_exited()
        if self._status is Status.CRASHED:  # the channel closed first: the VMM's end says more
            self.crash_reason = f"{exit_reason(code)}; {self.crash_reason}"
        if self._status is Status.RUNNING:
            self._status = Status.CRASHED
            self.crash_reason = exit_reason(code)
            log.warning("sandbox %s: %s while running", self.name, self.crash_reason)
            self.client._fail(self.crash_error(self.crash_reason))
            await self.client.close()
        self.leases.release()  # the VM is gone, however it ended: its cache entries may be evicted

    async def wait_ended(self) -> Status:
        """Wait until the VM has exited (stopped, killed or crashed). Returns the status then
        (:attr:`crash_reason` says why when it is ``crashed``)."""
        with contextlib.suppress(Exception):
            await asyncio.shield(self._watcher)
        return self._status

    def _need_running(self) -> None:
        if self._status is Status.CRASHED:
            raise self.crash_error()
        if self._status is not Status.RUNNING:
            raise SandboxStateError(f"sandbox {self.name!r} is {self._status.value}", hint="start it first")

    def _env(self, env: dict[str, str] | None, tty: bool = False) -> dict[str, str]:
        merged = self.spec.base_env()
        merged["MSB_SANDBOX_ID"] = self.id
        if tty:
            merged.setdefault("TERM", "xterm-256color")
        merged.update(env or {})
        return merged

    # ------------------------------------------------------------------ exec

    async def exec(
        self,
        argv: list[str],
        *,
        env: dict[str, str] | None = None,
        cwd: str | None = None,
        timeout: float | None = None,
        stdin: bytes | None = None,
        max_output: int = 64 << 20,
    ) -> ExecResult:
        """Run a command to completion.

        Args:
            argv: program and arguments (no shell; use ``["sh", "-c", …]`` for one).
            env: extra environment variables.
            cwd: working directory (default: the spec's ``workdir``).
            timeout: seconds; when it passes the whole process group is killed and the
                result has ``timed_out=True``.
            stdin: bytes piped to the command.
            max_output: bytes kept per stream.

        Raises:
            ExecError: the command could not start (e.g. not found).
            VmCrashedError: the VM died; the sandbox is now crashed.
        """
        self._need_running()
        return await self.client.exec(
            argv, stdin_data=stdin, max_output=max_output, env=self._env(env),
            cwd=cwd or self.spec.workdir, timeout=timeout, uid=self.spec.uid, gid=self.spec.gid,
        )  # fmt: skip

    async def exec_stream(
        self,
        argv: list[str],
        *,
        env: dict[str, str] | None = None,
        cwd: str | None = None,
        timeout: float | None = None,
    ) -> AsyncIterator[OutputChunk]:
        """Yield output chunks as they arrive; the exit status is on the process afterwards.

        Use :meth:`spawn` when you also need stdin or the exit status object.
        """
        proc = await self.spawn(argv, env=env, cwd=cwd, timeout=timeout)
        async for chunk in proc:
            yield chunk

    async def spawn(
        self,
        argv: list[str],
        *,
        env: dict[str, str] | None = None,
        cwd: str | None = None,
        timeout: float | None = None,
        tty: bool = False,
        stdin: bool = False,
        rows: int = 24,
        cols: int = 80,
    ) -> Process:
        """Start a process and return it running (see :class:`~engine.vm.agent.Process`)."""
        self._need_running()
        return await self.client.spawn(
            argv, env=self._env(env, tty), cwd=cwd or self.spec.workdir, timeout=timeout,
            tty=tty, stdin=stdin or tty, rows=rows, cols=cols, uid=self.spec.uid, gid=self.spec.gid,
        )  # fmt: skip

    async def pty(self, argv: list[str] | None = None, *, rows: int = 24, cols: int = 80) -> Process:
        """Open an interactive terminal session (default: ``/bin/sh -l``)."""
        return await self.spawn(argv or ["/bin/sh", "-l"], tty=True, rows=rows, cols=cols)

    # ------------------------------------------------------------------ files, metrics

    async def read_file(self, path: str, *, max_bytes: int = 64 << 20) -> bytes:
        """Read a guest file (at most ``max_bytes``)."""
        self._need_running()
        return await self.client.read_file(path, max_bytes=max_bytes)

    async def write_file(self, path: str, data: bytes, *, mode: int = 0o644) -> None:
        """Write a guest file, creating parent directories."""
        self._need_running()
        await self.client.write_file(path, data, mode=mode)

    async def stat(self, path: str) -> FileStat:
        self._need_running()
        return await self.client.stat(path)

    async def listdir(self, path: str) -> list[p.ListEntry]:
        self._need_running()
        return await self.client.listdir(path)

    async def metrics(self) -> Metrics:
        """A metrics reading; CPU % covers the time since the previous reading."""
        self._need_running()
        raw = await self.client.metrics()
        host_cpu = getattr(self.vm, "host_cpu_ticks", None)
        if host_cpu is not None and raw.cpu_total_ticks == 0:
            # gVisor's /proc/stat is all zeros: measure the Sentry's CPU time on the host
            # instead (trustworthy, and it is what the sandbox costs the host)
            busy = host_cpu()
            if busy is not None:
                total = int((time.time() - self.started_at) * raw.clk_tck * self.spec.cpus)
                raw = raw.model_copy(update={"cpu_busy_ticks": busy, "cpu_total_ticks": max(total, 1)})
        host_disk = getattr(self.vm, "host_disk_bytes", None)
        disk = host_disk() if host_disk is not None else None
        if disk is not None:
            raw = raw.model_copy(update={"disk_used_bytes": disk})
        return self._metrics.update(raw, process_rss_mib(self.vm.pid))

    # ------------------------------------------------------------------ lifecycle

    async def stop(self, timeout: float = STOP_GRACE_S) -> None:
        """Stop the guest cleanly (processes signalled, disks synced), or kill it after
        ``timeout`` seconds. Safe to call on a crashed or stopped sandbox."""
        if self._status is Status.RUNNING:
            self._status = Status.STOPPING
            with contextlib.suppress(Exception):
                await self.client.shutdown()
            try:
                await asyncio.wait_for(asyncio.shield(self._watcher), timeout)
            except TimeoutError:
                log.warning("sandbox %s did not power off in %.0f s; killing it", self.name, timeout)
        await self._finish()

    async def kill(self) -> None:
        """Kill the VM at once (the persistent layer keeps what the guest had synced)."""
        if self._status is Status.RUNNING:
            self._status = Status.STOPPING
        await self._finish()

    async def _finish(self) -> None:
        await self.vm.kill()
        with contextlib.suppress(asyncio.CancelledError, Exception):
            await self._watcher
        await self.client.close()
        if self._status is not Status.CRASHED:
            self._status = Status.STOPPED
        self.leases.release()  # after the VM is gone: nothing reads the entries any more
        shutil.rmtree(self.run_dir, ignore_errors=True)

    async def __aenter__(self) -> Sandbox:
        return self

    async def __aexit__(
        self, et: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.stop()
