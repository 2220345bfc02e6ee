"""A writable root for backends that run a directory, not a disk image (gVisor, libkrun).

The image's unpacked tree in the store is shared by every sandbox of that image and must never
change. QEMU guests get a copy-on-write overlay inside the guest kernel; backends that hand a
host directory to the sandbox get one on the host: an overlayfs mount whose lower layer is the
image tree and whose upper layer is the sandbox's own directory (``persist_dir/upper``, kept,
for a persistent sandbox; a directory in the run dir, removed at stop, otherwise).

Only the sandbox's runtime (gVisor's gofer, libkrun's virtio-fs server) writes into the upper
directory, as plain files. The host kernel never mounts anything the guest built, unlike a
loop-mounted ext4 image, which would put a hostile guest's filesystem metadata in front of
the host kernel.

Mounting needs root (``CAP_SYS_ADMIN``), as does running runsc without rootless mode.
"""

from __future__ import annotations

import ctypes
import errno
import os
import shutil
from pathlib import Path

from engine.errors import ConfigError, VmError

MNT_DETACH = 2
MS_RDONLY, MS_NOSUID, MS_NODEV, MS_REMOUNT, MS_BIND = 0x1, 0x2, 0x4, 0x20, 0x1000


def _libc() -> ctypes.CDLL:
    return ctypes.CDLL(None, use_errno=True)


def _escape(path: Path) -> str:
    """overlayfs option values may not contain ``,`` or ``:`` (they separate options/layers)."""
    s = str(path)
    if any(c in s for c in ",:\n"):
        raise ConfigError(
            f"path {s!r} contains ',', ':' or a newline, which overlayfs options cannot carry",
            hint="move the image store (MSB_CACHE_DIR) or the sandbox state (MSB_STORAGE_PATH) to a plain path",
        )
    return s


def mount_overlay(lower: Path, upper: Path, work: Path, target: Path) -> None:
    """Mount ``lower`` (read-only) + ``upper`` (writable) at ``target``.

    ``upper`` and ``work`` are created if missing; they must be on the same filesystem.
    A stale mount of the same upper directory (left by a crashed supervisor) is detached
    first, since overlayfs refuses an upper directory that another mount uses.

    Raises:
        VmError: the mount failed (not root, no overlayfs, bad directories).
    """
    for d in (upper, work, target):
        d.mkdir(parents=True, exist_ok=True)
    detach_stale(upper)
    opts = f"lowerdir={_escape(lower)},upperdir={_escape(upper)},workdir={_escape(work)}"
    # nosuid,nodev: setuid files or device nodes the guest leaves in its layer mean nothing here
    rc = _libc().mount(b"overlay", str(target).encode(), b"overlay", MS_NOSUID | MS_NODEV, opts.encode())
    if rc != 0:
        err = ctypes.get_errno()
        hint = "the gVisor and libkrun backends need root to mount the sandbox's writable root"
        if err == errno.ENODEV:
            hint = "the host kernel has no overlayfs: `modprobe overlay`"
        elif err == errno.EBUSY:
            hint = "another instance of this sandbox is using its writable layer: stop it first"
        raise VmError(f"cannot mount the sandbox root at {target}: {os.strerror(err)}", hint=hint)


def mount_raw(src: str | None, dst: Path, flags: int) -> None:
    """mount(2) without a file-system type or data: binds and remounts.

    Raises:
        VmError: the call failed (the message names both paths and the error).
    """
    rc = _libc().mount(src.encode() if src else None, str(dst).encode(), None, flags, None)
    if rc != 0:
        err = ctypes.get_errno()
        raise VmError(f"cannot mount {src or 'flags'} on {dst}: {os.strerror(err)}",
                      hint="msb needs root to prepare a sandbox's file systems on this backend")  # fmt: skip


def bind(src: Path, dst: Path, *, readonly: bool) -> None:
    """Bind-mount ``src`` on ``dst`` (non-recursive), ``nosuid,nodev`` and maybe read-only.

    A read-only bind is enforced by the host kernel for every process, the sandbox runtime's
    own file server included: the guest's side cannot undo it.

    Raises:
        VmError: a mount call failed.
    """
    mount_raw(str(src), dst, MS_BIND)
    try:
        mount_raw(None, dst, MS_BIND | MS_REMOUNT | MS_NOSUID | MS_NODEV | (MS_RDONLY if readonly else 0))
    except VmError:
        unmount(dst)
        raise


def unmount(target: Path) -> None:
    """Detach the mount at ``target`` (lazily, so open files cannot block it). Safe when
    nothing is mounted there."""
    rc = _libc().umount2(str(target).encode(), MNT_DETACH)
    if rc != 0:
        err = ctypes.get_errno()
        if err not in (errno.EINVAL, errno.ENOENT):
            raise VmError(f"cannot unmount {target}: {os.strerror(err)}")


def overlay_mounts_of(upper: Path, mountinfo: str | None = None) -> list[Path]:
    """Mount points of overlay mounts whose upper directory is ``upper``."""
    if mountinfo is None:
        try:
            mountinfo = Path("/proc/self/mountinfo").read_text()
        except OSError:
            return []
    found: list[Path] = []
    want = f"upperdir={upper}"
    for line in mountinfo.splitlines():
        pre, sep, post = line.partition(" - ")
        if not sep:
            continue
        fields = pre.split()
        tail = post.split()
        if len(fields) < 5 or len(tail) < 3 or tail[0] != "overlay":
            continue
        if want in tail[2].split(","):
            found.append(Path(fields[4].replace("\\040", " ")))
    return found


def detach_stale(upper: Path) -> None:
    """Unmount any overlay still using ``upper`` (the caller holds the sandbox's lock)."""
    for mnt in overlay_mounts_of(upper):
        unmount(mnt)


def remove_tree(path: Path) -> None:
    """Remove a directory tree that may hold read-only or immutable-looking entries."""
    shutil.rmtree(path, ignore_errors=True)
