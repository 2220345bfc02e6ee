"""Apply OCI image layer tars to a directory, safely.

A layer comes from a registry we do not trust, so its tar is hostile: nothing it says may
write outside the target directory, even when msb runs as root. How that holds:

* member names are normalised Docker's way (a leading ``/`` or ``./`` is dropped) and refused
  with a ``..`` component, a NUL byte, a component over 255 bytes, over 4096 bytes in all or
  over 256 components;
* every directory on the way to an entry is opened ``O_DIRECTORY | O_NOFOLLOW`` starting from
  the target's own fd, and every change is made relative to such an fd without following
  symlinks: no host-side path resolution ever follows a symlink the layer planted. A symlink
  in a parent position is refused; a symlink *entry* may point anywhere (``/bin/sh ->
  busybox``): only the guest follows it;
* a hard link must name something that already exists in the target, reached the same way;
* a regular file is created ``O_CREAT | O_EXCL | O_NOFOLLOW`` after the old entry is removed;
* a char or block device (``/dev/sda``, ``/dev/mem``) never becomes a device node on the host: it
  is an empty regular file (mode 0600 at most); the guest mounts its own devtmpfs on ``/dev``.
  (overlayfs' 0:0 char-device whiteouts mean nothing in an OCI tar: ``.wh.`` names do.) FIFOs
  lose setuid/setgid/sticky bits. Sparse files and unknown entry types are refused;
* the uncompressed stream and the file bytes are capped (``max_bytes``), and so are the entries
  (``max_entries``) and pax / GNU long-name headers (1 MiB, Go's archive/tar limit), so a
  decompression bomb stops early.

Changes follow the OCI image spec, "Applying changesets": an entry replaces whatever is at its
path, except a directory onto a directory, which merges. ``dir/.wh.NAME`` deletes NAME and
``dir/.wh..wh..opq`` empties ``dir``; both only touch what lower layers made, never what this
layer already wrote.

The target is created with mode 0700 and its mode is never changed (an entry for the root
itself is ignored): a root-owned extract can hold setuid-root binaries, which other host users
must not reach. On any error the target is left half-applied; callers throw it away.

This module holds the changeset rules; :mod:`engine.images.tarstream` bounds the stream (bytes,
diff_id, header sizes) and :mod:`engine.images.fsops` does every fd-relative filesystem call.
"""

from __future__ import annotations

import gzip
import os
import stat
import tarfile
from pathlib import Path

from pydantic import BaseModel, Field

from engine.errors import HostileLayerError, ImageError
from engine.images.fsops import (
    DIR_FLAGS,
    NEW_FILE_FLAGS,
    Ref,
    lstat,
    mtime_ns,
    open_target,
    remove,
    set_owner,
    set_xattrs,
    walk,
)
from engine.images.oci import Digest
from engine.images.tarstream import (
    BOMB_HINT,
    CHUNK,
    CORRUPT_ERRORS,
    HOSTILE_HINT,
    HashingReader,
    decompressed,
    open_blob,
    open_tar,
)

__all__ = ["LayerStats", "apply_layer"]

MAX_NAME_BYTES = 255
MAX_PATH_BYTES = 4096
MAX_DEPTH = 256

_WH = ".wh."
_WH_META = ".wh..wh."
_OPAQUE = ".wh..wh..opq"


class LayerStats(BaseModel):
    """What applying one layer did."""

    entries: int = Field(ge=0)
    """Tar members read, whiteouts included."""
    bytes: int = Field(ge=0)
    """Regular-file content written, in bytes."""
    whiteouts: int = Field(ge=0)
    """Whiteout and opaque-directory markers applied."""
    diff_id: Digest
    """``sha256:<hex>`` of the uncompressed tar stream, to check against ``rootfs.diff_ids``."""
    skipped_xattrs: int = Field(ge=0)
    """Extended attributes not set: unsupported here, not permitted, or ``trusted.overlay.*``."""
    skipped_owners: int = Field(ge=0)
    """Entries whose owner differs from ours and could not be set (unprivileged, or refused)."""
    skipped_devices: int = Field(default=0, ge=0)
    """Character and block devices applied as empty regular files instead (module docstring)."""


def apply_layer(
    blob: Path,
    compression: str | None,
    target: Path,
    *,
    max_bytes: int = 64 << 30,
    max_entries: int = 2_000_000,
    privileged: bool | None = None,
) -> LayerStats:
    """Apply one layer to ``target``, streaming it, without ever writing outside ``target``.

    Args:
        blob: the layer blob as stored (compressed or not).
        compression: ``"gzip"``, ``"zstd"`` or None, as ``oci.LAYER_COMPRESSION`` maps media types.
        target: the root filesystem directory; created with mode 0700 when missing.
        max_bytes: cap on the uncompressed stream and on the file bytes written, in bytes.
        max_entries: cap on the number of tar members.
        privileged: set owners; defaults to running as root. Device nodes are never made.

    Returns:
        Counts, and the diff_id (sha256 of the uncompressed tar) to compare with the image config.

    Raises:
        HostileLayerError: the layer tried to escape ``target`` or is a bomb; nothing was
            written outside ``target``.
        ImageError: the blob is not a valid (compressed) tar, uses something msb does not
            apply (sparse files, odd entry types), or ``target`` cannot be written.
    """
    if compression not in ("gzip", "zstd", None):
        raise ImageError(f"unknown layer compression {compression!r}", hint="use 'gzip', 'zstd' or None")
    root_fd = open_target(target)
    applier = _Applier(root_fd, privileged=os.geteuid() == 0 if privileged is None else privileged,
                       max_bytes=max_bytes, max_entries=max_entries)  # fmt: skip
    try:
        with open_blob(blob) as fh, decompressed(fh, compression) as raw:
            reader = HashingReader(raw, max_bytes)
            with open_tar(reader) as tar:
                applier.run(tar)
            reader.drain()  # the padding after end-of-archive is part of the diff_id
            applier.finish()
    except ImageError as exc:
        raise type(exc)(f"layer {blob.name}: {exc.message}", hint=exc.hint) from exc
    except CORRUPT_ERRORS as exc:
        raise ImageError(f"layer {blob.name} is not a valid {compression or 'plain'} tar stream: {exc}",
                         hint="the blob is corrupt or truncated; pull the image again") from exc  # fmt: skip
    except OSError as exc:
        raise ImageError(f"could not apply layer {blob.name} to {target}: {exc.strerror or exc}",
                         hint="check free space, quotas and permissions under the target") from exc  # fmt: skip
    finally:
        applier.close()
        os.close(root_fd)
    return applier.stats(reader.digest())


class _Applier:
    """Applies tar members one by one under ``root_fd``; see the module docstring for the rules."""

    def __init__(self, root_fd: int, *, privileged: bool, max_bytes: int, max_entries: int) -> None:
        self.root_fd, self.privileged = root_fd, privileged
        self.max_bytes, self.max_entries = max_bytes, max_entries
        self.me = (os.geteuid(), os.getegid())
        self.entries = self.bytes = self.whiteouts = 0
        self.skipped_xattrs = self.skipped_owners = self.skipped_devices = 0
        self.ours: set[str] = set()
        """Paths this layer wrote, and their parents: whiteouts leave them alone."""
        self.dirs: dict[tuple[str, ...], tuple[int, int, int]] = {}
        """Directory → (inode, mode, mtime ns), set at the end: children change mtimes, and a
        read-only directory must stay writable while its children are unpacked."""
        self._cache: tuple[tuple[str, ...], int] | None = None

    def run(self, tar: tarfile.TarFile) -> None:
        while (ti := tar.next()) is not None:
            tar.members.clear()  # type: ignore[attr-defined]  # streaming: else it grows to millions
            self.entries += 1
            if self.entries > self.max_entries:
                raise HostileLayerError(f"has more than {self.max_entries} entries", hint=BOMB_HINT)
            try:
                self._entry(tar, ti)
            except gzip.BadGzipFile:
                raise
            except OSError as exc:
                raise ImageError(f"could not apply {ti.name!r}: {exc.strerror or exc}",
                                 hint="check free space, quotas and permissions under the target") from exc  # fmt: skip
            except (ValueError, OverflowError) as exc:
                raise ImageError(f"entry {ti.name!r} is malformed: {exc}", hint=HOSTILE_HINT) from exc

    def _entry(self, tar: tarfile.TarFile, ti: tarfile.TarInfo) -> None:
        parts = _split(ti.name, ti.name)
        if not parts:
            if not ti.isdir():
                raise HostileLayerError(f"entry {ti.name!r} would replace the root directory", hint=HOSTILE_HINT)
            return  # the root keeps its 0700 (module docstring)
        if parts[0].startswith(_WH_META) and parts != (_OPAQUE,):
            return  # AUFS bookkeeping (/.wh..wh.plnk/…): never applied
        if parts[-1].startswith(_WH):
            self._whiteout(parts, ti.name)
            return
        if not (ti.isreg() or ti.isdir() or ti.issym() or ti.islnk() or ti.isfifo() or ti.isdev()):
            raise ImageError(f"entry {ti.name!r} has tar type {ti.type!r}, which msb does not apply",
                             hint="use an image built by docker, buildah or another OCI builder")  # fmt: skip
        pfd = self._parent(parts[:-1], ti.name)
        name = parts[-1]
        self._mark(parts)
        if ti.islnk():
            self._hardlink(ti, pfd, name, parts)
            return
        old = lstat(pfd, name)
        merge = ti.isdir() and old is not None and stat.S_ISDIR(old.st_mode)
        if old is not None and not merge:
            remove(pfd, name, old)
        if ti.isreg():
            self._file(tar, ti, pfd, name)
        elif ti.isdir():
            self._dir(ti, pfd, name, parts, merge)
        elif ti.issym():
            self._symlink(ti, pfd, name)
        else:
            self._node(ti, pfd, name)

    def _file(self, tar: tarfile.TarFile, ti: tarfile.TarInfo, pfd: int, name: str) -> None:
        if self.bytes + ti.size > self.max_bytes:
            raise HostileLayerError(f"files unpack to more than {self.max_bytes} bytes (at {ti.name!r})",
                                    hint=BOMB_HINT)  # fmt: skip
        src = tar.extractfile(ti)
        if src is None:
            raise ImageError(f"entry {ti.name!r} has no data", hint=HOSTILE_HINT)
        fd = os.open(name, NEW_FILE_FLAGS, 0o600, dir_fd=pfd)
        try:
            while chunk := src.read(CHUNK):
                view = memoryview(chunk)
                while view:
                    view = view[os.write(fd, view) :]
                self.bytes += len(chunk)
            self._meta(ti, Ref(fd))
        finally:
            os.close(fd)

    def _dir(self, ti: tarfile.TarInfo, pfd: int, name: str, parts: tuple[str, ...], merge: bool) -> None:
        if not merge:
            os.mkdir(name, 0o700, dir_fd=pfd)
        fd = os.open(name, DIR_FLAGS, dir_fd=pfd)
        try:
            self._owner(ti, Ref(fd))
            self._xattrs(ti, Ref(fd))
            self.dirs[parts] = (os.fstat(fd).st_ino, ti.mode & 0o7777, mtime_ns(ti.mtime))
        finally:
            os.close(fd)

    def _symlink(self, ti: tarfile.TarInfo, pfd: int, name: str) -> None:
        if "\0" in ti.linkname or len(os.fsencode(ti.linkname)) >= MAX_PATH_BYTES:
            raise HostileLayerError(f"symlink {ti.name!r} has a NUL byte or is too long", hint=HOSTILE_HINT)
        os.symlink(ti.linkname, name, dir_fd=pfd)
        self._meta(ti, Ref(dir_fd=pfd, name=name), mask=0)  # Linux has no symlink modes

    def _node(self, ti: tarfile.TarInfo, pfd: int, name: str) -> None:
        if ti.isfifo():
            os.mkfifo(name, 0o600, dir_fd=pfd)
            self._meta(ti, Ref(dir_fd=pfd, name=name), mask=0o777)  # setuid & co mean nothing on a FIFO
            return
        # a char/block device: the image author picks major:minor, so never a real node (module docstring)
        self.skipped_devices += 1
        os.close(os.open(name, NEW_FILE_FLAGS, 0o600, dir_fd=pfd))
        self._meta(ti, Ref(dir_fd=pfd, name=name), mask=0o600)

    def _hardlink(self, ti: tarfile.TarInfo, pfd: int, name: str, parts: tuple[str, ...]) -> None:
        src = _split(ti.linkname, ti.name)
        missing = HostileLayerError(f"hard link {ti.name!r} points at {ti.linkname!r}, which is not in the layers "
                                    "so far", hint=HOSTILE_HINT)  # fmt: skip
        sfd = walk(self.root_fd, src[:-1], ti.name) if src else None
        if sfd is None:
            raise missing
        try:
            st = lstat(sfd, src[-1])
            if st is None:
                raise missing
            if stat.S_ISDIR(st.st_mode):
                raise HostileLayerError(f"hard link {ti.name!r} points at a directory", hint=HOSTILE_HINT)
            if src == parts:
                return
            old = lstat(pfd, name)
            if old is not None:
                remove(pfd, name, old)
            os.link(src[-1], name, src_dir_fd=sfd, dst_dir_fd=pfd, follow_symlinks=False)
        finally:
            os.close(sfd)

    def _whiteout(self, parts: tuple[str, ...], entry: str) -> None:
        base, where = parts[-1], parts[:-1]
        if base.startswith(_WH_META) and base != _OPAQUE:
            return  # other AUFS markers: never applied
        victim = None if base == _OPAQUE else base[len(_WH) :]
        if victim in ("", ".", ".."):
            raise HostileLayerError(f"whiteout {entry!r} names no file", hint=HOSTILE_HINT)
        self.whiteouts += 1
        self._drop_cache()  # the cached parent could be inside what goes away
        pfd = walk(self.root_fd, where, entry)
        if pfd is None:
            return
        try:
            for child in os.listdir(pfd) if victim is None else [victim]:
                self._remove_lower(pfd, child, (*where, child))
        finally:
            os.close(pfd)

    def _remove_lower(self, pfd: int, name: str, parts: tuple[str, ...]) -> None:
        """Remove ``name`` and what is under it, keeping what this layer wrote."""
        st = lstat(pfd, name)
        if st is None:
            return
        if "/".join(parts) not in self.ours:
            remove(pfd, name, st)
        elif stat.S_ISDIR(st.st_mode):
            fd = os.open(name, DIR_FLAGS, dir_fd=pfd)
            try:
                for child in os.listdir(fd):
                    self._remove_lower(fd, child, (*parts, child))
            finally:
                os.close(fd)

    def _meta(self, ti: tarfile.TarInfo, ref: Ref, *, mask: int = 0o7777) -> None:
        # mode is ti.mode & mask (no chmod when 0). Owner first: chown clears setuid/setgid bits and file capabilities
        self._owner(ti, ref)
        self._xattrs(ti, ref)
        if mask:
            ref.chmod(ti.mode & mask)
        ref.utime(mtime_ns(ti.mtime))

    def _owner(self, ti: tarfile.TarInfo, ref: Ref) -> None:
        if set_owner(ref, ti.uid, ti.gid, privileged=self.privileged, me=self.me):
            self.skipped_owners += 1

    def _xattrs(self, ti: tarfile.TarInfo, ref: Ref) -> None:
        self.skipped_xattrs += set_xattrs(ref, ti.pax_headers)

    def _mark(self, parts: tuple[str, ...]) -> None:
        self.ours.add("/".join(parts))
        for i in range(len(parts) - 1, 0, -1):
            key = "/".join(parts[:i])
            if key in self.ours:
                break
            self.ours.add(key)

    def _parent(self, parts: tuple[str, ...], entry: str) -> int:
        """The directory fd an entry goes in, creating missing parents (cached: tars go in order)."""
        if self._cache is not None and self._cache[0] == parts:
            return self._cache[1]
        self._drop_cache()
        fd = walk(self.root_fd, parts, entry, create=True)
        assert fd is not None
        self._cache = (parts, fd)
        return fd

    def finish(self) -> None:
        """Set directory modes and mtimes, deepest first so read-only parents stay enterable."""
        self._drop_cache()
        for parts in sorted(self.dirs, key=len, reverse=True):
            ino, mode, ns = self.dirs[parts]
            fd = walk(self.root_fd, parts, "/".join(parts), lenient=True)
            if fd is None:
                continue
            try:
                if os.fstat(fd).st_ino == ino:  # still the directory this layer made
                    os.chmod(fd, mode)
                    os.utime(fd, ns=(ns, ns))
            finally:
                os.close(fd)

    def _drop_cache(self) -> None:
        if self._cache is not None:
            os.close(self._cache[1])
            self._cache = None

    def close(self) -> None:
        self._drop_cache()

    def stats(self, diff_id: str) -> LayerStats:
        counts = ("entries", "bytes", "whiteouts", "skipped_xattrs", "skipped_owners", "skipped_devices")
        return LayerStats(diff_id=diff_id, **{k: getattr(self, k) for k in counts})


def _split(name: str, entry: str) -> tuple[str, ...]:
    """``name`` as path components below the root: ``/``, ``.`` and empty parts dropped.

    Raises:
        HostileLayerError: a ``..`` component, a NUL byte, or over the name, path or depth limits.
    """
    if "\0" in name:
        raise HostileLayerError(f"entry {entry!r} has a NUL byte in a path", hint=HOSTILE_HINT)
    if len(os.fsencode(name)) > MAX_PATH_BYTES:
        raise HostileLayerError(f"entry {entry[:64]!r}… has a path over {MAX_PATH_BYTES} bytes", hint=HOSTILE_HINT)
    parts = tuple(p for p in name.split("/") if p not in ("", "."))
    if ".." in parts:
        raise HostileLayerError(f"entry {entry!r} has a '..' in {name!r}: it would land outside the root",
                                hint=HOSTILE_HINT)  # fmt: skip
    if len(parts) > MAX_DEPTH or any(len(os.fsencode(p)) > MAX_NAME_BYTES for p in parts):
        raise HostileLayerError(f"entry {entry[:64]!r}… is over {MAX_DEPTH} levels deep or has a name over "
                                f"{MAX_NAME_BYTES} bytes", hint=HOSTILE_HINT)  # fmt: skip
    return parts
