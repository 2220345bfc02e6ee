"""The stream side of applying a layer: blob → decompression → hashed, capped tar stream.

A layer blob comes from a registry we do not trust (see :mod:`engine.images.layers`), so
everything between the file on disk and the ``tarfile.TarInfo`` objects is bounded here:

* :func:`open_blob` and :func:`decompressed` open the blob and undo gzip or zstd (zstd across
  several frames, as pzstd and zstd:chunked write them);
* :class:`HashingReader` hashes the uncompressed stream (the layer's diff_id) and stops it past
  a byte cap, so a decompression bomb ends early;
* :func:`open_tar` parses that stream with :class:`BoundedTarInfo`, which refuses pax and GNU
  long-name headers over :data:`MAX_META_BYTES` (Go's archive/tar limit) before tarfile buffers
  them whole, and refuses sparse files.

Nothing here touches the target directory: that is :mod:`engine.images.fsops`.
"""

from __future__ import annotations

import errno
import gzip
import hashlib
import tarfile
import zlib
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import IO, Protocol

import zstandard

from engine.errors import HostileLayerError, ImageError

__all__ = [
    "BOMB_HINT",
    "CHUNK",
    "CORRUPT_ERRORS",
    "HOSTILE_HINT",
    "MAX_META_BYTES",
    "BoundedTarInfo",
    "HashingReader",
    "Readable",
    "decompressed",
    "open_blob",
    "open_tar",
]

MAX_META_BYTES = 1 << 20
"""Largest pax or GNU long-name header accepted, in bytes (tarfile buffers them whole)."""
CHUNK = 1 << 20
"""Read size for the stream and for file contents, in bytes."""
HOSTILE_HINT = "the image is malformed or malicious: do not use it"
BOMB_HINT = "the layer looks like a decompression bomb; if the image is genuine, raise the limit"
CORRUPT_ERRORS = (tarfile.TarError, EOFError, zlib.error, gzip.BadGzipFile, zstandard.ZstdError, RecursionError)
"""What a truncated or corrupt blob raises while it is decompressed and parsed."""

_META_TYPES = (tarfile.GNUTYPE_LONGNAME, tarfile.GNUTYPE_LONGLINK, tarfile.XHDTYPE, tarfile.XGLTYPE,
               tarfile.SOLARIS_XHDTYPE)  # fmt: skip


class Readable(Protocol):
    """A byte stream read in pieces: the blob, or the decompressor on top of it."""

    def read(self, size: int, /) -> bytes: ...


def open_blob(blob: Path) -> IO[bytes]:
    """Open a layer blob for reading.

    Args:
        blob: the blob as stored.

    Returns:
        The open file, in binary mode.

    Raises:
        ImageError: the blob cannot be read.
    """
    try:
        return open(blob, "rb")
    except OSError as exc:
        raise ImageError(f"cannot read the blob {blob}: {exc.strerror or exc}", hint="pull the image again") from exc


@contextmanager
def decompressed(fh: IO[bytes], compression: str | None) -> Iterator[Readable]:
    """Undo the blob's compression, streaming.

    Args:
        fh: the open blob.
        compression: ``"gzip"``, ``"zstd"`` or None (the blob is a plain tar).

    Returns:
        A context manager yielding the uncompressed stream.
    """
    if compression == "gzip":
        with gzip.GzipFile(fileobj=fh, mode="rb") as gz:
            yield gz
    elif compression == "zstd":
        # read_across_frames: layers may be several frames (pzstd, zstd:chunked)
        with zstandard.ZstdDecompressor().stream_reader(fh, read_across_frames=True, closefd=False) as zr:
            yield zr
    else:
        yield fh


def open_tar(reader: HashingReader) -> tarfile.TarFile:
    """A streaming (``r|``) tar reader over ``reader`` whose headers are bounded (:class:`BoundedTarInfo`)."""
    return tarfile.open(None, "r|", reader, tarinfo=BoundedTarInfo, encoding="utf-8")


class HashingReader:
    """The uncompressed layer as tarfile reads it: hashed (the diff_id), capped at ``limit`` bytes."""

    def __init__(self, raw: Readable, limit: int) -> None:
        self._raw = raw
        self._limit = limit
        self._sha = hashlib.sha256()
        self.total = 0

    def read(self, size: int = -1, /) -> bytes:
        if size < 0:
            return b"".join(iter(lambda: self.read(CHUNK), b""))
        data = self._raw.read(size)
        self.total += len(data)
        if self.total > self._limit:
            raise HostileLayerError(f"unpacks to more than {self._limit} bytes", hint=BOMB_HINT)
        self._sha.update(data)
        return data

    def drain(self) -> None:
        """Read to the end: the padding after end-of-archive is part of the diff_id."""
        while self.read(CHUNK):
            pass

    def digest(self) -> str:
        """``sha256:<hex>`` of everything read so far."""
        return "sha256:" + self._sha.hexdigest()

    def write(self, b: bytes, /) -> int:
        raise OSError(errno.EBADF, "the layer stream is read-only")

    def tell(self) -> int:
        return self.total

    def seek(self, pos: int, /) -> int:
        raise OSError(errno.ESPIPE, "the layer stream cannot seek")

    def close(self) -> None:
        pass


class BoundedTarInfo(tarfile.TarInfo):
    """Refuses oversized headers and sparse maps before tarfile buffers them in memory."""

    def _proc_member(self, tar: tarfile.TarFile) -> tarfile.TarInfo:
        if self.type in _META_TYPES and self.size > MAX_META_BYTES:
            raise HostileLayerError(f"has a {self.size}-byte tar extension header (limit {MAX_META_BYTES})",
                                    hint=HOSTILE_HINT)  # fmt: skip
        if self.type == tarfile.GNUTYPE_SPARSE:
            self._proc_sparse_map()
        member: tarfile.TarInfo = super()._proc_member(tar)  # type: ignore[misc]
        return member

    def _proc_sparse_map(self, *_: object) -> None:
        raise ImageError("holds a sparse file, which msb does not apply",
                         hint="rebuild the image without sparse files (tar --sparse)")  # fmt: skip

    _proc_gnusparse_00 = _proc_gnusparse_01 = _proc_gnusparse_10 = _proc_sparse_map
