"""The fake VMM backend: a pure-Python guest behind the real protocol, no QEMU, no kernel.

:class:`FakeBackend` implements :class:`~engine.vm.backend.VmBackend`. Each "VM" is a
:class:`FakeVm` whose channel is a :class:`MemoryChannel`: the host side still reads through
:func:`~engine.vm.channel.read_frame`, so every guest frame is bounded, decoded and validated
exactly as QEMU's socket would be. The guest is a :class:`~engine.vm.fake_guest.FakeGuest`
serving from a per-VM temporary directory that stands for ``/``.

Typical use (the engine skips kernels, initramfs and disk images for this backend)::

    engine = Engine(backend=FakeBackend(), kernel=Kernel(kind="custom", path=Path("/dev/null"),
                    version="fake"), accel="tcg")
    sandbox = await engine.start(SandboxSpec(name="t", rootfs=tmp_path))
"""

from __future__ import annotations

import asyncio
import contextlib
import shutil
import tempfile
import time
from collections import deque
from collections.abc import Callable
from pathlib import Path

from engine.sandbox.spec import NetScope, PortMap, VolumeMount
from engine.vm.backend import Accel, VmSpec
from engine.vm.channel import ChannelClosed, Wanted, read_frame
from engine.vm.fake_guest import MISBEHAVIOURS, FakeGuest
from engine.vm.network import check_network
from engine.vm.protocol import GuestFrame
from engine.vm.volumes import check_volumes

__all__ = ["MISBEHAVIOURS", "FakeBackend", "FakeGuest", "FakeVm", "MemoryChannel"]

_ROOT_DIRS = ("tmp", "root", "home", "etc", "var/tmp")


class _Pipe:
    """One direction of an in-memory byte stream (writes after close are dropped)."""

    def __init__(self) -> None:
        self.reader = asyncio.StreamReader(limit=1 << 21)
        self.closed = False

    def write(self, data: bytes) -> None:
        if not self.closed and data:
            self.reader.feed_data(data)

    def close(self) -> None:
        if not self.closed:
            self.closed = True
            self.reader.feed_eof()


class MemoryChannel:
    """The host end of an in-memory :class:`~engine.vm.channel.GuestChannel`.

    Host → guest bytes are fed to the guest's reader as they are sent (no backpressure: the
    host is trusted); guest → host bytes are parsed with the same bounded reader as real
    channels use.
    """

    def __init__(self, to_guest: _Pipe, from_guest: _Pipe) -> None:
        """Args:
        to_guest: the pipe the guest reads.
        from_guest: the pipe the guest writes.
        """
        self._to_guest = to_guest
        self._from_guest = from_guest

    async def send(self, data: bytes) -> None:
        """Deliver encoded frames to the guest.

        Raises:
            ChannelClosed: the channel is closed.
        """
        if self._to_guest.closed:
            raise ChannelClosed("channel closed")
        self._to_guest.write(data)

    async def recv(self, wanted: Wanted | None = None) -> GuestFrame | None:
        """Return the next validated guest frame (``None``: one ``wanted`` refused, dropped).

        Raises:
            ChannelClosed: the guest side is closed (clean EOF between frames).
            ProtocolError: the guest sent a malformed, oversized or truncated frame.
        """
        return await read_frame(self._from_guest.reader, wanted)

    def close(self) -> None:
        """Close both directions; a pending ``recv`` ends with ``ChannelClosed``."""
        self._to_guest.close()
        self._from_guest.close()


class FakeVm:
    """A running fake VM (implements :class:`~engine.vm.backend.VmHandle`).

    Attributes:
        guest: the agent, for tests to inspect or steer (``cpu_load``, ``execs``,
            ``identities``, ``refuse_identity``); :meth:`crash` makes the VM die.
        root: the directory standing for the guest's ``/`` (removed when the VM ends).
        spec: what it was launched with.
        volumes, ports, network: the spec's, recorded for tests of the layers above. Volumes
            are visible to file requests (not to commands); ports and network are not emulated.
    """

    pid: int | None = None

    def __init__(self, spec: VmSpec, root: Path, guest: FakeGuest) -> None:
        """Args:
        spec: the VM spec.
        root: an existing, private directory for the guest's files.
        guest: the agent that serves this VM.
        """
        self.spec = spec
        self.volumes: tuple[VolumeMount, ...] = spec.volumes
        self.ports: tuple[PortMap, ...] = spec.ports
        self.network: NetScope = spec.network
        self.accel: Accel = spec.accel
        self.root = root
        self.guest = guest
        self._to_guest, self._from_guest = _Pipe(), _Pipe()
        self.channel = MemoryChannel(self._to_guest, self._from_guest)
        self._console: deque[str] = deque(maxlen=200)
        self._exited = asyncio.Event()
        self._code = 0
        self._stopping: asyncio.Task[None] | None = None
        self.console(f"[    0.000000] Linux version 0.0-fake (msb fake backend), {spec.cpus} CPU(s)")
        self.console(f"msb-agent (fake): serving {spec.name} from {root}")
        self._serve = asyncio.create_task(
            guest.serve(self._to_guest.reader, self._guest_send, self._die), name=f"fake-guest-{spec.name}"
        )

    @property
    def hostname(self) -> str:
        """The guest's hostname: the spec's name at boot, then what IDENTITY or RESUME set."""
        return self.guest.hostname

    def console(self, line: str) -> None:
        """Append a line to the fake serial console."""
        self._console.append(line)

    def console_tail(self, max_bytes: int = 4096) -> str:
        """Return the last ``max_bytes`` of console output."""
        return "".join(f"{line}\n" for line in self._console)[-max_bytes:]

    def exited(self) -> bool:
        """Whether the VM has ended."""
        return self._exited.is_set()

    async def wait_exited(self) -> int:
        """Wait until the VM ends; return its exit status (0 after SHUTDOWN, -9 after kill)."""
        await self._exited.wait()
        return self._code

    async def kill(self) -> None:
        """End the VM at once, as SIGKILL ends QEMU (status -9). Safe to call twice."""
        await self._die(-9, "")

    async def crash(self, code: int = 1, message: str = "Kernel panic - not syncing: fake crash") -> None:
        """Make the VM die as if the guest kernel panicked (for tests of crash handling).

        Args:
            code: the VMM's exit status.
            message: the last console line.
        """
        await self._die(code, message)

    async def _die(self, code: int, line: str) -> None:
        if self._stopping is None:
            self._stopping = asyncio.create_task(self._end(code, line))
        await asyncio.shield(self._stopping)

    def _guest_send(self, data: bytes) -> None:
        if self._stopping is None:  # a dying guest's last words never reach the host
            self._from_guest.write(data)

    async def _end(self, code: int, line: str) -> None:
        if line:
            self.console(line)
        self._to_guest.close()
        self._serve.cancel()
        await self.guest.stop()
        with contextlib.suppress(asyncio.CancelledError):
            await self._serve
        shutil.rmtree(self.root, ignore_errors=True)
        self._code = code
        self._exited.set()  # before the channel's EOF, as a VMM's exit is usually seen first
        self._from_guest.close()


class FakeBackend:
    """Starts :class:`FakeVm` s (implements :class:`~engine.vm.backend.VmBackend`).

    Attributes:
        vms: every VM this backend launched, oldest first (tests reach guests through it).
    """

    name = "fake"
    needs_boot_assets = False
    """No kernel, initramfs or disk images: the engine skips building them."""

    def __init__(
        self,
        *,
        misbehave: str | None = None,
        clock: Callable[[], float] = time.monotonic,
        tmp_dir: Path | None = None,
    ) -> None:
        """Args:
        misbehave: passed to every :class:`FakeGuest` (see :data:`MISBEHAVIOURS`).
        clock: monotonic seconds for the guests' uptime and CPU ticks.
        tmp_dir: where the per-VM root directories go (default: the system temp dir).
        """
        self.misbehave = misbehave
        self.clock = clock
        self.tmp_dir = tmp_dir
        self.vms: list[FakeVm] = []

    async def launch(self, spec: VmSpec) -> FakeVm:
        """Start a fake VM; its guest sends READY at once (unless told not to), or HELD for a
        ``template_stage="root"`` spec.

        Raises:
            ConfigError: ``misbehave`` is unknown, or volumes or ports the QEMU backend would
                refuse too (engine/vm/volumes.py, engine/vm/network.py).
        """
        check_volumes(spec.volumes)
        check_network(spec)
        root = Path(tempfile.mkdtemp(prefix=f"msb-fake-{spec.name[:16]}-", dir=self.tmp_dir))
        for d in _ROOT_DIRS:
            (root / d).mkdir(parents=True, exist_ok=True)
        try:
            guest = FakeGuest(
                root, misbehave=self.misbehave, cpus=spec.cpus, memory_mib=spec.memory_mib, clock=self.clock,
                volumes=spec.volumes, hostname=spec.name[:63], hold=spec.template_stage == "root",
            )  # fmt: skip
        except BaseException:
            shutil.rmtree(root, ignore_errors=True)
            raise
        vm = FakeVm(spec, root, guest)
        self.vms.append(vm)
        return vm
