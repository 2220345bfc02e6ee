"""``SandboxManager``: the real :class:`~engine.server.service.SandboxService` — namespaces,
their Sandboxfiles, and the running sandboxes.

Each namespace is a directory under ``<storage>/namespaces/<ns>/`` holding a ``Sandboxfile``
and ``.menv/`` (persistent writable layers under ``.menv/sandboxes/<name>``). Sandboxes the
server starts are persistent: their files survive a crash or restart of the server or the VM.
Ephemeral ones (``config.ephemeral``, our addition) have no writable layer on disk and write
no Sandboxfile entry; a warm pool of their image (:mod:`engine.server.pools`) can serve them.

One backend per server: the manager's :class:`~engine.sandbox.engine.Engine` chooses it at
start (``msb server start --backend``, ``MSB_BACKEND``, else auto) and every sandbox runs on it.
"""

from __future__ import annotations

import asyncio
import logging
import re
from pathlib import Path

from engine.errors import ConfigError, MsbError, NotFoundError, SandboxStateError
from engine.images.resolve import resolve_root
from engine.project.sandboxfile import SandboxEntry, Sandboxfile, entry_from_dict
from engine.project.specs import spec_overrides
from engine.repl.models import CommandResult, ReplResult
from engine.repl.pool import ReplPool
from engine.sandbox.engine import Engine
from engine.sandbox.instant import StartKind
from engine.sandbox.sandbox import Sandbox, Status
from engine.sandbox.spec import NAME_PATTERN
from engine.server.output import collect_command
from engine.server.pools import ServerPools
from engine.server.service import SandboxConfig, SandboxInfo, SandboxMetrics, ServerInfo
from engine.server.settings import Limits, PoolSetting
from engine.vm.accel import TCG_WARNING
from engine.vm.select import backend_label, isolation_of

log = logging.getLogger(__name__)
_NAME = re.compile(NAME_PATTERN)
DEFAULT_MEMORY_MIB = 512


class LimitError(MsbError):
    """A configured server limit was hit."""

    code = -32030


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
                 pools: list[PoolSetting] | None = None, pool_max_mib: float | None = None) -> None:  # fmt: skip
        """Args:
        storage: the state directory (namespaces live in ``<storage>/namespaces``).
        limits: the server's limits.
        engine: what starts sandboxes (default: an Engine on ``MSB_BACKEND``/auto).
        pools: warm pools of ephemeral sandboxes, filled from :meth:`prepare` on.
        pool_max_mib: bound of all pool members' memory (default: WarmPool's).
        """
        self.root = storage / "namespaces"
        self.limits = limits or Limits()
        self.engine = engine or Engine()
        self.pools = ServerPools(self.engine, pools or [], max_mib=pool_max_mib)
        self._running: dict[tuple[str, str], _Running] = {}
        self._locks: dict[tuple[str, str], asyncio.Lock] = {}

    # --- helpers -------------------------------------------------------------------------

    def namespace_dir(self, namespace: str) -> Path:
        check_name("namespace", namespace)
        return self.root / namespace

    def _lock(self, key: tuple[str, str]) -> asyncio.Lock:
        return self._locks.setdefault(key, asyncio.Lock())

    def _get(self, namespace: str, name: str) -> _Running:
        check_name("namespace", namespace)
        check_name("sandbox", name)
        run = self._running.get((namespace, name))
        if run is None:
            raise NotFoundError(f"Invalid params: Sandbox '{name}' not found",
                                hint=f"start it first (sandbox.start) in namespace {namespace!r}")  # fmt: skip
        if run.sandbox.status is not Status.RUNNING:
            self._running.pop((namespace, name), None)
            raise SandboxStateError(f"sandbox {name!r} is {run.sandbox.status.value}",
                                    hint="start it again with sandbox.start")  # fmt: skip
        return run

    # --- lifecycle -----------------------------------------------------------------------

    async def start(self, namespace: str, name: str, config: SandboxConfig | None) -> str:
        check_name("sandbox", name)
        ns_dir = self.namespace_dir(namespace)
        key = (namespace, name)
        async with self._lock(key):
            current = self._running.get(key)
            if current is not None and current.sandbox.status is Status.RUNNING:
                return f"Sandbox {name} started successfully"
            ephemeral = bool(config is not None and config.ephemeral)
            entry = self._entry(ns_dir, name, config, save=not ephemeral)
            running = sum(1 for r in self._running.values() if r.sandbox.status is Status.RUNNING)
            if running >= self.limits.max_sandboxes:
                raise LimitError(f"this server already runs {self.limits.max_sandboxes} sandboxes (its limit)",
                                 hint="stop one (sandbox.stop) or raise MSB_MAX_SANDBOXES")  # fmt: skip
            if not entry.image:
                raise ConfigError(f"Invalid params: sandbox {name!r} has no image",
                                  hint="pass config.image, e.g. microsandbox/python")  # fmt: skip
            await self._check_backend(name, entry)
            # API clients choose volume paths: they must stay inside the namespace directory
            overrides = spec_overrides(entry, ns_dir, confine=True)
            root = await resolve_root(entry.image, base_dir=ns_dir)
            persist = None if ephemeral else ns_dir / ".menv" / "sandboxes" / name
            spec = root.spec(name, persist_dir=persist, **overrides)
            taken = await self.pools.take(spec) if ephemeral else None
            if taken is not None:
                run = _Running(taken[0], entry.image, self.limits.max_execs_per_sandbox, taken[1])
            else:
                run = _Running(await self.engine.start(spec), entry.image, self.limits.max_execs_per_sandbox)
            self._running[key] = run
            log.info("sandbox started", extra={"namespace": namespace, "sandbox": name, "image": entry.image,
                                               "ephemeral": ephemeral, "started_by": run.started_by,
                                               "start_ms": run.start_ms})  # fmt: skip
            return f"Sandbox {name} started successfully"

    def _entry(self, ns_dir: Path, name: str, config: SandboxConfig | None, *, save: bool = True) -> SandboxEntry:
        """With ``config.image``: the entry it describes, written to the Sandboxfile (comments
        kept) unless ``save`` is False (ephemeral sandboxes). Without: the entry must already
        be there."""
        path = ns_dir / "Sandboxfile"
        if config is not None and config.image:
            sbf = Sandboxfile.load(path, create=True)
            old = sbf.get(name)
            fields = {
                "image": config.image, "memory": config.memory, "cpus": config.cpus, "volumes": config.volumes,
                "ports": config.ports, "envs": config.envs, "workdir": config.workdir, "shell": config.shell,
                "scripts": config.scripts,
            }  # fmt: skip
            extra = {} if old is None else old.model_extra or {}
            entry = entry_from_dict({**extra, **{k: v for k, v in fields.items() if v is not None}})
            if save:
                sbf.set_sandbox(name, entry)
                sbf.save()
            return entry
        found = Sandboxfile.load(path, create=True).get(name)
        if found is None:
            raise NotFoundError(
                f"Invalid params: Sandbox '{name}' not found",
                hint="pass config.image to define it, or add it to the namespace's Sandboxfile",
            )
        return found

    async def _check_backend(self, name: str, entry: SandboxEntry) -> None:
        """A Sandboxfile ``backend:`` other than this server's is refused, not quietly ignored."""
        if entry.backend in (None, "auto"):
            return
        info = await self.info()
        if entry.backend != info.backend:
            raise ConfigError(f"Invalid params: sandbox {name!r} asks for backend {entry.backend!r}, but this "
                              f"server runs its sandboxes on {info.label}",
                              hint="one backend per server: remove backend: from the namespace's Sandboxfile, "
                              f"or run a server with `msb server start --backend {entry.backend}`")  # fmt: skip

    async def stop(self, namespace: str, name: str) -> str:
        run = self._get(namespace, name)
        async with self._lock((namespace, name)):
            await run.repl.close()
            await run.sandbox.stop()
            self._running.pop((namespace, name), None)
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
        self._running.clear()
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
        return await run.repl.run(language, code, timeout)

    async def run_command(self, namespace: str, name: str, command: str, args: list[str],
                          timeout: float | None) -> CommandResult:  # fmt: skip
        run = self._get(namespace, name)
        if run.execs >= run.limit:
            raise LimitError(f"sandbox {name!r} already runs {run.limit} commands (its limit)",
                             hint="wait for some to finish or raise MSB_MAX_EXECS_PER_SANDBOX")  # fmt: skip
        run.execs += 1
        try:
            return await collect_command(run.sandbox, command, args, timeout, self.limits.max_output_bytes)
        finally:
            run.execs -= 1

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
            if run is None or run.sandbox.status is not Status.RUNNING:
                out.append(SandboxMetrics(namespace=ns, name=n, running=False, cpu_usage=None, memory_usage=None,
                                          disk_usage=None))  # fmt: skip
                continue
            m = await run.sandbox.metrics()
            out.append(SandboxMetrics(namespace=ns, name=n, running=True, cpu_usage=round(m.cpu_percent, 2),
                                      memory_usage=round(m.memory_mib, 1), disk_usage=m.disk_bytes,
                                      backend=run.sandbox.backend, accel=run.sandbox.accel,
                                      started_by=run.started_by, start_ms=run.start_ms))  # fmt: skip
        return out

    def _known(self, namespace: str) -> list[tuple[str, str]]:
        """Sandboxes running or defined in a Sandboxfile, of one namespace or all."""
        keys = {k for k in self._running if namespace in ("*", k[0])}
        if namespace != "*":
            dirs = [self.root / namespace]
        else:
            dirs = sorted(self.root.iterdir()) if self.root.is_dir() else []
        for d in dirs:
            if (d / "Sandboxfile").is_file():
                try:
                    keys.update((d.name, n) for n in Sandboxfile.load(d / "Sandboxfile").names())
                except ConfigError:
                    log.warning("unreadable Sandboxfile in namespace %s", d.name)
        return sorted(keys)

    async def list(self, namespace: str) -> list[SandboxInfo]:
        out = []
        for ns, n in self._known(namespace):
            run = self._running.get((ns, n))
            running = run is not None and run.sandbox.status is Status.RUNNING
            image = run.image if run else None
            if image is None:
                entry = Sandboxfile.load(self.root / ns / "Sandboxfile", create=True).get(n)
                image = entry.image if entry else None
            status = run.sandbox.status.value if run else "stopped"
            backend, accel = (run.sandbox.backend, run.sandbox.accel) if run and running else (None, None)
            live = run if run and running else None
            out.append(SandboxInfo(namespace=ns, name=n, running=running, image=image, status=status,
                                   backend=backend, accel=accel, started_by=live.started_by if live else None,
                                   start_ms=live.start_ms if live else None))  # fmt: skip
        return out

    async def read_file(self, namespace: str, name: str, path: str) -> bytes:
        return await self._get(namespace, name).sandbox.read_file(path)

    async def write_file(self, namespace: str, name: str, path: str, data: bytes) -> None:
        await self._get(namespace, name).sandbox.write_file(path, data)
