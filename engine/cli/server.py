"""``msb server start|stop|status|keygen``."""

from __future__ import annotations

import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import click
import httpx

from engine.cli.common import backend_option, check_backend, echo_error, fail
from engine.cli.host_ca import host_ca_option, host_ca_path
from engine.errors import ConfigError, MsbError
from engine.server.settings import LOG_LEVELS, Limits, ServerSettings, parse_pools

F = Callable[..., None]


@click.group()
def server() -> None:
    """Run msb as a server: JSON-RPC at /api/v1/rpc, MCP at /mcp."""


def storage_option(f: F) -> F:
    """``--storage-path`` (env ``MSB_STORAGE_PATH``): the state dir of the server meant."""
    return click.option("--storage-path", "storage", type=click.Path(file_okay=False, path_type=Path), default=None,
                        help="The server's state directory: secret, sandboxes, pid file, log "
                             "(default ~/.msb; env MSB_STORAGE_PATH).")(f)  # fmt: skip


def tenant_options(f: F) -> F:
    """What API clients may ask of this host (docs/security.md); each flag beats its MSB_* variable."""
    opts = [
        click.option("--allow-image-dir", "allow_image_dirs", multiple=True, type=click.Path(file_okay=False),
                     help="A root filesystem directory API clients may boot as config.image; repeatable "
                          "(env MSB_ALLOWED_IMAGE_DIRS). Other directories are refused."),
        click.option("--allow-public-ports", is_flag=True, default=None,
                     help="Let API clients publish ports off loopback and below 1024 (env MSB_ALLOW_PUBLIC_PORTS=1)."),
        click.option("--max-sandboxes", type=click.IntRange(min=1), default=None,
                     help="Running sandboxes on this server (default 16; env MSB_MAX_SANDBOXES)."),
        click.option("--max-sandboxes-per-namespace", type=click.IntRange(min=1), default=None,
                     help="Running sandboxes per namespace (default: --max-sandboxes)."),
        click.option("--max-memory-mib", type=click.IntRange(min=64), default=None,
                     help="Largest memory of one sandbox in MiB (default 4096; env MSB_MAX_MEMORY_MIB)."),
        click.option("--max-cpus", type=click.IntRange(min=1), default=None,
                     help="Most CPUs of one sandbox (default 4; env MSB_MAX_CPUS)."),
        click.option("--allow-registry", "allow_registries", multiple=True, metavar="HOST[:PORT]",
                     help="A registry API clients may pull from although it is on a loopback/private address; "
                          "repeatable (env MSB_ALLOWED_REGISTRIES). Other such registries are refused."),
        click.option("--tenant-registry-credentials", is_flag=True, default=None,
                     help="Let pulls API clients ask for use this host's registry logins "
                          "(env MSB_TENANT_REGISTRY_CREDENTIALS=1). Default: they pull anonymously."),
    ]  # fmt: skip
    for opt in reversed(opts):
        f = opt(f)
    return f


def apply_tenant_options(settings: ServerSettings, tenant: dict[str, Any]) -> None:
    """Put the :func:`tenant_options` given on the command line into ``settings``."""
    if tenant.get("allow_image_dirs"):
        settings.allowed_image_dirs = [Path(d) for d in tenant["allow_image_dirs"]]
    if tenant.get("allow_public_ports"):
        settings.allow_public_ports = True
    if tenant.get("allow_registries"):
        settings.allowed_registries = list(tenant["allow_registries"])
        settings.pull_policy()  # a malformed HOST[:PORT] fails here, before the server starts
    if tenant.get("tenant_registry_credentials"):
        settings.tenant_registry_credentials = True
    limits = {k: v for k, v in tenant.items() if k in Limits.model_fields and v is not None}
    if limits:
        settings.limits = settings.limits.model_copy(update=limits)


@server.command("start")
@click.option("--host", default=None, help="Address to listen on (default 127.0.0.1; env MSB_HOST).")
@click.option("--port", type=int, default=None, help="Port (default 5555; env MSB_PORT).")
@click.option("--dev", is_flag=True, default=None,
              help="No authentication (local development only; refused off loopback).")
@click.option("--key", default=None, envvar="MSB_SERVER_KEY", help="Server secret used to sign API keys.")
@click.option("--api-key", default=None, metavar="KEY",
              help="A static key (16+ characters) clients may send as `Authorization: Bearer KEY`, for all "
                   "namespaces, beside the keys of `msb server keygen` (env MSB_API_KEY unless it holds an "
                   "msb_ key; docs/server.md).")  # fmt: skip
@storage_option
@click.option("--log-level", type=click.Choice(LOG_LEVELS, case_sensitive=False), default=None,
              help="Server log level (default info; env MSB_LOG_LEVEL).")
@click.option("--detach", is_flag=True, help="Run in the background; logs go to <state>/server.log.")
@backend_option()
@click.option("--pool", "pools", multiple=True, metavar="IMAGE[=N]",
              help="Keep N (default 1) ephemeral sandboxes of IMAGE warm for `config.ephemeral` starts; "
                   "repeatable, replaces MSB_POOL.")  # fmt: skip
@click.option("--pool-max-mib", type=click.FloatRange(min=1), default=None,
              help="Memory bound of all pool members in MiB (default: a quarter of the host's available; "
                   "env MSB_POOL_MAX_MIB).")  # fmt: skip
@click.option("--allowed-host", "allowed_hosts", multiple=True, metavar="NAME[:PORT]",
              help="Host name clients may use besides 127.0.0.1/localhost (DNS-rebinding protection); repeatable, "
                   "'*' allows any; replaces MSB_ALLOWED_HOSTS.")  # fmt: skip
@click.option("--allowed-origin", "allowed_origins", multiple=True, metavar="SCHEME://HOST[:PORT]",
              help="Web origin allowed to call from a browser; repeatable, '*' allows any; replaces "
                   "MSB_ALLOWED_ORIGINS.")  # fmt: skip
@host_ca_option()
@tenant_options
def start(host: str | None, port: int | None, dev: bool | None, key: str | None, api_key: str | None,
          storage: Path | None, log_level: str | None, detach: bool, backend: str | None, pools: tuple[str, ...],
          pool_max_mib: float | None, allowed_hosts: tuple[str, ...], allowed_origins: tuple[str, ...],
          host_ca: str | None = None, **tenant: Any) -> None:  # fmt: skip
    """Start the server (foreground unless --detach). It runs all its sandboxes on one
    backend, chosen here and logged with what isolates them."""
    from engine.server.main import read_pid, serve

    try:
        settings = ServerSettings.from_env(host=host, port=port, dev=dev or None, key=key, api_key=api_key,
                                           storage=storage, log_level=log_level, backend=backend,
                                           pools=parse_pools(pools) if pools else None,
                                           pool_max_mib=pool_max_mib, allowed_hosts=list(allowed_hosts) or None,
                                           allowed_origins=list(allowed_origins) or None,
                                           host_ca=host_ca_path(host_ca))  # fmt: skip
        apply_tenant_options(settings, tenant)
        _check_static_key(settings)
    except ConfigError as exc:
        sys.exit(fail(exc))
    running = read_pid(settings)
    if running is not None:
        echo_error(MsbError(f"a server already runs (pid {running[0]}, port {running[2]})",
                            hint="`msb server stop` first"))  # fmt: skip
        sys.exit(1)
    try:
        check_backend(backend)
        if not detach:
            serve(settings)
            return
        _check_backend_works(backend)  # the child's log is not where people look
    except MsbError as exc:
        sys.exit(fail(exc))
    _start_detached(settings)


def _settings(**flags: object) -> ServerSettings:
    """The settings from ``flags`` and the environment (a malformed ``MSB_POOL`` … is a usage error)."""
    try:
        return ServerSettings.from_env(**flags)
    except ConfigError as exc:
        sys.exit(fail(exc))


def _check_static_key(settings: ServerSettings) -> None:
    """Refuse a bad ``--api-key`` here, before a detached start hides the reason in its log.

    Raises:
        ConfigError: as :func:`engine.server.auth.check_static_key`.
    """
    from engine.server.auth import check_static_key
    from engine.server.main import secret_for

    if settings.api_key:
        check_static_key(settings.api_key, None if settings.dev else secret_for(settings), dev=settings.dev)


def _check_backend_works(backend: str | None) -> None:
    """Prepare the backend as the server will (raises its error: the probe's reason, a missing
    kernel or runsc …), so that a detached start fails here and not only in its log."""
    import asyncio

    from engine.sandbox.engine import Engine

    asyncio.run(Engine(backend=backend).prepare())


def _start_detached(settings: ServerSettings) -> None:
    log_path = settings.storage / "server.log"
    settings.storage.mkdir(parents=True, exist_ok=True, mode=0o700)
    with open(log_path, "ab") as log:
        # The settings (secrets included) go through a pipe: a command line is readable by every local user.
        proc = subprocess.Popen([sys.executable, "-m", "engine.server.main"], stdout=log, stderr=log,
                                stdin=subprocess.PIPE, start_new_session=True)  # fmt: skip
        assert proc.stdin is not None
        proc.stdin.write(settings.model_dump_json().encode())
        proc.stdin.close()
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline and proc.poll() is None:
        try:
            if httpx.get(f"{settings.url}/api/v1/health", timeout=1).status_code == 200:
                click.echo(f"msb server running at {settings.url} (logs: {log_path})")
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.2)
    what = "did not come up in 30 s" if proc.poll() is None else f"exited at start (status {proc.returncode})"
    click.echo(f"msb: error: the server {what}; see {log_path}", err=True)
    sys.exit(1)


@server.command("stop")
@storage_option
def stop(storage: Path | None) -> None:
    """Stop the background server (its sandboxes are stopped cleanly)."""
    from engine.server.main import stop_server

    if stop_server(_settings(storage=storage)):
        click.echo("msb server stopped")
    else:
        click.echo("no msb server is running", err=True)
        sys.exit(1)


@server.command("status")
@storage_option
def status(storage: Path | None) -> None:
    """Is a server running, and is it healthy?"""
    from engine.server.main import read_pid

    settings = _settings(storage=storage)
    found = read_pid(settings)
    if found is None:
        click.echo("not running")
        sys.exit(1)
    pid, host, port = found
    url = f"http://{host}:{port}/api/v1/health"
    try:
        ok = httpx.get(url, timeout=2).status_code == 200
    except httpx.HTTPError:
        ok = False
    click.echo(f"running (pid {pid}) at http://{host}:{port} — {'healthy' if ok else 'NOT answering'}")
    sys.exit(0 if ok else 1)


@server.command("keygen")
@click.option("--expire", default="24h", show_default=True, help="Lifetime: 30m, 24h, 7d, 2w …")
@click.option("--namespace", default="*", show_default=True, help="Namespace the key may use (* = all).")
@click.option("--key", default=None, envvar="MSB_SERVER_KEY",
              help="The secret the server was started with (its --key / MSB_SERVER_KEY); default <state>/server.key.")
@storage_option
def keygen(expire: str, namespace: str, key: str | None, storage: Path | None) -> None:
    """Print a new API key (msb_…) signed with the secret the server uses: the same --key and
    --storage-path as `msb server start`. Refuses, with the fix, a key the running server would reject."""
    from engine.cli.keygen import signed_key

    settings = _settings(key=key, storage=storage)
    try:
        click.echo(signed_key(settings, expire=expire, namespace=namespace))
    except MsbError as exc:
        sys.exit(fail(exc))
