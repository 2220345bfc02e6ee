"""Choosing the isolation backend by real probes, and saying what each one protects.

``auto`` takes the strongest backend that works on this host, in this order:

1. ``krun`` — libkrun with KVM (a hardware-virtualised microVM, its VMM in a library);
2. ``qemu`` with KVM (a hardware-virtualised microVM);
3. ``gvisor`` — runsc's user-space kernel (no virtualisation needed);
4. ``qemu`` with TCG — software emulation, a compatibility mode, not a security boundary.

"Works" means a probe started the real thing and the guest agent answered: a library or
device that is present but cannot run a guest (this PVM host: ``/dev/kvm`` exists, KVM guests
hang) does not count. ``--backend``, ``MSB_BACKEND`` or a Sandboxfile's ``backend:`` force
one; a forced backend that does not work is an error carrying its probe's reason.

Probe results are cached in ``$MSB_CACHE_DIR/backends.json`` by host kernel and binary, like
the accelerator verdict (:mod:`engine.vm.accel`), so only the first start on a host pays.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
import os
import shutil
import tempfile
import time
from pathlib import Path
from typing import Literal, get_args

from pydantic import BaseModel

from engine import paths
from engine.errors import ConfigError, MsbError, VmError
from engine.vm.backend import VmBackend

log = logging.getLogger(__name__)

BackendName = Literal["qemu", "gvisor", "krun"]
BACKEND_NAMES: tuple[str, ...] = get_args(BackendName)
ISOLATION: dict[str, str] = {
    "krun": "hardware virtualisation (KVM): the code runs in its own guest kernel in a microVM; "
    "the host is exposed through KVM and libkrun's VMM process",
    "qemu-kvm": "hardware virtualisation (KVM): the code runs in its own guest kernel in a QEMU microVM "
    "(seccomp-confined); the host is exposed through KVM and QEMU's device emulation",
    "gvisor": "gVisor: the code's system calls are served by a user-space kernel (the Sentry), which "
    "itself reaches the host kernel only through a small seccomp-filtered set of calls; no hardware "
    "virtualisation, so a host-kernel bug reachable through that set is the remaining risk",
    "qemu-tcg": "software emulation (QEMU TCG): the code runs in its own guest kernel, but QEMU does not "
    "treat TCG as a security boundary — a compatibility mode, not for hostile code",
}


class BackendVerdict(BaseModel):
    """Whether one backend works on this host, and why."""

    name: BackendName
    usable: bool
    reason: str
    version: str | None = None
    accel: str | None = None
    """``kvm`` or ``tcg`` for qemu, ``kvm`` for krun, ``None`` for gVisor."""
    probe_ms: float | None = None
    isolation: str
    hint: str | None = None

    @property
    def label(self) -> str:
        """Short name for tables and headers: ``gVisor``, ``QEMU/TCG``, ``libkrun/KVM``."""
        return backend_label(self.name, self.accel)


def backend_label(name: str, accel: str | None) -> str:
    """``gVisor``, ``QEMU/KVM``, ``QEMU/TCG``, ``libkrun/KVM`` or the name as given."""
    if name == "gvisor":
        return "gVisor"
    if name == "qemu":
        return f"QEMU/{(accel or '?').upper()}"
    if name == "krun":
        return "libkrun/KVM"
    return name


def isolation_of(name: str, accel: str | None) -> str:
    if name == "qemu":
        return ISOLATION["qemu-kvm" if accel == "kvm" else "qemu-tcg"]
    return ISOLATION.get(name, "none: the fake backend runs nothing")


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


# ---------------------------------------------------------------------------------- probes


async def probe_qemu(cache_dir: Path) -> tuple[BackendVerdict, VmBackend | None]:
    """QEMU works when its binary, a kernel and the agent are there; KVM or TCG by its probe."""
    from engine.sandbox.engine import Engine
    from engine.vm.qemu import QemuBackend

    try:
        backend = QemuBackend()
        assets = await Engine(backend=backend, cache_dir=cache_dir).prepare()
    except MsbError as exc:
        return BackendVerdict(name="qemu", usable=False, reason=_first_line(exc), isolation=ISOLATION["qemu-tcg"],
                              hint=exc.hint), None  # fmt: skip
    a = assets.accel
    return BackendVerdict(
        name="qemu", usable=True, reason=a.reason, version=_qemu_version(backend.qemu), accel=a.accel,
        probe_ms=a.probe_ms, isolation=isolation_of("qemu", a.accel), hint=a.warning,
    ), backend  # fmt: skip


def _qemu_version(qemu: str) -> str | None:
    import subprocess

    try:
        out = subprocess.run([qemu, "--version"], capture_output=True, text=True, timeout=10).stdout
    except (OSError, subprocess.SubprocessError):
        return None
    return out.splitlines()[0].removeprefix("QEMU emulator version ").strip()[:80] if out else None


async def probe_gvisor(cache_dir: Path, *, use_cache: bool = True) -> tuple[BackendVerdict, VmBackend | None]:
    """gVisor works when runsc runs the agent in an empty root and it answers."""
    from engine.vm.gvisor import GvisorBackend
    from engine.vm.runsc import find_runsc, runsc_version

    iso = ISOLATION["gvisor"]
    try:
        runsc = find_runsc(cache_dir)
    except VmError as exc:
        return BackendVerdict(name="gvisor", usable=False, reason=_first_line(exc), isolation=iso, hint=exc.hint), None
    if os.geteuid() != 0:
        return BackendVerdict(
            name="gvisor", usable=False, reason="msb runs runsc as root (its gofer mounts and cgroups need it)",
            isolation=iso, hint="run msb as root to use gVisor, or use --backend qemu",
        ), None  # fmt: skip
    key = _key("gvisor", runsc, paths.agent_path())
    cached = _load(cache_dir).get(key) if use_cache else None
    if cached is not None:
        verdict = BackendVerdict.model_validate(cached)
        return verdict, GvisorBackend(runsc) if verdict.usable else None
    version = await asyncio.to_thread(_safe_version, runsc, runsc_version)
    backend = GvisorBackend(runsc)
    t0 = time.perf_counter()
    try:
        await _probe_start(backend, cache_dir)
    except (MsbError, OSError, TimeoutError) as exc:
        ms = (time.perf_counter() - t0) * 1000
        verdict = BackendVerdict(name="gvisor", usable=False, reason=f"probe sandbox failed: {_first_line(exc)}",
                                 version=version, probe_ms=ms, isolation=iso,
                                 hint=getattr(exc, "hint", None) or "run `msb doctor` for details")  # fmt: skip
    else:
        ms = (time.perf_counter() - t0) * 1000
        verdict = BackendVerdict(name="gvisor", usable=True, reason=f"probe sandbox answered in {ms:.0f} ms",
                                 version=version, probe_ms=ms, isolation=iso)  # fmt: skip
    _store(cache_dir, key, verdict)
    return verdict, backend if verdict.usable else None


def _safe_version(runsc: str, fn: object) -> str | None:
    try:
        return fn(runsc)  # type: ignore[operator,no-any-return]
    except MsbError:
        return None


async def _probe_start(backend: VmBackend, cache_dir: Path) -> None:
    """Start a sandbox with an empty root on ``backend`` (the agent alone) and stop it."""
    from engine.sandbox.engine import Engine
    from engine.sandbox.spec import SandboxSpec

    empty = Path(tempfile.mkdtemp(prefix="msb-probe-"))
    try:
        spec = SandboxSpec(name="backend-probe", rootfs=empty, network="none", memory_mib=128, boot_timeout_s=15)
        sb = await Engine(backend=backend, cache_dir=cache_dir).start(spec)
        await sb.kill()
    finally:
        shutil.rmtree(empty, ignore_errors=True)


async def probe_krun(cache_dir: Path) -> tuple[BackendVerdict, VmBackend | None]:
    """libkrun works when the library loads, /dev/kvm opens and a probe guest answers."""
    from engine.vm.krun_backend import KrunBackend
    from engine.vm.krun_probe import aprobe_krun

    verdict = BackendVerdict.model_validate(await aprobe_krun())
    return verdict, KrunBackend() if verdict.usable else None


PROBES = {"krun": probe_krun, "qemu": probe_qemu, "gvisor": probe_gvisor}


def _forced_qemu(source: str) -> VmBackend:
    from engine.vm.qemu import QemuBackend

    return QemuBackend()


def _forced_gvisor(source: str) -> VmBackend:
    from engine.vm.gvisor import GvisorBackend

    return GvisorBackend()


FORCED = {"qemu": _forced_qemu, "gvisor": _forced_gvisor}
"""Forced backends that are built without a probe: their first real start is the probe, so a
failure reaches the user as the start's own error (AgentError, KernelError, BootError with the
console tail …) rather than a summary. libkrun is probed, since its start cannot be undone."""


async def probe_backends(cache_dir: Path | None = None) -> list[BackendVerdict]:
    """Every backend's verdict on this host, strongest first (krun, qemu, gvisor)."""
    cache_dir = cache_dir or paths.cache_dir()
    return [(await PROBES[name](cache_dir))[0] for name in ("krun", "qemu", "gvisor")]


def requested_backend(forced: str | None = None) -> tuple[str, str]:
    """The backend asked for and who asked: (``auto``|name, source)."""
    if forced:
        return forced.lower(), "the request"
    env = os.environ.get("MSB_BACKEND")
    if env:
        return env.lower(), "MSB_BACKEND"
    return "auto", "default"


async def choose_backend(
    forced: str | None = None, cache_dir: Path | None = None, *, exclude: tuple[str, ...] = ()
) -> tuple[VmBackend, BackendVerdict]:
    """The backend to use and its verdict.

    Args:
        forced: a backend name, ``auto``, or ``None`` (then ``MSB_BACKEND``, else ``auto``).
        exclude: backends ``auto`` must skip (one that refused a sandbox's spec).

    Raises:
        ConfigError: an unknown backend name.
        VmError: the forced backend does not work here (with the probe's reason), or none does.
    """
    cache_dir = cache_dir or paths.cache_dir()
    name, source = requested_backend(forced)
    if name != "auto" and name not in BACKEND_NAMES:
        raise ConfigError(f"unknown backend {name!r} (from {source})",
                          hint=f"use one of: auto, {', '.join(BACKEND_NAMES)}")  # fmt: skip
    if name in FORCED:
        return FORCED[name](source), BackendVerdict(
            name=name, usable=True, reason=f"asked for by {source}", isolation=isolation_of(name, None)  # type: ignore[arg-type]
        )
    if name != "auto":
        verdict, backend = await PROBES[name](cache_dir)
        if backend is None or not verdict.usable:
            raise VmError(f"backend {name!r} was asked for ({source}) but does not work here: {verdict.reason}",
                          hint=verdict.hint or "run `msb doctor` to see which backends work on this host")  # fmt: skip
        return backend, verdict
    tcg: tuple[BackendVerdict, VmBackend | None] | None = None
    reasons = []
    for probe_name in ("krun", "qemu", "gvisor"):
        if probe_name in exclude:
            continue
        verdict, backend = await PROBES[probe_name](cache_dir)
        reasons.append(f"{probe_name}: {verdict.reason}")
        if backend is None or not verdict.usable:
            continue
        if probe_name == "qemu" and verdict.accel != "kvm":
            tcg = (verdict, backend)  # the last resort
            continue
        return backend, verdict
    if tcg is not None and tcg[1] is not None:
        return tcg[1], tcg[0]
    raise VmError("no isolation backend works on this host (" + "; ".join(reasons) + ")",
                  hint="run `msb doctor`; `make setup` installs QEMU, a guest kernel and runsc")  # fmt: skip


# ---------------------------------------------------------------------------------- cache


def _key(name: str, binary: str, agent: Path) -> str:
    u = os.uname()
    parts = [name, u.release, u.version, binary]
    for p in (Path(binary), agent):
        try:
            st = p.stat()
            parts += [str(st.st_size), str(st.st_mtime_ns)]
        except OSError:
            parts.append("missing")
    return hashlib.sha256("\0".join(parts).encode()).hexdigest()[:32]


def _load(cache_dir: Path) -> dict[str, dict[str, object]]:
    try:
        data = json.loads((cache_dir / "backends.json").read_text())
        return data if isinstance(data, dict) else {}
    except (OSError, ValueError):
        return {}


def _store(cache_dir: Path, key: str, verdict: BackendVerdict) -> None:
    data = _load(cache_dir)
    data[key] = verdict.model_dump()
    tmp = cache_dir / f".backends.json.{os.getpid()}"
    try:
        tmp.write_text(json.dumps(data, indent=1))
        os.replace(tmp, cache_dir / "backends.json")
    except OSError as exc:
        log.debug("cannot store backend verdicts: %s", exc)
