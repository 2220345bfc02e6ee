"""VM templates: boot a sandbox shape once, save it, restore every later start of that shape.

A template is a QEMU VM of the sandbox's shape, saved (engine/vm/snapshot.py) into
``<cache>/templates/<key>/`` — ``ram`` (guest memory, a sparse file), ``state`` (devices)
and ``meta.json``. Two stages:

- ``ready`` (ephemeral sandboxes without volumes): a normal boot, then a few warm-up
  commands (so the guest's page cache already holds the shell and, if the image has them,
  Python and Node), then the save. A restore only needs the fresh identity.
- ``root`` (persistent sandboxes, volumes): booted with ``msb.template=root``, the agent
  stops before it mounts the root and says HELD, and the VM is saved there. A restore gets
  RESUME with the sandbox's own writable layer and volumes. Never another sandbox's files:
  nothing of the root is mounted in the template.

The key hashes everything that changes what the guest sees — the QEMU command line of the
template (machine, CPUs, RAM, devices, kernel command line, accelerator), the identity (path,
size, mtime) of QEMU, kernel, initramfs (which holds the agent) and root image, and the
writable layer's size — so a template built for one image, kernel or agent is never used for
another: a change makes a new key, and the old template is evicted later.

The store is bounded (engine/cachebound.py): ``MSB_TEMPLATE_CACHE_MIB`` (default 2048), least
recently used first, and never a template a running sandbox was restored from (each holds a
lease on it). Templates unused for a week go whatever the size.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import hashlib
import json
import logging
import os
import shutil
import time
from pathlib import Path
from typing import Literal

from pydantic import BaseModel

from engine.cachebound import BoundedCache, Lease, template_cache
from engine.sandbox.spec import VolumeMount
from engine.vm.backend import VmSpec
from engine.vm.cmdline import upper_cmdline
from engine.vm.network import network_cmdline
from engine.vm.qemu import build_argv
from engine.vm.volumes import volume_cmdline

log = logging.getLogger(__name__)

FORMAT = 1
"""Bump when the layout or the way templates are made changes (warm-ups included)."""
TEMPLATE_NAME = "msb-template"
BUILD_STALE_S = 3600.0
"""A build directory this old belongs to a build that died."""
Stage = Literal["root", "ready"]


class Template(BaseModel):
    """A saved template on disk."""

    key: str
    dir: Path
    stage: Stage
    memory_mib: int
    build_ms: float
    state_bytes: int
    agent_version: str
    ready_timings_ns: dict[str, int] = {}
    """The template's READY timings (a ``ready`` template is saved after READY)."""

    @property
    def ram(self) -> Path:
        return self.dir / "ram"

    @property
    def state(self) -> Path:
        return self.dir / "state"


def stage_for(spec: VmSpec) -> Stage:
    """``ready`` for an ephemeral sandbox without volumes, else ``root`` (9p volumes cannot be
    saved while mounted, and a persistent layer must be attached after the restore)."""
    return "ready" if spec.upper_image is None and not spec.volumes else "root"


def template_spec(spec: VmSpec, stage: Stage, build_dir: Path, run_dir: Path) -> VmSpec:
    """The VM that becomes ``spec``'s template: the same machine and devices, nothing of the
    sandbox's own (placeholder disk and volume directories, no published ports)."""
    upper = None if spec.upper_image is None else build_dir / "upper-placeholder"
    vols = tuple(VolumeMount(host=build_dir, guest=v.guest, readonly=True) for v in spec.volumes)
    network = spec.network if spec.network in ("none", "group") else "public"
    return spec.model_copy(
        update={
            "name": TEMPLATE_NAME, "upper_image": upper, "volumes": vols, "ports": (), "network": network,
            "run_dir": run_dir, "memory_file": build_dir / "ram", "memory_shared": True,
            "template_stage": "root" if stage == "root" else None,
            "incoming": None,
        }
    )  # fmt: skip


def restore_spec(spec: VmSpec, template: Template) -> VmSpec:
    """``spec`` restored from ``template``: its own disk, volumes, ports and name."""
    return spec.model_copy(update={"memory_file": template.ram, "memory_shared": False, "incoming": template.state})


def resume_params(spec: VmSpec) -> str:
    """The boot words RESUME gives a restored ``root`` template (ignored at ``ready``)."""
    words = [*upper_cmdline(spec), f"msb.hostname={spec.name[:63]}", *network_cmdline(spec), *volume_cmdline(spec)]
    return " ".join(words)


def _file_id(path: Path) -> list[object]:
    st = path.stat()
    return [str(path), st.st_size, st.st_mtime_ns]


def template_key(qemu: str, spec: VmSpec, stage: Stage) -> str:
    """The key of ``spec``'s template (see the module doc for what goes in)."""
    placeholder = Path("/template")
    tspec = template_spec(spec, stage, placeholder, placeholder)
    sockets = {k: placeholder / k for k in ("agent", "console", "qmp")}
    upper_size = spec.upper_image.stat().st_size if spec.upper_image is not None else None
    material = {
        "format": FORMAT,
        "argv": build_argv(qemu, tspec, sockets)[1:],
        "files": [_file_id(Path(qemu)), _file_id(spec.kernel), _file_id(spec.initrd), _file_id(spec.root_image)],
        "upper_size": upper_size,
    }
    return hashlib.sha256(json.dumps(material, sort_keys=True).encode()).hexdigest()[:32]


class TemplateStore:
    """Templates under ``<cache>/templates``, built at most once per key across processes."""

    def __init__(self, cache_dir: Path) -> None:
        self.root = cache_dir / "templates"
        self.cache: BoundedCache = template_cache(cache_dir)
        self._locks: dict[str, asyncio.Lock] = {}

    def find(self, key: str) -> Template | None:
        """The complete template of ``key``, or None (an incomplete one is removed)."""
        d = self.root / key
        try:
            meta = json.loads((d / "meta.json").read_text())
            if not isinstance(meta, dict):
                raise ValueError("meta.json is not an object")
            tpl = Template.model_validate({**meta, "dir": d})
            ok = tpl.key == key and tpl.ram.stat().st_size == tpl.memory_mib << 20 and tpl.state.stat().st_size > 0
        except (OSError, ValueError):  # pydantic's ValidationError is a ValueError
            ok, tpl = False, None
        if not ok or tpl is None:
            if d.exists():
                self.discard(key, "incomplete")
            return None
        self.cache.touch(d)  # the last use, for the LRU order
        return tpl

    def lease(self, key: str) -> Lease | None:
        """Hold ``key``'s template in use (not evicted) until the lease is released; None if
        it is gone."""
        return self.cache.lease(self.root / key)

    def discard(self, key: str, why: str) -> None:
        """Remove a template (VMs restored from it keep their mapping of its RAM)."""
        log.info("template %s removed: %s", key[:12], why)
        shutil.rmtree(self.root / key, ignore_errors=True)
        (self.root / f"{key}.use").unlink(missing_ok=True)  # its users keep their lock on the old inode

    def lock(self, key: str) -> asyncio.Lock:
        return self._locks.setdefault(key, asyncio.Lock())

    async def file_lock(self, key: str) -> int:
        """Take the cross-process build lock of ``key``; returns the fd to :func:`unlock`."""
        self.root.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.root / f"{key}.lock", os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        await asyncio.to_thread(fcntl.flock, fd, fcntl.LOCK_EX)
        return fd

    @staticmethod
    def unlock(fd: int) -> None:
        os.close(fd)

    def new_build_dir(self, key: str) -> Path:
        d = self.root / f".build-{key}-{os.getpid()}"
        shutil.rmtree(d, ignore_errors=True)
        self.root.mkdir(parents=True, exist_ok=True, mode=0o700)
        d.mkdir(mode=0o700)  # a template's RAM is the guest's memory: not for other users to read
        return d

    def publish(self, build_dir: Path, template: Template) -> Template:
        """Make a finished build visible under its key (atomic rename)."""
        meta = template.model_dump(mode="json", exclude={"dir"})
        (build_dir / "meta.json").write_text(json.dumps(meta))
        (build_dir / "upper-placeholder").unlink(missing_ok=True)
        final = self.root / template.key
        shutil.rmtree(final, ignore_errors=True)
        os.rename(build_dir, final)
        self.prune(keep=template.key)
        return template.model_copy(update={"dir": final})

    def prune(self, keep: str) -> None:
        """Remove builds that died, then evict templates beyond the bound (never ``keep``, never
        one in use)."""
        now = time.time()
        with contextlib.suppress(OSError):
            for d in self.root.iterdir():
                if d.name.startswith(".build-") and now - _mtime(d) > BUILD_STALE_S:
                    shutil.rmtree(d, ignore_errors=True)
        self.cache.enforce(keep={self.root / keep})


def _mtime(path: Path) -> float:
    try:
        return path.stat().st_mtime
    except OSError:
        return time.time()
