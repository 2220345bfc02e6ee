"""Project state under ``.menv/`` and the client side of supervised sandboxes.

Layout (beside the Sandboxfile)::

    .menv/sandboxes/<name>/
        upper.ext4        the persistent writable layer on QEMU (survives stop, crashes, kill -9)
        upper/            … on gVisor and libkrun (a directory; see engine.sandbox.engine)
        state.json        what the supervisor last said (status, pids, socket, exit code)
        supervisor.lock   flock-held by the live supervisor: the liveness test (no pid reuse)
        output.log        the main process's output (bounded; rotated to output.log.1)
        supervisor.log    the supervisor's own log

A sandbox is *running* exactly while some process holds ``supervisor.lock``. A state file
that says running without a lock holder means the supervisor died: it is reported as
``crashed`` and the next ``msb run`` starts it again from the same writable layer.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ValidationError

from engine.errors import ConfigError, MsbError
from engine.project.sandboxfile import Sandboxfile
from engine.vm.safepath import open_beneath

MAX_STATE_BYTES = 64 << 10
SUPERVISOR_READY_TIMEOUT_S = 120.0

Status = Literal["starting", "running", "stopped", "crashed"]
StartedBy = Literal["pool", "restore", "boot"]
"""``engine.sandbox.instant.StartKind``, spelled out: the CLI reads state without importing the engine."""


class StartError(MsbError):
    """The supervisor could not start the sandbox (its message and hint)."""


class StartConfigError(StartError, ConfigError):
    """The supervisor refused the sandbox's configuration (e.g. an unknown backend): a usage error."""


class SandboxState(BaseModel):
    """``state.json``: written by the supervisor, read by everyone else."""

    name: str
    status: Status
    supervisor_pid: int | None = None
    vm_pid: int | None = None
    socket: str | None = None
    backend: str | None = None
    """The backend it runs (or last ran) on: ``qemu``, ``gvisor``, ``krun``."""
    accel: str | None = None
    """``kvm``, ``tcg`` or ``none`` (gVisor)."""
    started_at: float | None = None
    started_by: StartedBy | None = None
    """How its last start went: ``restore`` (a memory snapshot), ``boot`` or ``pool``."""
    start_ms: float | None = None
    """Milliseconds from the start request to ready, of its last start."""
    stopped_at: float | None = None
    command: list[str] | None = None
    exit_code: int | None = None
    message: str | None = None


class SandboxDir:
    """The ``.menv/sandboxes/<name>/`` directory of one sandbox."""

    def __init__(self, path: Path, name: str) -> None:
        self.path = path
        self.name = name
        self.upper = path / "upper.ext4"
        self.state_file = path / "state.json"
        self.lock_file = path / "supervisor.lock"
        self.output_log = path / "output.log"
        self.supervisor_log = path / "supervisor.log"

    def exists(self) -> bool:
        return self.path.is_dir()

    def read_state(self) -> SandboxState | None:
        try:
            with open(self.state_file, "rb") as f:
                raw = f.read(MAX_STATE_BYTES + 1)
        except OSError:
            return None
        if len(raw) > MAX_STATE_BYTES:
            return None
        try:
            return SandboxState.model_validate_json(raw)
        except ValidationError:
            return None

    def write_state(self, state: SandboxState) -> None:
        """Atomically replace ``state.json``."""
        self.path.mkdir(parents=True, exist_ok=True)
        tmp = self.state_file.with_name(f".state.{os.getpid()}.tmp")
        tmp.write_text(state.model_dump_json(indent=2))
        os.replace(tmp, self.state_file)

    def alive(self) -> bool:
        """Whether a supervisor holds the lock right now."""
        try:
            fd = os.open(self.lock_file, os.O_RDONLY | os.O_CLOEXEC)
        except OSError:
            return False
        try:
            fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        except BlockingIOError:
            return True
        finally:
            os.close(fd)
        return False

    def state(self) -> SandboxState:
        """The effective state: ``state.json`` corrected by the liveness test."""
        st = self.read_state() or SandboxState(name=self.name, status="stopped")
        alive = self.alive()
        if alive and st.status in ("stopped", "crashed"):
            return st.model_copy(update={"status": "starting"})
        if not alive and st.status in ("starting", "running"):
            return st.model_copy(update={"status": "crashed", "socket": None,
                                         "message": st.message or "its supervisor process is gone"})  # fmt: skip
        return st

    def socket(self) -> Path:
        """The control socket of the running supervisor.

        Raises:
            MsbError: the sandbox is not running.
        """
        st = self.state()
        if st.status != "running" or not st.socket:
            raise MsbError(f"sandbox {self.name!r} is not running ({st.status})",
                           hint=f"start it with `msb run {self.name}`")  # fmt: skip
        return Path(st.socket)


def make_private_dirs(base: Path, rel: str) -> Path:
    """``mkdir -p base/rel`` (new directories 0700) without passing through any symlink.

    No sandbox may write ``.menv`` (a read-write volume over it is refused), but a symlink
    planted there some other way must still not send the supervisor's files, or a persistent
    layer, anywhere else on the host.

    Raises:
        MsbError: a component is a symlink or not a directory.
    """
    fd = os.open(base, os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        for part in rel.split("/"):
            with contextlib.suppress(FileExistsError):
                os.mkdir(part, 0o700, dir_fd=fd)
            try:
                nfd = open_beneath(fd, part, os.O_PATH | os.O_DIRECTORY)
            except OSError as exc:
                hint = f"remove it; msb keeps the project's sandboxes in {base / '.menv'}"
                raise MsbError(f"{base / rel}: {part!r} is a symlink or not a directory ({exc.strerror})",
                               hint=hint) from None
            os.close(fd)
            fd = nfd
    finally:
        os.close(fd)
    return base / rel


class Project:
    """A Sandboxfile and its ``.menv/`` state."""

    def __init__(self, sandboxfile: Sandboxfile) -> None:
        self.sandboxfile = sandboxfile
        self.path = sandboxfile.path
        self.dir = sandboxfile.path.parent
        self.menv = self.dir / ".menv"

    @classmethod
    def load(cls, file: Path | None = None) -> Project:
        """Load the Sandboxfile at ``file`` or the nearest one from the current directory up."""
        path = file if file is not None else Sandboxfile.find(Path.cwd())
        return cls(Sandboxfile.load(path))

    def sandbox_dir(self, name: str) -> SandboxDir:
        return SandboxDir(self.menv / "sandboxes" / name, name)


def _supervisor_argv(project: Project, name: str, command: list[str] | None, *, wait_attach: bool,
                     keep_alive: bool, backend: str | None = None) -> list[str]:  # fmt: skip
    argv = [sys.executable, "-m", "engine.project.supervisor", "--file", str(project.path), "--name", name]
    if backend is not None:
        argv += ["--backend", backend]
    if command is not None:
        argv += ["--command", json.dumps(command)]
    if wait_attach:
        argv.append("--wait-attach")
    if keep_alive:
        argv.append("--keep-alive")
    return argv


async def launch(project: Project, name: str, command: list[str] | None, *, wait_attach: bool = False,
                 keep_alive: bool = False, backend: str | None = None) -> SandboxState:  # fmt: skip
    """Start a supervisor for ``name`` in its own session and wait until the VM is ready.

    Args:
        project: the project.
        name: a sandbox defined in the Sandboxfile.
        command: the main process (the sandbox stops when it exits); ``None`` = stay up idle
            until ``msb stop``.
        wait_attach: start ``command`` only when a client attaches (foreground ``msb run``).
        keep_alive: stay up after ``command`` exits, until ``msb stop`` (msb-tui's start).
        backend: ``auto`` or a backend name, over the entry's ``backend:`` (default: the
            entry's, else ``MSB_BACKEND``, else auto).

    Raises:
        StartConfigError: the configuration was refused (an unknown backend …): a usage error.
        StartError: the sandbox did not start (the supervisor's message and hint, e.g. the
            probe's reason when the backend asked for does not work here).
    """
    sdir = project.sandbox_dir(name)
    sdir.path.mkdir(parents=True, exist_ok=True)
    with open(sdir.supervisor_log, "ab") as log:
        proc = subprocess.Popen(
            _supervisor_argv(project, name, command, wait_attach=wait_attach, keep_alive=keep_alive, backend=backend),
            stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=log,
            start_new_session=True, cwd=project.dir, close_fds=True,
        )  # fmt: skip
    assert proc.stdout is not None
    try:
        line = await asyncio.wait_for(asyncio.to_thread(proc.stdout.readline), SUPERVISOR_READY_TIMEOUT_S)
    except TimeoutError:
        proc.kill()
        raise StartError(f"sandbox {name!r} did not come up within {SUPERVISOR_READY_TIMEOUT_S:.0f} s",
                         hint=f"see {sdir.supervisor_log}") from None  # fmt: skip
    finally:
        proc.stdout.close()
    try:
        answer = json.loads(line) if line else {}
    except ValueError:
        answer = {}
    if not answer.get("ok"):
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(5)
        message = answer.get("message") or f"the supervisor exited (status {proc.poll()}) without starting it"
        error = StartConfigError if answer.get("config") else StartError
        raise error(message, hint=answer.get("hint") or f"see {sdir.supervisor_log}")
    return sdir.state()


async def stop(sdir: SandboxDir, timeout: float = 30.0) -> bool:
    """Ask the supervisor to stop the sandbox and wait until it is gone.

    Returns:
        ``False`` if it was not running.
    """
    from engine.project.control import ControlError, request

    st = sdir.state()
    if not sdir.alive():
        return False
    if st.socket:
        with contextlib.suppress(ControlError):
            await request(Path(st.socket), {"op": "stop"}, timeout=timeout)
    deadline = time.monotonic() + timeout
    while sdir.alive() and time.monotonic() < deadline:
        await asyncio.sleep(0.05)
    if sdir.alive() and st.supervisor_pid:
        with contextlib.suppress(ProcessLookupError):
            os.kill(st.supervisor_pid, 9)  # the VM dies with it (PDEATHSIG); the layer is kept
        for _ in range(100):
            if not sdir.alive():
                break
            await asyncio.sleep(0.05)
    return True
