"""What ``msb doctor`` finds out: every backend's verdict by a real probe, the host tools, the
kernel and agent, the default choice and, in plain words, what isolates sandboxed code.

Gathering is separate from printing (:mod:`engine.cli.doctor`) so that ``--json`` is exactly
this :class:`Report` and tests can fake the probes (``engine.vm.select.PROBES``).
"""

from __future__ import annotations

import asyncio
import inspect
import os
import shutil
import subprocess
from pathlib import Path
from typing import Literal

from pydantic import BaseModel

from engine import paths
from engine.errors import MsbError
from engine.vm import select

Level = Literal["ok", "warn", "fail"]
ORDER = ("krun", "qemu", "gvisor")
"""Strongest first, as ``auto`` tries them."""

TCG_STATEMENT = (
    "QEMU does not treat TCG (software emulation) as a security boundary, so TCG is a compatibility "
    "mode: a bug in the emulator can be a way out; never rely on it to contain hostile code."
)
KERNEL_IN_USE = {
    "gvisor": "gVisor's Sentry, a user-space kernel inside runsc (QEMU's guest kernel is not used)",
    "krun": "libkrunfw's kernel, bundled with libkrun",
}


class Check(BaseModel):
    name: str
    level: Level
    detail: str
    hint: str | None = None
    package: str | None = None
    """The Debian package that provides what is missing (``apt-get install`` it)."""
    setup: bool = False
    """Whether ``make setup`` builds or fetches what is missing (the agent, a kernel, runsc …)."""


class BackendEntry(BaseModel):
    """One backend's verdict on this host (``engine.vm.select.BackendVerdict`` plus its label)."""

    name: str
    label: str
    """``gVisor``, ``QEMU/TCG``, ``libkrun/KVM`` …"""
    usable: bool
    reason: str
    version: str | None = None
    accel: str | None = None
    probe_ms: float | None = None
    """Wall time of the probe, in milliseconds (None when no probe ran, or from the cache)."""
    isolation: str
    hint: str | None = None


class DefaultChoice(BaseModel):
    """The backend a sandbox started without ``--backend`` gets."""

    requested: str
    """``auto`` or a backend name."""
    source: str
    """Who asked: ``default``, ``MSB_BACKEND``."""
    name: str | None
    """The backend chosen (None: none works, or the one forced does not)."""
    label: str | None
    accel: str | None = None
    why: str
    hardware_virtualised: bool = False


class Report(BaseModel):
    backends: list[BackendEntry]
    checks: list[Check]
    default: DefaultChoice
    backend: str | None
    """The default backend's name (as before the backends came)."""
    accelerator: str | None
    """The default backend's accelerator: ``kvm``, ``tcg``, ``none`` (gVisor)."""
    kernel_in_use: str
    agent: str | None
    """The guest agent binary in use and its version."""
    isolation: str
    """The isolation of the default backend, in plain words."""
    tcg: str
    """What TCG is worth as isolation (always said)."""
    recommendation: str | None = None
    next_step: str | None = None
    """The one thing to do next when something is missing; None when nothing is."""

    @property
    def usable(self) -> bool:
        """Whether any backend works here (doctor's exit code)."""
        return any(b.usable for b in self.backends)


# ---------------------------------------------------------------------------------- backends


async def probe_all(cache_dir: Path) -> list[BackendEntry]:
    """Each backend's verdict, strongest first; gVisor probes afresh (not from the cache)."""
    out = []
    for name in ORDER:
        probe = select.PROBES[name]
        fresh = {"use_cache": False} if "use_cache" in inspect.signature(probe).parameters else {}
        try:
            verdict, _ = await probe(cache_dir, **fresh)
        except Exception as exc:  # a probe that crashes says so here, and doctor goes on
            verdict = select.BackendVerdict(name=name, usable=False, reason=f"the probe failed: {exc!r}",  # type: ignore[arg-type]
                                            isolation=select.isolation_of(name, None))  # fmt: skip
        label = "QEMU" if verdict.name == "qemu" and not verdict.accel else verdict.label  # not "QEMU/?"
        out.append(BackendEntry(**verdict.model_dump(), label=label))
    return out


async def default_choice(cache_dir: Path, backends: list[BackendEntry]) -> DefaultChoice:
    """What a sandbox started without ``--backend`` gets (MSB_BACKEND, else auto), and why:
    the engine's own choice, prepared as for a start (so a forced QEMU shows KVM or TCG)."""
    from engine.sandbox.engine import Engine

    requested, source = select.requested_backend(None)
    engine = Engine(cache_dir=cache_dir)
    try:
        assets = await engine.prepare()
    except MsbError as exc:
        why = exc.message + (f" ({exc.hint})" if exc.hint else "")
        return DefaultChoice(requested=requested, source=source, name=None, label=None, why=why)
    except Exception as exc:  # a crashing probe: say so rather than a traceback
        why = f"choosing the backend failed: {exc!r}"
        return DefaultChoice(requested=requested, source=source, name=None, label=None, why=why)
    name, accel = engine.backend.name, assets.accel.accel
    if requested != "auto":
        why = f"forced by {source}={requested}"
    else:
        skipped = [f"{'QEMU has only TCG' if b.accel == 'tcg' else b.label + ' does not work'}"
                   for b in backends if b.name != name and _stronger(b, name, accel)]  # fmt: skip
        why = "auto: the strongest backend that works here" + (f" ({'; '.join(skipped)})" if skipped else "")
    return DefaultChoice(requested=requested, source=source, name=name, label=select.backend_label(name, accel),
                         accel=accel, why=why, hardware_virtualised=accel == "kvm")  # fmt: skip


def _rank(name: str, accel: str | None) -> int:
    return {"krun": 0, "qemu": 1 if accel == "kvm" else 3, "gvisor": 2}.get(name, 4)


def _stronger(entry: BackendEntry, name: str, accel: str | None) -> bool:
    """Whether ``entry`` would have ranked above the choice had it worked fully (QEMU with KVM)."""
    return _rank(entry.name, "kvm") < _rank(name, accel)


def recommendation(default: DefaultChoice, backends: list[BackendEntry]) -> str | None:
    """Say which backend to use for untrusted code when the default is not a hardware VM."""
    if default.hardware_virtualised:
        return None
    if any(b.name == "gvisor" and b.usable for b in backends):
        if default.name == "gvisor":
            return ("for untrusted code use gVisor — the default here; there is no working hardware "
                    "virtualisation, so do not force --backend qemu (TCG) for hostile code")  # fmt: skip
        return "for untrusted code use gVisor: `--backend gvisor` (or MSB_BACKEND=gvisor)"
    return "no hardware virtualisation and no gVisor here: run only trusted code, or install runsc (`make setup`)"


# ---------------------------------------------------------------------------------- host


def _version(argv: list[str]) -> str | None:
    try:
        out = subprocess.run(argv, capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.TimeoutExpired):
        return None
    text = (out.stdout or out.stderr).strip().splitlines()
    return text[0] if text else None


def tool_checks(cache_dir: Path) -> list[Check]:
    """QEMU, mmdebstrap, mkfs.ext4, runsc, slirp4netns (missing ones say what they are for)."""
    checks = []
    qemu = shutil.which("qemu-system-x86_64")
    checks.append(Check(name="qemu", level="ok" if qemu else "warn",
                        detail=(_version([qemu, "--version"]) or qemu) if qemu else "qemu-system-x86_64 not found",
                        hint=None if qemu else "apt-get install qemu-system-x86 (or make setup)",
                        package=None if qemu else "qemu-system-x86"))  # fmt: skip
    for tool, what, pkg in (("mmdebstrap", "builds the offline base images", "mmdebstrap"),
                            ("mkfs.ext4", "makes QEMU's root and writable-layer images", "e2fsprogs"),
                            ("depmod", "resolves the Debian kernel's module dependencies", "kmod")):  # fmt: skip
        found = _which_sbin(tool)
        checks.append(Check(name=tool, level="ok" if found else "warn",
                            detail=f"{found} ({what})" if found else f"missing: {what}",
                            hint=None if found else f"apt-get install {pkg}",
                            package=None if found else pkg))  # fmt: skip
    checks.append(_runsc(cache_dir))
    slirp = os.environ.get("MSB_SLIRP4NETNS") or shutil.which("slirp4netns")
    ok = bool(slirp) and os.access(slirp or "", os.X_OK)
    checks.append(Check(name="slirp4netns", level="ok" if ok else "warn",
                        detail=f"{slirp} (gVisor sandboxes' network)" if ok else "missing: gVisor sandboxes' network",
                        hint=None if ok else "apt-get install slirp4netns (or make setup); "
                        "without it gVisor runs only scope 'none'", package=None if ok else "slirp4netns"))  # fmt: skip
    return checks


def _which_sbin(tool: str) -> str | None:
    """``tool`` on PATH or in /usr/sbin, /sbin (not on a non-root user's PATH on Debian)."""
    return shutil.which(tool) or next((p for d in ("/usr/sbin", "/sbin") if os.access(p := f"{d}/{tool}", os.X_OK)),
                                      None)  # fmt: skip


def _runsc(cache_dir: Path) -> Check:
    from engine.vm.runsc import find_runsc, runsc_version

    try:
        runsc = find_runsc(cache_dir)
        version = runsc_version(runsc)
    except MsbError as exc:
        return Check(name="runsc", level="warn", detail=f"gVisor unavailable: {exc.message}", hint=exc.hint, setup=True)
    return Check(name="runsc", level="ok", detail=f"{runsc} (gVisor {version})")


def netfilter_check() -> Check:
    shim = paths.netfilter_path()
    if shim.is_file():
        return Check(name="network filter", level="ok",
                     detail=f"{shim} (enforces the 'public' scope: no host loopback/private ranges)")  # fmt: skip
    return Check(name="network filter", level="fail", detail=f"missing: {shim}", setup=True,
                 hint="make netfilter (or make setup); without it 'public' sandboxes refuse to start")  # fmt: skip


def kernel_checks(cache_dir: Path) -> tuple[list[Check], str | None]:
    """The QEMU guest kernel (and whether it mounts volumes); its one-line description."""
    from engine.vm.kernel import resolve_kernel

    try:
        k = resolve_kernel(cache_dir)
    except MsbError as exc:
        return [Check(name="kernel (QEMU)", level="warn", detail=exc.message, hint=exc.hint, setup=True)], None
    text = f"{k.kind} {k.version} ({k.source or k.path})"
    return [
        Check(name="kernel (QEMU)", level="ok", detail=text),
        Check(name="volumes (9p)", level="ok" if k.supports_9p else "warn",
              detail="supported by the kernel" if k.supports_9p else "this kernel has no 9p: QEMU refuses volumes",
              hint=None if k.supports_9p else "make setup (builds the minimal kernel: 9p built in)",
              setup=not k.supports_9p),
    ], text  # fmt: skip


def agent_check() -> Check:
    """The guest agent binary and its version (against its sources, unless MSB_AGENT is set)."""
    from engine.vm.initramfs import agent_source_version

    agent = paths.agent_path()
    if not agent.is_file():
        return Check(name="agent", level="fail", detail=f"missing: {agent}", setup=True,
                     hint="build it with `make agent` (or `make setup`), or set MSB_AGENT")  # fmt: skip
    words = (_version([str(agent), "--version"]) or "").split()
    version = words[1] if len(words) > 1 and words[0] == "msb-agent" else "unknown"
    expected = agent_source_version()
    if os.environ.get("MSB_AGENT"):
        return Check(name="agent", level="ok", detail=f"{agent} (version {version}; MSB_AGENT: used as it is)")
    if expected is not None and version != expected:
        return Check(name="agent", level="warn", detail=f"{agent} is version {version}, its sources {expected}",
                     hint="rebuild it with `make agent`; sandboxes refuse a stale agent", setup=True)  # fmt: skip
    return Check(name="agent", level="ok", detail=f"{agent} (version {version})")


def templates_check(cache_dir: Path) -> Check:
    """Whether QEMU sandboxes restore from templates, and how many are cached."""
    from engine.sandbox.instant import templates_enabled

    root = cache_dir / "templates"
    if not templates_enabled(None):
        return Check(name="templates", level="ok", detail="off (MSB_TEMPLATES=0): every QEMU sandbox boots")
    try:
        kept = [d for d in root.iterdir() if d.is_dir() and not d.name.startswith(".")]
        size = sum(f.stat().st_blocks * 512 for d in kept for f in d.iterdir())
    except OSError:
        kept, size = [], 0
    return Check(name="templates", level="ok",
                 detail=f"on: {len(kept)} cached in {root} ({size / 2**20:.0f} MiB on disk); "
                 "QEMU sandboxes restore from them (docs/instant.md)")  # fmt: skip


def cache_checks(cache_dir: Path) -> list[Check]:
    """Each bounded cache's size against its bound (engine/cachebound.py)."""
    from engine.cachebound import all_caches

    checks = []
    for cache in all_caches(cache_dir):
        u = cache.usage()
        over = u.bytes > u.bound_bytes
        detail = (f"{u.bytes / 2**20:.0f} MiB of {u.bound_bytes / 2**20:.0f} MiB, {u.entries} entries "
                  f"({u.in_use} in use)")  # fmt: skip
        checks.append(Check(name=f"cache: {u.name}", level="warn" if over else "ok", detail=detail,
                            hint="`msb image prune` evicts the least recently used" if over else None))  # fmt: skip
    return checks


# ---------------------------------------------------------------------------------- next step


def checkout_root() -> Path | None:
    """The repository msb runs from, if it is a checkout with ``make setup`` (not an installed wheel)."""
    root = Path(__file__).resolve().parents[2]
    return root if (root / "scripts" / "bootstrap.sh").is_file() and (root / "Makefile").is_file() else None


def next_step(checks: list[Check], backends: list[BackendEntry], checkout: Path | None) -> str | None:
    """The one thing a new user should do next, or None when nothing is missing.

    In a checkout ``make setup`` fixes everything it builds and installs, so it comes first; a
    missing system package alone gets its ``apt-get install`` (quicker, and works without a
    checkout). With nothing to fix but no backend working, the backends' own hint.

    Args:
        checks: the host checks (their ``package`` and ``setup`` say what fixes them).
        backends: every backend's verdict.
        checkout: the repository root, if msb runs from a checkout.
    Returns:
        One sentence, or None.
    """
    broken = [c for c in checks if c.level != "ok"]
    built = [c.name for c in broken if c.setup]
    packages = sorted({c.package for c in broken if c.package})
    if built and checkout is not None:
        also = f" and installs {' '.join(packages)}" if packages else ""
        return f"run `make setup` in {checkout}: it builds or fetches what is missing ({', '.join(built)}){also}"
    if packages:
        return f"as root: apt-get install {' '.join(packages)}" + (
            f" (or `make setup` in {checkout})" if checkout is not None else "")  # fmt: skip
    if built:
        first = next(c for c in broken if c.setup)
        return first.hint or f"{first.name}: {first.detail}"
    if not any(b.usable for b in backends):
        hints = [b.hint for b in sorted(backends, key=lambda b: b.name != "qemu") if b.hint]
        return hints[0] if hints else "no backend works here: see why above"
    return None


# ---------------------------------------------------------------------------------- all


async def gather(cache_dir: Path | None = None) -> Report:
    """Probe every backend, check the host, and put it in words.

    Never raises for a missing piece: each finding carries its level and hint.
    """
    cache_dir = cache_dir or paths.cache_dir()
    backends = await probe_all(cache_dir)
    default = await default_choice(cache_dir, backends)
    kernel, kernel_text = await asyncio.to_thread(kernel_checks, cache_dir)
    agent = await asyncio.to_thread(agent_check)
    tools = await asyncio.to_thread(tool_checks, cache_dir)
    name = default.name
    if name is None:
        isolation = "none: no backend works here, so no sandbox can start"
    else:
        isolation = select.isolation_of(name, default.accel)
    in_use = "none" if name is None else KERNEL_IN_USE.get(name, f"the guest kernel {kernel_text or '(missing)'}")
    caches = await asyncio.to_thread(cache_checks, cache_dir)
    checks = [*tools, *kernel, agent, netfilter_check(), templates_check(cache_dir), *caches]
    return Report(
        backends=backends, checks=checks,
        default=default, backend=name,
        accelerator=default.accel, kernel_in_use=in_use,
        agent=agent.detail if agent.level != "fail" else None, isolation=isolation, tcg=TCG_STATEMENT,
        recommendation=recommendation(default, backends),
        next_step=next_step(checks, backends, checkout_root()),
    )  # fmt: skip
