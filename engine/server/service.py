"""The one interface both front doors (JSON-RPC and MCP) call: :class:`SandboxService`.

:class:`engine.server.manager.SandboxManager` implements it on real VMs;
:class:`engine.server.fake_service.FakeService` is the in-memory fake for front-end tests.
Every method raises :class:`~engine.errors.MsbError` subclasses with user-facing messages
(``NotFoundError`` → "Invalid params: Sandbox 'x' not found", JSON-RPC -32602).
"""

from __future__ import annotations

from typing import Protocol

from pydantic import BaseModel, Field

from engine.repl.models import CommandResult, ReplResult
from engine.sandbox.instant import StartKind
from engine.sandbox.pool import PoolStatus


class SandboxConfig(BaseModel):
    """``sandbox.start``'s ``config`` (CONTRACTS.md)."""

    image: str | None = None
    memory: int | None = Field(default=None, ge=64, le=1 << 20)
    """MiB."""
    cpus: int | None = Field(default=None, ge=1, le=64)
    volumes: list[str] = Field(default_factory=list)
    ports: list[str] = Field(default_factory=list)
    envs: list[str] = Field(default_factory=list)
    workdir: str | None = None
    shell: str | None = None
    scripts: dict[str, str] = Field(default_factory=dict)
    exec: str | None = None
    ephemeral: bool | None = None
    """Our addition: no persistent layer (its files are gone when it stops) and no Sandboxfile
    entry written; a warm pool of its image can serve it (docs/server.md). Default: persistent."""


class SandboxMetrics(BaseModel):
    namespace: str
    name: str
    running: bool
    cpu_usage: float | None
    """Percent of one CPU over the last interval."""
    memory_usage: float | None
    """MiB."""
    disk_usage: int | None
    """Bytes of the writable layer."""
    backend: str | None = None
    """Our addition: what isolates it (``qemu``, ``gvisor``, ``krun``); None when stopped."""
    accel: str | None = None
    """Our addition: ``kvm``, ``tcg`` or ``none`` (gVisor); None when stopped."""
    started_by: StartKind | None = None
    """Our addition: how it started — ``pool`` (a warm pool member), ``restore`` (a memory
    snapshot) or ``boot``; None when stopped."""
    start_ms: float | None = None
    """Our addition: milliseconds from the start request to ready; None when stopped."""
    crash_reason: str | None = None
    """Our addition: why its VM died under it (``the VM was killed by signal 9 (SIGKILL) …``),
    until it is started or stopped again; None otherwise."""


class SandboxInfo(BaseModel):
    namespace: str
    name: str
    running: bool
    image: str | None
    status: str
    backend: str | None = None
    """What isolates it while running (``qemu``, ``gvisor``, ``krun``)."""
    accel: str | None = None
    """``kvm``, ``tcg`` or ``none`` (gVisor) while running."""
    started_by: StartKind | None = None
    """``pool``, ``restore`` or ``boot`` while running."""
    start_ms: float | None = None
    """Milliseconds from the start request to ready, while running."""
    crash_reason: str | None = None
    """Why its VM died under it (``status`` is then ``crashed``), until it is started or stopped again."""


class ServerInfo(BaseModel):
    """``server.info`` (our addition): what isolates this server's sandboxes."""

    backend: str
    """``qemu``, ``gvisor``, ``krun`` (or ``fake`` in tests); one per server."""
    accel: str
    """``kvm``, ``tcg`` or ``none`` (gVisor)."""
    label: str
    """``gVisor``, ``QEMU/TCG``, ``QEMU/KVM``, ``libkrun/KVM``."""
    isolation: str
    """What protects the host, in plain words."""
    pools: list[PoolStatus] = Field(default_factory=list)
    """The warm pools (``--pool``/``MSB_POOL``) and how full they are; empty without any."""


class SandboxService(Protocol):
    async def start(self, namespace: str, name: str, config: SandboxConfig | None) -> str:
        """Start (or keep) a sandbox; returns ``"Sandbox <name> started successfully"``."""
        ...

    async def stop(self, namespace: str, name: str) -> str:
        """Returns ``"Sandbox <name> stopped successfully"``."""
        ...

    async def run_code(self, namespace: str, name: str, language: str, code: str,
                       timeout: float | None) -> ReplResult: ...  # fmt: skip

    async def run_command(self, namespace: str, name: str, command: str, args: list[str],
                          timeout: float | None) -> CommandResult: ...  # fmt: skip

    async def metrics(self, namespace: str, name: str | None) -> list[SandboxMetrics]:
        """``namespace == "*"`` means every namespace."""
        ...

    async def list(self, namespace: str) -> list[SandboxInfo]: ...

    async def read_file(self, namespace: str, name: str, path: str) -> bytes: ...

    async def write_file(self, namespace: str, name: str, path: str, data: bytes) -> None: ...

    async def info(self) -> ServerInfo:
        """The backend this server runs its sandboxes on."""
        ...
