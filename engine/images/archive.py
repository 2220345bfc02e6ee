"""Moving images in and out of the store without a registry.

- :func:`import_layout` — an OCI image layout directory (what ``skopeo copy … oci:DIR``,
  ``msb image export`` and the base-image builder write).
- :func:`import_archive` — a tarball: ``docker save`` output (``manifest.json`` + layer tars,
  or the OCI layout newer Dockers put inside) or a tarred OCI layout. Extracted with
  ``tarfile``'s ``data`` filter, so a hostile archive cannot write outside a temp dir.
- :func:`export_layout` — store → OCI layout directory (or a ``.tar`` of one).

Every blob is re-hashed on the way in, exactly like a pull.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tarfile
import tempfile
import time
from pathlib import Path

from engine.errors import ConfigError, ImageError
from engine.images.layout import LayoutReader, LayoutWriter
from engine.images.oci import (
    DOCKER_CONFIG,
    DOCKER_MANIFEST,
    INDEX_TYPES,
    MAX_CONFIG_BYTES,
    MAX_MANIFEST_BYTES,
    OCI_LAYER,
    Descriptor,
    Manifest,
    Platform,
    choose_platform,
    digest_bytes,
    host_platform,
    parse_config,
    parse_index,
    parse_manifest,
)
from engine.images.progress import NO_PROGRESS, Progress
from engine.images.pull import store_name
from engine.images.reference import ImageRef
from engine.images.store import ImageRecord, ImageStore


def _name_for(ref_name: str | None, explicit: str | None, fallback: str) -> str:
    if explicit:
        return store_name(ImageRef.parse(explicit))
    if ref_name and ("/" in ref_name or (ref_name.count(":") == 1 and not ref_name.startswith(":"))):
        try:
            return store_name(ImageRef.parse(ref_name))
        except ConfigError:
            pass
    tag = ref_name if ref_name and ":" not in ref_name and "/" not in ref_name else "latest"
    return store_name(ImageRef.parse(f"localhost/{fallback}:{tag}"))


def import_layout(
    store: ImageStore,
    root: Path,
    *,
    name: str | None = None,
    ref_name: str | None = None,
    source: str = "import",
    progress: Progress = NO_PROGRESS,
) -> list[ImageRecord]:
    """Import the images listed in an OCI layout's ``index.json`` (or only ``ref_name``).

    ``name`` names the image in the store (only when one image is imported); otherwise the
    layout's ``org.opencontainers.image.ref.name`` annotation is used if it is a full
    reference, else ``localhost/<dir name>:<annotation or latest>``.

    Raises:
        ImageError: not a layout, a blob missing or not matching its digest.
    """
    reader = LayoutReader(root)
    entries = [(r, d) for r, d in reader.images() if ref_name is None or r == ref_name]
    if not entries:
        have = ", ".join(r or "(unnamed)" for r, _ in reader.images()) or "nothing"
        raise ImageError(f"{root} has no image {ref_name!r} (it has: {have})")
    if name and len(entries) > 1:
        raise ConfigError(f"{root} holds {len(entries)} images; --tag names only one",
                          hint="pick one with its ref name (DIR:REF)")  # fmt: skip
    records = []
    fallback = _safe_repo(root.name)
    for ann, desc in entries:
        records.append(_import_one(store, reader, desc, _name_for(ann, name, fallback), source, progress))
    return records


def _safe_repo(text: str) -> str:
    cleaned = "".join(c if c.isalnum() else "-" for c in text.lower()).strip("-")
    return cleaned or "image"


def _import_one(
    store: ImageStore, reader: LayoutReader, desc: Descriptor, name: str, source: str, progress: Progress
) -> ImageRecord:
    top_digest = desc.digest
    if desc.media_type in INDEX_TYPES:
        data = reader.read_blob(desc, MAX_MANIFEST_BYTES)
        chosen = choose_platform(parse_index(data), host_platform())
        store.put_bytes(data, desc.digest)
        desc = chosen
    manifest_bytes = reader.read_blob(desc, MAX_MANIFEST_BYTES)
    manifest = parse_manifest(manifest_bytes)
    blobs = [manifest.config, *manifest.layers]
    progress.begin(f"importing {name}", total_bytes=sum(b.size for b in blobs), items=len(blobs))
    try:
        for blob in blobs:
            if not store.has_blob(blob.digest):
                store.put_file(reader.blob_path(blob.digest), blob.digest, blob.size)
            progress.advance(blob.size)
            progress.item_done(blob.digest[:19])
    finally:
        progress.end()
    store.put_bytes(manifest_bytes, desc.digest)
    return _record(store, name, top_digest, desc.digest, manifest, source)


def _record(
    store: ImageStore, name: str, top: str, manifest_digest: str, manifest: Manifest, source: str
) -> ImageRecord:
    config = parse_config(store.read_blob(manifest.config.digest, MAX_CONFIG_BYTES))
    if config.rootfs.diff_ids and len(config.rootfs.diff_ids) != len(manifest.layers):
        raise ImageError(f"{name}: {len(manifest.layers)} layers but {len(config.rootfs.diff_ids)} diff_ids")
    record = ImageRecord(
        name=name, digest=top, manifest=manifest_digest, config=manifest.config.digest,
        size=manifest.config.size + sum(layer.size for layer in manifest.layers), created=config.created,
        stored_at=time.time(),
        platform=str(Platform(architecture=config.architecture, os=config.os, variant=config.variant)),
        source=source,
    )  # fmt: skip
    store.put_image(record)
    return record


def import_archive(
    store: ImageStore, archive: Path, *, name: str | None = None, progress: Progress = NO_PROGRESS
) -> list[ImageRecord]:
    """Import a ``docker save`` tarball or a tarred OCI layout."""
    if archive.is_dir():
        return import_layout(store, archive, name=name, progress=progress)
    if not tarfile.is_tarfile(archive):
        raise ImageError(f"{archive} is neither a directory nor a tar archive",
                         hint="pass an OCI layout directory or the output of `docker save`")  # fmt: skip
    with tempfile.TemporaryDirectory(dir=store.root / "ingest") as tmp:
        work = Path(tmp)
        try:
            with tarfile.open(archive) as tar:
                tar.extractall(work, filter="data")
        except (tarfile.TarError, OSError) as exc:
            raise ImageError(f"cannot unpack {archive}: {exc}") from exc
        # docker save (also Docker >= 25, which adds an OCI layout beside manifest.json)
        if (work / "manifest.json").is_file():
            return _import_docker(store, work, name, progress)
        if (work / "oci-layout").is_file():
            return import_layout(store, work, name=name, progress=progress)
        raise ImageError(f"{archive} is not a docker-save archive or an OCI layout")


def _inside(work: Path, rel: str) -> Path:
    path = (work / rel).resolve()
    if not path.is_relative_to(work.resolve()) or not path.is_file():
        raise ImageError(f"archive entry {rel!r} is missing or outside the archive")
    return path


def _import_docker(store: ImageStore, work: Path, name: str | None, progress: Progress) -> list[ImageRecord]:
    """``docker save`` format: manifest.json lists Config + Layers (uncompressed tars)."""
    try:
        entries = json.loads((work / "manifest.json").read_text())
    except ValueError as exc:
        raise ImageError(f"manifest.json of the archive is not JSON: {exc}") from exc
    if not isinstance(entries, list) or not entries:
        raise ImageError("manifest.json of the archive lists no image")
    if name and len(entries) > 1:
        raise ConfigError(f"the archive holds {len(entries)} images; --tag names only one")
    records = []
    for entry in entries:
        cfg_path = _inside(work, str(entry.get("Config", "")))
        cfg_bytes = cfg_path.read_bytes()
        if len(cfg_bytes) > MAX_CONFIG_BYTES:
            raise ImageError("image config in the archive is too large")
        cfg_digest = digest_bytes(cfg_bytes)
        store.put_bytes(cfg_bytes, cfg_digest)
        layers = []
        for rel in entry.get("Layers") or []:
            path = _inside(work, str(rel))
            h = hashlib.sha256()
            with open(path, "rb") as f:
                while chunk := f.read(1 << 20):
                    h.update(chunk)
            digest = "sha256:" + h.hexdigest()
            size = path.stat().st_size
            store.put_file(path, digest, size)
            media = OCI_LAYER if _is_plain_tar(path) else "application/vnd.docker.image.rootfs.diff.tar.gzip"
            layers.append(Descriptor(media_type=media, digest=digest, size=size))
            progress.advance(size)
        manifest = Manifest(
            schema_version=2, media_type=DOCKER_MANIFEST,
            config=Descriptor(media_type=DOCKER_CONFIG, digest=cfg_digest, size=len(cfg_bytes)), layers=layers,
        )  # fmt: skip
        mbytes = json.dumps(manifest.wire(), separators=(",", ":")).encode()
        mdigest = digest_bytes(mbytes)
        store.put_bytes(mbytes, mdigest)
        tags = entry.get("RepoTags") or []
        img_name = _name_for(tags[0] if tags else None, name, "imported")
        records.append(_record(store, img_name, mdigest, mdigest, manifest, "import"))
        for extra in tags[1:] if not name else []:
            rec = records[-1].model_copy(update={"name": _name_for(extra, None, "imported")})
            store.put_image(rec)
    return records


def _is_plain_tar(path: Path) -> bool:
    with open(path, "rb") as f:
        head = f.read(4)
    return not (head[:2] == b"\x1f\x8b" or head == b"\x28\xb5\x2f\xfd")


def export_layout(store: ImageStore, names: list[str], out: Path, *, progress: Progress = NO_PROGRESS) -> Path:
    """Write images to an OCI layout directory, or a tar of one when ``out`` ends in ``.tar``.

    Each image is listed with its full name as ``org.opencontainers.image.ref.name``.

    Raises:
        NotFoundError: an unknown image name.
    """
    from engine.errors import NotFoundError

    records = []
    for n in names:
        rec = store.find(n)
        if rec is None:
            raise NotFoundError(f"no image {n!r} in the store", hint="list them with `msb images`")
        records.append(rec)
    as_tar = out.suffix == ".tar"
    target = Path(tempfile.mkdtemp(dir=out.parent if as_tar else None)) if as_tar else out
    if not as_tar and out.exists() and any(out.iterdir()):
        raise ConfigError(f"{out} exists and is not empty", hint="export into a new directory (or a .tar file)")
    try:
        writer = LayoutWriter(target)
        for rec in records:
            manifest = store.manifest(rec)
            for blob in [manifest.config, *manifest.layers]:
                dest = writer.blob_path(blob.digest)
                if not dest.exists():
                    shutil.copyfile(store.blob_path(blob.digest), dest)
                progress.advance(blob.size)
            mbytes = store.read_blob(rec.manifest, MAX_MANIFEST_BYTES)
            desc = writer.add_bytes(mbytes, manifest.media_type or "application/vnd.oci.image.manifest.v1+json")
            writer.add_to_index(desc, rec.name)
        writer.close()
        if as_tar:
            tmp_tar = out.with_suffix(".tar.tmp")
            with tarfile.open(tmp_tar, "w") as tar:
                for entry in sorted(os.listdir(target)):
                    tar.add(target / entry, arcname=entry)
            os.replace(tmp_tar, out)
    finally:
        if as_tar:
            shutil.rmtree(target, ignore_errors=True)
    return out
