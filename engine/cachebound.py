"""Bounded caches: a size bound per cache, the least recently used entries evicted first,
never one in use.

Two caches grow with every new sandbox shape and image, so each has a bound:

- **templates** (``<cache>/templates/<key>/``, engine/vm/template.py):
  ``MSB_TEMPLATE_CACHE_MIB``, default 2048;
- **root filesystems**: image trees with their ext4 images (``<cache>/image-rootfs/<key>/``,
  engine/images/rootfs.py) and ext4 images of plain directories
  (``<cache>/rootfs/<hash>.ext4``, engine/vm/disk.py): ``MSB_ROOTFS_CACHE_MIB``, default 8192.

An entry is a directory or file directly under a cache root. Beside it, ``<name>.use`` says
who uses it: every running sandbox holds a *shared* ``flock`` on the ``.use`` of each entry it
runs from (QEMU maps a template's RAM privately and opens the ext4 image read-only; gVisor
overlays the tree as its lower layer), and its mtime is the entry's last use. Eviction takes
an *exclusive, non-blocking* lock: when it cannot, the entry is in use and is skipped. The
entry and its ``.use`` are removed while that lock is held, so a user that opened the ``.use``
just before and waited for its shared lock finds the file unlinked and treats the entry as gone.

The locks live in the process that started the sandbox (the engine), closed on exec. A VMM
left running by a server that died no longer protects its entries; Linux keeps an unlinked
file alive for whoever has it open or mapped, so only a gVisor tree could then go missing.
"""

from __future__ import annotations

import contextlib
import fcntl
import logging
import os
import shutil
import time
from collections.abc import Callable, Collection, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from pydantic import BaseModel

from engine.errors import ConfigError

log = logging.getLogger(__name__)

TEMPLATE_BOUND_MIB = 2048
ROOTFS_BOUND_MIB = 8192
USE = ".use"
"""Suffix of the lock-and-stamp file beside each entry."""


class CacheEntry(BaseModel):
    """One entry of a bounded cache."""

    path: Path
    bytes: int
    """Disk space it takes (allocated blocks: sparse template RAM counts what is written)."""
    last_used: float
    """Unix time of its last use (the ``.use`` stamp, else the entry's own mtime)."""


class Evicted(BaseModel):
    """What one eviction pass removed."""

    removed: list[str] = []
    freed_bytes: int = 0
    in_use: int = 0
    """Entries that would have gone but are in use (kept)."""


class CacheUsage(BaseModel):
    """A cache's size against its bound (``msb doctor``)."""

    name: str
    bytes: int
    bound_bytes: int
    entries: int
    in_use: int


@dataclass(frozen=True)
class CacheRoot:
    """A directory whose children of one kind are the entries of a cache."""

    path: Path
    kind: Literal["dir", "file"]
    suffix: str = ""
    """Only children whose names end with this are entries (``.ext4``)."""

    def names_entry(self, name: str) -> bool:
        """Whether a child called ``name`` would be an entry (not a lock, stamp or build)."""
        partial = name.startswith(".") or name.endswith((USE, ".lock", ".building", ".tmp"))
        return not partial and name.endswith(self.suffix)

    def is_entry(self, child: Path) -> bool:
        if not self.names_entry(child.name):
            return False
        try:
            return child.is_dir() if self.kind == "dir" else (child.is_file() and not child.is_symlink())
        except OSError:
            return False


def bound_mib(var: str, default: int) -> int:
    """The bound (MiB) set by environment variable ``var``, or ``default`` when unset or invalid."""
    raw = os.environ.get(var, "").strip()
    if not raw:
        return default
    try:
        value = int(raw)
    except ValueError:
        log.warning("%s=%r is not a number of MiB; using %d", var, raw, default)
        return default
    return max(0, value)


def disk_bytes(path: Path) -> int:
    """Allocated bytes of a file or tree (symlinks not followed, unreadable parts skipped)."""
    try:
        st = path.lstat()
    except OSError:
        return 0
    total = st.st_blocks * 512
    if not path.is_dir() or path.is_symlink():
        return total
    stack = [str(path)]
    while stack:
        with contextlib.suppress(OSError), os.scandir(stack.pop()) as it:
            for e in it:
                with contextlib.suppress(OSError):
                    total += e.stat(follow_symlinks=False).st_blocks * 512
                    if e.is_dir(follow_symlinks=False):
                        stack.append(e.path)
    return total


def choose_victims(
    entries: Iterable[CacheEntry],
    bound_bytes: int,
    try_remove: Callable[[CacheEntry], bool],
    *,
    keep: Collection[Path] = (),
    max_age_s: float | None = None,
    now: float | None = None,
) -> Evicted:
    """The eviction policy: least recently used first until the total fits ``bound_bytes``;
    also anything unused for ``max_age_s``. Never an entry of ``keep``.

    Args:
        entries: the cache's entries.
        bound_bytes: the size the cache must fit in.
        try_remove: removes an entry, or returns False when it is in use (it stays).
        keep: entries never removed (the one just built).
        max_age_s: remove entries last used longer ago than this, whatever the size.
        now: the clock (tests).
    Returns:
        What was removed, and how many would have been but are in use.
    """
    now = time.time() if now is None else now
    ordered = sorted(entries, key=lambda e: e.last_used)
    total = sum(e.bytes for e in ordered)
    out = Evicted()
    for e in ordered:
        stale = max_age_s is not None and now - e.last_used > max_age_s
        if e.path in keep or (total <= bound_bytes and not stale):
            continue
        if try_remove(e):
            out.removed.append(e.path.name)
            out.freed_bytes += e.bytes
            total -= e.bytes
        else:
            out.in_use += 1
    return out


class Lease:
    """A shared lock on an entry's ``.use``: the entry is not evicted while it is held."""

    def __init__(self, fd: int, entry: Path) -> None:
        self._fd: int | None = fd
        self.entry = entry

    def release(self) -> None:
        """Let the entry be evicted again (idempotent)."""
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None


class Leases:
    """The leases of one sandbox, released together when it stops."""

    def __init__(self) -> None:
        self._held: list[Lease] = []

    def add(self, lease: Lease | None) -> None:
        if lease is not None:
            self._held.append(lease)

    def release(self) -> None:
        """Release every lease (idempotent)."""
        held, self._held = self._held, []
        for lease in held:
            lease.release()

    def entries(self) -> list[Path]:
        return [lease.entry for lease in self._held]

    def __len__(self) -> int:
        return len(self._held)


def use_file(entry: Path) -> Path:
    return entry.with_name(entry.name + USE)


class BoundedCache:
    """The entries under some cache roots, kept within a size bound."""

    def __init__(self, name: str, roots: Iterable[CacheRoot], bound_bytes: int, *, max_age_s: float | None = None):
        """Args:
        name: shown to users (``templates``, ``root filesystems``).
        roots: where the entries are.
        bound_bytes: the size the entries must fit in (after an eviction pass).
        max_age_s: entries unused this long go too, whatever the size.
        """
        self.name = name
        self.roots = tuple(roots)
        self.bound_bytes = bound_bytes
        self.max_age_s = max_age_s

    def entries(self) -> list[CacheEntry]:
        """Every complete entry, with its size and last use."""
        out = []
        for root in self.roots:
            try:
                children = list(root.path.iterdir())
            except OSError:
                continue
            for child in children:
                if root.is_entry(child):
                    out.append(CacheEntry(path=child, bytes=disk_bytes(child), last_used=_last_used(child)))
        return out

    def entry_of(self, path: Path) -> Path | None:
        """The entry ``path`` lies in (or is), or None when it is outside this cache."""
        target = Path(os.path.abspath(path))
        for root in self.roots:
            base = Path(os.path.abspath(root.path))
            if target != base and target.is_relative_to(base):
                entry = base / target.relative_to(base).parts[0]
                return entry if root.names_entry(entry.name) else None
        return None

    def lease(self, entry: Path) -> Lease | None:
        """Mark ``entry`` in use until the lease is released; None if it is gone (evicted)."""
        try:
            fd = os.open(use_file(entry), os.O_RDWR | os.O_CREAT | os.O_CLOEXEC | os.O_NOFOLLOW, 0o600)
        except OSError:
            return None
        try:
            fcntl.flock(fd, fcntl.LOCK_SH)  # waits only while an eviction of this entry runs
            if os.fstat(fd).st_nlink == 0 or not entry.exists():
                os.close(fd)
                return None
            os.utime(fd)  # the last use, for the LRU order
        except OSError:
            os.close(fd)
            return None
        return Lease(fd, entry)

    def touch(self, entry: Path) -> None:
        """Record a use of ``entry`` without holding it."""
        lease = self.lease(entry)
        if lease is not None:
            lease.release()

    def in_use(self, entry: Path) -> bool:
        """Whether a lease on ``entry`` is held now (by any process)."""
        fd = _try_exclusive(use_file(entry))
        if fd is None:
            return True
        os.close(fd)
        return False

    def remove(self, entry: Path) -> bool:
        """Remove ``entry`` unless it is in use. Returns whether it was removed."""
        fd = _try_exclusive(use_file(entry))
        if fd is None:
            return False
        try:
            gone = entry.with_name(f".evict-{entry.name}-{os.getpid()}")
            try:
                os.rename(entry, gone)  # at once invisible to finders; deleted at leisure
            except FileNotFoundError:
                return False
            _delete(gone)
            _remove_sidecars(entry)
        finally:
            os.close(fd)
        log.info("%s cache: removed %s", self.name, entry.name)
        return True

    def enforce(self, keep: Collection[Path] = ()) -> Evicted:
        """Evict least recently used entries (and stale ones) until the bound holds."""
        return choose_victims(self.entries(), self.bound_bytes, lambda e: self.remove(e.path), keep=keep,
                              max_age_s=self.max_age_s)  # fmt: skip

    def prune_all(self, keep: Collection[Path] = ()) -> Evicted:
        """Remove every entry that is not in use (``msb image prune --all``)."""
        return choose_victims(self.entries(), -1, lambda e: self.remove(e.path), keep=keep)

    def usage(self) -> CacheUsage:
        entries = self.entries()
        return CacheUsage(name=self.name, bytes=sum(e.bytes for e in entries), bound_bytes=self.bound_bytes,
                          entries=len(entries), in_use=sum(self.in_use(e.path) for e in entries))  # fmt: skip


def _last_used(entry: Path) -> float:
    for p in (use_file(entry), entry):
        with contextlib.suppress(OSError):
            return p.stat().st_mtime
    return 0.0


def _try_exclusive(path: Path) -> int | None:
    """An fd holding an exclusive lock on ``path`` (created if missing), or None if it is held."""
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC | os.O_NOFOLLOW, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        return None
    return fd


def _delete(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    else:
        path.unlink(missing_ok=True)


def _remove_sidecars(entry: Path) -> None:
    """The ``.use`` (its lock is held by the caller) and a build ``.lock`` nobody holds."""
    use_file(entry).unlink(missing_ok=True)
    build = entry.with_name(entry.name + ".lock")
    if build.exists():
        fd = _try_exclusive(build)
        if fd is not None:
            build.unlink(missing_ok=True)
            os.close(fd)


# ---------------------------------------------------------------------------------- msb's caches

TEMPLATE_MAX_AGE_S = 7 * 86400.0
"""Templates unused for a week go whatever the size: their key (QEMU, kernel, agent, image)
has most likely changed since."""


def template_cache(cache_dir: Path) -> BoundedCache:
    """The templates cache of ``cache_dir`` (bound: ``MSB_TEMPLATE_CACHE_MIB``)."""
    return BoundedCache("templates", [CacheRoot(cache_dir / "templates", "dir")],
                        bound_mib("MSB_TEMPLATE_CACHE_MIB", TEMPLATE_BOUND_MIB) << 20,
                        max_age_s=TEMPLATE_MAX_AGE_S)  # fmt: skip


def rootfs_cache_bound(cache_dir: Path) -> BoundedCache:
    """The root filesystems cache of ``cache_dir`` (bound: ``MSB_ROOTFS_CACHE_MIB``)."""
    roots = [CacheRoot(cache_dir / "image-rootfs", "dir"), CacheRoot(cache_dir / "rootfs", "file", ".ext4")]
    return BoundedCache("root filesystems", roots, bound_mib("MSB_ROOTFS_CACHE_MIB", ROOTFS_BOUND_MIB) << 20)


def all_caches(cache_dir: Path) -> list[BoundedCache]:
    return [template_cache(cache_dir), rootfs_cache_bound(cache_dir)]


def lease_paths(cache_dir: Path, paths: Iterable[Path], leases: Leases) -> None:
    """Add to ``leases`` a lease on each bounded-cache entry that one of ``paths`` lies in.

    Raises:
        ConfigError: an entry was evicted before it could be leased (a new start rebuilds it).
    """
    caches = all_caches(cache_dir)
    for path in paths:
        for cache in caches:
            entry = cache.entry_of(path)
            if entry is None:
                continue
            lease = cache.lease(entry)
            if lease is None:
                raise ConfigError(f"{entry} was just removed from the {cache.name} cache",
                                  hint="start the sandbox again: it is rebuilt")  # fmt: skip
            leases.add(lease)
