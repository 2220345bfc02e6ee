"""Server settings: flags, then ``MSB_*`` environment variables, then defaults (CONTRACTS.md)."""

from __future__ import annotations

import os
from pathlib import Path

from pydantic import BaseModel, Field

from engine import paths


class Limits(BaseModel):
    """Each limit answers with a clear JSON-RPC error when hit."""

    max_body_bytes: int = Field(default=10 << 20, ge=1024)
    """Largest request body accepted on /api/v1/rpc and /mcp."""
    max_sandboxes: int = Field(default=16, ge=1)
    """Running sandboxes per server."""
    max_execs_per_sandbox: int = Field(default=128, ge=1)
    """Commands running at once in one sandbox."""
    max_output_bytes: int = Field(default=16 << 20, ge=1024)
    """Output kept per command and stream."""


class ServerSettings(BaseModel):
    host: str = "127.0.0.1"
    port: int = Field(default=5555, ge=0, le=65535)
    dev: bool = False
    """No authentication at all (prints a loud warning)."""
    key: str | None = None
    """Server secret override (default: ``<state>/server.key``)."""
    storage: Path = Field(default_factory=paths.state_dir)
    log_level: str = "info"
    limits: Limits = Field(default_factory=Limits)
    backend: str | None = None
    """What isolates this server's sandboxes — one backend per server: ``auto``, ``qemu``,
    ``gvisor``, ``krun`` (default ``MSB_BACKEND``, else auto)."""

    @classmethod
    def from_env(cls, **flags: object) -> ServerSettings:
        """Flags given (not None) win over ``MSB_HOST``/``MSB_PORT``/``MSB_API_KEY``…"""
        env: dict[str, object] = {}
        if os.environ.get("MSB_HOST"):
            env["host"] = os.environ["MSB_HOST"]
        if os.environ.get("MSB_PORT"):
            env["port"] = int(os.environ["MSB_PORT"])
        if os.environ.get("MSB_SERVER_KEY"):
            env["key"] = os.environ["MSB_SERVER_KEY"]
        if os.environ.get("MSB_LOG_LEVEL"):
            env["log_level"] = os.environ["MSB_LOG_LEVEL"].lower()
        if os.environ.get("MSB_STORAGE_PATH"):
            env["storage"] = Path(os.environ["MSB_STORAGE_PATH"])
        limits = {}
        for field, var in (("max_body_bytes", "MSB_MAX_BODY_BYTES"), ("max_sandboxes", "MSB_MAX_SANDBOXES"),
                           ("max_execs_per_sandbox", "MSB_MAX_EXECS_PER_SANDBOX")):  # fmt: skip
            if os.environ.get(var):
                limits[field] = int(os.environ[var])
        if limits:
            env["limits"] = Limits(**limits)
        env.update({k: v for k, v in flags.items() if v is not None})
        return cls.model_validate(env)

    @property
    def url(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.port}"
