"""``SandboxManager``: the real :class:`~engine.server.service.SandboxService` — namespaces,
their sandboxes' definitions and persistent layers, and the running sandboxes.

The server owns its state (:mod:`engine.server.state`): definitions and persistent layers in
``<storage>/sandboxes/<ns>/<name>/`` (0700, never mounted into any sandbox); volumes come only
from the namespace's data area ``<storage>/volumes/<ns>/``. What API clients may ask for is
checked by :mod:`engine.server.tenancy` before anything is resolved or started. Sandboxes the
server starts are persistent: their files survive a crash or restart of the server or the VM.
Ephemeral ones (``config.ephemeral``, our addition) have no writable layer on disk and write
no definition; a warm pool of their image (:mod:`engine.server.pools`) can serve them.

One backend per server: the manager's :class:`~engine.sandbox.engine.Engine` chooses it at
start (``msb server start --backend``, ``MSB_BACKEND``, else auto) and every sandbox runs on it.
"""

from __future__ import annotations

import asyncio
import logging
import re
from collections.abc import Coroutine
from pathlib import Path
from typing import Any

from engine.errors import ConfigError, NotFoundError, SandboxStateError, VmCrashedError
from engine.images.resolve import resolve_root
from engine.project.sandboxfile import SandboxEntry, entry_from_dict
from engine.project.specs import spec_overrides
from engine.repl.models import CommandResult, ReplResult
from engine.repl.pool import ReplPool
from engine.sandbox.engine import Engine
from engine.sandbox.host_ca import with_host_ca
from engine.sandbox.instant import StartKind
from engine.sandbox.sandbox import Sandbox, Status
from engine.sandbox.spec import NAME_PATTERN
from engine.server.output import collect_command
from engine.server.pools import ServerPools
from engine.server.service import SandboxConfig, SandboxInfo, SandboxMetrics, ServerInfo
from engine.server.settings import Limits, PoolSetting
from engine.server.state import ServerState, disk_full_as_error, migrate_legacy
from engine.server.tenancy import LimitError, Quotas, TenantPolicy, tree_mib
from engine.vm.accel import TCG_WARNING
from engine.vm.select import backend_label, isolation_of

log = logging.getLogger(__name__)
_NAME = re.compile(NAME_PATTERN)
DEFAULT_MEMORY_MIB = 512


def check_name(kind: str, value: str) -> None:
    if not isinstance(value, str) or not _NAME.match(value):
        raise ConfigError(f"Invalid params: {kind} name {value!r} must be 1-63 of [A-Za-z0-9_-], starting "
                          "with a letter or digit")  # fmt: skip


class _Running:
    def __init__(self, sandbox: Sandbox, image: str | None, limit: int, repl: ReplPool | None = None) -> None:
        self.sandbox = sandbox
        self.image = image
        self.repl = repl or ReplPool(sandbox)
        self.execs = 0
        self.limit = limit

    @property
    def started_by(self) -> StartKind:
        return self.sandbox.start_info.kind

    @property
    def start_ms(self) -> float:
        """From the start request to ready."""
        return round(self.sandbox.start_info.ms, 1)


class SandboxManager:
    """Starts, tracks and stops the server's sandboxes."""

    def __init__(self, storage: Path, limits: Limits | None = None, *, engine: Engine | None = None,
                 pools: list[PoolSetting] | None = None, pool_max_mib: float | None = None,
                 policy: TenantPolicy | None = None, host_ca: Path | None = None) -> None:  # fmt: skip
        """Args:
        storage: the state directory (:mod:`engine.server.state`); one of the old layout is
            migrated here, once.
        limits: the server's limits and tenant quotas.
        engine: what starts sandboxes (default: an Engine on ``MSB_BACKEND``/auto).
        pools: warm pools of ephemeral sandboxes, filled from :meth:`prepare` on.
        pool_max_mib: bound of all pool members' memory (default: WarmPool's).
        policy: the operator's allowances for API clients (directory images, public ports).
        host_ca: the operator's host CA bundle, given read-only to every sandbox (engine/sandbox/host_ca.py).
        """
        self.state = ServerState(storage)
        self.migration_refused = migrate_legacy(self.state)
        self.limits = limits or Limits()
        self.policy = policy or TenantPolicy()
        self.host_ca = host_ca
        self.quotas = Quotas(self.limits)
        self.engine = engine or Engine()
        self.pools = ServerPools(self.engine, pools or [], max_mib=pool_max_mib)
        self._running: dict[tuple[str, str], _Running] = {}
        self._crashed: dict[tuple[str, str], Sandbox] = {}
        """Sandboxes whose VM died under them, with why, until they are started or stopped again."""
        self._watches: set[asyncio.Task[None]] = set()
        self._locks: dict[tuple[str, str], asyncio.Lock] = {}

    # --- helpers -------------------------------------------------------------------------

    def volume_area(self, namespace: str) -> Path:
        """The namespace's data area: what its volumes' host paths are relative to."""
        check_name("namespace", namespace)
        return self.state.volume_area(namespace)

    def _lock(self, key: tuple[str, str]) -> asyncio.Lock:
        return self._locks.setdefault(key, asyncio.Lock())

    def _get(self, namespace: str, name: str) -> _Running:
        check_name("namespace", namespace)
        check_name("sandbox", name)
        run = self._running.get((namespace, name))
        if run is not None and run.sandbox.status is not Status.RUNNING:
            self._ended((namespace, name), run)
            if not run.sandbox.crashed:
                raise SandboxStateError(f"sandbox {name!r} is {run.sandbox.status.value}",
                                        hint="start it again with sandbox.start")  # fmt: skip
            run = None
        if run is None:
            reason = self._crash_reason((namespace, name))
            if reason is not None:
                raise VmCrashedError(f"sandbox {name!r} crashed: {reason}",
                                     hint="start it again with sandbox.start (its files on disk are kept)")  # fmt: skip
            raise NotFoundError(f"Invalid params: Sandbox '{name}' not found",
                                hint=f"start it first (sandbox.start) in namespace {namespace!r}")  # fmt: skip
        return run

    def _ended(self, key: tuple[str, str], run: _Running) -> None:
        """Book a sandbox whose VM is gone: a crash is remembered with its reason, its host side
        is torn down (run directory, cgroup, mounts) and its quota released."""
        if self._running.get(key) is not run:
            return
        self._forget(*key)
        if run.sandbox.crashed:
            self._crashed[key] = run.sandbox  # its reason may still grow (the VMM's exit after the channel's end)
            log.warning("sandbox crashed", extra={"namespace": key[0], "sandbox": key[1],
                                                  "reason": run.sandbox.crash_reason})  # fmt: skip
            self._spawn(self._stop_quietly(run))

    def _crash_reason(self, key: tuple[str, str]) -> str | None:
        crashed = self._crashed.get(key)
        return None if crashed is None else crashed.crash_reason or "the VM exited"

    def _spawn(self, coro: Coroutine[Any, Any, None]) -> None:
        task = asyncio.ensure_future(coro)
        self._watches.add(task)  # a reference until done: the loop keeps only weak ones
        task.add_done_callback(self._watches.discard)

    async def _watch(self, key: tuple[str, str], run: _Running) -> None:
        """Notice a crash when it happens, not at the next request."""
        await run.sandbox.wait_ended()
        self._ended(key, run)

    # --- lifecycle -----------------------------------------------------------------------

    async def start(self, namespace: str, name: str, config: SandboxConfig | None) -> str:
        check_name("namespace", namespace)
        check_name("sandbox", name)
        key = (namespace, name)
        async with self._lock(key):
            current = self._running.get(key)
            if current is not None and current.sandbox.status is Status.RUNNING:
                return f"Sandbox {name} started successfully"
            self._forget(namespace, name)
            ephemeral = bool(config is not None and config.ephemeral)
            entry = self._entry(namespace, name, config)
            memory = entry.memory or DEFAULT_MEMORY_MIB
            self.quotas.check_shape(memory, entry.cpus)
            self.quotas.reserve(namespace, name, memory)  # before any await: concurrent starts cannot race past it
            try:
                with disk_full_as_error(self.state.storage):
                    run = await self._start_reserved(namespace, name, entry, ephemeral)
                    fresh = config is not None and bool(config.image)  # a saved one is not re-saved (full disks)
                    await self._save_or_stop(namespace, name, entry, run, save=fresh and not ephemeral)
            except BaseException:
                self.quotas.release(namespace, name)
                raise
            self._running[key] = run
            self._crashed.pop(key, None)
            self._spawn(self._watch(key, run))
            log.info("sandbox started", extra={"namespace": namespace, "sandbox": name, "image": entry.image,
                                               "ephemeral": ephemeral, "started_by": run.started_by,
                                               "start_ms": run.start_ms})  # fmt: skip
            return f"Sandbox {name} started successfully"

    async def _start_reserved(self, namespace: str, name: str, entry: SandboxEntry, ephemeral: bool) -> _Running:
        """Check what the client asked of the host, resolve the image, start (or take from a pool)."""
        assert entry.image is not None
        image_dir = self.policy.check_image(entry.image)
        area = self.volume_area(namespace)
        overrides = spec_overrides(entry, area, confine=True)
        self.policy.check_ports(overrides["ports"])
        if overrides["volumes"]:
            self._check_disk("volume area", area, self.limits.max_volume_mib)
        persist = None
        if not ephemeral:
            persist = self.state.sandbox_dir(namespace, name)
            self._check_disk("persistent layer", persist, self.limits.max_disk_mib)
        root = await resolve_root(str(image_dir) if image_dir else entry.image, policy=self.policy.pull)
        spec = root.spec(name, persist_dir=persist, disk_mib=self.limits.max_disk_mib, **overrides)
        if self.host_ca is not None:  # the operator's bundle; a client's volumes never reach GUEST_DIR's host side
            spec = with_host_ca(spec, self.host_ca, self.state.storage / "host-ca")
        limit = self.limits.max_execs_per_sandbox
        taken = await self.pools.take(spec) if ephemeral else None
        if taken is not None:
            return _Running(taken[0], entry.image, limit, taken[1])
        return _Running(await self.engine.start(spec), entry.image, limit)

    async def _save_or_stop(self, namespace: str, name: str, entry: SandboxEntry, run: _Running, *,
                            save: bool) -> None:  # fmt: skip
        """Save a started sandbox's definition; if that fails (a full disk), stop it: a sandbox
        the server does not book must not run on."""
        if not save:
            return
        try:
            self.state.save(namespace, name, entry)
        except BaseException:
            await self._stop_quietly(run)
            raise

    @staticmethod
    def _check_disk(what: str, path: Path, max_mib: int) -> None:
        used = tree_mib(path, max_mib)
        if used > max_mib:
            raise LimitError(f"the {what} holds more than {max_mib} MiB (its quota)",
                             hint="delete files in it, or the operator raises the limit")  # fmt: skip

    def _forget(self, namespace: str, name: str) -> None:
        """Drop a sandbox that stopped or crashed from the books (and its quota)."""
        self._running.pop((namespace, name), None)
        self.quotas.release(namespace, name)

    def _entry(self, namespace: str, name: str, config: SandboxConfig | None) -> SandboxEntry:
        """With ``config.image``: the definition it describes (saved once the sandbox runs, unless
        ephemeral). Without: the definition saved before."""
        if config is not None and config.image:
            fields = {
                "image": config.image, "memory": config.memory, "cpus": config.cpus, "volumes": config.volumes,
                "ports": config.ports, "envs": config.envs, "workdir": config.workdir, "shell": config.shell,
                "scripts": config.scripts,
            }  # fmt: skip
            return entry_from_dict({k: v for k, v in fields.items() if v is not None})
        found = self.state.load(namespace, name)
        if found is None or not found.image:
            raise NotFoundError(f"Invalid params: Sandbox '{name}' not found",
                                hint="pass config.image to define it (e.g. microsandbox/python)")  # fmt: skip
        return found

    async def stop(self, namespace: str, name: str) -> str:
        if self._crashed.pop((namespace, name), None) is not None and (namespace, name) not in self._running:
            return f"Sandbox {name} stopped successfully"  # its host side went when it crashed
        run = self._get(namespace, name)
        async with self._lock((namespace, name)):
            try:
                await run.repl.close()
                await run.sandbox.stop()
            finally:
                self._forget(namespace, name)
        return f"Sandbox {name} stopped successfully"

    async def prepare(self) -> None:
        """Choose the backend and prepare its boot assets, once, at server start (logged with
        what isolates the sandboxes; TCG is a warning).

        Raises:
            VmError: the backend asked for does not work here (the probe's reason), or none does.
            ConfigError: an unknown backend name.
        """
        assets = await self.engine.prepare()
        info = await self.info()
        why = self.engine.backend_verdict.reason if self.engine.backend_verdict else "given"
        log.info("backend: %s (%s); isolation: %s", info.label, why, info.isolation)
        if assets.accel.accel == "tcg":
            log.warning("accelerator: TCG (%s). %s", assets.accel.reason, TCG_WARNING)
        self.pools.start()

    async def info(self) -> ServerInfo:
        """The backend this server's sandboxes run on (chosen by :meth:`prepare`)."""
        assets = await self.engine.prepare()
        name, accel = self.engine.backend.name, assets.accel.accel
        return ServerInfo(backend=name, accel=accel, label=backend_label(name, accel),
                          isolation=isolation_of(name, accel), pools=self.pools.status())  # fmt: skip

    async def shutdown(self) -> None:
        """Drop the warm pools and stop every sandbox cleanly (server exit)."""
        await self.pools.close()
        runs = list(self._running.values())
        for key in list(self._running):
            self._forget(*key)
        await asyncio.gather(*(self._stop_quietly(r) for r in runs))

    @staticmethod
    async def _stop_quietly(run: _Running) -> None:
        try:
            await run.repl.close()
            await run.sandbox.stop()
        except Exception:
            log.exception("stopping a sandbox during shutdown failed")

    # --- work ----------------------------------------------------------------------------

    async def run_code(self, namespace: str, name: str, language: str, code: str,
                       timeout: float | None) -> ReplResult:  # fmt: skip
        run = self._get(namespace, name)
        self.quotas.begin_exec(namespace)
        try:
            return await run.repl.run(language, code, timeout)
        finally:
            self.quotas.end_exec(namespace)

    async def run_command(self, namespace: str, name: str, command: str, args: list[str],
                          timeout: float | None) -> CommandResult:  # fmt: skip
        run = self._get(namespace, name)
        if run.execs >= run.limit:
            raise LimitError(f"sandbox {name!r} already runs {run.limit} commands (its limit)",
                             hint="wait for some to finish or raise MSB_MAX_EXECS_PER_SANDBOX")  # fmt: skip
        self.quotas.begin_exec(namespace)
        run.execs += 1
        try:
            return await collect_command(run.sandbox, command, args, timeout, self.limits)
        finally:
            run.execs -= 1
            self.quotas.end_exec(namespace)

    async def metrics(self, namespace: str, name: str | None) -> list[SandboxMetrics]:
        if namespace != "*":
            check_name("namespace", namespace)
        if name is not None:
            check_name("sandbox", name)
        keys = self._known(namespace)
        if name is not None:
            keys = [k for k in keys if k[1] == name]
            if not keys:
                raise NotFoundError(f"Invalid params: Sandbox '{name}' not found")
        out = []
        for ns, n in keys:
            run = self._running.get((ns, n))
            m = None
            if run is not None and run.sandbox.status is Status.RUNNING:
                try:
                    m = await run.sandbox.metrics()
                except VmCrashedError:
                    # it died under this very call, before its watcher booked it: report it as
                    # crashed like the others, rather than failing the whole answer
                    pass
            if run is not None and run.sandbox.status is not Status.RUNNING:
                self._ended((ns, n), run)
            if run is None or m is None:
                out.append(SandboxMetrics(namespace=ns, name=n, running=False, cpu_usage=None, memory_usage=None,
                                          disk_usage=None, crash_reason=self._crash_reason((ns, n))))  # fmt: skip
                continue
            out.append(SandboxMetrics(namespace=ns, name=n, running=True, cpu_usage=round(m.cpu_percent, 2),
                                      memory_usage=round(m.memory_mib, 1), disk_usage=m.disk_bytes,
                                      backend=run.sandbox.backend, accel=run.sandbox.accel,
                                      started_by=run.started_by, start_ms=run.start_ms))  # fmt: skip
        return out

    def _known(self, namespace: str) -> list[tuple[str, str]]:
        """Sandboxes running or defined, of one namespace or all."""
        keys = {k for k in [*self._running, *self._crashed] if namespace in ("*", k[0])}
        keys.update(self.state.names(None if namespace == "*" else namespace))
        return sorted(keys)

    async def list(self, namespace: str) -> list[SandboxInfo]:
        out = []
        for ns, n in self._known(namespace):
            run = self._running.get((ns, n))
            running = run is not None and run.sandbox.status is Status.RUNNING
            image = run.image if run else None
            if image is None:
                entry = self.state.load(ns, n)
                image = entry.image if entry else None
            status = run.sandbox.status.value if run else "crashed" if (ns, n) in self._crashed else "stopped"
            backend, accel = (run.sandbox.backend, run.sandbox.accel) if run and running else (None, None)
            live = run if run and running else None
            out.append(SandboxInfo(namespace=ns, name=n, running=running, image=image, status=status,
                                   backend=backend, accel=accel, started_by=live.started_by if live else None,
                                   start_ms=live.start_ms if live else None,
                                   crash_reason=self._crash_reason((ns, n))))  # fmt: skip
        return out

    async def read_file(self, namespace: str, name: str, path: str) -> bytes:
        return await self._get(namespace, name).sandbox.read_file(path, max_bytes=self.limits.max_file_bytes)

    async def write_file(self, namespace: str, name: str, path: str, data: bytes) -> None:
        if len(data) > self.limits.max_file_bytes:
            raise LimitError(f"the file is {len(data)} bytes, over this server's maximum of "
                             f"{self.limits.max_file_bytes}", hint="write it in parts, or the operator raises "
                             "MSB_MAX_FILE_BYTES")  # fmt: skip
        await self._get(namespace, name).sandbox.write_file(path, data)
