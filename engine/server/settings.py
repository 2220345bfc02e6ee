"""Server settings: flags, then ``MSB_*`` environment variables, then defaults (CONTRACTS.md)."""

from __future__ import annotations

import os
from collections.abc import Iterable
from pathlib import Path
from typing import TYPE_CHECKING

from pydantic import BaseModel, Field, ValidationError, field_validator

from engine import paths
from engine.errors import ConfigError

if TYPE_CHECKING:
    from engine.images.policy import PullPolicy

MAX_POOL_SIZE = 64
LOG_LEVELS = ("debug", "info", "warning", "error", "critical")
_TRUE, _FALSE = ("1", "true", "yes", "on"), ("", "0", "false", "no", "off")
SIGNED_KEY_PREFIX = "msb_"  # engine.server.auth.PREFIX (not imported: auth pulls in jwt)


class Limits(BaseModel):
    """Each limit answers with a clear JSON-RPC error when hit."""

    max_body_bytes: int = Field(default=10 << 20, ge=1024)
    """Largest request body accepted on /api/v1/rpc and /mcp."""
    max_sandboxes: int = Field(default=16, ge=1)
    """Running sandboxes per server."""
    max_execs_per_sandbox: int = Field(default=128, ge=1)
    """Commands running at once in one sandbox."""
    max_output_bytes: int = Field(default=16 << 20, ge=1024)
    """Output kept per command and stream, in bytes (more is drained and dropped with a note)."""
    max_output_lines: int = Field(default=10_000, ge=10)
    """Lines kept per command in ``output`` (``stdout``/``stderr`` keep their bytes)."""
    max_output_bytes_total: int = Field(default=256 << 20, ge=1 << 20)
    """Bytes of command output the server buffers at once, across all commands; a command that
    finds it spent gets its output cut with a note."""
    # --- tenant quotas (docs/security.md): each refuses with a JSON-RPC error, -32030 ---
    max_sandboxes_per_namespace: int | None = Field(default=None, ge=1)
    """Running sandboxes per namespace (one API key's namespace); default: ``max_sandboxes``."""
    max_memory_mib: int = Field(default=4096, ge=64)
    """Largest ``config.memory`` of one sandbox, MiB."""
    max_cpus: int = Field(default=4, ge=1)
    """Largest ``config.cpus`` of one sandbox."""
    max_namespace_memory_mib: int = Field(default=16384, ge=64)
    """Memory of all running sandboxes of one namespace together, MiB."""
    max_disk_mib: int = Field(default=4096, ge=64)
    """Persistent writable layer of one sandbox, MiB (QEMU: the layer's size; directory
    layers: checked at every start)."""
    max_volume_mib: int = Field(default=16384, ge=1)
    """A namespace's volume area, MiB (checked at every start that mounts a volume)."""
    max_execs_per_namespace: int = Field(default=256, ge=1)
    """Commands and REPL runs at once across one namespace's sandboxes."""
    max_file_bytes: int = Field(default=64 << 20, ge=1024)
    """Largest file read or written through the API (``sandbox_file_read``/``_write``), bytes."""


class PoolSetting(BaseModel):
    """One warm pool: ``size`` ephemeral sandboxes of ``image`` kept started (docs/server.md)."""

    image: str = Field(min_length=1)
    """As ``sandbox.start``'s ``config.image`` (a directory image should be an absolute path)."""
    size: int = Field(default=1, ge=0, le=MAX_POOL_SIZE)
    """Members kept ready."""


def parse_pools(items: Iterable[str]) -> list[PoolSetting]:
    """``IMAGE[=N]`` items (``--pool``, ``MSB_POOL`` split at commas) to pool settings; a later
    item for the same image replaces an earlier one.

    Raises:
        ConfigError: an empty item, an ``N`` that is not a whole number 0-64.
    """
    pools: dict[str, PoolSetting] = {}
    for raw in items:
        item = raw.strip()
        image, sep, count = item.rpartition("=")
        if not sep:
            image, count = item, "1"
        try:
            pool = PoolSetting(image=image.strip(), size=int(count))
        except (ValueError, ValidationError):
            raise ConfigError(f"pool {raw!r} is not IMAGE[=N] with N from 0 to {MAX_POOL_SIZE}",
                              hint="e.g. --pool microsandbox/python=2 or MSB_POOL=microsandbox/python=2,"
                                   "microsandbox/node") from None  # fmt: skip
        pools[pool.image] = pool
    return list(pools.values())


class ServerSettings(BaseModel):
    host: str = "127.0.0.1"
    port: int = Field(default=5555, ge=0, le=65535)
    dev: bool = False
    """No authentication at all (prints a loud warning); refused off loopback."""
    key: str | None = Field(default=None, repr=False)
    """Server secret override (default: ``<state>/server.key``)."""
    api_key: str | None = Field(default=None, repr=False)
    """Static API key clients may send as ``Bearer`` (namespace ``*``) beside the signed ``msb_`` keys
    (``--api-key``; ``MSB_API_KEY`` unless that holds an ``msb_`` key: docs/server.md)."""
    storage: Path = Field(default_factory=paths.state_dir)
    log_level: str = "info"
    """One of :data:`LOG_LEVELS` (any case on input)."""
    limits: Limits = Field(default_factory=Limits)
    keep_alive_s: float = Field(default=75.0, gt=0, le=3600)
    """How long an idle keep-alive connection stays open (``MSB_KEEP_ALIVE_S``). Longer than any
    client's own idle expiry (httpx: 5 s; proxies: 60 s), so the client always closes first: with
    uvicorn's 5 s, a client reusing a connection just as the server closed it saw
    ``ReadError`` under load (4 of 5,000 executions in the load bench)."""
    backend: str | None = None
    """What isolates this server's sandboxes — one backend per server: ``auto``, ``qemu``,
    ``gvisor``, ``krun`` (default ``MSB_BACKEND``, else auto)."""
    pools: list[PoolSetting] = Field(default_factory=list)
    """Warm pools of ephemeral sandboxes (``--pool``, ``MSB_POOL``)."""
    pool_max_mib: float | None = Field(default=None, gt=0)
    """Bound of all pool members' memory in MiB (default: a quarter of the host's available
    memory at start)."""
    allowed_image_dirs: list[Path] = Field(default_factory=list)
    """Host directories API clients may name as ``config.image`` (``--allow-image-dir``,
    ``MSB_ALLOWED_IMAGE_DIRS``); any other directory path is refused."""
    allow_public_ports: bool = False
    """Let API clients publish ports on non-loopback addresses and below 1024
    (``--allow-public-ports``, ``MSB_ALLOW_PUBLIC_PORTS=1``)."""
    allowed_hosts: list[str] = Field(default_factory=list)
    """``Host`` names accepted besides loopback and the bind address (``--allowed-host``,
    ``MSB_ALLOWED_HOSTS``; ``*`` = any): DNS-rebinding protection (engine/server/web_guard.py)."""
    allowed_origins: list[str] = Field(default_factory=list)
    """Web origins allowed to call besides ``http://127.0.0.1:<port>`` and friends
    (``--allowed-origin``, ``MSB_ALLOWED_ORIGINS``; ``*`` = any)."""
    # image pulls API clients ask for (engine/images/policy.py); warm pools are the operator's own
    tenant_registry_credentials: bool = False
    """Such pulls may send the operator's stored registry credentials (``--tenant-registry-credentials``,
    ``MSB_TENANT_REGISTRY_CREDENTIALS=1``); by default they go anonymous."""
    allowed_registries: list[str] = Field(default_factory=list)
    """Registry hosts (``host[:port]``) such pulls may reach although they resolve to loopback,
    private or link-local addresses (``--allow-registry``, ``MSB_ALLOWED_REGISTRIES``)."""
    host_ca: Path | None = None
    """The host CA bundle every sandbox of this server gets read-only, with SSL_CERT_FILE, PIP_CERT …
    naming it (``--host-ca[=PATH]``, ``MSB_HOST_CA``; engine/sandbox/host_ca.py). The operator's
    choice for all sandboxes: no API client names a host file."""

    @field_validator("log_level", mode="before")
    @classmethod
    def _known_level(cls, value: object) -> object:
        level = value.strip().lower() if isinstance(value, str) else value
        if level not in LOG_LEVELS:
            raise ValueError(f"log level {value!r} is not one of {', '.join(LOG_LEVELS)}")
        return level

    @classmethod
    def from_env(cls, **flags: object) -> ServerSettings:
        """Flags given (not None) win over ``MSB_HOST``/``MSB_PORT``/``MSB_API_KEY``…

        Raises:
            ConfigError: a malformed ``MSB_POOL``, ``MSB_POOL_MAX_MIB``, ``MSB_PORT``, ``MSB_DEV_MODE`` or log
                level; ``--dev`` off loopback; a malformed allowed host or origin.
        """
        env: dict[str, object] = {}
        if os.environ.get("MSB_HOST"):
            env["host"] = os.environ["MSB_HOST"]
        if os.environ.get("MSB_PORT"):
            env["port"] = _whole("MSB_PORT", os.environ["MSB_PORT"])
        if _flag_var("MSB_DEV_MODE"):
            env["dev"] = True
        env_key = os.environ.get("MSB_API_KEY", "").strip()
        if env_key and not env_key.startswith(SIGNED_KEY_PREFIX):  # an msb_ value is a client's key: not ours
            env["api_key"] = env_key
        if os.environ.get("MSB_SERVER_KEY"):
            env["key"] = os.environ["MSB_SERVER_KEY"]
        if os.environ.get("MSB_LOG_LEVEL"):
            env["log_level"] = os.environ["MSB_LOG_LEVEL"].lower()
        if os.environ.get("MSB_KEEP_ALIVE_S", "").strip():
            env["keep_alive_s"] = _positive("MSB_KEEP_ALIVE_S", os.environ["MSB_KEEP_ALIVE_S"])
        if os.environ.get("MSB_STORAGE_PATH"):
            env["storage"] = Path(os.environ["MSB_STORAGE_PATH"])
        limits = {}
        for field in Limits.model_fields:
            var = f"MSB_{field.upper()}"
            if os.environ.get(var):
                limits[field] = _whole(var, os.environ[var])
        if limits:
            env["limits"] = Limits(**limits)
        if os.environ.get("MSB_ALLOWED_IMAGE_DIRS", "").strip():
            env["allowed_image_dirs"] = [Path(d.strip()) for d in os.environ["MSB_ALLOWED_IMAGE_DIRS"].split(",")
                                         if d.strip()]  # fmt: skip
        if _flag_var("MSB_ALLOW_PUBLIC_PORTS"):  # "false" means false
            env["allow_public_ports"] = True
        if os.environ.get("MSB_POOL", "").strip():
            env["pools"] = parse_pools(i for i in os.environ["MSB_POOL"].split(",") if i.strip())
        if os.environ.get("MSB_POOL_MAX_MIB", "").strip():
            env["pool_max_mib"] = _positive("MSB_POOL_MAX_MIB", os.environ["MSB_POOL_MAX_MIB"])
        for field, var in (("allowed_hosts", "MSB_ALLOWED_HOSTS"), ("allowed_origins", "MSB_ALLOWED_ORIGINS")):
            if os.environ.get(var, "").strip():
                env[field] = [i.strip() for i in os.environ[var].split(",") if i.strip()]
        if _flag_var("MSB_TENANT_REGISTRY_CREDENTIALS"):  # "false" means false
            env["tenant_registry_credentials"] = True
        if os.environ.get("MSB_HOST_CA", "").strip():
            env["host_ca"] = Path(os.environ["MSB_HOST_CA"].strip())
        if os.environ.get("MSB_ALLOWED_REGISTRIES", "").strip():
            env["allowed_registries"] = [i.strip() for i in os.environ["MSB_ALLOWED_REGISTRIES"].split(",")
                                         if i.strip()]  # fmt: skip
        env.update({k: v for k, v in flags.items() if v is not None})
        try:
            settings = cls.model_validate(env)
        except ValidationError as exc:
            raise ConfigError(_first_problem(exc), hint="see `msb server start --help` and docs/server.md") from None
        settings.check_web_safety()
        settings.pull_policy()  # a malformed --allow-registry fails at start
        if settings.host_ca is not None:  # a missing or unsuitable bundle fails at start, not at a client's
            from engine.sandbox.host_ca import read_bundle

            read_bundle(settings.host_ca)
        return settings

    def pull_policy(self) -> PullPolicy:
        """What an image pull an API client asks for may reach and send (engine/images/policy.py).

        Raises:
            ConfigError: a malformed allowed registry.
        """
        from engine.images.policy import PullPolicy

        return PullPolicy.for_tenants(use_credentials=self.tenant_registry_credentials,
                                      allowed_private=self.allowed_registries)  # fmt: skip

    def check_web_safety(self) -> None:
        """Refuse ``--dev`` off loopback and malformed allowed hosts/origins (engine/server/web_guard.py).

        Raises:
            ConfigError: with the reason and a hint.
        """
        from engine.server.web_guard import WebPolicy, check_dev_bind

        check_dev_bind(self.dev, self.host)
        WebPolicy.for_server(self.host, self.port, self.allowed_hosts, self.allowed_origins)

    @property
    def url(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.port}"


def _flag_var(var: str) -> bool:
    """A yes/no variable: ``1``/``true``/``yes``/``on`` or ``0``/``false``/``no``/``off``/empty (any case).

    Raises:
        ConfigError: anything else.
    """
    text = os.environ.get(var, "").strip().lower()
    if text in _TRUE or text in _FALSE:
        return text in _TRUE
    raise ConfigError(f"{var}={os.environ[var]!r} is neither true nor false", hint=f"e.g. {var}=1 or {var}=0")


def _first_problem(exc: ValidationError) -> str:
    """The first error of ``exc`` in a line (field: reason), without pydantic's URL."""
    err = exc.errors()[0]
    where = ".".join(str(p) for p in err["loc"])
    return f"bad server setting {where}: {err['msg'].removeprefix('Value error, ')}"


def _whole(var: str, text: str) -> int:
    try:
        return int(text)
    except ValueError:
        raise ConfigError(f"{var}={text!r} is not a whole number", hint=f"e.g. {var}=8") from None


def _positive(var: str, text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = -1.0
    if not value > 0:
        raise ConfigError(f"{var}={text!r} is not a positive number of MiB", hint=f"e.g. {var}=4096")
    return value
