"""The server's warm pools (``msb server start --pool IMAGE[=N]``, ``MSB_POOL``).

:class:`ServerPools` keeps ``N`` ephemeral sandboxes of each configured image started and
warmed (on QEMU restored from the image's template; a first command run; the Python REPL up
when the image has ``python3``) so that ``sandbox.start`` with ``config.ephemeral`` gets one
in milliseconds (:class:`~engine.sandbox.pool.WarmPool` does the keeping and the handing out).

The images are resolved in the background after the server starts listening (a first pull
or build can take a minute); an image that cannot be had is logged as an error and its pool
is skipped — the server runs without it, and ephemeral starts of that image boot as usual.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from dataclasses import dataclass
from pathlib import Path

from engine.errors import MsbError
from engine.images.resolve import resolve_root
from engine.project.sandboxfile import entry_from_dict
from engine.project.specs import spec_overrides
from engine.repl.pool import ReplPool
from engine.sandbox.engine import Engine
from engine.sandbox.pool import PoolShape, PoolStatus, WarmPool
from engine.sandbox.sandbox import Sandbox
from engine.sandbox.spec import SandboxSpec
from engine.server.settings import PoolSetting

log = logging.getLogger(__name__)

PROBE_TIMEOUT_S = 10.0
REPL_WARM_TIMEOUT_S = 60.0
SHAPE_NAME = "pool"
"""The name in a shape's spec; each member gets its own, each taker the one it asked for."""


@dataclass
class Warmed:
    """What a member's warm-up leaves: its REPLs and the environment they started in."""

    repls: ReplPool
    env: dict[str, str]
    workdir: str
    user: tuple[int | None, int | None]

    def fits(self, spec: SandboxSpec) -> bool:
        """Whether an interpreter started for the pool is right for ``spec`` (same env, working
        directory and user; otherwise the taker gets fresh REPLs)."""
        return (self.env, self.workdir, self.user) == (spec.env, spec.workdir, (spec.uid, spec.gid))


async def warm(sandbox: Sandbox) -> Warmed:
    """Start the member's Python REPL when its image has ``python3`` (the first
    ``sandbox.repl.run`` then finds the interpreter up). A REPL that fails to start is logged;
    the member is still a good sandbox."""
    spec = sandbox.spec
    warmed = Warmed(ReplPool(sandbox), dict(spec.env), spec.workdir, (spec.uid, spec.gid))
    try:
        probe = await sandbox.exec(["/bin/sh", "-c", "command -v python3"], timeout=PROBE_TIMEOUT_S)
    except MsbError as exc:  # e.g. an image without /bin/sh: a member all the same
        log.info("pool member %s: no Python REPL warmed (%s)", sandbox.name, exc.message)
        return warmed
    if probe.exit_code != 0:
        return warmed
    try:
        result = await warmed.repls.run("python", "None", REPL_WARM_TIMEOUT_S)
    except MsbError as exc:
        log.warning("pool member %s: its Python REPL did not start: %s", sandbox.name, exc)
        return warmed
    if result.status != "success":
        log.warning("pool member %s: its Python REPL answered %s", sandbox.name, result.output[-1:])
    return warmed


class ServerPools:
    """The warm pools of one server, on its engine."""

    def __init__(self, engine: Engine, settings: list[PoolSetting], *, max_mib: float | None = None,
                 base_dir: Path | None = None) -> None:  # fmt: skip
        """Args:
        engine: the server's engine (members run on its backend).
        settings: the pools (image and size); none = no pool at all.
        max_mib: bound of all members' memory (default: WarmPool's, a quarter of what the
            host has available).
        base_dir: what relative directory images are relative to (default: the working
            directory).
        """
        self.settings = [s for s in settings if s.size > 0]
        self.pool = WarmPool(engine, max_mib=max_mib) if self.settings else None
        self.base_dir = base_dir or Path.cwd()
        self.skipped: dict[str, str] = {}
        """Images whose pool was skipped, with why."""
        self._setup: asyncio.Task[None] | None = None

    def start(self) -> None:
        """Resolve the images and start filling the pools, in the background (needs a loop)."""
        if self.pool is not None and self._setup is None:
            self._setup = asyncio.create_task(self._add_all(), name="pool-setup")

    async def wait_configured(self) -> None:
        """Wait until every image was resolved (its pool added) or skipped."""
        if self._setup is not None:
            await asyncio.shield(self._setup)

    async def _add_all(self) -> None:
        assert self.pool is not None
        for setting in self.settings:
            try:
                root = await resolve_root(setting.image, base_dir=self.base_dir)
                # as SandboxManager.start makes it for {"image": IMAGE, "ephemeral": true}, so those match
                overrides = spec_overrides(entry_from_dict({"image": setting.image}), self.base_dir)
                spec = root.spec(SHAPE_NAME, persist_dir=None, **overrides)
                self.pool.add(PoolShape(label=setting.image, spec=spec, size=setting.size), warm)
            except Exception as exc:  # one bad image must not take the others (or the server) down
                why = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
                self.skipped[setting.image] = why
                log.error("pool %s: skipped, its image cannot be had: %s (ephemeral sandboxes of it boot as usual; "
                          "fix --pool/MSB_POOL and restart the server)", setting.image, why)  # fmt: skip
                continue
            self.pool.start()
            log.info("pool %s: keeping %d warm", setting.image, setting.size)

    async def take(self, spec: SandboxSpec) -> tuple[Sandbox, ReplPool] | None:
        """A warm member as ``spec`` with its REPLs, or None (no pool of that shape, or none
        ready: the caller starts one)."""
        if self.pool is None:
            return None
        got = await self.pool.take(spec)
        if got is None:
            return None
        sandbox, extra = got
        if isinstance(extra, Warmed) and extra.fits(spec):
            await self._rename_repls(sandbox, extra.repls)
            return sandbox, extra.repls
        if isinstance(extra, Warmed):
            with contextlib.suppress(MsbError):
                await extra.repls.close()  # started with the pool's environment, not this sandbox's
        return sandbox, ReplPool(sandbox)

    @staticmethod
    async def _rename_repls(sandbox: Sandbox, repls: ReplPool) -> None:
        """The interpreter started with the member's ``HOSTNAME``: give it the taker's."""
        if "python" not in repls.languages():
            return
        code = f"__import__('os').environ['HOSTNAME'] = {sandbox.name!r}"
        with contextlib.suppress(MsbError):
            await repls.run("python", code, REPL_WARM_TIMEOUT_S)

    def status(self) -> list[PoolStatus]:
        return self.pool.status() if self.pool is not None else []

    async def close(self) -> None:
        """Stop filling and kill the idle members."""
        if self._setup is not None:
            self._setup.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self._setup
        if self.pool is not None:
            await self.pool.close()
