"""Running the server: ``msb server start`` (and ``msb-tui --headless``) end up in :func:`serve`."""

from __future__ import annotations

import asyncio
import json
import logging
import os
import signal
import sys
import time
from pathlib import Path
from typing import Any

import uvicorn

from engine.errors import ConfigError, MsbError
from engine.sandbox.engine import Engine
from engine.server.app import build_app
from engine.server.auth import PREFIX, check_static_key, load_secret
from engine.server.manager import SandboxManager
from engine.server.reclaim import lock_state, reclaim, run_base
from engine.server.settings import ServerSettings
from engine.server.tenancy import TenantPolicy

log = logging.getLogger("msb.server")

DEV_WARNING = (
    "\n"
    "  ┌──────────────────────────────────────────────────────────────────────┐\n"
    "  │  DEV MODE: authentication is OFF. Anyone who can reach this port can │\n"
    "  │  run code in your sandboxes. Never expose it beyond 127.0.0.1.       │\n"
    "  └──────────────────────────────────────────────────────────────────────┘\n"
)


class JsonFormatter(logging.Formatter):
    """One JSON object per line; ``extra`` fields kept; no secrets are ever passed in."""

    def format(self, record: logging.LogRecord) -> str:
        doc: dict[str, Any] = {
            "ts": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created)),
            "level": record.levelname.lower(),
            "logger": record.name,
            "msg": record.getMessage(),
        }
        for key in ("namespace", "sandbox", "image", "method", "ephemeral", "started_by", "start_ms"):
            if hasattr(record, key):
                doc[key] = getattr(record, key)
        if record.exc_info:
            doc["exc"] = self.formatException(record.exc_info)
        return json.dumps(doc)


def configure_logging(level: str) -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())


def pid_file(settings: ServerSettings) -> Path:
    return settings.storage / "server.pid"


def secret_source(settings: ServerSettings) -> str:
    """Where :func:`secret_for` takes the signing secret from: ``key`` (``--key``/``MSB_SERVER_KEY``), ``file``
    (``<state>/server.key``) or ``none`` (dev mode). Recorded in the pid file so that ``msb server keygen`` can
    tell which secret the running server signs with, without the secret being written anywhere new."""
    if settings.key:
        return "key"
    return "none" if settings.dev else "file"


def secret_for(settings: ServerSettings) -> str | None:
    """The signing secret: ``--key`` / ``MSB_SERVER_KEY``, else ``<state>/server.key`` (made
    on the first non-dev start). Dev mode needs none."""
    if settings.key:
        if len(settings.key) < 16:
            raise ConfigError("the server key is shorter than 16 characters", hint="use a long random secret")
        return settings.key
    return load_secret(settings.storage, create=not settings.dev)


def tenant_policy(settings: ServerSettings) -> TenantPolicy:
    """What the operator allows API clients beyond the defaults (docs/security.md)."""
    return TenantPolicy(allowed_image_dirs=tuple(settings.allowed_image_dirs),
                        allow_public_ports=settings.allow_public_ports, pull=settings.pull_policy())  # fmt: skip


def serve(settings: ServerSettings) -> None:
    """Run the server in the foreground until SIGINT/SIGTERM; sandboxes are stopped on the way out.

    Warm pools (``settings.pools``) fill in the background once it listens; a pool whose image
    cannot be had is logged as an error and skipped (the server runs without it).

    Raises:
        VmError: the backend asked for (``settings.backend``, ``MSB_BACKEND``) does not work
            here, with the probe's reason; or no backend works.
        ConfigError: an unknown backend name, a bad server key, ``--dev`` on an address that is not
            loopback, or a malformed allowed host/origin.
    """
    settings.check_web_safety()  # before anything listens: --dev off loopback is refused, not warned
    configure_logging(settings.log_level)
    settings.storage.mkdir(parents=True, exist_ok=True, mode=0o700)
    secret = secret_for(settings)
    check_static_key(settings.api_key, secret, dev=settings.dev)
    _log_key_sources(settings)
    if settings.dev:
        sys.stderr.write(DEV_WARNING)
        log.warning("dev mode: authentication disabled")
    # Choose the backend before uvicorn runs: its failed startup is a traceback and exit 3, while
    # this is the probe's reason with a hint (the manager's engine then finds the verdicts cached).
    asyncio.run(Engine(backend=settings.backend).prepare())
    lock_state(settings.storage)  # held (fd kept open) until exit: what is in the run base is a dead server's
    base = run_base(settings.storage)
    reclaim(base)  # clean up, not adopt: docs/reliability.md
    engine = Engine(backend=settings.backend, run_base=base)
    manager = SandboxManager(settings.storage, settings.limits, engine=engine,
                             pools=settings.pools, pool_max_mib=settings.pool_max_mib,
                             policy=tenant_policy(settings), host_ca=settings.host_ca)  # fmt: skip
    failed: list[MsbError] = []

    async def startup() -> None:
        try:
            await manager.prepare()
        except MsbError as exc:  # uvicorn only logs a failed startup; the caller must see it
            failed.append(exc)
            raise

    app = build_app(settings, manager, secret=secret, on_startup=startup, on_shutdown=manager.shutdown)
    config = uvicorn.Config(app, host=settings.host, port=settings.port, log_level=settings.log_level,
                            access_log=False, lifespan="on",
                            timeout_keep_alive=max(1, round(settings.keep_alive_s)))  # fmt: skip
    server = uvicorn.Server(config)
    pid_file(settings).write_text(f"{os.getpid()}\n{settings.host}\n{settings.port}\n{secret_source(settings)}\n")
    try:
        log.info("listening on %s", settings.url)
        asyncio.run(server.serve())
    except SystemExit:  # uvicorn's "startup failed" (exit 3): say why instead
        if failed:
            raise failed[0] from None
        raise
    finally:
        pid_file(settings).unlink(missing_ok=True)
    if failed:
        raise failed[0]


def _log_key_sources(settings: ServerSettings) -> None:
    """Say which keys this server accepts (never the keys themselves)."""
    if settings.api_key and not settings.api_key.startswith(PREFIX):
        log.info("clients may also send the static API key given with --api-key / MSB_API_KEY (namespace *)")
    if os.environ.get("MSB_API_KEY", "").strip().startswith(PREFIX) and not settings.api_key:
        log.info("MSB_API_KEY holds a client's msb_ key: not taken as a static key (it works if this server signed it)")


def read_pid(settings: ServerSettings) -> tuple[int, str, int] | None:
    """(pid, host, port) of a running server of this storage dir, or None."""
    try:
        pid_s, host, port_s = pid_file(settings).read_text().split()[:3]
        pid = int(pid_s)
        os.kill(pid, 0)
        return pid, host, int(port_s)
    except (OSError, ValueError):
        return None


def running_secret_source(settings: ServerSettings) -> str | None:
    """The :func:`secret_source` of the server running on this storage dir; None if none runs (or it is an
    older server that did not record it)."""
    if read_pid(settings) is None:
        return None
    lines = pid_file(settings).read_text().split()
    return lines[3] if len(lines) > 3 else None


def stop_server(settings: ServerSettings, timeout: float = 30.0) -> bool:
    found = read_pid(settings)
    if found is None:
        return False
    pid = found[0]
    os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            os.kill(pid, 0)
        except OSError:
            return True
        time.sleep(0.1)
    os.kill(pid, signal.SIGKILL)
    return True


if __name__ == "__main__":  # used by `msb server start --detach`: settings on stdin (argv is public in /proc)
    try:
        serve(ServerSettings.model_validate_json(sys.stdin.buffer.read()))
    except MsbError as exc:
        log.error("the server cannot start: %s", exc)
        sys.exit(1)
