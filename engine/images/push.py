"""Pushing a stored image to a registry: blobs the registry lacks, then the manifest."""

from __future__ import annotations

from pydantic import BaseModel

from engine.errors import NotFoundError
from engine.images.oci import MAX_MANIFEST_BYTES, OCI_MANIFEST
from engine.images.progress import NO_PROGRESS, Progress
from engine.images.reference import ImageRef
from engine.images.registry import ImageRegistry, OrasRegistry
from engine.images.store import ImageStore


class PushResult(BaseModel):
    ref: str
    digest: str
    pushed_blobs: int
    pushed_bytes: int


async def push_image(
    store: ImageStore,
    source: str,
    dest: ImageRef | str | None = None,
    registry: ImageRegistry | None = None,
    *,
    progress: Progress = NO_PROGRESS,
) -> PushResult:
    """Push stored image ``source`` to ``dest`` (default: its own name).

    Only the platform manifest this host uses is pushed (an index pulled from elsewhere is
    not re-pushed with platforms we never fetched).

    Raises:
        NotFoundError: ``source`` is not in the store.
        AuthError, RegistryError: see their messages.
    """
    rec = store.find(source)
    if rec is None:
        raise NotFoundError(f"no image {source!r} in the store", hint="list them with `msb images`")
    ref = ImageRef.parse(dest) if isinstance(dest, str) else dest or rec.ref
    registry = registry or OrasRegistry()
    manifest = store.manifest(rec)
    blobs = [manifest.config, *manifest.layers]
    progress.begin(f"pushing {ref.short()}", total_bytes=sum(b.size for b in blobs), items=len(blobs))
    pushed = pushed_bytes = 0
    try:
        for blob in blobs:
            if await registry.has_blob(ref, blob.digest):
                progress.advance(blob.size)
            else:
                await registry.push_blob(ref, blob, store.blob_path(blob.digest), progress.advance)
                pushed += 1
                pushed_bytes += blob.size
            progress.item_done(blob.digest[:19])
    finally:
        progress.end()
    data = store.read_blob(rec.manifest, MAX_MANIFEST_BYTES)
    digest = await registry.push_manifest(ref, ref.tag or rec.manifest, data, manifest.media_type or OCI_MANIFEST)
    return PushResult(ref=str(ref), digest=digest, pushed_blobs=pushed, pushed_bytes=pushed_bytes)
