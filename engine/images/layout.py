"""OCI image layout directories (``oci-layout``, ``index.json``, ``blobs/<alg>/<hex>``).

The interchange format of ``msb image import/export``, of the offline base-image builder and
of the test images: written here, read back through the same digest checks as a registry pull.
"""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import os
import shutil
import tarfile
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Literal

import zstandard

from engine.errors import ImageError
from engine.images.oci import (
    DIGEST_RE,
    INDEX_TYPES,
    OCI_CONFIG,
    OCI_INDEX,
    OCI_LAYER,
    OCI_LAYER_GZIP,
    OCI_LAYER_ZSTD,
    OCI_MANIFEST,
    Descriptor,
    ImageConfig,
    Index,
    Manifest,
    Platform,
    parse_index,
)

REF_NAME = "org.opencontainers.image.ref.name"
Compression = Literal["gzip", "zstd", "none"]
LAYER_MEDIA_TYPE: dict[str, str] = {"gzip": OCI_LAYER_GZIP, "zstd": OCI_LAYER_ZSTD, "none": OCI_LAYER}
_CHUNK = 1 << 20


class LayoutWriter:
    """Writes an OCI image layout. Blobs are content-addressed; ``close()`` writes ``index.json``."""

    def __init__(self, root: Path) -> None:
        self.root = root
        (root / "blobs" / "sha256").mkdir(parents=True, exist_ok=True)
        (root / "oci-layout").write_text(json.dumps({"imageLayoutVersion": "1.0.0"}))
        self.index: list[Descriptor] = []

    def blob_path(self, digest: str) -> Path:
        algo, hexd = digest.split(":", 1)
        return self.root / "blobs" / algo / hexd

    def add_bytes(self, data: bytes, media_type: str) -> Descriptor:
        digest = "sha256:" + hashlib.sha256(data).hexdigest()
        path = self.blob_path(digest)
        if not path.exists():
            tmp = path.with_suffix(".tmp")
            tmp.write_bytes(data)
            os.replace(tmp, path)
        return Descriptor(media_type=media_type, digest=digest, size=len(data))

    def add_file(self, src: Path, media_type: str, *, move: bool = False) -> Descriptor:
        h = hashlib.sha256()
        size = 0
        with open(src, "rb") as f:
            while chunk := f.read(_CHUNK):
                h.update(chunk)
                size += len(chunk)
        digest = "sha256:" + h.hexdigest()
        path = self.blob_path(digest)
        if not path.exists():
            if move:
                shutil.move(str(src), path)
            else:
                shutil.copyfile(src, path)
        elif move:
            src.unlink()
        return Descriptor(media_type=media_type, digest=digest, size=size)

    def add_json(self, doc: dict[str, Any], media_type: str) -> Descriptor:
        return self.add_bytes(json.dumps(doc, separators=(",", ":"), sort_keys=True).encode(), media_type)

    def add_image(
        self,
        layers: list[Descriptor],
        config: ImageConfig,
        *,
        ref_name: str | None = None,
        top_level: bool = True,
    ) -> Descriptor:
        """Write config + manifest; list the manifest in ``index.json`` unless ``top_level`` is off."""
        cfg = self.add_json(config.wire(), OCI_CONFIG)
        manifest = Manifest(schema_version=2, media_type=OCI_MANIFEST, config=cfg, layers=layers)
        desc = self.add_json(manifest.wire(), OCI_MANIFEST)
        desc = desc.model_copy(update={"platform": Platform(architecture=config.architecture, os=config.os,
                                                            variant=config.variant)})  # fmt: skip
        if top_level:
            self.add_to_index(desc, ref_name)
        return desc

    def add_index(self, manifests: list[Descriptor], *, ref_name: str | None = None) -> Descriptor:
        """Write an image index over ``manifests`` (each carrying its platform) and list it."""
        idx = Index(schema_version=2, media_type=OCI_INDEX, manifests=manifests)
        desc = self.add_json(idx.wire(), OCI_INDEX)
        self.add_to_index(desc, ref_name)
        return desc

    def add_to_index(self, desc: Descriptor, ref_name: str | None) -> None:
        if ref_name:
            desc = desc.model_copy(update={"annotations": {**(desc.annotations or {}), REF_NAME: ref_name}})
        self.index.append(desc)

    def close(self) -> None:
        idx = Index(schema_version=2, media_type=OCI_INDEX, manifests=self.index)
        tmp = self.root / "index.json.tmp"
        tmp.write_text(json.dumps(idx.wire(), indent=2))
        os.replace(tmp, self.root / "index.json")


class LayoutReader:
    """Reads an OCI image layout directory, refusing blob paths that escape it."""

    def __init__(self, root: Path) -> None:
        self.root = root
        if not (root / "oci-layout").is_file() or not (root / "index.json").is_file():
            raise ImageError(
                f"{root} is not an OCI image layout (no oci-layout / index.json)",
                hint="export one with `msb image export` or `skopeo copy … oci:DIR`",
            )
        self.index = parse_index((root / "index.json").read_bytes())

    def blob_path(self, digest: str) -> Path:
        if not DIGEST_RE.match(digest):
            raise ImageError(f"bad digest {digest!r} in {self.root}")
        algo, hexd = digest.split(":", 1)
        path = self.root / "blobs" / algo / hexd
        if path.is_symlink() or not path.is_file():
            raise ImageError(f"blob {digest} is missing from {self.root}")
        return path

    def read_blob(self, desc: Descriptor, limit: int) -> bytes:
        if desc.size > limit:
            raise ImageError(f"blob {desc.digest} is {desc.size} bytes, over the {limit}-byte limit")
        data = self.blob_path(desc.digest).read_bytes()
        if len(data) != desc.size or "sha256:" + hashlib.sha256(data).hexdigest() != desc.digest:
            raise ImageError(f"blob {desc.digest} in {self.root} does not match its digest")
        return data

    def images(self) -> Iterator[tuple[str | None, Descriptor]]:
        """``(ref name or None, descriptor)`` for each top-level entry."""
        for d in self.index.manifests:
            yield (d.annotations or {}).get(REF_NAME), d

    def is_index(self, desc: Descriptor) -> bool:
        return desc.media_type in INDEX_TYPES


def write_layer_tar(
    src: Path,
    out_dir: Path,
    compression: Compression = "gzip",
    *,
    level: int | None = None,
) -> tuple[Path, str, str]:
    """Tar ``src`` (its contents at the archive root, numeric owners, sorted names) and compress.

    Returns:
        ``(compressed file in out_dir, its sha256 digest, the uncompressed diff_id)``.
    """
    fd, tmp = tempfile.mkstemp(dir=out_dir, suffix=".layer")
    os.close(fd)
    diff = hashlib.sha256()
    comp_hash = hashlib.sha256()

    class _Tee(io.RawIOBase):
        def __init__(self, raw: Any) -> None:
            self.raw = raw

        def writable(self) -> bool:
            return True

        def write(self, b: Any) -> int:
            mv = memoryview(b)
            comp_hash.update(mv)
            self.raw.write(mv)
            return len(mv)

    with open(tmp, "wb") as raw:
        tee = _Tee(raw)
        compressor: Any
        if compression == "gzip":
            compressor = gzip.GzipFile(fileobj=tee, mode="wb", compresslevel=level or 6, mtime=0)
        elif compression == "zstd":
            compressor = zstandard.ZstdCompressor(level=level or 3).stream_writer(tee, closefd=False)  # type: ignore[arg-type]
        else:
            compressor = tee

        class _Diff(io.RawIOBase):
            def writable(self) -> bool:
                return True

            def write(self, b: Any) -> int:
                mv = memoryview(b)
                diff.update(mv)
                compressor.write(mv)
                return len(mv)

        with tarfile.open(fileobj=_Diff(), mode="w|", format=tarfile.PAX_FORMAT) as tar:
            for path in _walk_sorted(src):
                rel = os.path.relpath(path, src)
                ti = tar.gettarinfo(str(path), arcname=rel)
                ti.uname = ti.gname = ""
                if ti.isreg():
                    with open(path, "rb") as f:
                        tar.addfile(ti, f)
                else:
                    tar.addfile(ti)
        if compressor is not tee:
            compressor.close()
    return Path(tmp), "sha256:" + comp_hash.hexdigest(), "sha256:" + diff.hexdigest()


def _walk_sorted(root: Path) -> Iterator[Path]:
    """Every path under ``root``, parents before children, names sorted (reproducible tars)."""
    for e in sorted(os.scandir(root), key=lambda e: e.name):
        yield Path(e.path)
        if e.is_dir(follow_symlinks=False):
            yield from _walk_sorted(Path(e.path))


def add_layer_dir(writer: LayoutWriter, src: Path, compression: Compression = "gzip") -> tuple[Descriptor, str]:
    """Tar + compress ``src`` into the layout. Returns ``(layer descriptor, diff_id)``."""
    tmp, _, diff_id = write_layer_tar(src, writer.root, compression)
    desc = writer.add_file(tmp, LAYER_MEDIA_TYPE[compression], move=True)
    return desc, diff_id
