"""Root filesystems for VMs, built once per image manifest and cached.

For each manifest digest the layers are applied (in order, each checked against the config's
``diff_ids``) into a directory tree, and the tree becomes a read-only ext4 image for the
VMM. Both are kept: the ext4 image is what QEMU boots, the tree is for backends that share a
directory. A second sandbox from the same image finds ``.complete`` and starts at once.

The cache root is private (0700): image trees hold setuid binaries owned by root, which other
users of the host must not be able to reach.

The cache is bounded (engine/cachebound.py): ``MSB_ROOTFS_CACHE_MIB`` (default 8192) for these
trees and images together with the ext4 images of plain directories; after each build the
least recently used go first, never one a running sandbox uses (each holds a lease on it).
"""

from __future__ import annotations

import fcntl
import json
import os
import shutil
import time
from pathlib import Path

from pydantic import BaseModel, Field

from engine.cachebound import Evicted, rootfs_cache_bound
from engine.errors import ImageError
from engine.images.layers import apply_layer
from engine.images.oci import LAYER_COMPRESSION, ImageConfig
from engine.images.progress import NO_PROGRESS, Progress
from engine.images.store import ImageRecord, ImageStore
from engine.vm.disk import build_ext4

FORMAT = 2
"""Bump when the on-disk layout of a built rootfs changes (old caches are rebuilt). 2: a layer's
device nodes are placeholders, never real devices."""


class ImageDefaults(BaseModel):
    """What the image config asks of a sandbox: environment, working dir, command, user."""

    env: dict[str, str] = Field(default_factory=dict)
    workdir: str = "/"
    entrypoint: list[str] = Field(default_factory=list)
    cmd: list[str] = Field(default_factory=list)
    user: str | None = None
    uid: int | None = None
    gid: int | None = None

    def command(self, args: list[str] | None = None) -> list[str]:
        """Docker's rule: ENTRYPOINT + (args or CMD)."""
        return [*self.entrypoint, *(args if args else self.cmd)]


class ImageRootfs(BaseModel):
    manifest: str
    tree: Path
    image: Path
    defaults: ImageDefaults
    built: bool
    """True if this call built it (False: cache hit)."""
    seconds: float


def rootfs_cache(cache_dir: Path) -> Path:
    d = cache_dir / "image-rootfs"
    d.mkdir(parents=True, exist_ok=True)
    os.chmod(d, 0o700)
    return d


def image_defaults(config: ImageConfig, tree: Path | None = None) -> ImageDefaults:
    """Turn an image config into sandbox defaults (``User`` resolved against the tree's
    /etc/passwd and /etc/group when it names a user)."""
    c = config.config
    env: dict[str, str] = {}
    for item in c.env or []:
        key, sep, value = item.partition("=")
        if sep and key:
            env[key] = value
    workdir = c.working_dir if c.working_dir and c.working_dir.startswith("/") else "/"
    defaults = ImageDefaults(env=env, workdir=workdir, entrypoint=list(c.entrypoint or []),
                             cmd=list(c.cmd or []), user=c.user or None)  # fmt: skip
    if c.user and tree is not None:
        defaults.uid, defaults.gid = resolve_user(tree, c.user)
    return defaults


def _read_db(path: Path) -> list[list[str]]:
    """Lines of a passwd/group file inside an image tree, never following a symlink out."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW)
    except OSError:
        return []
    with os.fdopen(fd, "rb") as f:
        data = f.read(1 << 20)
    return [line.split(":") for line in data.decode("utf-8", "replace").splitlines() if line and ":" in line]


def resolve_user(tree: Path, user: str) -> tuple[int, int]:
    """``uid``, ``name``, ``uid:gid``, ``name:group`` → numeric ids via the image's files.

    Raises:
        ImageError: a name that the image's /etc/passwd or /etc/group does not know.
    """
    name, _, group = user.partition(":")
    passwd = _read_db(tree / "etc" / "passwd")
    uid: int | None = None
    gid: int | None = None
    if name.isdigit():
        uid = int(name)
        for row in passwd:
            if len(row) > 3 and row[2] == name and row[3].isdigit():
                gid = int(row[3])
    else:
        for row in passwd:
            if len(row) > 3 and row[0] == name and row[2].isdigit() and row[3].isdigit():
                uid, gid = int(row[2]), int(row[3])
                break
        if uid is None:
            raise ImageError(f"the image's User {user!r} is not in its /etc/passwd")
    if group:
        if group.isdigit():
            gid = int(group)
        else:
            for row in _read_db(tree / "etc" / "group"):
                if len(row) > 2 and row[0] == group and row[2].isdigit():
                    gid = int(row[2])
                    break
            else:
                raise ImageError(f"the image's User group {group!r} is not in its /etc/group")
    return uid, gid if gid is not None else uid


def ensure_rootfs(
    store: ImageStore, record: ImageRecord, cache_dir: Path, *, progress: Progress = NO_PROGRESS
) -> ImageRootfs:
    """The cached root filesystem of ``record``'s manifest, building it on first use.

    Safe against concurrent callers (a file lock per manifest) and crashes (built in a
    temporary directory, renamed when complete).

    Raises:
        ImageError: a blob is missing or corrupt, a layer is hostile, diff_ids do not match.
        VmError: mkfs failed.
    """
    t0 = time.perf_counter()
    root = rootfs_cache(cache_dir)
    key = record.manifest.split(":", 1)[1][:32]
    final = root / key
    hit = _load(final, record.manifest)
    if hit is not None:
        rootfs_cache_bound(cache_dir).touch(final)  # the last use, for the LRU order
        return hit.model_copy(update={"seconds": time.perf_counter() - t0})
    with open(root / f"{key}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        hit = _load(final, record.manifest)
        if hit is not None:
            return hit.model_copy(update={"seconds": time.perf_counter() - t0})
        work = root / f"{key}.building"
        shutil.rmtree(work, ignore_errors=True)
        if final.exists():
            shutil.rmtree(final)
        work.mkdir(mode=0o700)
        try:
            defaults = _build(store, record, work, progress)
            (work / "meta.json").write_text(json.dumps({
                "format": FORMAT, "manifest": record.manifest, "defaults": defaults.model_dump(),
            }))  # fmt: skip
            (work / ".complete").touch()
            os.replace(work, final)
        except BaseException:
            shutil.rmtree(work, ignore_errors=True)
            raise
    rootfs_cache_bound(cache_dir).enforce(keep={final})
    return ImageRootfs(manifest=record.manifest, tree=final / "tree", image=final / "root.ext4",
                       defaults=defaults, built=True, seconds=time.perf_counter() - t0)  # fmt: skip


def _load(final: Path, manifest: str) -> ImageRootfs | None:
    if not (final / ".complete").exists():
        return None
    try:
        meta = json.loads((final / "meta.json").read_text())
    except (OSError, ValueError):
        return None
    if meta.get("format") != FORMAT or meta.get("manifest") != manifest or not (final / "root.ext4").is_file():
        return None
    return ImageRootfs(manifest=manifest, tree=final / "tree", image=final / "root.ext4",
                       defaults=ImageDefaults.model_validate(meta["defaults"]), built=False, seconds=0.0)  # fmt: skip


def _build(store: ImageStore, record: ImageRecord, work: Path, progress: Progress) -> ImageDefaults:
    manifest = store.manifest(record)
    config = store.config(record)
    tree = work / "tree"
    diff_ids = config.rootfs.diff_ids
    progress.begin(f"unpacking {record.ref.short()}", total_bytes=sum(d.size for d in manifest.layers),
                   items=len(manifest.layers))  # fmt: skip
    try:
        for i, layer in enumerate(manifest.layers):
            if not store.has_blob(layer.digest):
                raise ImageError(f"layer {layer.digest} of {record.name} is missing from the store",
                                 hint=f"pull the image again: msb pull {record.ref.short()}")  # fmt: skip
            compression = LAYER_COMPRESSION.get(layer.media_type, "unknown")
            if compression == "unknown":
                raise ImageError(f"layer type {layer.media_type} is not supported")
            stats = apply_layer(store.blob_path(layer.digest), compression, tree)
            if diff_ids and stats.diff_id != diff_ids[i]:
                raise ImageError(
                    f"layer {i + 1} of {record.name} does not match its diff_id in the image config",
                    hint="the image is corrupt or was tampered with; remove it (msb rmi) and pull again",
                )
            progress.advance(layer.size)
            progress.item_done(layer.digest[:19])
    finally:
        progress.end()
    if not tree.exists():
        tree.mkdir(mode=0o755)
    os.chmod(tree, 0o755)
    defaults = image_defaults(config, tree)
    progress.begin(f"building the VM image of {record.ref.short()}")
    try:
        build_ext4(tree, work / "root.ext4")
    finally:
        progress.end()
    return defaults


def remove_unreferenced(store: ImageStore, cache_dir: Path) -> Evicted:
    """Delete built root filesystems whose manifest no stored image uses (never one in use)."""
    root = rootfs_cache(cache_dir)
    cache = rootfs_cache_bound(cache_dir)
    keep = {r.manifest.split(":", 1)[1][:32] for r in store.list()}
    out = Evicted()
    for entry in cache.entries():
        if entry.path.parent != root or entry.path.name in keep:
            continue
        if cache.remove(entry.path):
            out.removed.append(entry.path.name)
            out.freed_bytes += entry.bytes
        else:
            out.in_use += 1
    return out
