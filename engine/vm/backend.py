"""The VMM backend seam.

A :class:`VmBackend` turns a :class:`VmSpec` into a running :class:`VmHandle` whose channel
leads to the guest agent. The QEMU backend (:mod:`engine.vm.qemu`) is the real one; the fake
(:mod:`engine.vm.fake`) runs an in-process guest for unit tests of everything above.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal, Protocol

from pydantic import BaseModel, ConfigDict, Field

from engine.sandbox.spec import NetScope, PortMap, VolumeMount
from engine.vm.channel import GuestChannel

Accel = Literal["kvm", "tcg", "none"]
"""``none``: the backend uses no hardware or emulated CPU of its own (gVisor, the fake)."""


class VmSpec(BaseModel):
    """Everything a backend needs to start one VM."""

    model_config = ConfigDict(frozen=True)

    name: str
    """Used for the hostname and in logs."""
    kernel: Path
    initrd: Path
    root_image: Path
    """Read-only ext4 image of the root filesystem (the overlay's lower layer); for backends
    that run a directory (``needs_boot_assets`` False: gVisor, libkrun) the image's tree."""
    upper_image: Path | None = None
    """Persistent writable layer: an ext4 image (QEMU) or a directory (gVisor, libkrun);
    ``None`` = in memory, gone at stop."""
    cpus: int = Field(default=1, ge=1, le=64)
    memory_mib: int = Field(default=512, ge=64, le=1 << 20)
    """Guest RAM in MiB."""
    accel: Accel = "tcg"
    run_dir: Path
    """Private directory for sockets and logs of this VM (created by the caller, mode 0700)."""
    kernel_args: tuple[str, ...] = ()
    """Kernel-specific boot parameters (:meth:`engine.vm.kernel.Kernel.boot_args`)."""
    extra_cmdline: str = ""
    volumes: tuple[VolumeMount, ...] = ()
    """Host directories shared over virtio-9p (engine/vm/volumes.py)."""
    ports: tuple[PortMap, ...] = ()
    """Guest ports published on the host (slirp ``hostfwd``; not with ``network="none"``)."""
    network: NetScope = "none"
    """``none`` here (the KVM probe boots offline); sandboxes pass their spec's scope."""
    machine: Literal["microvm", "q35"] = "microvm"
    memory_file: Path | None = None
    """Back guest RAM with this file (templates, engine/vm/template.py): shared with it when
    ``memory_shared`` (a template being built writes its RAM there), else mapped privately,
    copy-on-write (a restored VM reads the template's pages and never changes the file)."""
    memory_shared: bool = False
    template_stage: Literal["root"] | None = None
    """Boot as a template that stops before mounting the root: the agent sends HELD instead
    of READY and waits for RESUME."""
    incoming: Path | None = None
    """Restore the device state saved in this file instead of booting (with ``memory_file``)."""


class VmHandle(Protocol):
    """A running VM."""

    # Read-only properties, not plain attributes: a mutable protocol attribute is invariant,
    # so a handle whose channel is a StreamChannel (or the fake's MemoryChannel) would not
    # count as a VmHandle for the type checker.
    @property
    def channel(self) -> GuestChannel:
        """The frame pipe to the guest agent."""
        ...

    @property
    def pid(self) -> int | None:
        """Host pid of the VMM process, if there is one."""
        ...

    @property
    def accel(self) -> Accel:
        """The accelerator the VM runs under."""
        ...

    def console_tail(self, max_bytes: int = 4096) -> str:
        """Return the last console output of the guest (bounded)."""
        ...

    async def wait_exited(self) -> int:
        """Wait until the VMM process is gone; return its exit status."""
        ...

    def exited(self) -> bool:
        """Whether the VMM process has ended."""
        ...

    async def kill(self) -> None:
        """Kill the VMM at once and reap it. Safe to call twice."""
        ...


class VmBackend(Protocol):
    """Starts VMs."""

    name: str
    needs_boot_assets: bool
    """Whether VMs boot a kernel, initramfs and disk images that the engine must prepare
    (``False`` for the fake backend, which boots nothing)."""

    async def launch(self, spec: VmSpec) -> VmHandle:
        """Start a VM and return once its channel is connected (not yet READY).

        Raises:
            VmError: the VMM is missing or refused to start (message says what to do).
        """
        ...
