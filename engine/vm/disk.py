"""Disk images the VM boots from: the read-only root image and the persistent upper layer.

A root filesystem directory becomes an ext4 image (``mkfs.ext4 -d``, no root needed, no
journal since the guest mounts it read-only), cached by a fingerprint of the tree, so the
second sandbox from the same directory starts without a rebuild. A persistent sandbox gets a
sparse ext4 image of its own for its writable layer; it only uses the space written.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import stat
import subprocess
import tempfile
from pathlib import Path

from engine.errors import ConfigError, VmError

BLOCK = 4096


def _mkfs() -> str:
    path = shutil.which("mkfs.ext4") or "/sbin/mkfs.ext4"
    if not os.access(path, os.X_OK):
        raise VmError("mkfs.ext4 not found", hint="install e2fsprogs: apt-get install e2fsprogs")
    return path


def tree_fingerprint(root: Path) -> tuple[str, int, int]:
    """Fingerprint a directory tree by names, types, modes, owners, sizes and mtimes.

    Returns:
        ``(hex digest, bytes needed in 4 KiB blocks, number of entries)``.
    """
    h = hashlib.sha256()
    need = 0
    count = 0
    stack = [root]
    while stack:
        d = stack.pop()
        try:
            entries = sorted(os.scandir(d), key=lambda e: e.name)
        except PermissionError as exc:
            raise ConfigError(f"cannot read {d}: {exc.strerror}") from exc
        for e in entries:
            st = e.stat(follow_symlinks=False)
            count += 1
            rel = os.path.relpath(e.path, root)
            extra = os.readlink(e.path) if stat.S_ISLNK(st.st_mode) else ""
            h.update(
                f"{rel}\0{st.st_mode}\0{st.st_uid}\0{st.st_gid}\0{st.st_size}\0{st.st_mtime_ns}\0{extra}\n".encode()
            )
            need += -(-st.st_size // BLOCK) * BLOCK + BLOCK
            if stat.S_ISDIR(st.st_mode):
                stack.append(Path(e.path))
    return h.hexdigest(), need, count


def root_image_for_dir(rootfs: Path, cache_dir: Path) -> Path:
    """Return a cached read-only ext4 image of ``rootfs``, building it if the tree changed.

    Raises:
        ConfigError: ``rootfs`` is not a directory or has no ``/bin/sh``-style content.
        VmError: mkfs failed.
    """
    rootfs = rootfs.resolve()
    if not rootfs.is_dir():
        raise ConfigError(
            f"root filesystem {rootfs} is not a directory",
            hint="pass a directory that holds a Linux root filesystem (bin/, etc/, …)",
        )
    digest, need, count = tree_fingerprint(rootfs)
    target = cache_dir / "rootfs" / f"{digest[:32]}.ext4"
    if target.exists():
        return target
    build_ext4(rootfs, target, need=need, count=count)
    return target


def build_ext4(src: Path, target: Path, *, need: int | None = None, count: int | None = None) -> Path:
    """Build a read-only-use ext4 image of directory ``src`` at ``target`` (atomically).

    Raises:
        VmError: mkfs failed.
    """
    if need is None or count is None:
        _, need, count = tree_fingerprint(src)
    target.parent.mkdir(parents=True, exist_ok=True)
    size = int(need * 1.15) + (16 << 20)
    fd, tmp = tempfile.mkstemp(dir=target.parent, suffix=".tmp")
    os.close(fd)
    try:
        os.truncate(tmp, size)
        _run_mkfs([
            "-q", "-F", "-t", "ext4", "-O", "^has_journal", "-m", "0", "-b", str(BLOCK),
            "-N", str(count + 1024), "-L", "msb-root", "-d", str(src), tmp,
        ])  # fmt: skip
        os.replace(tmp, target)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return target


def create_upper_image(path: Path, size_mib: int) -> None:
    """Create a sparse ext4 image for a persistent writable layer (no-op if it exists).

    Raises:
        VmError: mkfs failed.
    """
    if path.exists():
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    with open(tmp, "wb") as f:
        f.truncate(size_mib << 20)
    try:
        _run_mkfs(
            [
                "-q",
                "-F",
                "-t",
                "ext4",
                "-m",
                "0",
                "-L",
                "msb-upper",
                "-E",
                "lazy_itable_init=1,lazy_journal_init=1",
                str(tmp),
            ]
        )
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def _run_mkfs(args: list[str]) -> None:
    proc = subprocess.run([_mkfs(), *args], capture_output=True, text=True)
    if proc.returncode != 0:
        raise VmError(f"mkfs.ext4 failed: {proc.stderr.strip() or proc.stdout.strip()}")
