"""Choosing the accelerator by a real probe, not by the presence of ``/dev/kvm``.

On some hosts ``/dev/kvm`` exists but stock guest kernels hang on it (nested "PVM"
virtualisation, for one). So the first start on a host boots the real guest once under KVM
with a short deadline; if the agent does not answer, TCG is used. The verdict is cached per
host kernel, QEMU binary and guest kernel, so later starts pay nothing.

``MSB_ACCEL=kvm|tcg|auto`` forces a choice; a forced ``kvm`` that fails its probe is an error
that carries the probe's reason.
"""

from __future__ import annotations

import hashlib
import json
import os
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Literal

from pydantic import BaseModel

from engine.errors import AccelError, MsbError
from engine.vm.backend import Accel

PROBE_DEADLINE_S = 6.0
"""A KVM boot of our guest takes well under a second; a hang is noticed after this."""

TCG_WARNING = (
    "TCG (software emulation) is in force: QEMU does not treat TCG as a security boundary, "
    "so this is a compatibility mode — do not rely on it to contain hostile code."
)


class AccelVerdict(BaseModel):
    """Which accelerator is in force and why."""

    accel: Accel
    reason: str
    probe_ms: float | None = None
    """Wall time of the KVM probe boot, in milliseconds (None when none ran)."""
    source: Literal["probe", "cache", "forced", "no-device"]

    @property
    def warning(self) -> str | None:
        """A message for users when the accelerator is not a security boundary."""
        return TCG_WARNING if self.accel == "tcg" else None


def _host_key(qemu: str, kernel: Path) -> str:
    u = os.uname()
    parts = [u.release, u.version, u.machine, qemu]
    for p in (Path(qemu), kernel):
        try:
            st = p.stat()
            parts += [str(p), str(st.st_size), str(st.st_mtime_ns)]
        except OSError:
            parts.append(str(p))
    return hashlib.sha256("\0".join(parts).encode()).hexdigest()[:32]


def kvm_usable() -> str | None:
    """Return why ``/dev/kvm`` cannot be used, or ``None`` if it opens."""
    try:
        fd = os.open("/dev/kvm", os.O_RDWR | os.O_CLOEXEC)
    except OSError as exc:
        return f"/dev/kvm: {exc.strerror}"
    os.close(fd)
    return None


async def choose_accel(
    *,
    qemu: str,
    kernel: Path,
    cache_file: Path,
    probe: Callable[[float], Awaitable[None]],
    forced: str | None = None,
) -> AccelVerdict:
    """Decide between KVM and TCG.

    Args:
        qemu: the QEMU binary (part of the cache key).
        kernel: the guest kernel (part of the cache key).
        cache_file: JSON file holding verdicts by host key.
        probe: boots the guest under KVM and returns once the agent is ready; raises on
            failure. Gets the deadline in seconds.
        forced: ``"kvm"``, ``"tcg"``, ``"auto"`` or ``None`` (``MSB_ACCEL`` when None).

    Returns:
        The verdict.

    Raises:
        AccelError: ``kvm`` was forced and does not work here.
    """
    forced = (forced or os.environ.get("MSB_ACCEL") or "auto").lower()
    if forced not in ("kvm", "tcg", "auto"):
        raise AccelError(f"unknown accelerator {forced!r}", hint="use MSB_ACCEL=kvm, tcg or auto")
    if forced == "tcg":
        return AccelVerdict(accel="tcg", reason="forced by MSB_ACCEL=tcg", source="forced")
    missing = kvm_usable()
    if missing:
        if forced == "kvm":
            raise AccelError(f"KVM was forced but {missing}", hint="use MSB_ACCEL=tcg or auto")
        return AccelVerdict(accel="tcg", reason=missing, source="no-device")
    key = _host_key(qemu, kernel)
    cache = _load(cache_file)
    if forced == "auto" and key in cache:
        verdict = AccelVerdict.model_validate(cache[key])
        return verdict.model_copy(update={"source": "cache"})
    verdict = await _probe(probe)
    cache[key] = verdict.model_dump()
    _store(cache_file, cache)
    if forced == "kvm" and verdict.accel != "kvm":
        raise AccelError(f"KVM was forced but its probe failed: {verdict.reason}", hint="use MSB_ACCEL=tcg or auto")
    return verdict


async def _probe(probe: Callable[[float], Awaitable[None]]) -> AccelVerdict:
    t0 = time.perf_counter()
    try:
        await probe(PROBE_DEADLINE_S)
    except (MsbError, TimeoutError, OSError) as exc:
        ms = (time.perf_counter() - t0) * 1000
        first = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        return AccelVerdict(
            accel="tcg", reason=f"KVM probe boot failed ({first}); using TCG", probe_ms=ms, source="probe"
        )
    ms = (time.perf_counter() - t0) * 1000
    return AccelVerdict(accel="kvm", reason=f"KVM probe boot answered in {ms:.0f} ms", probe_ms=ms, source="probe")


def _load(path: Path) -> dict[str, dict[str, object]]:
    try:
        data = json.loads(path.read_text())
        return data if isinstance(data, dict) else {}
    except (OSError, ValueError):
        return {}


def _store(path: Path, data: dict[str, dict[str, object]]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(data, indent=2))
    os.replace(tmp, path)
