"""The content-addressed image store: blobs by digest, and an SQLite index of image names.

Layout under the store root (default ``$MSB_CACHE_DIR/images``)::

    blobs/sha256/<hex>       verified blobs, read-only (0444)
    ingest/<hex>.part        downloads in progress (resumable; never visible as a blob)
    index.db                 images: name → manifest digest, config, size, created

A blob only appears under ``blobs/`` after its bytes hashed to its digest (written to
``ingest/``, fsynced, then renamed), so an interrupted pull never leaves a half-written blob
visible. Several processes (server, CLI, TUI) may share one store: SQLite serialises the
index, and blob writes are atomic renames.
"""

from __future__ import annotations

import fcntl
import json
import os
import secrets
import sqlite3
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, BinaryIO

from pydantic import BaseModel

from engine.errors import ConfigError, ImageError, NotFoundError
from engine.images.oci import (
    DIGEST_RE,
    INDEX_TYPES,
    MAX_CONFIG_BYTES,
    MAX_MANIFEST_BYTES,
    ImageConfig,
    Manifest,
    hasher,
    media_type_of,
    parse_config,
    parse_index,
    parse_json,
    parse_manifest,
)
from engine.images.reference import ImageRef

_CHUNK = 1 << 20
_SCHEMA = """
CREATE TABLE IF NOT EXISTS images (
    name        TEXT PRIMARY KEY,   -- canonical reference: registry/repository:tag
    digest      TEXT NOT NULL,      -- what the name points at (index or manifest)
    manifest    TEXT NOT NULL,      -- the platform manifest used on this host
    config      TEXT NOT NULL,      -- its config blob
    size        INTEGER NOT NULL,   -- config + layers, compressed bytes
    created     TEXT,               -- the image config's "created"
    stored_at   REAL NOT NULL,      -- when we pulled / imported / built it
    platform    TEXT NOT NULL,
    source      TEXT NOT NULL       -- "pull", "import", "build"
);
"""


class ImageRecord(BaseModel):
    """One named image in the store."""

    name: str
    digest: str
    manifest: str
    config: str
    size: int
    created: str | None
    stored_at: float
    platform: str
    source: str

    @property
    def ref(self) -> ImageRef:
        return ImageRef.parse(self.name)

    @property
    def id(self) -> str:
        """Short image id (like Docker's): the first 12 hex digits of the manifest digest."""
        return self.manifest.split(":", 1)[1][:12]


class BlobWriter:
    """Writes one blob into ``ingest/``; :meth:`commit` verifies and publishes it.

    An existing partial file is kept and re-hashed (``offset`` says how much is there), so a
    download can resume with an HTTP range request.
    """

    def __init__(self, store: ImageStore, digest: str, size: int, *, resume: bool = True) -> None:
        self.store = store
        self.digest = digest
        self.size = size
        self.part = store.root / "ingest" / (digest.replace(":", "-") + ".part")
        self._hash = hasher(digest)
        self.offset = 0
        # One writer owns the resumable part file; a concurrent writer of the same blob (another
        # pull, another process) gets a private file instead of waiting — whoever commits
        # first wins, the other's rename replaces identical bytes.
        self._lock_fd = os.open(self.part.with_suffix(".lock"), os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(self._lock_fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(self._lock_fd)
            self._lock_fd = -1
            self.part = self.part.with_name(f"{self.part.stem}.{secrets.token_hex(4)}.part")
            resume = False
        if resume and self.part.exists():
            with open(self.part, "rb") as f:
                while chunk := f.read(_CHUNK):
                    self._hash.update(chunk)
                    self.offset += len(chunk)
            if self.offset > size:
                self.discard()
        self._f: BinaryIO | None = open(self.part, "ab" if self.offset else "wb")  # noqa: SIM115

    def write(self, data: bytes) -> None:
        if self._f is None:
            raise ImageError("blob writer is closed")
        if self.offset + len(data) > self.size:
            raise ImageError(
                f"blob {self.digest} is larger than the {self.size} bytes its descriptor declares",
                hint="the registry or file is corrupt or hostile; the partial download was discarded",
            )
        self._f.write(data)
        self._hash.update(data)
        self.offset += len(data)

    def restart(self) -> None:
        """Throw away what was written (the server ignored our range request)."""
        self.discard()
        self._hash = hasher(self.digest)
        self._f = open(self.part, "wb")  # noqa: SIM115

    def discard(self) -> None:
        if self._f is not None:
            self._f.close()
            self._f = None
        self.part.unlink(missing_ok=True)
        self.offset = 0

    def _unlock(self) -> None:
        if self._lock_fd >= 0:
            os.close(self._lock_fd)  # releases the flock
            self._lock_fd = -1

    def commit(self) -> Path:
        """Verify size and digest, then publish the blob atomically.

        Raises:
            ImageError: size or digest mismatch (the partial file is deleted).
        """
        if self._f is None:
            raise ImageError("blob writer is closed")
        self._f.flush()
        os.fsync(self._f.fileno())
        self._f.close()
        self._f = None
        got = f"{self.digest.split(':', 1)[0]}:{self._hash.hexdigest()}"
        if self.offset != self.size or got != self.digest:
            self.part.unlink(missing_ok=True)
            self._unlock()
            raise DigestMismatch(
                f"blob {self.digest} failed verification (got {self.offset} bytes hashing to {got[:19]}…)",
                hint="the download was corrupt; it was discarded — pull again",
            )
        dest = self.store.blob_path(self.digest)
        dest.parent.mkdir(parents=True, exist_ok=True)
        os.chmod(self.part, 0o444)
        os.replace(self.part, dest)
        self._unlock()
        return dest

    def __enter__(self) -> BlobWriter:
        return self

    def __exit__(self, *exc: object) -> None:
        if self._f is not None:  # not committed: keep the partial file for a resume
            self._f.close()
            self._f = None
            if self._lock_fd < 0:  # a private file cannot be resumed by anyone
                self.part.unlink(missing_ok=True)
        self._unlock()


class DigestMismatch(ImageError):
    """A blob's bytes do not hash to its digest."""


class ImageStore:
    """Blobs by digest plus the image index. Cheap to construct; share freely."""

    def __init__(self, root: Path) -> None:
        self.root = root
        for sub in ("blobs/sha256", "ingest"):
            (root / sub).mkdir(parents=True, exist_ok=True)
        self._db_path = root / "index.db"
        with self._db() as db:
            db.executescript(_SCHEMA)

    @classmethod
    def default(cls) -> ImageStore:
        from engine import paths

        return cls(paths.cache_dir() / "images")

    # --- index ---------------------------------------------------------------------------

    @contextmanager
    def _db(self) -> Iterator[sqlite3.Connection]:
        db = sqlite3.connect(self._db_path, timeout=30, isolation_level=None)
        try:
            db.execute("PRAGMA journal_mode=WAL")
            db.row_factory = sqlite3.Row
            yield db
        finally:
            db.close()

    def put_image(self, record: ImageRecord) -> None:
        """Name an image (replacing what the name pointed at). Its blobs must be present."""
        for digest in (record.manifest, record.config):
            if not self.has_blob(digest):
                raise ImageError(f"cannot tag {record.name}: blob {digest} is not in the store")
        with self._db() as db:
            db.execute(
                "INSERT OR REPLACE INTO images VALUES (:name, :digest, :manifest, :config, :size, :created,"
                " :stored_at, :platform, :source)",
                record.model_dump(),
            )

    def get(self, name: str) -> ImageRecord | None:
        """The record for a canonical name (``registry/repo:tag``), or None."""
        with self._db() as db:
            row = db.execute("SELECT * FROM images WHERE name = ?", (name,)).fetchone()
        return ImageRecord(**dict(row)) if row else None

    def find(self, text: str) -> ImageRecord | None:
        """Resolve what a user typed: a reference (normalised), ``name@digest``, or an image id prefix."""
        if len(text) >= 4 and all(c in "0123456789abcdef" for c in text.removeprefix("sha256:")):
            prefix = text if text.startswith("sha256:") else "sha256:" + text
            with self._db() as db:
                rows = db.execute("SELECT * FROM images WHERE manifest LIKE ? OR digest LIKE ?",
                                  (prefix + "%", prefix + "%")).fetchall()  # fmt: skip
            if rows:
                return ImageRecord(**dict(rows[0]))
        try:
            ref = ImageRef.parse(text)
        except ConfigError:
            return None
        if ref.digest:
            with self._db() as db:
                row = db.execute(
                    "SELECT * FROM images WHERE (digest = ? OR manifest = ?) AND name LIKE ?",
                    (ref.digest, ref.digest, ref.name + "%"),
                ).fetchone()
            return ImageRecord(**dict(row)) if row else None
        return self.get(str(ref))

    def list(self) -> list[ImageRecord]:
        with self._db() as db:
            rows = db.execute("SELECT * FROM images ORDER BY name").fetchall()
        return [ImageRecord(**dict(r)) for r in rows]

    def remove(self, name: str) -> ImageRecord:
        """Untag an image (blobs stay until :meth:`prune`).

        Raises:
            NotFoundError: no such image.
        """
        rec = self.find(name)
        if rec is None:
            raise NotFoundError(f"no image {name!r} in the store", hint="list them with `msb images`")
        with self._db() as db:
            db.execute("DELETE FROM images WHERE name = ?", (rec.name,))
        return rec

    # --- blobs ---------------------------------------------------------------------------

    def blob_path(self, digest: str) -> Path:
        if not DIGEST_RE.match(digest):
            raise ImageError(f"bad digest {digest!r}")
        algo, hexd = digest.split(":", 1)
        return self.root / "blobs" / algo / hexd

    def has_blob(self, digest: str) -> bool:
        return self.blob_path(digest).is_file()

    def writer(self, digest: str, size: int, *, resume: bool = True) -> BlobWriter:
        self.blob_path(digest)  # validates
        return BlobWriter(self, digest, size, resume=resume)

    def put_bytes(self, data: bytes, digest: str) -> Path:
        """Store ``data`` as ``digest`` (verified)."""
        if self.has_blob(digest):
            return self.blob_path(digest)
        w = self.writer(digest, len(data), resume=False)
        w.write(data)
        return w.commit()

    def put_file(self, src: Path, digest: str, size: int) -> Path:
        """Copy ``src`` into the store as ``digest`` (verified while copying)."""
        if self.has_blob(digest):
            return self.blob_path(digest)
        w = self.writer(digest, size, resume=False)
        with open(src, "rb") as f:
            while chunk := f.read(_CHUNK):
                w.write(chunk)
        return w.commit()

    def read_blob(self, digest: str, limit: int) -> bytes:
        path = self.blob_path(digest)
        try:
            size = path.stat().st_size
        except FileNotFoundError as exc:
            raise ImageError(f"blob {digest} is missing from the store", hint="pull the image again") from exc
        if size > limit:
            raise ImageError(f"blob {digest} is {size} bytes, over the {limit}-byte limit")
        return path.read_bytes()

    def manifest(self, record: ImageRecord) -> Manifest:
        return parse_manifest(self.read_blob(record.manifest, MAX_MANIFEST_BYTES))

    def config(self, record: ImageRecord) -> ImageConfig:
        return parse_config(self.read_blob(record.config, MAX_CONFIG_BYTES))

    def verify_blob(self, digest: str) -> bool:
        """Re-hash a stored blob (for ``msb images --verify`` and after suspected corruption)."""
        h = hasher(digest)
        with open(self.blob_path(digest), "rb") as f:
            while chunk := f.read(_CHUNK):
                h.update(chunk)
        return f"{digest.split(':', 1)[0]}:{h.hexdigest()}" == digest

    # --- garbage collection --------------------------------------------------------------

    def referenced(self) -> set[str]:
        """Every blob digest reachable from a named image (indexes, manifests, configs, layers)."""
        keep: set[str] = set()
        todo = [r.digest for r in self.list()] + [r.manifest for r in self.list()]
        while todo:
            d = todo.pop()
            if d in keep:
                continue
            keep.add(d)
            if not self.has_blob(d):
                continue
            path = self.blob_path(d)
            if path.stat().st_size > MAX_MANIFEST_BYTES:
                continue
            try:
                doc = parse_json(path.read_bytes(), MAX_MANIFEST_BYTES, "blob")
                mt = media_type_of(doc)
            except ImageError:
                continue
            if mt in INDEX_TYPES:
                # only the platform manifests we have are kept; the rest were never fetched
                todo.extend(m.digest for m in parse_index(path.read_bytes()).manifests if self.has_blob(m.digest))
            else:
                m = parse_manifest(path.read_bytes())
                todo.append(m.config.digest)
                todo.extend(layer.digest for layer in m.layers)
        return keep

    def prune(self, *, ingest_older_than_s: float = 24 * 3600) -> tuple[int, int]:
        """Delete blobs no named image references, and stale partial downloads.

        Returns:
            ``(blobs removed, bytes freed)``.
        """
        keep = self.referenced()
        removed = freed = 0
        for algo_dir in (self.root / "blobs").iterdir():
            for path in algo_dir.iterdir():
                digest = f"{algo_dir.name}:{path.name}"
                if digest not in keep:
                    freed += path.stat().st_size
                    path.unlink()
                    removed += 1
        cutoff = time.time() - ingest_older_than_s
        for part in (self.root / "ingest").iterdir():
            if part.stat().st_mtime < cutoff:
                freed += part.stat().st_size
                part.unlink()
                removed += 1
        return removed, freed

    def usage(self) -> dict[str, Any]:
        blobs = list((self.root / "blobs" / "sha256").iterdir())
        return {"blobs": len(blobs), "bytes": sum(p.stat().st_size for p in blobs)}


def dump_json(doc: dict[str, Any]) -> bytes:
    return json.dumps(doc, separators=(",", ":")).encode()
