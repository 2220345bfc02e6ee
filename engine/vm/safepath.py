"""Opening host paths without following links a guest could have planted.

A volume's host directory, a persistent layer or a project's ``.menv`` may sit in (or below) a
directory that a guest can write. Checking a path string and using it later lets the guest
swap a component for a symlink in between, and root then follows it anywhere on the host.
The rule (docs/security.md): host code resolves such paths once, with no symlink allowed, into
an fd, and works on the fd from then on (``openat``-style calls, or ``/proc/self/fd/N`` to
hand the very same directory to a mount or a child process).

- :func:`open_dir_nofollow`: an ``O_PATH`` fd of an absolute directory path, none of whose
  components may be a symlink.
- :func:`open_beneath`: a path relative to a directory fd, which may neither leave that
  directory (``..``, absolute paths) nor pass through a symlink.

Both use ``openat2(2)`` (Linux ≥ 5.6) and fall back to a component-by-component ``O_NOFOLLOW``
walk where the kernel has no ``openat2`` (``ENOSYS``), so the guarantee is the same.
"""

from __future__ import annotations

import ctypes
import errno
import os
import platform
import stat
from pathlib import Path

from engine.errors import ConfigError

RESOLVE_NO_XDEV = 0x01
RESOLVE_NO_MAGICLINKS = 0x02
RESOLVE_NO_SYMLINKS = 0x04
RESOLVE_BENEATH = 0x08
_SYS_OPENAT2 = {"x86_64": 437, "aarch64": 437}
_DIR_FLAGS = os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC


class _OpenHow(ctypes.Structure):
    _fields_ = [("flags", ctypes.c_uint64), ("mode", ctypes.c_uint64), ("resolve", ctypes.c_uint64)]


def fd_path(fd: int) -> str:
    """``/proc/self/fd/N``: the magic link that names exactly what ``fd`` refers to (for
    ``mount(2)`` sources and a child process that inherits ``fd``)."""
    return f"/proc/self/fd/{fd}"


def _openat2(dirfd: int, path: str, flags: int, mode: int, resolve: int) -> int:
    """``openat2(2)``; raises OSError (``ENOSYS`` where the kernel or the arch has none)."""
    nr = _SYS_OPENAT2.get(platform.machine())
    if nr is None:
        raise OSError(errno.ENOSYS, "openat2 is not known on this architecture")
    libc = ctypes.CDLL(None, use_errno=True)
    libc.syscall.restype = ctypes.c_long
    creates = flags & (os.O_CREAT | os.O_TMPFILE) == os.O_CREAT or flags & os.O_TMPFILE == os.O_TMPFILE
    how = _OpenHow(flags | os.O_CLOEXEC, mode if creates else 0, resolve)  # EINVAL: a mode without O_CREAT
    fd = libc.syscall(nr, dirfd, path.encode(), ctypes.byref(how), ctypes.sizeof(how))
    if fd < 0:
        err = ctypes.get_errno()
        raise OSError(err, os.strerror(err), path)
    return int(fd)


def _components(relpath: str) -> list[str]:
    """The names of a relative path; refuses ``..`` (a walk must never climb).

    Raises:
        OSError: ``EXDEV`` for a ``..`` component or an absolute path.
    """
    if relpath.startswith("/"):
        raise OSError(errno.EXDEV, "an absolute path is not beneath the directory", relpath)
    parts = [p for p in relpath.split("/") if p not in ("", ".")]
    if ".." in parts:
        raise OSError(errno.EXDEV, "'..' leaves the directory", relpath)
    return parts


def _walk(dirfd: int, parts: list[str], flags: int, mode: int) -> int:
    """Open ``parts`` under ``dirfd`` one component at a time with ``O_NOFOLLOW``.

    Raises:
        OSError: ``ELOOP`` when a component is a symlink, else what openat(2) said.
    """
    fd = os.dup(dirfd)
    try:
        for name in parts[:-1]:
            nxt = _open_one(fd, name, _DIR_FLAGS | os.O_NOFOLLOW, 0)
            os.close(fd)
            fd = nxt
        last = _open_one(fd, parts[-1] if parts else ".", flags | os.O_NOFOLLOW | os.O_CLOEXEC, mode)
    finally:
        os.close(fd)
    if flags & os.O_PATH and stat.S_ISLNK(os.fstat(last).st_mode):  # O_PATH|O_NOFOLLOW opens the link itself
        os.close(last)
        raise OSError(errno.ELOOP, "is a symlink", parts[-1])
    return last


def _open_one(dirfd: int, name: str, flags: int, mode: int) -> int:
    """openat(2) of one name; a symlink where a directory was asked for is ``ELOOP``."""
    try:
        return os.open(name, flags, mode, dir_fd=dirfd)
    except NotADirectoryError:
        if stat.S_ISLNK(os.lstat(name, dir_fd=dirfd).st_mode):
            raise OSError(errno.ELOOP, "is a symlink", name) from None
        raise


def open_beneath(dirfd: int, relpath: str, flags: int, mode: int = 0o600) -> int:
    """Open ``relpath`` beneath the directory ``dirfd``, following no symlink and never leaving it.

    ``openat2`` with ``RESOLVE_BENEATH | RESOLVE_NO_SYMLINKS | RESOLVE_NO_MAGICLINKS``; where
    the kernel has no ``openat2``, an ``O_NOFOLLOW`` walk that refuses ``..``. ``O_CLOEXEC`` is
    always added. Use ``O_PATH | O_DIRECTORY`` for a directory to continue from, ``O_CREAT``
    (with ``O_EXCL`` for a new file) to create the last component.

    Args:
        dirfd: an open directory (``O_PATH`` is enough).
        relpath: a relative path; ``.`` or ``""`` is the directory itself.
        flags: ``os.O_*`` flags for the last component.
        mode: permission bits when ``O_CREAT`` creates it.

    Returns:
        The new fd (the caller closes it).

    Raises:
        OSError: ``ELOOP`` a component is a symlink; ``EXDEV`` the path leaves the directory
            (``..`` above it, an absolute path); otherwise what the kernel said (``ENOENT``…).
    """
    resolve = RESOLVE_BENEATH | RESOLVE_NO_SYMLINKS | RESOLVE_NO_MAGICLINKS
    try:
        return _openat2(dirfd, relpath or ".", flags, mode, resolve)
    except OSError as e:
        if e.errno != errno.ENOSYS:
            raise
    return _walk(dirfd, _components(relpath), flags, mode)


def open_dir_nofollow(path: Path) -> int:
    """An ``O_PATH`` fd of the directory ``path``, resolved from ``/`` with no symlink allowed
    in any component (magic links included).

    Args:
        path: an absolute, real path (what ``realpath`` gives: no symlink, no ``..``).

    Returns:
        The fd (close-on-exec; the caller closes it).

    Raises:
        ConfigError: the path is relative or has ``..``, a component is a symlink (named in
            the message), it does not exist or is not a directory.
    """
    text = str(path)
    if not text.startswith("/") or ".." in text.split("/"):
        raise ConfigError(f"{text!r} must be an absolute path without '..'", hint="use the directory's real path")
    root = os.open("/", _DIR_FLAGS)
    try:
        return open_beneath(root, text.lstrip("/"), _DIR_FLAGS)
    except OSError as e:
        raise _explain(text, e) from e
    finally:
        os.close(root)


def _explain(path: str, err: OSError) -> ConfigError:
    """The ConfigError for a failed :func:`open_dir_nofollow`, naming the symlink if one is."""
    if err.errno == errno.ELOOP:
        link = first_symlink(path)
        where = f": {link} is a symlink" if link else " (a component is a symlink)"
        return ConfigError(
            f"refusing {path}{where}; host directories are never reached through links",
            hint="use the directory's real path (a guest may have swapped a directory for a link)",
        )
    if err.errno == errno.ENOTDIR:
        return ConfigError(f"{path} is not a directory", hint="a volume's host side must be a directory")
    return ConfigError(f"cannot open {path}: {os.strerror(err.errno or 0)}", hint="create it first, or fix the path")


def first_symlink(path: str) -> str | None:
    """The first prefix of the absolute ``path`` that is a symlink (for error messages only:
    the answer may be stale by the time it is read)."""
    current = ""
    for name in _components(path.lstrip("/")):
        current += "/" + name
        try:
            if stat.S_ISLNK(os.lstat(current).st_mode):
                return current
        except OSError:
            return None
    return None
