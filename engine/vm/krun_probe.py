"""Does the libkrun backend work on this host? A real probe boot answers it.

:func:`aprobe_krun` (and its blocking twin :func:`probe_krun`) return the fields of
``engine.vm.select.BackendVerdict``: usable only if libkrun is found, ``/dev/kvm`` opens and a
probe VM — an empty root, the agent, no network — boots and its agent sends READY within the
deadline. Otherwise ``reason`` says which step failed and how (library not found, /dev/kvm
permission, libkrun's own error such as ``KVM_EXIT_INTERNAL_ERROR``, a timeout).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import tempfile
import time
from pathlib import Path
from typing import TypedDict

from engine import paths
from engine.errors import MsbError
from engine.vm.agent import AgentClient
from engine.vm.backend import VmSpec
from engine.vm.krun_backend import KrunBackend, KrunVm
from engine.vm.krun_ffi import find_libkrun, library_version

PROBE_DEADLINE_S = 10.0
ISOLATION = (
    "hardware virtualisation (KVM via libkrun): the guest runs its own kernel (libkrunfw) in a KVM "
    "virtual machine; the host is protected by KVM and by libkrun's VMM process, which has no seccomp "
    "filter and serves the guest's root and volumes over virtio-fs from nosuid,nodev mounts"
)
KVM_HINT = "make /dev/kvm usable (load kvm_intel or kvm_amd, allow this user), or use --backend gvisor"


class KrunProbe(TypedDict):
    """The fields of ``BackendVerdict`` for libkrun."""

    name: str
    usable: bool
    reason: str
    version: str | None
    accel: str | None
    probe_ms: float | None
    isolation: str
    hint: str | None


def _verdict(usable: bool, reason: str, *, version: str | None = None, probe_ms: float | None = None,
             hint: str | None = None) -> KrunProbe:  # fmt: skip
    return KrunProbe(name="krun", usable=usable, reason=reason, version=version, accel="kvm" if usable else None,
                     probe_ms=probe_ms, isolation=ISOLATION, hint=hint)  # fmt: skip


def _kvm_error() -> str | None:
    try:
        os.close(os.open("/dev/kvm", os.O_RDWR | os.O_CLOEXEC))
    except OSError as e:
        return f"/dev/kvm: {e.strerror}"
    return None


async def _boot(lib: str, deadline_s: float) -> float:
    """Boot the probe VM until READY; return the milliseconds it took.

    Raises:
        MsbError: launch failed; TimeoutError: no READY within the deadline.
    """
    empty = Path(tempfile.mkdtemp(prefix="msb-krun-probe-"))
    run_dir = paths.new_run_dir("krun-probe")
    spec = VmSpec(name="krun-probe", kernel=Path(os.devnull), initrd=Path(os.devnull), root_image=empty,
                  run_dir=run_dir, memory_mib=256, accel="kvm", network="none")  # fmt: skip
    vm: KrunVm | None = None
    client: AgentClient | None = None
    t0 = time.perf_counter()
    try:
        async with asyncio.timeout(deadline_s):
            vm = await KrunBackend(libkrun=lib, connect_timeout_s=deadline_s).launch(spec)
            client = AgentClient(vm.channel)
            await client.wait_ready()
        return (time.perf_counter() - t0) * 1000
    finally:
        if client is not None:
            await client.close()
        if vm is not None:
            await vm.kill()
        shutil.rmtree(run_dir, ignore_errors=True)
        with contextlib.suppress(OSError):
            empty.rmdir()


async def aprobe_krun(deadline_s: float = PROBE_DEADLINE_S) -> KrunProbe:
    """Probe libkrun: library, /dev/kvm, then a real boot of the agent (at most ``deadline_s``)."""
    try:
        lib = find_libkrun()
    except MsbError as e:
        return _verdict(False, e.message, hint=e.hint)
    version = library_version(lib)
    kvm = _kvm_error()
    if kvm is not None:
        return _verdict(False, kvm, version=version, hint=KVM_HINT)
    try:
        ms = await _boot(lib, deadline_s)
    except TimeoutError:
        return _verdict(
            False,
            f"the probe VM's agent did not answer within {deadline_s:.0f} s",
            version=version,
            hint="MSB_KRUN_LOG=4 shows libkrun's log; use --backend qemu or gvisor meanwhile",
        )
    except MsbError as e:
        return _verdict(False, f"probe boot failed: {e.message}", version=version, hint=e.hint)
    return _verdict(True, f"probe boot answered in {ms:.0f} ms", version=version, probe_ms=ms)


def probe_krun(deadline_s: float = PROBE_DEADLINE_S) -> KrunProbe:
    """:func:`aprobe_krun` for callers without an event loop (not from inside one)."""
    return asyncio.run(aprobe_krun(deadline_s))
