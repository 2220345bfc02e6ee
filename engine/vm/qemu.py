"""QEMU backend: one ``qemu-system-x86_64`` process per sandbox.

QEMU runs with ``-nodefaults -no-user-config``, no display, ``-sandbox on`` (seccomp), and
connects as a *client* to three unix sockets this module listens on in the VM's private run
directory: the agent's virtio-serial port, the serial console and QMP. Listening ourselves
means the connection exists before the guest boots, so no early byte is lost, and a QEMU
that fails to start is noticed by its exit instead of by a timeout.

The console is read into a bounded ring (shown in boot errors) and a size-capped log file
(:mod:`engine.vm.console`): a guest that floods its serial port cannot fill the host's disk.

Confinement (:mod:`engine.vm.confine`): a cgroup per QEMU, ``-chroot`` into an empty directory
once its files are open, and ``-runas`` the unprivileged ``msb-vmm`` user unless the sandbox has
volumes (QEMU's 9p server opens their files as long as the VM runs, with root's access, and its
xattr calls go through ``/proc/self/fd``, which the empty root lacks). A VM that saves or
restores its state with a writable drive gets neither (QEMU re-opens it by name).

Volumes and the network device come from :mod:`engine.vm.volumes` and :mod:`engine.vm.network`;
a ``public`` sandbox's QEMU runs with the network filter of :mod:`engine.vm.netfilter` in
``LD_PRELOAD`` and is killed if the filter is not mapped into it (docs/networking.md).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

from engine.errors import VmError
from engine.vm import confine, netfilter
from engine.vm.backend import Accel, VmSpec
from engine.vm.channel import StreamChannel
from engine.vm.cmdline import kernel_cmdline
from engine.vm.console import Console, pump_console
from engine.vm.network import network_args
from engine.vm.snapshot import load_state
from engine.vm.volumes import close_fds, open_volume_fds, volume_args

log = logging.getLogger(__name__)

CONNECT_TIMEOUT_S = 10.0
QBOOT = "/usr/share/qemu/qboot.rom"
INCOMING_FD = 3
"""The fd a restored QEMU reads its saved state from (``migrate-incoming fd:3``)."""


def find_qemu() -> str:
    """Return the QEMU binary to use (``MSB_QEMU`` overrides).

    Raises:
        VmError: QEMU is not installed.
    """
    override = os.environ.get("MSB_QEMU")
    path = override or shutil.which("qemu-system-x86_64")
    if not path or not os.access(path, os.X_OK):
        raise VmError(
            f"QEMU not found ({override or 'qemu-system-x86_64'} is not an executable)",
            hint="install it: apt-get install qemu-system-x86 (or run `make setup`), or point MSB_QEMU at the binary",
        )
    return path


def build_argv(
    qemu: str, spec: VmSpec, sockets: dict[str, Path], *, volume_fds: list[int] | None = None,
    runas: str | None = None, chroot: Path | None = None,
) -> list[str]:
    """Build the QEMU command line (pure; unit-tested).

    Args:
        qemu: path of the QEMU binary.
        spec: the VM to start.
        sockets: listening socket paths for ``agent``, ``console`` and ``qmp``.
        volume_fds: the volumes' inherited fds (:func:`engine.vm.volumes.open_volume_fds`).
        runas: the user QEMU drops to once its files are open.
        chroot: the directory QEMU chroots into once its files are open.

    Raises:
        ConfigError: volumes or ports QEMU cannot honour (engine/vm/volumes.py, network.py).
    """
    mmio = spec.machine == "microvm"

    def dev(kind: str) -> str:  # microvm has virtio-mmio devices, q35 has PCI ones
        return f"{kind}-device" if mmio else f"{kind}-pci"

    machine = "microvm,acpi=on,pit=off,pic=off,rtc=on" if mmio else "q35,sata=off,smbus=off,vmport=off,i8042=off"
    ram: list[str] = []
    if spec.memory_file is not None:
        share = "on" if spec.memory_shared else "off"
        backing = f"memory-backend-file,id=ram,size={spec.memory_mib}M,mem-path={spec.memory_file},share={share}"
        ram = ["-object", backing]
        machine += ",memory-backend=ram"
    firmware = [] if mmio or not os.path.exists(QBOOT) else ["-bios", QBOOT]  # qboot: ~70 ms less than SeaBIOS
    accel = ["-accel", "kvm", "-cpu", "host"] if spec.accel == "kvm" else ["-accel", "tcg", "-cpu", "max"]
    # -runas needs setuid() after the filter is in place; once dropped, nothing is left to elevate
    elevate = "allow" if runas is not None else "deny"
    argv = [
        qemu,
        "-nodefaults", "-no-user-config", "-nographic", "-no-reboot",
        "-sandbox", f"on,obsolete=deny,elevateprivileges={elevate},spawn=deny,resourcecontrol=deny",
        *(["-chroot", str(chroot)] if chroot is not None else []),
        *(["-runas", runas] if runas is not None else []),
        "-M", machine, *ram, *firmware, *accel,
        "-smp", str(spec.cpus), "-m", str(spec.memory_mib),
        *_boot_args(spec),
        "-chardev", f"socket,id=con,path={sockets['console']}",
        "-serial", "chardev:con",
        "-chardev", f"socket,id=qmp,path={sockets['qmp']}",
        "-mon", "chardev=qmp,mode=control",
        "-chardev", f"socket,id=agent,path={sockets['agent']}",
        "-device", dev("virtio-serial"),
        "-device", "virtserialport,chardev=agent,name=msb.0",
        "-drive", f"file={spec.root_image},if=none,id=root,format=raw,readonly=on",
        "-device", f"{dev('virtio-blk')},drive=root,serial=msb-root",
    ]  # fmt: skip
    if spec.upper_image is not None:
        argv += [
            "-drive", f"file={spec.upper_image},if=none,id=upper,format=raw,cache=writeback,discard=unmap",
            "-device", f"{dev('virtio-blk')},drive=upper,serial=msb-upper",
        ]  # fmt: skip
    argv += ["-device", dev("virtio-rng")]
    argv += network_args(spec, dev)
    argv += volume_args(spec, dev, volume_fds)
    if spec.incoming is not None:  # the state comes on an inherited fd (engine/vm/snapshot.py)
        argv += ["-incoming", "defer"]
    return argv


def _boot_args(spec: VmSpec) -> list[str]:
    """Kernel, initramfs and command line; none for a restore, whose guest is already booted
    (QEMU would only spend time loading them into its firmware config)."""
    if spec.incoming is not None:
        return []
    return ["-kernel", str(spec.kernel), "-initrd", str(spec.initrd), "-append", kernel_cmdline(spec)]


class QemuVm:
    """A running QEMU process (implements :class:`~engine.vm.backend.VmHandle`)."""

    def __init__(self, proc: asyncio.subprocess.Process, accel: Accel, console: Console) -> None:
        self.proc = proc
        self.pid: int | None = proc.pid
        self.accel: Accel = accel
        self.channel: StreamChannel
        self._console = console
        self._qmp: tuple[asyncio.StreamReader, asyncio.StreamWriter] | None = None
        self._servers: list[asyncio.base_events.Server] = []
        self._tasks: list[asyncio.Task[None]] = []
        self.cgroup: confine.SandboxCgroup | None = None

    def console_tail(self, max_bytes: int = 4096) -> str:
        """Return the last ``max_bytes`` of console output."""
        return self._console.tail(max_bytes)

    def exited(self) -> bool:
        return self.proc.returncode is not None

    async def wait_exited(self) -> int:
        code = await self.proc.wait()
        await self._cleanup()
        return code

    async def kill(self) -> None:
        """SIGKILL QEMU and reap it."""
        if self.proc.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                self.proc.kill()
        await self.proc.wait()
        await self._cleanup()

    async def qmp(self, command: str, arguments: dict[str, Any] | None = None) -> Any:
        """Run one QMP command and return its ``return`` value.

        Raises:
            VmError: QMP is not connected or the command failed.
        """
        if self._qmp is None:
            raise VmError("QMP is not connected")
        reader, writer = self._qmp
        msg: dict[str, Any] = {"execute": command}
        if arguments:
            msg["arguments"] = arguments
        writer.write(json.dumps(msg).encode() + b"\n")
        await writer.drain()
        while True:
            line = await reader.readline()
            if not line:
                raise VmError(f"QMP closed during {command}")
            reply = json.loads(line)
            if "return" in reply:
                return reply["return"]
            if "error" in reply:
                raise VmError(f"QMP {command} failed: {reply['error'].get('desc')}")
            # events are skipped

    async def _cleanup(self) -> None:
        for server in self._servers:
            server.close()
        for task in self._tasks:
            task.cancel()
        self._servers.clear()
        self._console.close()
        if self.cgroup is not None:
            cgroup, self.cgroup = self.cgroup, None
            await asyncio.to_thread(cgroup.destroy)


class QemuBackend:
    """Starts sandboxes as QEMU processes (``microvm`` machine by default)."""

    name = "qemu"
    needs_boot_assets = True

    def __init__(self, qemu: str | None = None, *, die_with_parent: bool = True) -> None:
        self.qemu = qemu or find_qemu()
        self.die_with_parent = die_with_parent

    async def launch(self, spec: VmSpec) -> QemuVm:
        """Start QEMU and return once it has connected the agent, console and QMP sockets.

        Raises:
            VmError: QEMU exited at once (its stderr is in the message) or never connected.
        """
        sockets = {k: spec.run_dir / f"{k[0]}.sock" for k in ("agent", "console", "qmp")}
        # QEMU re-opens a writable drive by name when a migration ends: no chroot or drop then
        reopens = spec.upper_image is not None and (spec.memory_shared or spec.incoming is not None)
        user = None if spec.volumes or reopens else confine.vmm_user()  # see the module docstring
        # 9p's xattr calls (mapped-xattr owners and modes) go through /proc/self/fd paths, which an
        # empty root does not have: a VM with volumes keeps the host's root view
        chroot = None if reopens or spec.volumes else confine.empty_root(spec.run_dir, resolv=spec.network != "none")
        fds = open_volume_fds(spec.volumes)
        try:
            argv = build_argv(self.qemu, spec, sockets, volume_fds=fds, runas=user.name if user else None,
                              chroot=chroot)  # fmt: skip
            env, shim = _qemu_env(spec)
        except BaseException:
            close_fds(fds)
            raise
        log.info("%s: network scope %s (%s)", spec.name, spec.network, netfilter.describe(spec.network))
        accepted: dict[str, asyncio.Future[tuple[asyncio.StreamReader, asyncio.StreamWriter]]] = {}
        servers = []
        loop = asyncio.get_running_loop()
        for key, path in sockets.items():
            path.unlink(missing_ok=True)
            fut = accepted[key] = loop.create_future()
            servers.append(await asyncio.start_unix_server(_accept_once(fut), path=str(path), limit=1 << 21))
        console = Console(spec.run_dir / "console.log")
        log.debug("starting %s", " ".join(argv))
        limits = confine.vmm_limits(spec.memory_mib, backend="qemu", tcg=spec.accel == "tcg")
        cgroup = await asyncio.to_thread(confine.SandboxCgroup.create, confine.cgroup_name(spec.name, spec.run_dir),
                                         limits)  # fmt: skip
        state_fd = os.open(spec.incoming, os.O_RDONLY | os.O_CLOEXEC) if spec.incoming is not None else None
        try:
            proc = await self._spawn(argv, env, state_fd, fds, cgroup)
        except BaseException:
            if cgroup is not None:
                cgroup.destroy()
            raise
        finally:
            close_fds(fds)  # QEMU holds its inherited copies
            if state_fd is not None:
                os.close(state_fd)
        vm = QemuVm(proc, spec.accel, console)
        vm.cgroup = cgroup
        vm._servers = servers
        if proc.stderr is not None:  # QEMU's own complaints (e.g. a kernel it cannot load)
            vm._tasks.append(asyncio.create_task(pump_console(proc.stderr, console, prefix=b"[qemu] ")))
        try:
            conns = await self._wait_connected(proc, accepted, console, vm._tasks[0])
            vm.channel = StreamChannel(*conns["agent"])
            vm._tasks.append(asyncio.create_task(pump_console(conns["console"][0], console)))
            vm._qmp = conns["qmp"]
            await _qmp_handshake(*conns["qmp"])
            if shim is not None and not netfilter.shim_loaded(proc.pid, shim):
                raise VmError(
                    f"QEMU started without the network filter {shim} (the dynamic loader refused it)",
                    hint=netfilter.BUILD_HINT + f"; QEMU said: {_qemu_said(console)}",
                )
            if state_fd is not None:
                await load_state(vm, INCOMING_FD)
        except (TimeoutError, OSError, asyncio.IncompleteReadError) as exc:
            if not isinstance(exc, TimeoutError):  # QEMU is exiting: take all it printed
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(asyncio.shield(vm._tasks[0]), 2)
            await vm.kill()
            raise VmError(
                f"QEMU failed while starting the VM ({exc}): {_qemu_said(console)}",
                hint="check the message above; `msb doctor` shows what this host supports",
            ) from exc
        except BaseException:
            await vm.kill()
            raise
        for server in servers:
            server.close()  # one connection each; nobody else may connect later
        for path in sockets.values():
            path.unlink(missing_ok=True)
        return vm

    def _child_setup(self, state_fd: int | None, cgroup: confine.SandboxCgroup | None) -> Callable[[], None]:
        """In the child: the death signal, the cgroup, and the saved state moved to :data:`INCOMING_FD`."""

        def setup() -> None:
            if self.die_with_parent:
                confine.die_with_parent()  # cleared again by -runas: the cgroup catches an orphan at the next start
            if cgroup is not None:
                cgroup.enter()
            if state_fd is not None:
                os.dup2(state_fd, INCOMING_FD)  # dup2 clears close-on-exec on the new fd

        return setup

    async def _spawn(
        self, argv: list[str], env: dict[str, str] | None, state_fd: int | None, volume_fds: list[int],
        cgroup: confine.SandboxCgroup | None,
    ) -> asyncio.subprocess.Process:
        inherited = tuple(volume_fds) + (() if state_fd is None else (INCOMING_FD,))
        return await asyncio.create_subprocess_exec(
            *argv,
            env=env,
            stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.DEVNULL,
            stderr=asyncio.subprocess.PIPE,
            start_new_session=True,  # Ctrl-C in a terminal goes to us, not straight to QEMU
            pass_fds=inherited,
            preexec_fn=self._child_setup(state_fd, cgroup),
        )

    async def _wait_connected(
        self,
        proc: asyncio.subprocess.Process,
        accepted: dict[str, asyncio.Future[tuple[asyncio.StreamReader, asyncio.StreamWriter]]],
        console: Console,
        stderr_done: asyncio.Future[None],
    ) -> dict[str, tuple[asyncio.StreamReader, asyncio.StreamWriter]]:
        waiter = asyncio.gather(*accepted.values())
        exited = asyncio.ensure_future(proc.wait())
        both: set[asyncio.Future[Any]] = {waiter, exited}
        done, _ = await asyncio.wait(both, timeout=CONNECT_TIMEOUT_S, return_when=asyncio.FIRST_COMPLETED)
        if waiter in done:
            exited.cancel()
            return dict(zip(accepted.keys(), waiter.result(), strict=True))
        waiter.cancel()
        exited.cancel()
        if proc.returncode is None:
            raise VmError(f"QEMU did not connect within {CONNECT_TIMEOUT_S:.0f} s: {_qemu_said(console)}")
        # QEMU has exited: its stderr is at EOF soon, so the pump has all it printed.
        with contextlib.suppress(asyncio.TimeoutError):
            await asyncio.wait_for(asyncio.shield(stderr_done), 2)
        raise VmError(
            f"QEMU exited with status {proc.returncode} before the VM started: {_qemu_said(console)}",
            hint="check the message above; `msb doctor` shows what this host supports",
        )


def _qemu_env(spec: VmSpec) -> tuple[dict[str, str] | None, Path | None]:
    """QEMU's environment and the filter it must load: the shim for ``public``, else as is.

    Raises:
        VmError: the scope is ``public`` and the shim is not built.
    """
    if spec.network != "public":
        return None, None
    shim = netfilter.require_shim()
    return netfilter.filter_env(shim, spec.ports, os.environ, netfilter.host_resolvers()), shim


def _qemu_said(console: Console) -> str:
    lines = [ln[7:] for ln in console.tail(4096).splitlines() if ln.startswith("[qemu] ")]
    return " ".join(lines).strip() or "no output"


def _accept_once(
    fut: asyncio.Future[tuple[asyncio.StreamReader, asyncio.StreamWriter]],
) -> Any:
    async def on_connect(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        if fut.done():
            writer.close()  # a second connection is never ours
            return
        fut.set_result((reader, writer))

    return on_connect


async def _qmp_handshake(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    greeting = await asyncio.wait_for(reader.readline(), CONNECT_TIMEOUT_S)
    if b"QMP" not in greeting:
        # QEMU exited (or is not QEMU): the caller reports what it printed on stderr.
        raise ConnectionResetError("QEMU closed its QMP socket")
    writer.write(b'{"execute":"qmp_capabilities"}\n')
    await writer.drain()
    reply = await asyncio.wait_for(reader.readline(), CONNECT_TIMEOUT_S)
    if b"return" not in reply:
        raise VmError(f"QMP negotiation failed: {reply[:200]!r}")
