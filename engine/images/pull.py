"""Pulling an image: manifest (or index → this host's platform), config, layers — each blob
verified against its digest before it becomes visible in the store.

Layers download concurrently. A blob that fails verification is discarded and fetched once
more; a download that breaks off keeps its partial file and resumes (range request) on the
next attempt. The image is named in the store only after every blob is in.
"""

from __future__ import annotations

import asyncio
import time

from pydantic import BaseModel

from engine.errors import AuthError, ImageError, RegistryError
from engine.images.oci import (
    INDEX_TYPES,
    LAYER_COMPRESSION,
    MAX_CONFIG_BYTES,
    MAX_MANIFEST_BYTES,
    Descriptor,
    Platform,
    choose_platform,
    host_platform,
    media_type_of,
    parse_config,
    parse_index,
    parse_json,
    parse_manifest,
)
from engine.images.policy import PullPolicy
from engine.images.progress import NO_PROGRESS, Progress
from engine.images.reference import ImageRef
from engine.images.registry import ImageRegistry, OrasRegistry
from engine.images.store import DigestMismatch, ImageRecord, ImageStore

CONCURRENCY = 4
OFFLINE_IMAGES = ("docker.io/microsandbox/python", "docker.io/microsandbox/node", "docker.io/library/busybox")


class PullResult(BaseModel):
    record: ImageRecord
    fetched_bytes: int
    """Bytes downloaded in this pull (0 when everything was cached)."""
    up_to_date: bool
    """True when the store already had every blob."""
    offline: bool = False
    """True when the registry could not be reached and the stored image was used."""


def store_name(ref: ImageRef) -> str:
    """The name an image is kept under: ``registry/repo:tag``, or ``registry/repo@digest``."""
    return f"{ref.name}:{ref.tag}" if ref.tag else f"{ref.name}@{ref.digest}"


def build_hint(ref: ImageRef) -> str | None:
    """For msb's offline base images: how to build them instead of pulling."""
    if ref.name in OFFLINE_IMAGES:
        return f"build it from Debian packages instead: `msb image build {ref.short().split(':')[0]}`"
    return None


async def pull_image(
    ref: ImageRef | str,
    store: ImageStore,
    registry: ImageRegistry | None = None,
    *,
    platform: Platform | None = None,
    progress: Progress = NO_PROGRESS,
    concurrency: int = CONCURRENCY,
    policy: PullPolicy | None = None,
) -> PullResult:
    """Pull ``ref`` into ``store``.

    Args:
        registry: the client to use; by default an :class:`OrasRegistry` under ``policy``.
        policy: for a pull an API client asked for (no operator credentials, no private
            registries unless allowed); None for the operator's own pulls. It only shapes the
            default client: a ``registry`` passed in is used as it is.

    Raises:
        RegistryPolicyError: ``policy`` forbids the registry's address (nothing was sent).
        ConfigError: malformed reference.
        AuthError: the registry wants (other) credentials.
        RegistryError: unreachable or failing registry (the hint says what to do).
        ImageError: missing image, unsupported or malformed image, verification failed twice.
    """
    ref = ImageRef.parse(ref) if isinstance(ref, str) else ref
    registry = registry or OrasRegistry(policy=policy)
    platform = platform or host_platform()
    name = store_name(ref)
    try:
        top = await registry.get_manifest(ref, ref.reference)
    except AuthError:
        raise
    except RegistryError as exc:
        cached = store.get(name)
        if cached is not None:
            progress.note(f"{ref.registry} unreachable; using the stored {ref.short()}")
            return PullResult(record=cached, fetched_bytes=0, up_to_date=True, offline=True)
        hint = build_hint(ref)
        if hint:
            raise ImageError(f"cannot pull {ref.short()}: {exc.message}", hint=hint) from exc
        raise
    except ImageError as exc:
        hint = build_hint(ref)
        if hint and "not found" in exc.message:
            raise ImageError(exc.message, hint=hint) from exc
        raise
    if ref.digest and top.digest != ref.digest:
        raise ImageError(f"the registry sent {top.digest} for {ref}", hint="the registry is broken or hostile")
    doc = parse_json(top.data, MAX_MANIFEST_BYTES, "manifest")
    media_type = media_type_of(doc, top.media_type)
    fetched = 0
    if media_type in INDEX_TYPES:
        index = parse_index(top.data)
        chosen = choose_platform(index, platform)
        store.put_bytes(top.data, top.digest)
        if chosen.media_type in INDEX_TYPES:
            raise ImageError("nested image indexes are not supported")
        if store.has_blob(chosen.digest):
            manifest_bytes = store.read_blob(chosen.digest, MAX_MANIFEST_BYTES)
        else:
            sub = await registry.get_manifest(ref, chosen.digest)
            if sub.digest != chosen.digest:
                raise ImageError(f"manifest {chosen.digest} from {ref.registry} does not match its digest")
            manifest_bytes = sub.data
            fetched += len(sub.data)
        manifest_digest = chosen.digest
    else:
        manifest_bytes, manifest_digest = top.data, top.digest
    manifest = parse_manifest(manifest_bytes)
    _check_supported(ref, manifest.config, manifest.layers)

    existing = store.get(name)
    blobs = [manifest.config, *manifest.layers]
    missing = [d for d in blobs if not store.has_blob(d.digest)]
    if existing is not None and existing.digest == top.digest and not missing:
        return PullResult(record=existing, fetched_bytes=0, up_to_date=True)

    if missing:
        total = sum(d.size for d in missing)
        progress.begin(f"pulling {ref.short()}", total_bytes=total, items=len(missing))
        sem = asyncio.Semaphore(concurrency)

        async def one(desc: Descriptor) -> None:
            async with sem:
                await fetch_verified(registry, store, ref, desc, progress)
                progress.item_done(desc.digest[:19])

        try:
            await asyncio.gather(*(one(d) for d in missing))
        finally:
            progress.end()
        fetched += total
    store.put_bytes(manifest_bytes, manifest_digest)

    config = parse_config(store.read_blob(manifest.config.digest, MAX_CONFIG_BYTES))
    if config.rootfs.diff_ids and len(config.rootfs.diff_ids) != len(manifest.layers):
        raise ImageError(
            f"{ref.short()} is inconsistent: {len(manifest.layers)} layers but "
            f"{len(config.rootfs.diff_ids)} diff_ids in its config"
        )
    record = ImageRecord(
        name=name,
        digest=top.digest,
        manifest=manifest_digest,
        config=manifest.config.digest,
        size=sum(d.size for d in blobs),
        created=config.created,
        stored_at=time.time(),
        platform=str(Platform(architecture=config.architecture, os=config.os, variant=config.variant)),
        source="pull",
    )
    store.put_image(record)
    return PullResult(record=record, fetched_bytes=fetched, up_to_date=False)


def _check_supported(ref: ImageRef, config: Descriptor, layers: list[Descriptor]) -> None:
    if config.media_type not in ("application/vnd.oci.image.config.v1+json",
                                 "application/vnd.docker.container.image.v1+json"):  # fmt: skip
        raise ImageError(
            f"{ref.short()} is not a container image (config type {config.media_type})",
            hint="msb runs OCI/Docker container images; this looks like another kind of OCI artifact",
        )
    if config.size > MAX_CONFIG_BYTES:
        raise ImageError(f"the config of {ref.short()} is {config.size} bytes, over the limit")
    for layer in layers:
        if layer.media_type not in LAYER_COMPRESSION:
            raise ImageError(f"{ref.short()} has a layer of unsupported type {layer.media_type}")


async def fetch_verified(
    registry: ImageRegistry, store: ImageStore, ref: ImageRef, desc: Descriptor, progress: Progress = NO_PROGRESS
) -> None:
    """Download one blob into the store, verified. A corrupt download is discarded and
    fetched once more; a broken-off one resumes from its partial file once."""
    label = desc.digest[:19]
    done = 0

    def advance(nbytes: int) -> None:
        nonlocal done
        done += nbytes
        progress.advance(nbytes)
        progress.layer(label, done, desc.size)

    for attempt in range(3):
        writer = store.writer(desc.digest, desc.size)
        try:
            await registry.fetch_blob(ref, desc, writer, advance)
            writer.commit()
            progress.layer(label, desc.size, desc.size)
            return
        except DigestMismatch as exc:
            progress.advance(-desc.size)
            done = 0
            if attempt >= 1:
                raise ImageError(
                    f"blob {desc.digest} of {ref.short()} failed verification twice",
                    hint="the registry serves corrupt data; nothing was stored",
                ) from exc
            progress.note(f"{desc.digest[:19]}… failed verification; discarded, fetching it again")
        except RegistryError as exc:
            writer.__exit__(None, None, None)  # keep the partial file for the resume
            if attempt >= 1 or isinstance(exc, AuthError):
                raise
            progress.note(f"{desc.digest[:19]}… broke off; resuming")
        except BaseException:
            writer.__exit__(None, None, None)
            raise


async def ensure_image(
    ref: ImageRef | str,
    store: ImageStore,
    registry: ImageRegistry | None = None,
    *,
    progress: Progress = NO_PROGRESS,
    policy: PullPolicy | None = None,
) -> ImageRecord:
    """The stored image for ``ref``, pulling it (under ``policy``, see :func:`pull_image`) only
    if the store does not have it."""
    text = str(ref)
    found = store.find(text)
    if found is not None:
        return found
    parsed = ImageRef.parse(text) if isinstance(ref, str) else ref
    return (await pull_image(parsed, store, registry, progress=progress, policy=policy)).record
