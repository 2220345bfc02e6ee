"""The busybox base image's file tree, taken from the host's static busybox.

:func:`find_static_busybox` locates Debian's ``busybox-static`` binary and proves it static with
:func:`is_static_elf` (no ``PT_INTERP`` program header, so it runs without a dynamic loader in an
otherwise empty root). :func:`busybox_entries` yields the layer's tar entries: the standard
directories, one symlink per applet, minimal ``passwd``/``group`` files and the binary itself.

The tar-entry helpers (:data:`Entry`, :func:`tar_info`) live here too; the Debian layer in
:mod:`engine.images.build` reuses them.
"""

from __future__ import annotations

import io
import shutil
import struct
import subprocess
import tarfile
from collections.abc import Iterator
from pathlib import Path
from typing import IO

from engine.errors import ImageError

Entry = tuple[tarfile.TarInfo, IO[bytes] | None]
"""One tar member and its data (``None`` for anything but a regular file)."""

_BUSYBOX_DIRS = {"bin": 0o755, "sbin": 0o755, "usr": 0o755, "usr/bin": 0o755, "usr/sbin": 0o755, "etc": 0o755,
                 "root": 0o700, "tmp": 0o1777, "var": 0o755, "var/tmp": 0o1777, "dev": 0o755, "proc": 0o555,
                 "sys": 0o555, "run": 0o755, "home": 0o755}  # fmt: skip
_PASSWD = b"root:x:0:0:root:/root:/bin/sh\nnobody:x:65534:65534:nobody:/nonexistent:/bin/false\n"
_GROUP = b"root:x:0:\nnogroup:x:65534:\n"
_ELF_PHDRS = {1: ("I", 0x1C, 0x2A), 2: ("Q", 0x20, 0x36)}
"""ELF class → (e_phoff format, its offset, offset of e_phentsize + e_phnum)."""


def tar_info(name: str, kind: bytes, mode: int, mtime: int, *, size: int = 0, link: str = "") -> tarfile.TarInfo:
    """A tar header owned by root (uid/gid 0, no names).

    Args:
        name: the member's path, relative (no leading ``/`` or ``./``).
        kind: a ``tarfile`` type constant (``DIRTYPE``, ``REGTYPE``, ``SYMTYPE`` …).
        mode: permission bits.
        mtime: modification time, seconds since the epoch.
        size: bytes of data that follow (regular files).
        link: the link target (symlinks and hard links).

    Returns:
        The header, ready for ``TarFile.addfile``.
    """
    ti = tarfile.TarInfo(name)
    ti.type, ti.mode, ti.mtime, ti.size, ti.linkname = kind, mode, mtime, size, link
    return ti


def find_static_busybox() -> Path:
    """The host's static busybox (Debian ``busybox-static``), checked for having no ELF interpreter.

    Raises:
        ImageError: none installed, or only a dynamically linked one.
    """
    candidates: list[Path] = []
    if shutil.which("dpkg") is not None:
        res = subprocess.run(["dpkg", "-L", "busybox-static"], capture_output=True, text=True, check=False)
        candidates += [Path(p) for p in res.stdout.splitlines() if p.endswith("/bin/busybox")]
    candidates += [Path("/bin/busybox"), Path("/usr/bin/busybox")]
    for path in candidates:
        if path.is_file() and is_static_elf(path):
            return path.resolve()
    raise ImageError("no statically linked busybox on this host",
                     hint="install it: apt-get install busybox-static")  # fmt: skip


def is_static_elf(path: Path) -> bool:
    """True if ``path`` is an ELF executable without a ``PT_INTERP`` program header (so no dynamic loader)."""
    with open(path, "rb") as f:
        head = f.read(64)
        if len(head) < 52 or head[:4] != b"\x7fELF" or head[4] not in (1, 2) or head[5] not in (1, 2):
            return False
        end = "<" if head[5] == 1 else ">"
        fmt, at_phoff, at_phnum = _ELF_PHDRS[head[4]]
        (phoff,) = struct.unpack_from(end + fmt, head, at_phoff)
        phentsize, phnum = struct.unpack_from(end + "HH", head, at_phnum)
        f.seek(phoff)
        table = f.read(phentsize * phnum)
    if phentsize < 4 or len(table) < phentsize * phnum:
        return False
    return all(struct.unpack_from(end + "I", table, i * phentsize)[0] != 3 for i in range(phnum))  # 3 = PT_INTERP


def busybox_applets(busybox: Path) -> list[str]:
    """``busybox --list-full`` (paths like ``bin/sh``), without busybox itself or unsafe names."""
    res = subprocess.run([str(busybox), "--list-full"], capture_output=True, text=True, check=False)
    if res.returncode != 0:
        raise ImageError(f"{busybox} --list-full failed: {res.stderr.strip()}", hint="apt-get install busybox-static")
    applets = []
    for line in res.stdout.split():
        parts = line.split("/")
        if line.startswith("/") or ".." in parts or "" in parts or line == "bin/busybox":
            continue
        applets.append(line)
    return applets


def busybox_entries(busybox: Path) -> Iterator[Entry]:
    """The busybox tree, as the tar entries of one layer (owner root, mtime of the binary).

    Args:
        busybox: the static busybox binary (see :func:`find_static_busybox`).

    Returns:
        The entries in name order, with ``bin/busybox`` (opened while it is yielded) last.

    Raises:
        ImageError: ``busybox --list-full`` failed.
    """
    st = busybox.stat()
    mtime = int(st.st_mtime)
    applets = busybox_applets(busybox)
    dirs = dict(_BUSYBOX_DIRS)
    for applet in applets:
        parent = applet.rsplit("/", 1)[0] if "/" in applet else ""
        while parent and parent not in dirs:
            dirs[parent] = 0o755
            parent = parent.rsplit("/", 1)[0] if "/" in parent else ""
    items: list[Entry] = [(tar_info(d, tarfile.DIRTYPE, mode, mtime), None) for d, mode in dirs.items()]
    items += [(tar_info(a, tarfile.SYMTYPE, 0o777, mtime, link="/bin/busybox"), None) for a in applets]
    for name, data in (("etc/passwd", _PASSWD), ("etc/group", _GROUP)):
        items.append((tar_info(name, tarfile.REGTYPE, 0o644, mtime, size=len(data)), io.BytesIO(data)))
    items.sort(key=lambda e: e[0].name)
    yield from items
    with open(busybox, "rb") as f:
        yield tar_info("bin/busybox", tarfile.REGTYPE, 0o755, mtime, size=st.st_size), f
