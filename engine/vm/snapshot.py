"""Saving and restoring a QEMU VM's state over QMP (the mechanics under engine/vm/template.py).

Guest RAM lives in a file (``VmSpec.memory_file``). A template VM maps it shared, so when it
is saved its RAM is already in the file; the migration stream then carries only the device
state (the ``x-ignore-shared`` capability: tens of KiB instead of tens of MiB). A restored VM
maps the same file privately: it reads the template's pages copy-on-write and every pool
member shares the pages it has not written. QEMU 7.2 has no ``file:`` migration URI, and
``exec:`` would need ``-sandbox spawn=allow``, so both directions pass an open file
descriptor instead: ``getfd`` over the QMP socket to save, an inherited fd to restore
(``-incoming defer``: 7.2 can set ``x-ignore-shared`` only over QMP).
"""

from __future__ import annotations

import asyncio
import json
import os
import socket
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from engine.errors import VmError

if TYPE_CHECKING:
    from engine.vm.qemu import QemuVm

MIGRATE_TIMEOUT_S = 30.0
CAPS = {"capabilities": [{"capability": "x-ignore-shared", "state": True}]}


async def load_state(vm: QemuVm, fd: int) -> None:
    """Feed QEMU (started with ``-incoming defer``) the state behind its inherited ``fd`` and
    wait until the VM runs.

    Raises:
        VmError: the state does not fit this VM (QEMU says why and exits) or loading timed out.
    """
    await vm.qmp("migrate-set-capabilities", CAPS)
    await vm.qmp("migrate-incoming", {"uri": f"fd:{fd}"})
    deadline = time.monotonic() + MIGRATE_TIMEOUT_S
    while True:
        status = await vm.qmp("query-status")
        if status.get("status") == "running":
            return
        if status.get("status") not in ("inmigrate", "paused", "prelaunch", "restore-vm"):
            raise VmError(f"restoring the VM state failed (QEMU is {status.get('status')})")
        if time.monotonic() > deadline:
            raise VmError(f"restoring the VM state did not finish within {MIGRATE_TIMEOUT_S:.0f} s")
        await asyncio.sleep(0.001)


async def save_state(vm: QemuVm, path: Path) -> int:
    """Save the device state of a running VM into ``path`` (RAM stays in its shared file);
    the VM is left paused. Returns the state's size in bytes.

    Raises:
        VmError: QMP refused or the migration failed.
    """
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o600)
    try:
        await vm.qmp("migrate-set-capabilities", CAPS)
        await _pass_fd(vm, fd, "msb-state")
    finally:
        os.close(fd)
    await vm.qmp("migrate", {"uri": "fd:msb-state"})
    deadline = time.monotonic() + MIGRATE_TIMEOUT_S
    while True:
        info: dict[str, Any] = await vm.qmp("query-migrate")
        status = info.get("status")
        if status == "completed":
            break
        if status in ("failed", "cancelled"):
            raise VmError(f"saving the VM state failed: {info.get('error-desc', status)}")
        if time.monotonic() > deadline:
            raise VmError(f"saving the VM state did not finish within {MIGRATE_TIMEOUT_S:.0f} s")
        await asyncio.sleep(0.002)
    return path.stat().st_size


async def _pass_fd(vm: QemuVm, fd: int, name: str) -> None:
    """QMP ``getfd``: the command travels with ``fd`` attached (SCM_RIGHTS)."""
    if vm._qmp is None:
        raise VmError("QMP is not connected")
    reader, writer = vm._qmp
    await writer.drain()  # nothing of ours may be queued behind the direct send below
    raw = writer.get_extra_info("socket")
    if raw is None:
        raise VmError("QMP has no socket to pass a file descriptor over")
    msg = json.dumps({"execute": "getfd", "arguments": {"fdname": name}}).encode() + b"\n"
    with socket.socket(fileno=os.dup(raw.fileno())) as sock:  # closing it closes only the dup
        socket.send_fds(sock, [msg], [fd])
    while True:
        line = await reader.readline()
        if not line:
            raise VmError("QMP closed during getfd")
        reply = json.loads(line)
        if "error" in reply:
            raise VmError(f"QMP getfd failed: {reply['error'].get('desc')}")
        if "return" in reply:
            return
