"""Host capacity: the limits that refuse a start cleanly before the host runs out.

A sandbox's memory is not committed when it starts: QEMU maps guest RAM (or a template's RAM
file, copy-on-write) and gVisor's Sentry allocates as the guest touches pages, each bounded by
its cgroup's limit. So the sum of the sandboxes' ``memory_mib`` may exceed the host's RAM, and
what runs out is what the host has left. Two checks, made by :meth:`Engine.start
<engine.sandbox.engine.Engine.start>` before anything is booted:

- **memory reserve** (on by default): a start is refused while the host's ``MemAvailable`` is
  below ``MSB_HOST_RESERVE_MIB`` (default: 5 % of RAM, at least 1 GiB; ``0`` turns it off).
- **CPU pressure** (off by default): with ``MSB_MAX_CPU_PRESSURE=P`` (percent), a start waits up
  to :data:`PRESSURE_WAIT_S` for the host's CPU pressure (``/proc/pressure/cpu``, "some" over
  the last 60 s) to fall to ``P`` or below, and is refused if it does not. Idle gVisor sandboxes
  on the systrap platform cost CPU (docs/backends.md), so this is the limit that stops a host
  from being filled with sandboxes it can no longer serve. It is off by default because a burst
  of starts or busy commands raises the pressure for a while too.

Both refuse with :class:`CapacityError` (JSON-RPC -32032), whose message gives the figure and
the setting. The server's own quotas (``MSB_MAX_SANDBOXES`` …, engine/server/tenancy.py) come
first; these guard the host across every server, CLI and pool on it.
"""

from __future__ import annotations

import asyncio
import logging
import os
import resource
import time
from dataclasses import dataclass
from pathlib import Path

from engine.errors import MsbError

log = logging.getLogger(__name__)

PRESSURE_WAIT_S = 10.0
"""How long a start waits for the CPU pressure to fall before it is refused."""
PRESSURE_POLL_S = 1.0
MIN_RESERVE_MIB = 1024


class CapacityError(MsbError):
    """The host has no room for another sandbox (memory reserve or CPU pressure)."""

    code = -32032


def meminfo_mib(key: str, meminfo: Path = Path("/proc/meminfo")) -> float | None:
    """``key`` (``MemAvailable``, ``MemTotal`` …) of ``meminfo`` in MiB, or None if unreadable."""
    for line in _read(meminfo).splitlines():
        if line.startswith(f"{key}:"):
            try:
                return int(line.split()[1]) / 1024
            except (IndexError, ValueError):
                return None
    return None


def cpu_pressure(text: str) -> tuple[float, float] | None:
    """``(avg10, avg60)`` of the "some" line of ``/proc/pressure/cpu``, or None if unreadable."""
    for line in text.splitlines():
        if line.startswith("some "):
            fields = dict(f.split("=", 1) for f in line.split()[1:] if "=" in f)
            try:
                return float(fields["avg10"]), float(fields["avg60"])
            except (KeyError, ValueError):
                return None
    return None


def _read(path: Path) -> str:
    try:
        return path.read_text()
    except OSError:
        return ""


@dataclass(frozen=True)
class HostCapacity:
    """The host-wide start limits; see the module doc.

    Attributes:
        reserve_mib: refuse while ``MemAvailable`` is below this (0: off).
        max_cpu_pressure: refuse while CPU pressure (some, avg60, %) stays above this (None: off).
    """

    reserve_mib: float
    max_cpu_pressure: float | None = None
    meminfo: Path = Path("/proc/meminfo")
    pressure: Path = Path("/proc/pressure/cpu")

    @classmethod
    def from_env(cls, env: dict[str, str] | None = None, meminfo: Path = Path("/proc/meminfo")) -> HostCapacity:
        """The limits from ``MSB_HOST_RESERVE_MIB`` and ``MSB_MAX_CPU_PRESSURE``.

        Raises:
            CapacityError: a value is not a number (the message names the variable).
        """
        env = dict(os.environ) if env is None else env
        total = meminfo_mib("MemTotal", meminfo) or 0.0
        reserve = max(MIN_RESERVE_MIB, total * 0.05) if total else float(MIN_RESERVE_MIB)
        pressure: float | None = None
        try:
            if env.get("MSB_HOST_RESERVE_MIB", "").strip():
                reserve = float(env["MSB_HOST_RESERVE_MIB"])
            if env.get("MSB_MAX_CPU_PRESSURE", "").strip():
                pressure = float(env["MSB_MAX_CPU_PRESSURE"]) or None
        except ValueError as exc:
            raise CapacityError(f"a host capacity setting is not a number: {exc}",
                                hint="MSB_HOST_RESERVE_MIB is MiB (0 turns it off); MSB_MAX_CPU_PRESSURE is "
                                     "a percentage (0 or unset turns it off)") from None  # fmt: skip
        return cls(reserve_mib=max(0.0, reserve), max_cpu_pressure=pressure, meminfo=meminfo)

    def check_memory(self) -> None:
        """Raises:
        CapacityError: ``MemAvailable`` is below the reserve.
        """
        if not self.reserve_mib:
            return
        avail = meminfo_mib("MemAvailable", self.meminfo)
        if avail is not None and avail < self.reserve_mib:
            raise CapacityError(
                f"the host has {avail:.0f} MiB of memory available, below its reserve of "
                f"{self.reserve_mib:.0f} MiB: no more sandboxes start on it",
                hint="stop idle sandboxes (`msb ps`, `sandbox.stop`), or lower MSB_HOST_RESERVE_MIB "
                "if the host really can spare it",
            )

    def pressure_now(self) -> tuple[float, float] | None:
        return cpu_pressure(_read(self.pressure))

    async def check_cpu(self, wait_s: float = PRESSURE_WAIT_S) -> None:
        """Wait up to ``wait_s`` for the CPU pressure (avg60) to fall to the limit.

        Raises:
            CapacityError: it stayed above (message: the figure and the setting).
        """
        if self.max_cpu_pressure is None:
            return
        deadline = time.monotonic() + wait_s
        while True:
            now = self.pressure_now()
            if now is None or now[1] <= self.max_cpu_pressure:
                return
            if time.monotonic() >= deadline:
                raise CapacityError(
                    f"the host's CPU is saturated (tasks waited for a CPU {now[1]:.0f} % of the last "
                    f"minute, over MSB_MAX_CPU_PRESSURE={self.max_cpu_pressure:g}): no more sandboxes "
                    "start on it until that falls",
                    hint="stop idle sandboxes, or run fewer at once; on gVisor, MSB_GVISOR_PLATFORM=ptrace makes "
                    "idle sandboxes cost no CPU (docs/backends.md)",
                )
            await asyncio.sleep(PRESSURE_POLL_S)  # PSI averages move by the second: nothing to wait on

    async def check(self) -> None:
        """Both checks; see the module doc.

        Raises:
            CapacityError: the host has no room for another sandbox.
        """
        self.check_memory()
        await self.check_cpu()


def saturation_note(pressure: Path = Path("/proc/pressure/cpu")) -> str | None:
    """A sentence for a boot error when the host is CPU-saturated right now, else None."""
    now = cpu_pressure(_read(pressure))
    if now is None or now[0] < 80:
        return None
    return (f"the host's CPU is saturated (tasks waited for a CPU {now[0]:.0f} % of the last 10 s), which "
            "slows every boot: run fewer sandboxes at once, or set MSB_MAX_CPU_PRESSURE so starts are "
            "refused cleanly instead")  # fmt: skip


FD_TARGET = 65536


def raise_fd_limit(target: int = FD_TARGET) -> int:
    """Raise this process's soft ``RLIMIT_NOFILE`` towards ``target`` (never above the hard
    limit, never lower); the new soft limit.

    Each running sandbox holds a handful of descriptors in the process that started it (its
    channel, console, pipes, cgroup and namespace handles), so the usual soft limit of 1024
    would end a host's sandboxes at about a hundred with ``EMFILE`` in the middle of a start.
    """
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    want = target if hard == resource.RLIM_INFINITY else min(target, hard)
    if soft != resource.RLIM_INFINITY and soft < want:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (want, hard))
            return want
        except (ValueError, OSError) as exc:
            log.warning("could not raise the open-file limit from %d to %d: %s", soft, want, exc)
    return soft
