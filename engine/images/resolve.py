"""From what a user typed (``python:3.11``, ``./rootfs``) to a bootable sandbox spec.

``IMAGE`` arguments name either a root filesystem directory (``./dir``, ``/dir``, ``~/dir``)
or an image reference; an image not in the store is pulled, then its root filesystem is
built once and cached. The image config's Env, WorkingDir and User become the spec's
defaults; Entrypoint/Cmd are returned for callers that run "the image's command".
"""

from __future__ import annotations

import asyncio
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

from pydantic import BaseModel

from engine import paths
from engine.errors import AuthError, ConfigError, ImageError
from engine.images.policy import PullPolicy
from engine.images.progress import NO_PROGRESS, Progress
from engine.images.pull import OFFLINE_IMAGES, ensure_image
from engine.images.reference import ImageRef
from engine.images.registry import ImageRegistry
from engine.images.rootfs import ImageDefaults, ensure_rootfs
from engine.images.store import ImageRecord, ImageStore
from engine.sandbox.spec import SandboxSpec


class ResolvedRoot(BaseModel):
    """A bootable root: the directory, maybe a prebuilt ext4 image, and the image's defaults."""

    rootfs: Path
    root_image: Path | None = None
    defaults: ImageDefaults = ImageDefaults()
    record: ImageRecord | None = None
    built: bool = False

    def spec(self, name: str, **overrides: Any) -> SandboxSpec:
        """A spec with the image's env/workdir/user, overridden by ``overrides``
        (``env`` is merged: the image's first, then yours)."""
        env = {**self.defaults.env, **(overrides.pop("env", None) or {})}
        fields: dict[str, Any] = {
            "name": name, "rootfs": self.rootfs, "root_image": self.root_image, "env": env,
            "workdir": self.defaults.workdir, "uid": self.defaults.uid, "gid": self.defaults.gid,
        }  # fmt: skip
        fields.update({k: v for k, v in overrides.items() if v is not None})
        return SandboxSpec(**fields)


def is_directory_arg(text: str) -> bool:
    """True if ``text`` names a root filesystem directory rather than an image."""
    return text.startswith(("./", "../", "/", "~")) or text in (".", "..")


async def resolve_root(
    text: str,
    *,
    store: ImageStore | None = None,
    cache_dir: Path | None = None,
    registry: ImageRegistry | None = None,
    progress: Progress = NO_PROGRESS,
    base_dir: Path | None = None,
    policy: PullPolicy | None = None,
) -> ResolvedRoot:
    """Resolve an IMAGE argument (pulling and building as needed).

    Args:
        base_dir: what relative directory paths are relative to (a Sandboxfile's folder).
        policy: for an image an API client asked for: what its pull may reach and send
            (:class:`~engine.images.policy.PullPolicy`); None for the operator's own use.

    Raises:
        ConfigError: a directory that does not exist; a malformed reference.
        ImageError, RegistryError, AuthError: the image could not be had.
    """
    if is_directory_arg(text):
        path = Path(text).expanduser()
        if not path.is_absolute() and base_dir is not None:
            path = base_dir / path
        if not path.is_dir():
            raise ConfigError(f"root filesystem directory {path} does not exist",
                              hint="pass an existing directory, or an image name like python:3.11")  # fmt: skip
        return ResolvedRoot(rootfs=path.resolve())
    store = store or ImageStore.default()
    cache_dir = cache_dir or paths.cache_dir()
    try:
        record = await ensure_image(text, store, registry, progress=progress, policy=policy)
    except ImageError as exc:
        ref = ImageRef.parse(text)
        if ref.name not in OFFLINE_IMAGES or ref.tag != "latest" or isinstance(exc, AuthError):
            raise
        record = await _build_base(text, store, progress, "is not in the store and no registry has it")
    else:
        if await asyncio.to_thread(_outdated, store, record):
            record = await _build_base(text, store, progress, "was built from an older recipe")
    return await _finish(record, store, cache_dir, progress)


async def _build_base(text: str, store: ImageStore, progress: Progress, why: str) -> ImageRecord:
    """Build one of msb's own base images from Debian packages (once: concurrent starts of the
    same image wait for the first build, then find it current)."""
    ref = ImageRef.parse(text)
    async with _build_lock(ref.name):
        found = store.find(text)
        if found is not None and not await asyncio.to_thread(_outdated, store, found):
            return found
        progress.note(f"{ref.short()} {why}; building it offline (`msb image build`)")
        return await asyncio.to_thread(build_offline, ref.short().split(":")[0], store, progress.note)


def _outdated(store: ImageStore, record: ImageRecord) -> bool:
    from engine.images.build import outdated_base_image  # the builder's imports only when needed

    return outdated_base_image(store, record)


_BUILD_LOCKS: dict[tuple[int, str], asyncio.Lock] = {}


def _build_lock(name: str) -> asyncio.Lock:
    """One lock per image name and event loop (asyncio locks belong to a loop)."""
    return _BUILD_LOCKS.setdefault((id(asyncio.get_running_loop()), name), asyncio.Lock())


async def _finish(record: ImageRecord, store: ImageStore, cache_dir: Path, progress: Progress) -> ResolvedRoot:
    built = await asyncio.to_thread(ensure_rootfs, store, record, cache_dir, progress=progress)
    return ResolvedRoot(rootfs=built.tree, root_image=built.image, defaults=built.defaults, record=record,
                        built=built.built)  # fmt: skip


def build_offline(name: str, store: ImageStore, log: Callable[[str], None] | None = None,
                  *, tag: str | None = None, suite: str = "bookworm", mirror: str | None = None) -> ImageRecord:
    """Build one of msb's base images (``microsandbox/python``, ``microsandbox/node``,
    ``busybox``) from Debian packages and store it under its canonical name (or ``tag``).

    Raises:
        ImageError: the build failed (the message says why and what to install).
    """
    from engine.images.archive import import_layout
    from engine.images.build import build_base_image

    target = tag or str(ImageRef.parse(name))
    with tempfile.TemporaryDirectory(dir=store.root / "ingest") as tmp:
        out = Path(tmp) / "layout"
        _, ref_name = build_base_image(name, out, suite=suite, mirror=mirror, log=log)
        [record] = import_layout(store, out, name=target, ref_name=ref_name, source="build")
    return record
