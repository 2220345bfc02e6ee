"""Confining the host processes of a sandbox: an unprivileged user and a cgroup of its own.

An emulator escape must not start as root next to the server's secret, with the whole host
file system in view, nor be able to take the host's memory or pids.

- **User** (:func:`vmm_user`): QEMU drops to the system user :data:`VMM_USER` (made by
  ``make setup``: ``useradd --system``, no login shell, no home) with ``-runas`` once it has
  opened its files, after ``-chroot`` into an empty directory. A sandbox with volumes keeps
  QEMU as root (in the chroot): its 9p server opens the volume's files as long as the VM runs,
  with the host owners' permissions. Without the user (or when msb is not root) QEMU runs as
  msb's user, logged once.
- **Cgroup** (:class:`SandboxCgroup`): every process of a sandbox (QEMU; runsc's sandbox,
  gofer and their children; slirp4netns; libkrun's VMM) lives in ``msb/<sandbox>`` with a
  memory and a pids limit. cgroup v2 where its ``memory`` and ``pids`` controllers are
  available (``/sys/fs/cgroup/msb/<sandbox>``), else cgroup v1's ``memory``, ``pids`` and
  ``cpuacct`` hierarchies, below msb's own cgroup there. A stale cgroup of the same sandbox (a
  crashed msb) is emptied and removed at the next start, and the cgroup at the end. Without a
  writable hierarchy the sandbox runs unconfined, logged once.

:func:`confinement_status` says which of these work, for ``msb doctor``.
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import functools
import hashlib
import logging
import os
import pwd
import re
import signal
import time
from dataclasses import dataclass
from pathlib import Path

log = logging.getLogger(__name__)

VMM_USER = "msb-vmm"
CGROUP_ROOT = Path("/sys/fs/cgroup")
PARENT = "msb"
DESTROY_TIMEOUT_S = 2.0
_V1_LIMITS = {"memory": "memory.limit_in_bytes", "pids": "pids.max", "cpuacct": "", "cpu": "cpu.cfs_quota_us"}
CPU_PERIOD_US = 100_000


@dataclass(frozen=True)
class VmmUser:
    """The user a VMM drops to."""

    name: str
    uid: int
    gid: int


@functools.cache
def vmm_user() -> VmmUser | None:
    """:data:`VMM_USER`, or None (logged once) when it does not exist or msb is not root."""
    name = os.environ.get("MSB_VMM_USER", VMM_USER)  # "" keeps QEMU as root (to compare, to debug)
    if os.geteuid() != 0 or not name:
        return None
    try:
        pw = pwd.getpwnam(name)
    except KeyError:
        log.warning("no user %s: QEMU runs as root (create it with `make setup`, see docs/security.md)", name)
        return None
    if pw.pw_uid == 0:
        log.warning("user %s has uid 0: QEMU is not confined by it", name)
        return None
    return VmmUser(name, pw.pw_uid, pw.pw_gid)


@dataclass(frozen=True)
class Limits:
    """What one sandbox's processes may use together."""

    memory_bytes: int
    pids: int
    cpus: int | None = None
    """A CPU quota of this many CPUs (gVisor's OCI quota)."""


def vmm_limits(memory_mib: int, *, backend: str, tcg: bool = False, cpus: int | None = None) -> Limits:
    """The limits for a sandbox with ``memory_mib`` of guest memory on ``backend``.

    The overhead is the VMM's own: QEMU's TCG translation cache (up to 1 GiB), libkrun's VMM.
    gVisor gets none: its Sentry sizes the guest's memory (MemTotal) by this very limit, so the
    guest's memory is exactly what the sandbox asked for, Sentry included, as runsc does itself.
    """
    overhead = 0 if backend == "gvisor" else 256 + memory_mib // 4 + (1024 if tcg else 0)
    pids = 8192 if backend == "gvisor" else 1024  # gVisor: a host stub process per guest address space
    return Limits(memory_bytes=(memory_mib + overhead) << 20, pids=pids, cpus=cpus)


def die_with_parent() -> None:
    """In a child before exec: SIGKILL when msb's process dies (no orphan VMM). A later change of
    user (QEMU's ``-runas``) clears it: the cgroup then catches an orphan at the next start."""
    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl(1, signal.SIGKILL, 0, 0, 0)  # PR_SET_PDEATHSIG


def empty_root(run_dir: Path, *, resolv: bool) -> Path:
    """An empty directory in the VM's private ``run_dir`` for a VMM to chroot into once its files
    are open; with ``resolv``, a copy of the host's resolv.conf in it (libslirp reads that file
    for the guest's DNS)."""
    root = run_dir / "vmm-root"
    (root / "etc").mkdir(mode=0o755, parents=True, exist_ok=True)
    root.chmod(0o755)
    if resolv:
        with contextlib.suppress(OSError):
            (root / "etc" / "resolv.conf").write_bytes(Path("/etc/resolv.conf").read_bytes()[:65536])
    return root


def cgroup_name(name: str, run_dir: Path) -> str:
    """A stable, unique cgroup name for the sandbox whose private directory is ``run_dir``."""
    safe = re.sub(r"[^A-Za-z0-9_.-]", "_", name)[:40]
    return f"{safe}-{hashlib.sha256(str(run_dir).encode()).hexdigest()[:10]}"


def cgroups_of(run_dir: Path) -> list[SandboxCgroup]:
    """The cgroups :func:`cgroup_name` made for VMs whose private directory is ``run_dir``
    (found by the name's suffix, for a server that reclaims what a crashed one left)."""
    hier = _hierarchy()
    if hier is None:
        return []
    version, parents = hier
    suffix = "-" + hashlib.sha256(str(run_dir).encode()).hexdigest()[:10]
    names = sorted({d.name for p in parents if p.is_dir() for d in p.iterdir() if d.name.endswith(suffix)})
    return [SandboxCgroup(version, [p / n for p in parents]) for n in names]


def _own_v1_path(controller: str) -> str:
    """msb's own cgroup path in a v1 hierarchy (``/`` if unknown)."""
    with contextlib.suppress(OSError):
        for line in Path("/proc/self/cgroup").read_text().splitlines():
            _, controllers, path = line.split(":", 2)
            if controller in controllers.split(","):
                return path
    return "/"


def _v2_parent() -> Path | None:
    """``/sys/fs/cgroup/msb`` with memory and pids delegated to its children, or None."""
    try:
        available = set((CGROUP_ROOT / "cgroup.controllers").read_text().split())
        if not {"memory", "pids"} <= available:
            return None
        wanted = "+memory +pids" + (" +cpu" if "cpu" in available else "")
        (CGROUP_ROOT / "cgroup.subtree_control").write_text(wanted)
        parent = CGROUP_ROOT / PARENT
        parent.mkdir(exist_ok=True)
        (parent / "cgroup.subtree_control").write_text(wanted)
    except OSError:
        return None
    return parent


def _v1_parents() -> list[Path] | None:
    """``<controller>/<msb's cgroup>/msb`` for memory, pids and cpuacct, or None."""
    parents = []
    for controller in _V1_LIMITS:
        mount = CGROUP_ROOT / controller
        if not (mount / "cgroup.procs").is_file():
            if controller in ("memory", "pids"):
                return None
            continue  # cpu and cpuacct are a bonus (a CPU quota, per-sandbox CPU time)
        parent = mount / _own_v1_path(controller).lstrip("/") / PARENT
        try:
            parent.mkdir(exist_ok=True)
        except OSError:
            return None
        parents.append(parent)
    return parents


@functools.cache
def _hierarchy() -> tuple[str, list[Path]] | None:
    """(``v2``|``v1``, the parent directories), or None (logged once)."""
    if os.geteuid() == 0:
        v2 = _v2_parent()
        if v2 is not None:
            return "v2", [v2]
        v1 = _v1_parents()
        if v1 is not None:
            return "v1", v1
    log.warning("no writable cgroup hierarchy (need root and cgroup v2 memory+pids, or v1): "
                "sandboxes run without a cgroup of their own")  # fmt: skip
    return None


class SandboxCgroup:
    """One sandbox's cgroup (a directory per hierarchy for v1)."""

    def __init__(self, version: str, dirs: list[Path]) -> None:
        self.version = version
        self.dirs = dirs

    @classmethod
    def create(cls, name: str, limits: Limits) -> SandboxCgroup | None:
        """Make the sandbox's cgroup with ``limits`` (removing a stale one first).

        Returns:
            The cgroup, or None when cgroups cannot be used here (already logged).
        """
        hier = _hierarchy()
        if hier is None:
            return None
        version, parents = hier
        cg = cls(version, [p / name for p in parents])
        cg.destroy()  # a stale one, from a crashed msb
        try:
            for d in cg.dirs:
                d.mkdir()
            cg._write_limits(limits)
        except OSError as e:
            log.warning("cannot make the cgroup %s (%s): the sandbox runs without one", cg.dirs[0], e)
            cg.destroy()
            return None
        return cg

    def _write_limits(self, limits: Limits) -> None:
        quota = "-1" if limits.cpus is None else str(limits.cpus * CPU_PERIOD_US)
        values = {"memory": str(limits.memory_bytes), "pids": str(limits.pids), "cpu": quota}
        if self.version == "v2":
            (self.dirs[0] / "memory.max").write_text(values["memory"])
            (self.dirs[0] / "pids.max").write_text(values["pids"])
            if limits.cpus is not None and (self.dirs[0] / "cpu.max").exists():
                (self.dirs[0] / "cpu.max").write_text(f"{quota} {CPU_PERIOD_US}")
            return
        for d in self.dirs:
            controller = d.relative_to(CGROUP_ROOT).parts[0]
            if _V1_LIMITS[controller]:
                (d / _V1_LIMITS[controller]).write_text(values[controller])

    def oci_path(self) -> str:
        """The cgroup as an OCI ``linux.cgroupsPath`` (relative to the hierarchy's root; for v1,
        the memory controller's path, the one whose limit matters), so an OCI runtime that
        configures cgroups itself (runsc) does so in this one."""
        for d in self.dirs:
            parts = d.relative_to(CGROUP_ROOT).parts
            if self.version == "v2":
                return "/" + "/".join(parts)
            if parts[0] == "memory":
                return "/" + "/".join(parts[1:])
        return "/" + "/".join(self.dirs[0].relative_to(CGROUP_ROOT).parts[1:])

    def enter(self) -> None:
        """Move the calling process into the cgroup (run in a child before exec: everything it
        starts is then born inside). Only ``os`` calls: safe in a ``preexec_fn``."""
        for d in self.dirs:
            fd = os.open(d / "cgroup.procs", os.O_WRONLY)
            try:
                os.write(fd, b"0")
            finally:
                os.close(fd)

    def add(self, pid: int) -> None:
        """Move the running process ``pid`` into the cgroup (it may have exited: ignored)."""
        for d in self.dirs:
            with contextlib.suppress(ProcessLookupError, OSError):
                (d / "cgroup.procs").write_text(str(pid))

    def pids(self) -> set[int]:
        """The processes in the cgroup now (any hierarchy)."""
        found: set[int] = set()
        for d in self.dirs:
            with contextlib.suppress(OSError, ValueError):
                found |= {int(p) for p in (d / "cgroup.procs").read_text().split()}
        return found

    def destroy(self) -> None:
        """Kill what is left in the cgroup and remove it. Safe when it does not exist."""
        deadline = time.monotonic() + DESTROY_TIMEOUT_S
        while any(d.exists() for d in self.dirs):
            for pid in self.pids():
                with contextlib.suppress(ProcessLookupError, PermissionError):
                    os.kill(pid, signal.SIGKILL)
            for d in self.dirs:
                with contextlib.suppress(FileNotFoundError):
                    try:
                        d.rmdir()
                    except OSError as e:
                        if e.errno != errno.EBUSY or time.monotonic() > deadline:
                            log.warning("cannot remove the cgroup %s: %s", d, e)
                            return
            time.sleep(0.01)  # a killed process leaves its cgroup when the kernel has reaped it


def confinement_status() -> dict[str, str]:
    """What confines sandboxes' host processes here, for ``msb doctor``: ``user`` and
    ``cgroup``, each one line (what works, or what is missing and how to get it)."""
    user = vmm_user()
    if user is not None:
        user_line = f"QEMU drops to {user.name} (uid {user.uid}) in an empty chroot; as root with volumes (9p)"
    elif os.geteuid() != 0:
        user_line = "msb is not root: QEMU runs as msb's user"
    else:
        user_line = f"no user {VMM_USER}: QEMU runs as root (run `make setup`, or useradd --system {VMM_USER})"
    hier = _hierarchy()
    if hier is None:
        cg_line = "no writable cgroup hierarchy: sandboxes have no memory/pids limit of their own on the host"
    else:
        cg_line = f"cgroup {hier[0]}: one per sandbox under {hier[1][0]} (memory and pids limits)"
    return {"user": user_line, "cgroup": cg_line}


def cgroup_cpu_ticks(pid: int | None) -> int | None:
    """CPU time of ``pid``'s cgroup in clock ticks (cgroup v1 cpuacct or v2 cpu.stat)."""
    if pid is None:
        return None
    try:
        with open(f"/proc/{pid}/cgroup") as f:
            lines = f.read(8192).splitlines()
    except OSError:
        return None
    tck = os.sysconf("SC_CLK_TCK")
    for line in lines:
        _, controllers, path = line.split(":", 2) if line.count(":") >= 2 else ("", "", "")
        try:
            if "cpuacct" in controllers.split(","):
                d = "cpu,cpuacct" if os.path.isdir("/sys/fs/cgroup/cpu,cpuacct") else "cpuacct"
                with open(f"/sys/fs/cgroup/{d}{path}/cpuacct.usage") as f:
                    return int(f.read(64)) * tck // 1_000_000_000
            if controllers == "" and line.startswith("0::"):
                with open(f"/sys/fs/cgroup{path}/cpu.stat") as f:
                    for stat in f.read(4096).splitlines():
                        if stat.startswith("usage_usec "):
                            return int(stat.split()[1]) * tck // 1_000_000
        except (OSError, ValueError):
            continue
    return None
