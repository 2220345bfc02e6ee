"""libkrun backend: one VMM child process per sandbox, the agent's channel over vsock.

:meth:`KrunBackend.launch` prepares the guest's file systems on the host
(:mod:`engine.vm.krun_root`: an overlay of the image tree, the agent bind-mounted read-only
at ``/.msb/agent``, volumes as ``nosuid,nodev`` bind mounts), builds the call plan
(:func:`engine.vm.krun.krun_plan`), listens on ``run_dir/agent.sock`` and starts
``python -m engine.vm.krun_child``, which applies the plan and becomes the VMM. libkrun's
init runs ``/.msb/agent --krun`` in the guest; the agent connects to vsock port
:data:`AGENT_PORT` of the host, which libkrun maps to our socket (``krun_add_vsock_port``).
The accepted connection is the handle's :class:`~engine.vm.channel.StreamChannel`.

libkrun writes the guest console to the VMM's stdout, and its own log and msb's
configuration errors go to its stderr: both are read into a bounded ring and a size-capped
log (:mod:`engine.vm.console`), stderr lines prefixed ``[krun]``. Listening ourselves means a
VMM that fails is noticed by its exit, with what it printed, instead of by a timeout.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import logging
import os
import signal
from pathlib import Path
from typing import Any

from engine import paths
from engine.errors import VmError
from engine.vm.backend import Accel, VmSpec
from engine.vm.channel import StreamChannel
from engine.vm.console import Console, pump_console
from engine.vm.krun import check_spec, child_command, krun_plan
from engine.vm.krun_child import EXIT_CONFIG
from engine.vm.krun_ffi import find_libkrun
from engine.vm.krun_root import KrunRoot

log = logging.getLogger(__name__)

AGENT_PORT = 10000
"""Guest vsock port of the agent's channel (clear of TSI's control ports 620 and 1024-1031)."""
CONNECT_TIMEOUT_S = 30.0
"""Unlike QEMU's chardev, the connection only comes once the guest has booted."""
_INIT_EXITS = {
    125: "libkrun's init could not set up the guest",
    126: "libkrun's init could not execute /.msb/agent",
    127: "libkrun's init did not find /.msb/agent",
}
_Conn = tuple[asyncio.StreamReader, asyncio.StreamWriter]


def _die_with_parent() -> None:
    """In the child: get SIGKILL when the engine process dies (no orphan VMM)."""
    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl(1, signal.SIGKILL, 0, 0, 0)  # PR_SET_PDEATHSIG


def _env_log_level() -> int:
    try:
        return max(0, min(5, int(os.environ.get("MSB_KRUN_LOG", "0"))))
    except ValueError:
        return 0


def vmm_said(console: Console) -> str:
    """What libkrun (``[krun]`` lines) and then the guest console printed last, on one line."""
    lines = console.tail(4096).splitlines()
    vmm = [ln[7:] for ln in lines if ln.startswith("[krun] ")]
    guest = [ln for ln in lines if not ln.startswith("[krun] ") and ln.strip()][-5:]
    parts = []
    if vmm:
        parts.append(" ".join(vmm).strip())
    if guest:
        parts.append("guest console: " + " | ".join(g.strip() for g in guest))
    return "; ".join(parts) or "no output"


class KrunVm:
    """A running libkrun VMM process (implements :class:`~engine.vm.backend.VmHandle`)."""

    def __init__(self, proc: asyncio.subprocess.Process, console: Console, root: KrunRoot) -> None:
        self.proc = proc
        self.pid: int | None = proc.pid
        self.accel: Accel = "kvm"
        self.channel: StreamChannel
        self._console = console
        self._root = root
        self._tasks: list[asyncio.Task[None]] = []
        self._cleanup_task: asyncio.Future[None] | None = None

    def console_tail(self, max_bytes: int = 4096) -> str:
        """Return the last ``max_bytes`` of console output (guest console and libkrun's log)."""
        return self._console.tail(max_bytes)

    def exited(self) -> bool:
        return self.proc.returncode is not None

    async def wait_exited(self) -> int:
        code = await self.proc.wait()
        await self._cleanup()
        return code

    async def kill(self) -> None:
        """SIGKILL the VMM's process group, reap it and undo the mounts. Safe to call twice."""
        if self.proc.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.proc.pid, signal.SIGKILL)  # its own session: see launch()
        await self.proc.wait()
        await self._cleanup()

    async def _cleanup(self) -> None:
        """Tear down once, as a shielded task every caller awaits: kill() and wait_exited() may
        race here, and a cancelled waiter must not leave the root mounted."""
        if self._cleanup_task is None:
            self._cleanup_task = asyncio.ensure_future(self._teardown())
        await asyncio.shield(self._cleanup_task)

    async def _teardown(self) -> None:
        if self._tasks:  # the pipes reach EOF once the VMM is gone: keep its last words
            await asyncio.wait(self._tasks, timeout=2)
        for task in self._tasks:
            task.cancel()
        self._console.close()
        self._root.teardown()


class KrunBackend:
    """Starts sandboxes as libkrun microVMs (KVM). Runs a directory root, so the engine
    prepares no kernel, initramfs or disk image (``needs_boot_assets = False``)."""

    name = "krun"
    needs_boot_assets = False
    fixed_accel: Accel = "kvm"
    """Always KVM: the engine reports it and skips QEMU's accelerator choice."""
    check_spec = staticmethod(check_spec)
    """Refuses (ConfigError) what libkrun cannot honour; ``auto`` then falls back to the next
    backend for that sandbox (:meth:`engine.sandbox.engine.Engine.start`)."""

    def __init__(self, *, libkrun: str | None = None, agent: Path | None = None, log_level: int | None = None,
                 connect_timeout_s: float = CONNECT_TIMEOUT_S, die_with_parent: bool = True) -> None:  # fmt: skip
        """Args:
        libkrun: the library (default: ``MSB_LIBKRUN`` or the system's, see krun_ffi).
        agent: the static guest agent (default :func:`engine.paths.agent_path`).
        log_level: libkrun's log level (0 off … 5 trace), into the console log (default
            ``MSB_KRUN_LOG`` or 0).
        connect_timeout_s: how long the guest may take to boot and connect its agent.
        die_with_parent: the VMM gets SIGKILL when the engine's process dies.
        """
        self.libkrun = libkrun
        self.agent = agent
        self.log_level = log_level if log_level is not None else _env_log_level()
        self.connect_timeout_s = connect_timeout_s
        self.die_with_parent = die_with_parent

    async def launch(self, spec: VmSpec) -> KrunVm:
        """Start the VMM and return once the guest agent has connected (not yet READY).

        Raises:
            ConfigError: a network scope, ports or volumes libkrun cannot honour (nothing is
                mounted or started then).
            AgentError: the agent binary is missing.
            VmError: no libkrun, a mount failed, libkrun refused a call, or the VM ended or
                stayed silent before its agent connected (what it printed is in the message).
        """
        lib = self.libkrun or find_libkrun()
        root = KrunRoot(spec.run_dir)
        sock = spec.run_dir / "agent.sock"
        plan = krun_plan(spec, root_dir=root.root, agent_socket=sock, agent_port=AGENT_PORT,
                         volume_dirs=root.planned_volume_dirs(spec))  # fmt: skip
        argv, env = child_command(plan, spec.run_dir / "krun-plan.json", libkrun=lib, log_level=self.log_level)
        log.info("%s: libkrun, network scope %s", spec.name, spec.network)
        accepted: asyncio.Future[_Conn] = asyncio.get_running_loop().create_future()
        sock.unlink(missing_ok=True)
        server = await asyncio.start_unix_server(_accept_once(accepted), path=str(sock), limit=1 << 21)
        try:
            root.setup(spec, self.agent or paths.agent_path())
            try:
                vm = await self._start(argv, env, spec, root)
            except BaseException:
                root.teardown()
                raise
            try:
                vm.channel = StreamChannel(*await self._wait_connected(vm, accepted))
            except BaseException:
                await vm.kill()
                raise
        finally:
            server.close()  # one connection; nobody else may connect later
            sock.unlink(missing_ok=True)
        return vm

    async def _start(self, argv: list[str], env: dict[str, str], spec: VmSpec, root: KrunRoot) -> KrunVm:
        console = Console(spec.run_dir / "console.log")
        try:
            proc = await asyncio.create_subprocess_exec(
                *argv,
                env=env,
                stdin=asyncio.subprocess.DEVNULL,
                stdout=asyncio.subprocess.PIPE,
                stderr=asyncio.subprocess.PIPE,
                preexec_fn=_die_with_parent if self.die_with_parent else None,
                start_new_session=True,  # Ctrl-C goes to us, and kill() takes the whole group
            )
        except OSError as e:
            console.close()
            raise VmError(f"cannot start the libkrun VMM process: {e}") from e
        vm = KrunVm(proc, console, root)
        assert proc.stdout is not None and proc.stderr is not None
        vm._tasks.append(asyncio.create_task(pump_console(proc.stdout, console)))
        vm._tasks.append(asyncio.create_task(pump_console(proc.stderr, console, prefix=b"[krun] ")))
        return vm

    async def _wait_connected(self, vm: KrunVm, accepted: asyncio.Future[_Conn]) -> _Conn:
        exited = asyncio.ensure_future(vm.proc.wait())
        both: set[asyncio.Future[Any]] = {accepted, exited}
        done, _ = await asyncio.wait(both, timeout=self.connect_timeout_s, return_when=asyncio.FIRST_COMPLETED)
        if accepted in done:
            exited.cancel()
            return accepted.result()
        exited.cancel()
        accepted.cancel()
        if vm.proc.returncode is None:
            raise VmError(
                f"the guest agent did not connect within {self.connect_timeout_s:.0f} s: {vmm_said(vm._console)}",
                hint="`msb doctor` shows whether libkrun works on this host (it needs a usable /dev/kvm)",
            )
        await asyncio.wait(vm._tasks, timeout=2)  # the VMM is gone: its pipes reach EOF
        code = vm.proc.returncode
        what = _INIT_EXITS.get(code, "msb could not configure libkrun" if code == EXIT_CONFIG else "")
        raise VmError(
            f"libkrun exited with status {code} before the guest agent connected"
            f"{' (' + what + ')' if what else ''}: {vmm_said(vm._console)}",
            hint="check the message above; `msb doctor` shows whether libkrun works on this host",
        )


def _accept_once(fut: asyncio.Future[_Conn]) -> Any:
    async def on_connect(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        if fut.done():
            writer.close()  # a second connection is never ours
            return
        fut.set_result((reader, writer))

    return on_connect


def probe_krun() -> dict[str, Any]:
    """The libkrun probe (:func:`engine.vm.krun_probe.probe_krun`): ``BackendVerdict`` fields.
    Blocking (runs its own event loop); from async code await ``krun_probe.aprobe_krun()``."""
    from engine.vm.krun_probe import probe_krun as run_probe  # krun_probe imports this module

    return dict(run_probe())
