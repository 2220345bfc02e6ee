"""The engine: prepares the boot assets once, then starts sandboxes from specs.

Typical use::

    engine = Engine()
    async with await engine.start(SandboxSpec(name="demo", rootfs=Path("rootfs"))) as sb:
        result = await sb.exec(["echo", "hi"])
"""

from __future__ import annotations

import asyncio
import logging
import os
import shutil
import tempfile
import time
import uuid
from pathlib import Path

from pydantic import BaseModel

from engine import paths
from engine.cachebound import Leases, lease_paths
from engine.errors import ConfigError, KernelError, VmError
from engine.sandbox.bootparts import DIR_UPPER, boot_error, check_layer_format
from engine.sandbox.capacity import HostCapacity, raise_fd_limit
from engine.sandbox.instant import Fallback, Restorer, StartInfo, StartKind, templates_enabled
from engine.sandbox.sandbox import Sandbox
from engine.sandbox.spec import SandboxSpec
from engine.vm.accel import AccelVerdict, choose_accel
from engine.vm.agent import AgentClient
from engine.vm.backend import Accel, VmBackend, VmHandle, VmSpec
from engine.vm.disk import create_upper_image, root_image_for_dir
from engine.vm.initramfs import check_agent_current, ensure_initramfs
from engine.vm.kernel import Kernel, read_bzimage_version, resolve_kernel
from engine.vm.protocol import Ready
from engine.vm.select import BackendVerdict, choose_backend, isolation_of, requested_backend
from engine.vm.template import TemplateStore
from engine.vm.volumes import check_host_dirs, check_volumes

log = logging.getLogger(__name__)


class Assets(BaseModel):
    """What every VM of this engine boots with."""

    kernel: Kernel
    initrd: Path
    accel: AccelVerdict
    machine: str


class Engine:
    """Starts sandboxes. One per process is enough; it is safe to share between tasks."""

    def __init__(
        self,
        backend: VmBackend | str | None = None,
        *,
        cache_dir: Path | None = None,
        accel: str | None = None,
        kernel: Kernel | None = None,
        machine: str | None = None,
        templates: bool | None = None,
        run_base: Path | None = None,
        capacity: HostCapacity | None = None,
    ) -> None:
        """Args:
        backend: a backend, or a name (``auto``, ``qemu``, ``gvisor``, ``krun``); default
            ``MSB_BACKEND`` or ``auto`` — the strongest that works here (:mod:`engine.vm.select`).
        cache_dir: kernels, agent, images (default ``MSB_CACHE_DIR`` or ~/.cache/msb).
        accel: ``"kvm"``, ``"tcg"`` or ``"auto"`` (default ``MSB_ACCEL`` or auto).
        kernel: a kernel to use instead of :func:`resolve_kernel`'s choice.
        machine: ``"microvm"`` or ``"q35"`` (default ``MSB_MACHINE`` or microvm).
        templates: restore QEMU sandboxes from saved templates instead of booting them
            (default on unless ``MSB_TEMPLATES=0``; engine/sandbox/instant.py).
        run_base: where sandboxes' run directories go (a server's own directory, which its next
            start reclaims after a crash: engine/server/reclaim.py); default the runtime directory.
        capacity: the host-wide start limits (default from ``MSB_HOST_RESERVE_MIB`` and
            ``MSB_MAX_CPU_PRESSURE``: engine/sandbox/capacity.py).
        """
        self._backend: VmBackend | None = None if isinstance(backend, str) else backend
        self._backend_name = backend if isinstance(backend, str) else None
        self._fallback: Engine | None = None
        self._followers: dict[str, Engine] = {}
        self.backend_verdict: BackendVerdict | None = None
        """Why this backend was chosen (set by :meth:`prepare`; None for a backend passed in)."""
        self.cache_dir = cache_dir or paths.cache_dir()
        self.capacity = capacity or HostCapacity.from_env()
        raise_fd_limit()
        self._accel = accel
        self._kernel = kernel
        self.machine = machine or os.environ.get("MSB_MACHINE") or "microvm"
        self._assets: Assets | None = None
        self._lock = asyncio.Lock()
        self._templates = templates
        self.run_base = run_base
        self._restorer: Restorer | None = None

    @property
    def backend(self) -> VmBackend:
        """The backend in use (chosen by :meth:`prepare` unless one was passed in)."""
        if self._backend is None:
            raise RuntimeError("Engine.backend is chosen by prepare(); await engine.prepare() first")
        return self._backend

    async def prepare(self) -> Assets:
        """Resolve the kernel, build the initramfs and choose the accelerator (once).

        Raises:
            KernelError, AgentError, VmError, AccelError: with what to do.
        """
        async with self._lock:
            if self._assets is None:
                self._assets = await self._prepare()
            return self._assets

    async def _prepare(self) -> Assets:
        if self._backend is None:
            self._backend, self.backend_verdict = await choose_backend(self._backend_name, self.cache_dir)
            log.info("backend: %s (%s)", self._backend.name, self.backend_verdict.reason)
        if not self.backend.needs_boot_assets:
            if getattr(self.backend, "fixed_accel", None) and not os.environ.get("MSB_AGENT"):
                await asyncio.to_thread(check_agent_current, paths.agent_path())
            return self._placeholder_assets()
        kernel: Kernel
        if self._kernel is not None:
            kernel = self._kernel
        else:
            kernel = await asyncio.to_thread(resolve_kernel, self.cache_dir)
        if not _bootable_kernel(kernel.path):
            raise KernelError(
                f"the guest kernel {kernel.path} is missing or not a bzImage/ELF kernel (corrupt download or build?)",
                hint="rebuild it with `make kernel`, re-fetch Debian's with `make setup`, or fix MSB_KERNEL",
            )
        if not os.environ.get("MSB_AGENT"):
            await asyncio.to_thread(check_agent_current, paths.agent_path())
        initrd = await asyncio.to_thread(ensure_initramfs, paths.agent_path(), kernel.modules, self.cache_dir)
        backend = self.backend
        qemu = getattr(backend, "qemu", backend.name)

        async def probe(deadline: float) -> None:
            await self._probe_boot(kernel, initrd, deadline)

        verdict = await choose_accel(
            qemu=qemu, kernel=kernel.path, cache_file=self.cache_dir / "accel.json", probe=probe, forced=self._accel
        )
        if verdict.warning:  # front ends (and the server's log) show it to users
            log.debug("%s", verdict.warning)
        if self.backend_verdict is not None and self.backend_verdict.accel is None:
            self.backend_verdict = self.backend_verdict.model_copy(
                update={"accel": verdict.accel, "isolation": isolation_of(backend.name, verdict.accel)}
            )
        return Assets(kernel=kernel, initrd=initrd, accel=verdict, machine=self.machine)

    def _placeholder_assets(self) -> Assets:
        """Assets for a backend that boots nothing (the fake): no kernel lookup, no initramfs,
        no KVM probe. The accelerator is the one asked for, TCG by default."""
        name = self.backend.name
        kernel = self._kernel or Kernel(kind="custom", path=Path(os.devnull), version="none", source=f"{name} backend")
        fixed: Accel | None = getattr(self.backend, "fixed_accel", None)
        accel: Accel = fixed or ("kvm" if self._accel == "kvm" else "tcg")
        reason = f"the {name} backend runs no VMM" if fixed is None else f"the {name} backend always runs {accel}"
        verdict = AccelVerdict(accel=accel, reason=reason, source="forced")
        return Assets(kernel=kernel, initrd=Path(os.devnull), accel=verdict, machine=self.machine)

    async def _probe_boot(self, kernel: Kernel, initrd: Path, deadline: float) -> None:
        empty = Path(tempfile.mkdtemp(prefix="msb-probe-"))
        run_dir = paths.new_run_dir("probe")
        try:
            root = await asyncio.to_thread(root_image_for_dir, empty, self.cache_dir)
            spec = VmSpec(
                name="kvm-probe", kernel=kernel.path, initrd=initrd, root_image=root, accel="kvm",
                run_dir=run_dir, memory_mib=256, machine=self.machine,  # type: ignore[arg-type]
                kernel_args=tuple(kernel.boot_args("kvm")),
            )  # fmt: skip
            vm, _client, _ready, _ = await self._boot(spec, deadline)
            await vm.kill()
            await _client.close()
        finally:
            shutil.rmtree(run_dir, ignore_errors=True)  # also when the probe failed (the usual case here)
            empty.rmdir()

    async def start(self, spec: SandboxSpec) -> Sandbox:
        """Boot a sandbox and return it once its agent is ready.

        The sandbox holds leases on the cache entries it runs from (its template, its root
        filesystem: engine/cachebound.py) until it stops, so they are never evicted under it.

        Raises:
            ConfigError: the spec's rootfs is not usable.
            CapacityError: the host is below its memory reserve or over its CPU pressure limit.
            BootError: the guest did not come up (console tail and a hint inside).
            VmError, KernelError, AgentError: see their messages.
        """
        await self.capacity.check()
        leases = Leases()
        try:
            return await self._start(spec, leases)
        except BaseException:
            leases.release()
            raise

    async def _start(self, spec: SandboxSpec, leases: Leases) -> Sandbox:
        t0 = time.perf_counter()
        assets = await self.prepare()
        follow = await self._follow_layer(spec)
        if follow is not None:
            return await follow.start(spec)
        self._check_volumes(spec, assets.kernel)
        root, upper = await self._disks(spec)
        lease_paths(self.cache_dir, [root], leases)
        run_dir = paths.new_run_dir(spec.name, self.run_base)
        vm_spec = VmSpec(
            name=spec.name, kernel=assets.kernel.path, initrd=assets.initrd, root_image=root,
            upper_image=upper, cpus=spec.cpus, memory_mib=spec.memory_mib, accel=assets.accel.accel,
            run_dir=run_dir, machine=assets.machine,  # type: ignore[arg-type]
            kernel_args=_boot_args(assets),
            volumes=spec.volumes, ports=spec.ports, network=spec.network,
        )  # fmt: skip
        check = getattr(self.backend, "check_spec", None)
        try:
            if check is not None:
                check(vm_spec)
        except ConfigError:
            shutil.rmtree(run_dir, ignore_errors=True)
            if not self._chosen_automatically():
                raise
            return await (await self._fallback_engine()).start(spec)
        sandbox_id = uuid.uuid4().hex[:16]
        try:
            started = await self._restore(vm_spec, spec, leases)
        except BaseException:
            shutil.rmtree(run_dir, ignore_errors=True)
            raise
        kind: StartKind = "restore"
        detail = ""
        if isinstance(started, Fallback):
            kind, detail = "boot", started.reason
            try:
                vm, client, ready, _ = await self._boot(vm_spec, spec.boot_timeout_s)
            except BaseException:
                shutil.rmtree(run_dir, ignore_errors=True)
                raise
            if started.template is not None and self._restorer is not None:
                # the boot worked where the restore did not: the template was at fault
                self._restorer.store.discard(started.template, f"restoring from it failed: {started.reason}")
                self._restorer.mark_failed(started.template, f"to restore ({started.reason})")
        else:
            vm, client, ready, detail = started
        boot_s = time.perf_counter() - t0
        info = StartInfo(kind=kind, ms=boot_s * 1000, detail=detail)
        sandbox = Sandbox(spec, vm, client, run_dir, accel=assets.accel.accel, boot_s=boot_s, ready=ready,
                          backend=self.backend.name, start=info, sandbox_id=sandbox_id)  # fmt: skip
        sandbox.leases = leases
        log.info("sandbox %s ready in %.0f ms by %s (%s, %s)%s", spec.name, boot_s * 1000, kind, self.backend.name,
                 assets.accel.accel, f"; {detail}" if detail else "")  # fmt: skip
        return sandbox

    async def _restore(
        self, vm_spec: VmSpec, spec: SandboxSpec, leases: Leases
    ) -> tuple[VmHandle, AgentClient, Ready, str] | Fallback:
        """Start ``vm_spec`` from its template, or say why to boot it instead."""
        if not templates_enabled(self._templates) or self.backend.name != "qemu":
            return Fallback("")
        if self._restorer is None:
            self._restorer = Restorer(self.backend, TemplateStore(self.cache_dir))
        return await self._restorer.try_start(vm_spec, spec.boot_timeout_s, leases)

    async def _follow_layer(self, spec: SandboxSpec) -> Engine | None:
        """For ``auto``: the engine of the backend kind a persistent sandbox's files are in,
        when that is not this engine's (a sandbox made on QEMU keeps running on QEMU after
        ``auto`` starts choosing gVisor); None to start here."""
        if spec.persist_dir is None or not self._chosen_automatically():
            return None
        try:
            check_layer_format(spec.persist_dir, self.backend.name, image=self.backend.needs_boot_assets)
        except ConfigError:
            pass
        else:
            return None
        key = "qemu" if not self.backend.needs_boot_assets else "directory"
        if key not in self._followers:
            if key == "qemu":
                backend, verdict = await choose_backend("qemu", self.cache_dir)
            else:
                backend, verdict = await choose_backend("auto", self.cache_dir, exclude=("qemu",))
            log.info("sandbox %s: its files are in %s's format, so it runs there", spec.name, backend.name)
            follower = Engine(backend, cache_dir=self.cache_dir, accel=self._accel, kernel=self._kernel,
                              machine=self.machine, run_base=self.run_base)  # fmt: skip
            follower.backend_verdict = verdict
            self._followers[key] = follower
        return self._followers[key]

    def _chosen_automatically(self) -> bool:
        return self.backend_verdict is not None and requested_backend(self._backend_name)[0] == "auto"

    async def _fallback_engine(self) -> Engine:
        """For ``auto``: an engine on the next backend, for sandboxes this one's refuses (libkrun
        cannot honour the ``public`` scope, for one)."""
        if self._fallback is None:
            backend, verdict = await choose_backend("auto", self.cache_dir, exclude=(self.backend.name,))
            log.info("backend %s cannot honour some sandboxes; those run on %s", self.backend.name, backend.name)
            fallback = Engine(backend, cache_dir=self.cache_dir, accel=self._accel, kernel=self._kernel,
                              machine=self.machine, run_base=self.run_base)  # fmt: skip
            fallback.backend_verdict = verdict
            self._fallback = fallback
        return self._fallback

    def _check_volumes(self, spec: SandboxSpec, kernel: Kernel) -> None:
        """Refuse volumes the guest could not mount, before anything is built or booted.

        Raises:
            ConfigError: a host directory is missing, a guest path is unusable, or the guest
                kernel has no 9p over virtio.
        """
        if not spec.volumes:
            return
        check_volumes(spec.volumes)
        check_host_dirs(spec.volumes)
        if self.backend.needs_boot_assets and not kernel.supports_9p:
            raise ConfigError(
                f"sandbox {spec.name!r} has volumes, but the guest kernel {kernel.version} ({kernel.kind}) "
                "cannot mount them: it lacks 9p over virtio (NET_9P, NET_9P_VIRTIO, 9P_FS), or its config is unknown",
                hint="build the minimal kernel with `make kernel` (it has 9p built in), or for MSB_KERNEL "
                "put its .config beside it; Debian's cloud kernel is built without 9p",
            )

    async def _disks(self, spec: SandboxSpec) -> tuple[Path, Path | None]:
        """Build (or reuse) the root image and the persistent upper image of ``spec``.

        A backend without boot assets gets the rootfs directory itself and, when persistent,
        an upper *directory* (``persist_dir/upper``).

        Raises:
            ConfigError: the sandbox's files are in the other backend kind's format.
        """
        if spec.persist_dir is not None:
            check_layer_format(spec.persist_dir, self.backend.name, image=self.backend.needs_boot_assets)
        if not self.backend.needs_boot_assets:
            if not spec.rootfs.is_dir():
                raise ConfigError(f"root filesystem {spec.rootfs} is not a directory",
                                  hint="pass an unpacked root filesystem, or an image name (msb pull)")  # fmt: skip
            return spec.rootfs, None if spec.persist_dir is None else spec.persist_dir / DIR_UPPER
        upper = None if spec.persist_dir is None else spec.persist_dir / "upper.ext4"
        if spec.root_image is not None:
            if not spec.root_image.is_file():
                raise ConfigError(f"root image {spec.root_image} is missing",
                                  hint="rebuild it: start the sandbox from its image again")  # fmt: skip
            root = spec.root_image
        else:
            root = await asyncio.to_thread(root_image_for_dir, spec.rootfs, self.cache_dir)
        if upper is not None:
            await asyncio.to_thread(create_upper_image, upper, spec.disk_mib)
        return root, upper

    async def _boot(self, spec: VmSpec, deadline: float) -> tuple[VmHandle, AgentClient, Ready, float]:
        """Launch a VM and wait for READY, racing the VM's exit and the deadline."""
        t0 = time.perf_counter()
        try:
            vm = await self.backend.launch(spec)
        except VmError as exc:
            if 'write" lock' in str(exc) or "write lock" in str(exc):
                raise VmError(
                    f"sandbox {spec.name!r} is already running (its disk is in use)",
                    hint="stop the other instance first",
                ) from exc
            raise
        client = AgentClient(vm.channel)
        ready_task = asyncio.ensure_future(client.wait_ready())
        exit_task = asyncio.ensure_future(vm.wait_exited())
        try:
            done, _ = await asyncio.wait({ready_task, exit_task}, timeout=deadline, return_when=asyncio.FIRST_COMPLETED)
            if ready_task in done and ready_task.exception() is None:
                exit_task.cancel()
                return vm, client, ready_task.result(), time.perf_counter() - t0
            raise boot_error(spec, vm, ready_task, exit_task, deadline)
        except BaseException:
            ready_task.cancel()
            exit_task.cancel()
            await vm.kill()
            await client.close()
            raise


def _boot_args(assets: Assets) -> tuple[str, ...]:
    accel = assets.accel.accel
    return () if accel == "none" else tuple(assets.kernel.boot_args(accel))


def _bootable_kernel(path: Path) -> bool:
    """Cheap sanity check before QEMU sees the file: a bzImage header or an ELF vmlinux."""
    if read_bzimage_version(path) is not None:
        return True
    try:
        with open(path, "rb") as f:
            return f.read(4) == b"\x7fELF"
    except OSError:
        return False
