"""Wire models of what the SDK sends and reads (CONTRACTS.md ``/api/v1/rpc``).

The SDK keeps its own copies instead of importing ``engine.repl.models``: results are read
leniently (unknown fields ignored, our additions such as ``stdout``/``stderr`` optional) so the
same client works against msb and against a stock microsandbox server, and a server-side model
change cannot break the client's import. ``tests/unit/client/test_models.py`` checks that
everything the server's models produce parses here.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

Stream = Literal["stdout", "stderr"]


class _Lenient(BaseModel):
    model_config = ConfigDict(extra="ignore", frozen=True)


class OutputLine(_Lenient):
    """One line of output, in arrival order."""

    stream: Stream
    text: str = ""
    """The line without its newline."""


class ReplResult(_Lenient):
    """Result of ``sandbox.repl.run``."""

    status: str = "unknown"
    """``"success"`` or ``"error"`` (an exception, or the timeout interrupted the code)."""
    language: str = "unknown"
    """The language as the client named it."""
    output: list[OutputLine] = Field(default_factory=list)


class CommandResult(_Lenient):
    """Result of ``sandbox.command.run``."""

    command: str = ""
    args: list[str] = Field(default_factory=list)
    exit_code: int = -1
    """The process's exit status; ``-1`` when the server did not say."""
    success: bool = False
    output: list[OutputLine] = Field(default_factory=list)
    stdout: str | None = None
    """The whole stdout as one string (msb's addition; ``None`` from servers without it)."""
    stderr: str | None = None
    """The whole stderr as one string (msb's addition)."""


class SandboxMetrics(BaseModel):
    """One entry of ``sandbox.metrics.get``'s ``sandboxes``; numbers are ``None`` when stopped."""

    model_config = ConfigDict(extra="allow", frozen=True)

    namespace: str | None = None
    name: str
    running: bool = False
    cpu_usage: float | None = None
    """Percent CPU over the server's last sampling interval."""
    memory_usage: float | None = None
    """MiB."""
    disk_usage: int | None = None
    """Bytes of the sandbox's writable layer."""

    # msb's additions stay extras (``Metrics.all()`` keeps microsandbox's shape from servers
    # without them); these read them typed.
    @property
    def started_by(self) -> str | None:
        """How it started (msb): ``"pool"`` (a warm pool member), ``"restore"`` (a memory
        snapshot) or ``"boot"``; ``None`` when stopped or from servers without it."""
        value = (self.model_extra or {}).get("started_by")
        return value if isinstance(value, str) else None

    @property
    def start_ms(self) -> float | None:
        """Milliseconds from the start request to ready (msb); ``None`` when not reported."""
        value = (self.model_extra or {}).get("start_ms")
        return float(value) if isinstance(value, int | float) and not isinstance(value, bool) else None


class MetricsResult(_Lenient):
    """Result of ``sandbox.metrics.get``."""

    sandboxes: list[SandboxMetrics] = Field(default_factory=list)


class StartConfig(BaseModel):
    """``sandbox.start``'s ``config``."""

    model_config = ConfigDict(extra="forbid")

    image: str
    memory: int = Field(gt=0)
    """MiB."""
    cpus: int = Field(gt=0)
    ephemeral: bool | None = None
    """msb's addition: keep nothing after stop (a warm pool can serve it). Sent only when set."""

    def wire(self) -> dict[str, Any]:
        """What ``sandbox.start`` sends as ``config`` (unset additions left out, so stock
        microsandbox servers see their own shape)."""
        return self.model_dump(exclude_none=True)


class RpcErrorObject(_Lenient):
    """A JSON-RPC 2.0 ``error`` member."""

    code: int = 0
    message: str = ""
    data: Any = None


class RpcResponse(_Lenient):
    """A JSON-RPC 2.0 response envelope; exactly one of ``result`` and ``error`` is set."""

    jsonrpc: str = "2.0"
    id: str | int | None = None
    result: Any = None
    error: RpcErrorObject | None = None
