"""Filesystem operations for applying a layer: all relative to a directory fd, none following symlinks.

A layer may plant symlinks anywhere in the target (see :mod:`engine.images.layers`), so no
host-side path resolution may go through one:

* :func:`walk` opens a directory one component at a time with ``O_DIRECTORY | O_NOFOLLOW``,
  starting from the target's own fd, and refuses a symlink in a parent position;
* :func:`lstat` and :func:`remove` work on a name inside a directory fd (removal of a tree uses
  the fd-based ``shutil.rmtree``, which never follows symlinks);
* :class:`Ref`, :func:`set_owner` and :func:`set_xattrs` set metadata on an open fd, or on a
  name inside a directory fd without following it;
* :func:`open_target` creates the target with mode 0700: a root-owned extract can hold
  setuid-root binaries, which other host users must not reach.

Nothing here reads the tar stream: that is :mod:`engine.images.tarstream`.
"""

from __future__ import annotations

import errno
import os
import shutil
import stat
from collections.abc import Mapping
from pathlib import Path

from engine.errors import HostileLayerError, ImageError
from engine.images.tarstream import HOSTILE_HINT

__all__ = [
    "DIR_FLAGS",
    "NEW_FILE_FLAGS",
    "Ref",
    "lstat",
    "mtime_ns",
    "open_target",
    "remove",
    "set_owner",
    "set_xattrs",
    "walk",
]

DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
"""Open an existing directory, refusing a symlink."""
NEW_FILE_FLAGS = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
"""Create a regular file that must not exist yet (not even as a symlink)."""

_XATTR = "SCHILY.xattr."
_XATTR_SKIP = (errno.ENOTSUP, errno.EOPNOTSUPP, errno.EPERM, errno.EACCES, errno.EINVAL, errno.ERANGE, errno.E2BIG)


def open_target(target: Path) -> int:
    """Open the directory layers are applied to, creating it with mode 0700 when missing.

    Args:
        target: the root filesystem directory.

    Returns:
        An fd of ``target``; the caller closes it.

    Raises:
        ImageError: ``target`` cannot be created or opened.
    """
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        try:
            os.mkdir(target, 0o700)
            created = True
        except FileExistsError:
            created = False
        fd = os.open(target, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        if created:
            os.fchmod(fd, 0o700)  # exact, whatever the umask
        return fd
    except OSError as exc:
        raise ImageError(f"cannot use {target} as a layer target: {exc.strerror or exc}",
                         hint="pass a directory path msb can create and write") from exc  # fmt: skip


def walk(root_fd: int, parts: tuple[str, ...], entry: str, *, create: bool = False,
         lenient: bool = False) -> int | None:  # fmt: skip
    """Open directory ``parts`` below ``root_fd`` without following symlinks.

    Args:
        root_fd: the target's fd; it stays open.
        parts: path components below the root, already checked (no ``..``, no empty parts).
        entry: the tar member this is for, named in errors.
        create: make missing directories (mode 0755, Docker's mode for unlisted parents).
        lenient: return None instead of raising when a component is not a directory.

    Returns:
        An fd of the directory, which the caller closes; None when it is missing.

    Raises:
        HostileLayerError: a component is a symlink (unless ``lenient``).
        ImageError: a component is not a directory (unless ``lenient``).
    """
    fd = os.dup(root_fd)
    for i, part in enumerate(parts):
        try:
            st = lstat(fd, part)
            if st is None and create:
                os.mkdir(part, 0o755, dir_fd=fd)  # a parent the layer did not list: Docker's mode
            elif st is None or not stat.S_ISDIR(st.st_mode):
                if st is None or lenient:
                    return None
                where = "/".join(parts[: i + 1])
                if stat.S_ISLNK(st.st_mode):
                    raise HostileLayerError(f"entry {entry!r} goes through the symlink {where!r}; msb "
                                            "never follows a layer's symlinks on the host",
                                            hint=HOSTILE_HINT)  # fmt: skip
                raise ImageError(f"entry {entry!r} needs {where!r} to be a directory, but it is not one",
                                 hint=HOSTILE_HINT)  # fmt: skip
            nxt = os.open(part, DIR_FLAGS, dir_fd=fd)
            if st is None:
                os.fchmod(nxt, 0o755)  # exact, whatever the umask
        finally:
            os.close(fd)
        fd = nxt
    return fd


def lstat(dir_fd: int, name: str) -> os.stat_result | None:
    """``name`` in ``dir_fd``, not followed; None when it does not exist."""
    try:
        return os.stat(name, dir_fd=dir_fd, follow_symlinks=False)
    except FileNotFoundError:
        return None


def remove(dir_fd: int, name: str, st: os.stat_result) -> None:
    """Remove ``name`` in ``dir_fd`` (a whole tree if ``st`` says it is a directory), never following symlinks."""
    if stat.S_ISDIR(st.st_mode):
        shutil.rmtree(name, dir_fd=dir_fd)  # the fd-based variant: never follows symlinks
    else:
        os.unlink(name, dir_fd=dir_fd)


def mtime_ns(mtime: float) -> int:
    """A tar mtime in nanoseconds, clamped to what ``utime`` takes."""
    ns = mtime * 1_000_000_000 if isinstance(mtime, int) else int(mtime * 1e9)
    return max(-(1 << 63), min(ns, (1 << 63) - 1))


class Ref:
    """Something to set metadata on: an open fd, or ``name`` in ``dir_fd`` (never followed)."""

    def __init__(self, fd: int | None = None, *, dir_fd: int = -1, name: str = "") -> None:
        self.fd, self.dir_fd, self.name = fd, dir_fd, name

    def chown(self, uid: int, gid: int) -> None:
        if self.fd is not None:
            os.chown(self.fd, uid, gid)
        else:
            os.chown(self.name, uid, gid, dir_fd=self.dir_fd, follow_symlinks=False)

    def chmod(self, mode: int) -> None:
        if self.fd is not None:
            os.chmod(self.fd, mode)
        else:
            os.chmod(self.name, mode, dir_fd=self.dir_fd, follow_symlinks=False)

    def setxattr(self, key: str, value: bytes) -> None:
        if self.fd is not None:
            os.setxattr(self.fd, key, value)
        else:  # no *at() form: the /proc link pins the directory, the last name is not followed
            os.setxattr(f"/proc/self/fd/{self.dir_fd}/{self.name}", key, value, follow_symlinks=False)

    def utime(self, ns: int) -> None:
        if self.fd is not None:
            os.utime(self.fd, ns=(ns, ns))
        else:
            os.utime(self.name, ns=(ns, ns), dir_fd=self.dir_fd, follow_symlinks=False)


def set_owner(ref: Ref, uid: int, gid: int, *, privileged: bool, me: tuple[int, int]) -> bool:
    """Give ``ref`` the owner ``uid:gid`` when ``privileged``.

    Args:
        ref: what to chown.
        uid: the owner the layer asks for.
        gid: the group the layer asks for.
        privileged: try to chown at all.
        me: our (euid, egid): what an entry is owned by when it is not chowned.

    Returns:
        True when the entry is left with an owner other than the one asked for.

    Raises:
        OSError: chown failed for a reason other than an unmapped id (EPERM, EINVAL).
    """
    if privileged:
        try:
            ref.chown(uid, gid)
            return False
        except OSError as exc:  # a user namespace without that id mapped
            if exc.errno not in (errno.EPERM, errno.EINVAL):
                raise
    return (uid, gid) != me


def set_xattrs(ref: Ref, pax_headers: Mapping[str, str]) -> int:
    """Set the ``SCHILY.xattr.*`` extended attributes from an entry's pax headers.

    ``trusted.overlay.*`` is never set: it would steer an overlayfs mount of this tree.

    Args:
        ref: what to set them on.
        pax_headers: the entry's pax headers, as tarfile decoded them.

    Returns:
        How many were not set: refused, unsupported here, or ``trusted.overlay.*``.

    Raises:
        OSError: setting one failed for a reason other than those skipped.
    """
    skipped = 0
    for key, value in pax_headers.items():
        if not key.startswith(_XATTR):
            continue
        name = key[len(_XATTR) :]
        if name.startswith("trusted.overlay."):  # would steer an overlayfs mount of this tree
            skipped += 1
            continue
        try:
            ref.setxattr(name, value.encode("utf-8", "surrogateescape"))  # tarfile decoded the raw bytes
        except ValueError:
            skipped += 1
        except OSError as exc:
            if exc.errno not in _XATTR_SKIP:
                raise
            skipped += 1
    return skipped
