"""Starting sandboxes from templates instead of booting them (docs/instant.md).

:class:`Restorer` finds or builds the template of a sandbox's shape (engine/vm/template.py)
and restores a VM from it. Every restored guest gets its own identity before anything else
runs in it — fresh host entropy mixed into its kernel RNG and a reseed, the wall clock, its
hostname and sandbox id — and then its own writable layer and volumes (RESUME). A VM whose
guest does not confirm the identity is killed, never handed out.
"""

from __future__ import annotations

import asyncio
import logging
import os
import shutil
import time
from collections.abc import Awaitable
from dataclasses import dataclass
from typing import Literal, TypeVar

from pydantic import BaseModel

from engine import paths
from engine.cachebound import Leases
from engine.errors import BootError, ExecError, MsbError, VmError
from engine.vm.agent import AgentClient
from engine.vm.backend import VmBackend, VmHandle, VmSpec
from engine.vm.protocol import PROTOCOL_VERSION, Ready
from engine.vm.snapshot import save_state
from engine.vm.template import (
    Template,
    TemplateStore,
    restore_spec,
    resume_params,
    stage_for,
    template_key,
    template_spec,
)

log = logging.getLogger(__name__)

StartKind = Literal["pool", "restore", "boot"]
T = TypeVar("T")
ENTROPY_BYTES = 64
WARMUP = "true; command -v python3 >/dev/null && python3 -c pass; true"
"""Run in a ``ready`` template before it is saved: what it reads stays in the guest's page
cache, so restored sandboxes start these programs without disk reads."""
WARMUP_TIMEOUT_S = 120.0
RETRY_AFTER_S = 600.0


@dataclass(frozen=True)
class Fallback:
    """Why a start boots instead of restoring, and the template to drop if the boot works
    (then the template, not the sandbox's spec or the host, was at fault)."""

    reason: str
    template: str | None = None


class StartInfo(BaseModel):
    """How a sandbox started and how long it took."""

    kind: StartKind
    ms: float
    """From the start request to a ready agent."""
    detail: str = ""
    """E.g. ``template built in 610 ms`` or why a restore fell back to a boot."""


def templates_enabled(flag: bool | None) -> bool:
    """Templates are on unless ``flag`` is False or ``MSB_TEMPLATES=0``."""
    if flag is not None:
        return flag
    return os.environ.get("MSB_TEMPLATES", "1").strip().lower() not in ("0", "no", "off", "false")


async def race(vm: VmHandle, what: Awaitable[T], deadline: float, doing: str, name: str) -> T:
    """Await ``what`` unless the VM exits first or ``deadline`` seconds pass.

    Raises:
        BootError: the VM exited or the deadline passed (with the console tail).
    """
    task = asyncio.ensure_future(what)
    exited = asyncio.ensure_future(vm.wait_exited())
    try:
        done, _ = await asyncio.wait({task, exited}, timeout=deadline, return_when=asyncio.FIRST_COMPLETED)
        if task in done:
            return task.result()
        if exited in done:
            why = f"the VM exited (status {exited.result()}) while {doing}"
        else:
            why = f"no answer within {deadline:.0f} s while {doing}"
        raise BootError(f"sandbox {name!r}: {why}", hint="the console tail is below; `MSB_TEMPLATES=0` boots "
                        "without templates", console_tail=vm.console_tail(3000))  # fmt: skip
    finally:
        task.cancel()
        exited.cancel()


class Restorer:
    """Templates and restores for one QEMU backend."""

    def __init__(self, backend: VmBackend, store: TemplateStore) -> None:
        self.backend = backend
        self.store = store
        self.qemu: str = getattr(backend, "qemu", backend.name)
        self._failed: dict[str, tuple[float, str]] = {}
        """Keys whose template failed to build or restore lately: those shapes boot for a
        while instead of paying a failed build (up to a boot timeout) on every start."""

    def mark_failed(self, key: str, why: str) -> None:
        self._failed[key] = (time.monotonic() + RETRY_AFTER_S, why)

    async def try_start(
        self, spec: VmSpec, deadline: float, leases: Leases | None = None
    ) -> tuple[VmHandle, AgentClient, Ready, str] | Fallback:
        """Restore ``spec`` from its template (built now if missing), or say why it boots.

        Args:
            leases: gets the lease that keeps the template from eviction while the VM runs.
        Raises:
            VmError: the sandbox is already running (its disk is locked).
        """
        try:
            tpl, built_ms = await self.template_for(spec, deadline)
        except Exception as exc:
            if not restore_failed(exc):
                raise
            log.warning("sandbox %s: no template (%s stage), booting it: %s", spec.name, stage_for(spec), exc)
            return Fallback(f"no template ({_first_line(exc)})")
        lease = self.store.lease(tpl.key)
        if lease is None:
            return Fallback("its template was evicted just now")
        try:
            vm, client, ready = await self.restore(spec, tpl, deadline)
        except BaseException as exc:
            lease.release()
            if not isinstance(exc, Exception):
                raise
            if "write lock" in str(exc) or 'write" lock' in str(exc):
                raise VmError(f"sandbox {spec.name!r} is already running (its disk is in use)",
                              hint="stop the other instance first") from exc  # fmt: skip
            if not restore_failed(exc):
                raise
            log.warning("sandbox %s: restoring from its template failed, booting it: %s", spec.name, exc)
            return Fallback(f"restore failed ({_first_line(exc)})", template=tpl.key)
        if leases is not None:
            leases.add(lease)
        else:
            lease.release()
        return vm, client, ready, "" if built_ms is None else f"template built in {built_ms:.0f} ms"

    async def template_for(self, spec: VmSpec, deadline: float) -> tuple[Template, float | None]:
        """The template of ``spec``'s shape, built now if there is none.

        Returns:
            The template, and its build time in ms if it was built by this call.
        """
        stage = stage_for(spec)
        key = await asyncio.to_thread(template_key, self.qemu, spec, stage)
        failed = self._failed.get(key)
        if failed is not None and time.monotonic() < failed[0]:
            raise VmError(f"its template failed {failed[1]}; booting until {RETRY_AFTER_S / 60:.0f} min have passed")
        found = self.store.find(key)
        if found is not None:
            return found, None
        async with self.store.lock(key):
            fd = await self.store.file_lock(key)
            try:
                found = self.store.find(key)  # another process may have built it meanwhile
                if found is not None:
                    return found, None
                try:
                    tpl = await self._build(spec, stage, key, deadline)
                except Exception as exc:
                    self.mark_failed(key, f"to build ({_first_line(exc)})")
                    raise
                return tpl, tpl.build_ms
            finally:
                self.store.unlock(fd)

    async def _build(self, spec: VmSpec, stage: Literal["root", "ready"], key: str, deadline: float) -> Template:
        t0 = time.perf_counter()
        build_dir = self.store.new_build_dir(key)
        run_dir = paths.new_run_dir("template")
        tspec = template_spec(spec, stage, build_dir, run_dir)
        try:
            fd = os.open(build_dir / "ram", os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o600)
            try:
                os.ftruncate(fd, spec.memory_mib << 20)  # sparse: untouched guest RAM costs no disk
            finally:
                os.close(fd)
            if tspec.upper_image is not None and spec.upper_image is not None:
                with open(tspec.upper_image, "wb") as f:
                    f.truncate(spec.upper_image.stat().st_size)
            vm = await self.backend.launch(tspec)
            client = AgentClient(vm.channel)
            try:
                if stage == "root":
                    held = await race(vm, client.wait_held(), deadline, "building its template", spec.name)
                    agent_version, timings = held.agent_version, {}
                else:
                    ready = await race(vm, client.wait_ready(), deadline, "building its template", spec.name)
                    agent_version, timings = ready.agent_version, ready.timings_ns
                    try:
                        await race(vm, client.exec(["/bin/sh", "-c", WARMUP]), WARMUP_TIMEOUT_S, "warming it up",
                                   spec.name)  # fmt: skip
                    except ExecError as exc:  # no /bin/sh in the image: a template all the same
                        log.info("template %s: no warm-up (%s)", key[:12], exc.message)
                state_bytes = await save_state(vm, build_dir / "state")  # type: ignore[arg-type]
            finally:
                await vm.kill()
                await client.close()
            build_ms = (time.perf_counter() - t0) * 1000
            tpl = Template(key=key, dir=build_dir, stage=stage, memory_mib=spec.memory_mib, build_ms=build_ms,
                           state_bytes=state_bytes, agent_version=agent_version, ready_timings_ns=timings)  # fmt: skip
            published = self.store.publish(build_dir, tpl)
            log.info("template %s (%s stage, %d MiB) built in %.0f ms, state %d KiB", key[:12], stage,
                     spec.memory_mib, build_ms, state_bytes >> 10)  # fmt: skip
            return published
        except BaseException:
            shutil.rmtree(build_dir, ignore_errors=True)
            raise
        finally:
            shutil.rmtree(run_dir, ignore_errors=True)

    async def restore(self, spec: VmSpec, template: Template, deadline: float) -> tuple[VmHandle, AgentClient, Ready]:
        """Restore ``spec`` from ``template`` and give it its identity; return it READY.

        Raises:
            VmError: QEMU could not load the template (the caller discards it).
            BootError, ProtocolError: the guest did not come up or refused its identity.
        """
        vm = await self.backend.launch(restore_spec(spec, template))
        client = AgentClient(vm.channel)
        try:
            identity = identify(client, spec.name)
            if template.stage == "ready":
                await race(vm, identity, deadline, "taking its identity", spec.name)
                ready = Ready(id=0, version=PROTOCOL_VERSION, agent_version=template.agent_version,
                              timings_ns=template.ready_timings_ns)  # fmt: skip
                return vm, client, ready
            # IDENTITY first and confirmed: the root is mounted with the sandbox's own entropy
            await race(vm, identity, deadline, "taking its identity", spec.name)
            await client.resume(resume_params(spec))
            ready = await race(vm, client.wait_ready(), deadline, "resuming from its template", spec.name)
            return vm, client, ready
        except BaseException:
            await vm.kill()
            await client.close()
            raise


async def identify(client: AgentClient, name: str) -> None:
    """Fresh entropy, the wall clock and ``name`` as hostname (after every restore, and again
    when a pool member becomes a sandbox)."""
    await client.identify(entropy=os.urandom(ENTROPY_BYTES), realtime_ns=time.time_ns(), hostname=name[:63])


def _first_line(exc: BaseException) -> str:
    return str(exc).splitlines()[0][:200] if str(exc) else type(exc).__name__


def restore_failed(exc: BaseException) -> bool:
    """Errors after which a start falls back to a cold boot (any of ours, and the host's)."""
    return isinstance(exc, (MsbError, OSError))
