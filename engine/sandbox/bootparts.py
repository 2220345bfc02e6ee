"""Pieces of starting a sandbox that do not need the engine: the persistent layer's format
check and the error a failed boot becomes."""

from __future__ import annotations

import asyncio
from pathlib import Path

from engine.errors import BootError, ConfigError
from engine.sandbox.capacity import saturation_note
from engine.vm.backend import Accel, VmHandle, VmSpec
from engine.vm.protocol import Ready

DIR_UPPER = "upper"
"""The writable layer of a persistent sandbox on a directory-root backend (gVisor, libkrun)."""


def check_layer_format(persist_dir: Path, backend: str, *, image: bool) -> None:
    """Refuse to start a persistent sandbox whose files are in the other backend kind's format.

    QEMU keeps a persistent sandbox's files in ``upper.ext4``; gVisor and libkrun in the
    directory ``upper``. Starting on the other kind would show an empty disk and leave the
    files behind, so it is an error that names the backend to use.

    Raises:
        ConfigError: the files are in the other format.
    """
    ext4 = persist_dir / "upper.ext4"
    tree = persist_dir / DIR_UPPER
    has_tree = tree.is_dir() and any(tree.iterdir())
    if image and has_tree:
        raise ConfigError(
            f"this sandbox's files were written by a directory-root backend (gVisor or libkrun) in {tree}; "
            f"the {backend} backend keeps files in a disk image and would not see them",
            hint="start it with --backend gvisor (or the one it last ran on), or remove that directory to start afresh",
        )
    if not image and ext4.is_file() and ext4.stat().st_size > 0:
        raise ConfigError(
            f"this sandbox's files are in a QEMU disk image ({ext4}); the {backend} backend runs a directory root "
            "and would not see them",
            hint="start it with --backend qemu, or remove the image to start afresh",
        )


def boot_error(
    spec: VmSpec, vm: VmHandle, ready: asyncio.Future[Ready], exited: asyncio.Future[int], deadline: float
) -> BootError:
    tail = vm.console_tail(3000)
    accel: Accel = spec.accel
    if exited.done() and not exited.cancelled():
        what = f"the VM exited (status {exited.result()}) before the guest agent was ready"
    elif ready.done() and not ready.cancelled() and ready.exception() is not None:
        what = f"the guest agent failed during boot: {ready.exception()}"
    else:
        what = f"the guest agent did not say ready within {deadline:.0f} s"
    hint = "check the kernel (MSB_KERNEL / `make kernel`) and agent (`make agent`); the console tail is below"
    if accel == "tcg":
        hint += "; under TCG a busy host boots slower: raise boot_timeout_s"
    busy = saturation_note()
    if busy is not None:
        hint = f"{busy}; else {hint}"
    return BootError(f"sandbox {spec.name!r} failed to boot: {what}", hint=hint, console_tail=tail)
