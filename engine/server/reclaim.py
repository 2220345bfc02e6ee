"""What a server that died without cleaning up left behind, found and removed at the next start.

A server killed with SIGKILL (or by the OOM killer, or a host crash) runs none of its cleanup.
Its sandboxes' host side may outlive it: QEMU dropped to ``msb-vmm`` with ``-runas`` has lost
its parent-death signal; gVisor's overlay and volume mounts, the sandboxes' cgroups and their
run directories stay. msb does not adopt them — a new server cannot rebuild the agent channel
of a VM it did not start, and a half-started VM is worse than none — it **cleans them up**:
the persistent layers (``<state>/sandboxes/<ns>/<name>/``) are what survives, and the next
``sandbox.start`` boots the sandbox again on them (docs/reliability.md).

How a server finds only what is its own: every run directory of its sandboxes is made in one
directory per state directory (:func:`run_base`, ``<runtime>/msb-s<hash of the state path>``,
0700), and a server holds the state's lock (:func:`lock_state`) for as long as it runs. Once the
lock is ours, everything in the run base belongs to a dead server of the same state; nothing a
CLI project or another server runs is touched. For each run directory :func:`reclaim`:

1. kills the processes of its cgroups (:func:`engine.vm.confine.cgroups_of`: QEMU, runsc's
   sandbox and gofer, slirp4netns) and any process whose command line names the directory (a
   host without cgroups), and removes the cgroups;
2. unmounts every mount below it, deepest first (gVisor's overlay root, volume binds);
3. removes it, only when nothing is mounted below it any more (never a walk into a layer).

Network namespaces need nothing: they are held by fds only and go with their processes.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import hashlib
import logging
import os
import re
import shutil
import signal
import stat
from dataclasses import dataclass, field
from pathlib import Path

from engine import paths
from engine.errors import ConfigError, VmError
from engine.vm import confine, overlay

log = logging.getLogger(__name__)

LOCK_NAME = "server.lock"
CMDLINE_MAX = 16384
"""Bytes of a process's command line read at most."""


@dataclass
class Reclaimed:
    """What :func:`reclaim` found and removed."""

    run_dirs: list[str] = field(default_factory=list)
    processes: int = 0
    cgroups: int = 0
    mounts: int = 0
    kept: list[str] = field(default_factory=list)
    """Run directories left in place (something below them could not be unmounted), logged."""

    def __bool__(self) -> bool:
        return bool(self.run_dirs or self.processes or self.cgroups or self.mounts or self.kept)


def run_base(storage: Path) -> Path:
    """The directory the run directories of ``storage``'s server go in (made 0700).

    Raises:
        ConfigError: it exists and is not a directory of ours that nobody else may enter (a
            local user planted a link or a directory at the predictable name).
    """
    digest = hashlib.sha256(str(storage.resolve()).encode()).hexdigest()[:10]
    base = paths.runtime_dir() / f"msb-s{digest}"
    with contextlib.suppress(FileExistsError):
        base.mkdir(mode=0o700)
    st = os.lstat(base)
    if not stat.S_ISDIR(st.st_mode) or st.st_uid != os.geteuid() or stat.S_IMODE(st.st_mode) & 0o077:
        raise ConfigError(f"{base} is not a private directory of msb's user (a link, another owner, or open "
                          "to others)", hint="remove it; the server makes it again at its next start")  # fmt: skip
    return base


def lock_state(storage: Path) -> int:
    """Take ``<storage>/server.lock`` for as long as this process runs (the fd is returned and
    kept open; it is not inherited by children).

    Raises:
        ConfigError: another server runs on this state directory.
    """
    fd = os.open(storage / LOCK_NAME, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC | os.O_NOFOLLOW, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        hint = "stop it first (`msb server stop`), or use another --storage-path"
        raise ConfigError(f"another server runs on the state directory {storage}", hint=hint) from None
    return fd


def reclaim(base: Path) -> Reclaimed:
    """Remove everything in ``base`` (the caller holds the state's lock: it is all stale)."""
    done = Reclaimed()
    for run_dir in sorted(p for p in base.iterdir() if p.is_dir() and not p.is_symlink()):
        _reclaim_one(run_dir, done)
    if done:
        log.warning("reclaimed what a previous server left: %d run directories, %d processes, %d cgroups, "
                    "%d mounts", len(done.run_dirs), done.processes, done.cgroups, done.mounts,
                    extra={"run_dirs": done.run_dirs, "kept": done.kept})  # fmt: skip
    return done


def _reclaim_one(run_dir: Path, done: Reclaimed) -> None:
    for cg in confine.cgroups_of(run_dir):
        done.processes += len(cg.pids())
        cg.destroy()
        done.cgroups += 1
    done.processes += kill_naming(run_dir)
    for mnt in mounts_below(run_dir):
        try:
            overlay.unmount(mnt)
            done.mounts += 1
        except VmError as exc:  # logged; the directory is then kept
            log.warning("cannot unmount %s: %s", mnt, exc)
    if mounts_below(run_dir):
        done.kept.append(str(run_dir))
        return
    shutil.rmtree(run_dir, ignore_errors=True)
    done.run_dirs.append(str(run_dir))


def kill_naming(run_dir: Path) -> int:
    """SIGKILL every process (not this one) whose command line names ``run_dir``. Returns how many."""
    needle = str(run_dir).encode() + b"/"
    killed = 0
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            with open(f"/proc/{entry.name}/cmdline", "rb") as f:
                cmdline = f.read(CMDLINE_MAX).replace(b"\0", b" ") + b" "
        except OSError:
            continue
        if needle in cmdline or str(run_dir).encode() + b" " in cmdline:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.kill(int(entry.name), signal.SIGKILL)
                killed += 1
    return killed


def mounts_below(path: Path, mountinfo: str | None = None) -> list[Path]:
    """Mount points at or below ``path``, deepest first (from ``/proc/self/mountinfo``)."""
    if mountinfo is None:
        try:
            mountinfo = Path("/proc/self/mountinfo").read_text()
        except OSError as exc:
            if exc.errno == errno.ENOENT:
                return []
            raise
    top = str(path)
    found = []
    for line in mountinfo.splitlines():
        fields = line.split()
        if len(fields) < 5:
            continue
        point = _unescape(fields[4])
        if point == top or point.startswith(top + "/"):
            found.append(Path(point))
    return sorted(set(found), key=lambda p: len(p.parts), reverse=True)


def _unescape(field_: str) -> str:
    """mountinfo's octal escapes (``\\040`` for a space …) decoded."""
    return re.sub(r"\\([0-7]{3})", lambda m: chr(int(m.group(1), 8)), field_)
