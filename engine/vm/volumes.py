"""QEMU arguments and guest boot parameters for volumes (host directories over virtio-9p).

Volume ``N`` is ``-fsdev local,id=volN,path=HOST,security_model=none[,readonly=on]`` plus a
virtio-9p device with mount tag ``msbvolN``; the guest agent mounts it from the boot
parameter ``msb.vol=msbvolN:ro|rw:PATH`` (engine/guest/agent/volumes.c) after switching to
the sandbox's root. ``PATH`` is %XX-encoded outside a small safe set, because the kernel
command line is split at spaces.

The host directory reaches QEMU as an fd, not a path: :func:`open_volume_fds` opens each one
with no symlink allowed (:func:`engine.vm.safepath.open_dir_nofollow`) and QEMU inherits the
fd, its ``path`` being ``/proc/self/fd/N``. A guest that can write a parent of the directory
(another sandbox's volume) cannot swap it for a symlink between the check and the start.

QEMU's ``local`` backend opens every path component relative to the shared directory with
``O_NOFOLLOW``: the guest cannot leave it, not even through a symlink placed inside it
(tests/integration/test_volumes.py checks).

Security model: a read-write volume uses ``mapped-xattr`` (``mapped-file`` where the host
file system has no user xattrs). The guest's owners, modes and special files are recorded in
extended attributes instead of being applied on the host, so a hostile guest cannot plant a
setuid-root program or a device node (which QEMU, if it runs as root, would then open for
the guest: the host's raw disk) in the host directory. Files the guest creates appear on the
host owned by the user running msb with mode 0644 (directories 0755). Read-only volumes
use ``none``: the guest sees the host files' real owners and modes and can change nothing.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import posixpath
import string
from collections.abc import Callable, Sequence
from pathlib import Path

from engine.errors import ConfigError
from engine.sandbox.spec import VolumeMount
from engine.vm import overlay
from engine.vm.backend import VmSpec
from engine.vm.safepath import fd_path, open_dir_nofollow

MAX_VOLUMES = 16
"""Matches the agent's ``MAX_VOLUMES``; microvm also has a bounded number of virtio slots."""
MAX_GUEST_PATH = 255
"""Bytes of a decoded guest mount point (the agent holds 1023 encoded)."""
RESERVED = ("/dev", "/proc", "/sys")
"""Guest trees the agent mounts itself; a volume over them would break the sandbox."""
MIN_VOLUME_FD = 10
"""Volume fds are moved at or above this, clear of the fds a child gets by number (QEMU's 3)."""
_SAFE = frozenset(string.ascii_letters + string.digits + "/._+@=,~-")


def encode_guest_path(path: str) -> str:
    """%XX-encode every byte of ``path`` outside ``[A-Za-z0-9/._+@=,~-]`` (UTF-8)."""
    return "".join(chr(b) if chr(b) in _SAFE else f"%{b:02X}" for b in path.encode())


def check_volumes(volumes: tuple[VolumeMount, ...]) -> None:
    """Refuse volume sets the guest could not mount as asked (pure: no file system access).

    Raises:
        ConfigError: too many volumes, a guest path that is not normalised, has control
            characters, is too long, lies in /dev, /proc or /sys, or is nested in (or equal to)
            another volume's path.
    """
    if len(volumes) > MAX_VOLUMES:
        raise ConfigError(f"{len(volumes)} volumes, at most {MAX_VOLUMES} are supported",
                          hint="share a common parent directory instead")  # fmt: skip
    guests: list[str] = []
    for v in volumes:
        g = v.guest
        if any(ord(ch) < 32 or ord(ch) == 127 for ch in g):
            raise ConfigError(f"volume guest path {g!r} contains control characters",
                              hint="use a plain absolute path such as /data")  # fmt: skip
        if posixpath.normpath(g) != g or g.startswith("//"):
            raise ConfigError(f"volume guest path {g!r} is not normalised",
                              hint=f"write it as {posixpath.normpath(g)!r}")  # fmt: skip
        if len(g.encode()) > MAX_GUEST_PATH:
            raise ConfigError(f"volume guest path {g[:40]!r}… is longer than {MAX_GUEST_PATH} bytes",
                              hint="mount it at a shorter path")  # fmt: skip
        if any(g == r or g.startswith(r + "/") for r in RESERVED):
            raise ConfigError(f"volume guest path {g!r} is inside /dev, /proc or /sys, which the guest needs",
                              hint="mount it elsewhere, e.g. under /mnt")  # fmt: skip
        for other in guests:
            if g == other or g.startswith(other + "/") or other.startswith(g + "/"):
                raise ConfigError(f"volume guest paths {other!r} and {g!r} overlap",
                                  hint="give each volume its own, non-nested mount point")  # fmt: skip
        guests.append(g)


def check_host_dirs(volumes: tuple[VolumeMount, ...]) -> None:
    """Check each volume's host side is an existing directory.

    Raises:
        ConfigError: a host path is missing or not a directory.
    """
    for v in volumes:
        if not os.path.isdir(v.host):
            raise ConfigError(f"volume host directory {v.host} does not exist or is not a directory",
                              hint="create it first, or fix the path")  # fmt: skip


def open_volume_fds(volumes: Sequence[VolumeMount]) -> list[int]:
    """Open each volume's host directory, following no symlink, as an ``O_PATH`` fd.

    Returns:
        One close-on-exec fd per volume, in order, each at least :data:`MIN_VOLUME_FD` (the
        caller closes them with :func:`close_fds` once the VMM holds its own references).

    Raises:
        ConfigError: a host path is missing, not a directory, or has a symlink in it.
    """
    fds: list[int] = []
    try:
        for v in volumes:
            fd = open_dir_nofollow(v.host)
            try:
                fds.append(fcntl.fcntl(fd, fcntl.F_DUPFD_CLOEXEC, MIN_VOLUME_FD))
            finally:
                os.close(fd)
    except BaseException:
        close_fds(fds)
        raise
    return fds


def close_fds(fds: Sequence[int]) -> None:
    """Close fds, ignoring ones already closed."""
    for fd in fds:
        with contextlib.suppress(OSError):
            os.close(fd)


def bind_volumes(volumes: Sequence[VolumeMount], targets: Sequence[Path]) -> list[Path]:
    """Bind-mount each volume's host directory, opened with no symlink followed, on its target
    (``nosuid,nodev``, read-only for a read-only volume), for backends that hand a directory
    to their file server (gVisor's gofer, libkrun's virtio-fs). The mount source is the fd's
    ``/proc/self/fd/N``: exactly the directory that was opened, whatever the path names now.

    Returns:
        The targets mounted so far, in order (all of them unless it raised).

    Raises:
        ConfigError: a host path is missing, not a directory, or has a symlink in it.
        VmError: a mount failed (what was mounted is unmounted again).
    """
    mounted: list[Path] = []
    fds = open_volume_fds(volumes)
    try:
        for v, fd, target in zip(volumes, fds, targets, strict=True):
            target.mkdir(parents=True, exist_ok=True)
            overlay.bind(Path(fd_path(fd)), target, readonly=v.readonly)
            mounted.append(target)
    except BaseException:
        for target in reversed(mounted):
            overlay.unmount(target)
        raise
    finally:
        close_fds(fds)
    return mounted


def security_model(host: str, readonly: bool) -> str:
    """The 9p security model for a volume (see the module docstring); ``host`` may be a
    ``/proc/self/fd/N`` path."""
    if readonly:
        return "none"
    probe = "user.msb.probe"
    try:
        os.setxattr(host, probe, b"1")
        os.removexattr(host, probe)
    except OSError:
        return "mapped-file"
    return "mapped-xattr"


def _qemu_value(text: str) -> str:
    """Escape a QEMU option value (a comma is written twice)."""
    return text.replace(",", ",,")


def volume_args(spec: VmSpec, dev: Callable[[str], str], fds: Sequence[int] | None = None) -> list[str]:
    """QEMU arguments for ``spec.volumes``.

    Args:
        spec: the VM.
        dev: maps a virtio device kind to the machine's variant (``-device`` / ``-pci``).
        fds: the volumes' fds from :func:`open_volume_fds`, inherited by QEMU under the same
            numbers (``None``: the paths themselves, for tests of the command line only).

    Raises:
        ConfigError: see :func:`check_volumes`.
    """
    check_volumes(spec.volumes)
    argv: list[str] = []
    for i, v in enumerate(spec.volumes):
        host = str(v.host) if fds is None else fd_path(fds[i])
        model = security_model(host, v.readonly)
        fsdev = f"local,id=vol{i},path={_qemu_value(host)},security_model={model},multidevs=remap"
        fsdev += ",readonly=on" if v.readonly else ",fmode=0644,dmode=0755"
        argv += ["-fsdev", fsdev, "-device", f"{dev('virtio-9p')},fsdev=vol{i},mount_tag=msbvol{i}"]
    return argv


def volume_cmdline(spec: VmSpec) -> list[str]:
    """Guest boot parameters for ``spec.volumes`` (one ``msb.vol=`` each, in order)."""
    return [
        f"msb.vol=msbvol{i}:{'ro' if v.readonly else 'rw'}:{encode_guest_path(v.guest)}"
        for i, v in enumerate(spec.volumes)
    ]
