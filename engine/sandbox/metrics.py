"""Sandbox metrics: guest samples turned into rates, plus the host cost of the VM."""

from __future__ import annotations

import time

from pydantic import BaseModel, Field

from engine.vm.agent import GuestMetrics


class Metrics(BaseModel):
    """One metrics reading of a running sandbox."""

    cpu_percent: float = Field(ge=0)
    """Guest CPU use over the interval since the previous reading (100 = one vCPU busy ×
    ncpus, i.e. a percentage of the whole VM)."""
    memory_mib: float = Field(ge=0)
    """Guest memory in use (total − available), MiB."""
    memory_total_mib: float = Field(ge=0)
    disk_bytes: int = Field(ge=0)
    """Bytes used in the writable layer."""
    processes: int = Field(ge=0)
    uptime_s: float = Field(ge=0)
    host_rss_mib: float | None = None
    """Resident memory of the VMM process on the host, MiB."""
    interval_s: float = Field(ge=0)
    """Length of the interval ``cpu_percent`` covers, seconds."""


class MetricsTracker:
    """Turns successive raw samples into :class:`Metrics` (CPU % needs two samples)."""

    def __init__(self) -> None:
        self._prev: tuple[float, GuestMetrics] | None = None

    def update(self, raw: GuestMetrics, host_rss_mib: float | None) -> Metrics:
        """Fold in a new sample and return the reading."""
        now = time.monotonic()
        prev = self._prev
        if prev is not None and raw.cpu_total_ticks > prev[1].cpu_total_ticks:
            busy = raw.cpu_busy_ticks - prev[1].cpu_busy_ticks
            total = raw.cpu_total_ticks - prev[1].cpu_total_ticks
            interval = now - prev[0]
        else:  # first sample: average since boot
            busy, total = raw.cpu_busy_ticks, raw.cpu_total_ticks
            interval = raw.uptime_ms / 1000
        self._prev = (now, raw)
        pct = 100.0 * busy / total if total > 0 else 0.0
        used_kib = max(raw.mem_total_kib - raw.mem_available_kib, 0)
        return Metrics(
            cpu_percent=round(min(max(pct, 0.0), 100.0), 2),
            memory_mib=round(used_kib / 1024, 2),
            memory_total_mib=round(raw.mem_total_kib / 1024, 2),
            disk_bytes=raw.disk_used_bytes,
            processes=raw.nprocs,
            uptime_s=raw.uptime_ms / 1000,
            host_rss_mib=host_rss_mib,
            interval_s=round(interval, 3),
        )


def process_rss_mib(pid: int | None) -> float | None:
    """Resident set size of a host process in MiB, or None if unknown."""
    if pid is None:
        return None
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return round(int(line.split()[1]) / 1024, 1)
    except (OSError, ValueError):
        return None
    return None


def process_pss_mib(pid: int | None) -> float | None:
    """Proportional set size of a host process in MiB (pages shared with others, such as a
    template's RAM, count by share), or its RSS if smaps is unreadable; None if unknown."""
    if pid is None:
        return None
    try:
        with open(f"/proc/{pid}/smaps_rollup") as f:
            for line in f:
                if line.startswith("Pss:"):
                    return round(int(line.split()[1]) / 1024, 1)
    except (OSError, ValueError):
        pass
    return process_rss_mib(pid)
