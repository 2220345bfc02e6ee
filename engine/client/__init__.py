"""The msb Python SDK: a thin async JSON-RPC client for an msb server, shaped like
microsandbox's Python SDK 0.1.x.

Example::

    from engine.client import PythonSandbox

    async with PythonSandbox.create(name="demo") as sb:
        await sb.run("x = 41")
        exe = await sb.run("print(x + 1)")
        print(await exe.output())                       # 42
        cmd = await sb.command.run("ls", ["-la", "/"])
        print(cmd.exit_code, await cmd.output())
        print(await sb.metrics.memory())                # MiB

It imports nothing from the server, sandbox or VM layers: only ``httpx``, ``pydantic`` and
``engine.errors`` (for the ``MsbError`` root).
"""

from engine.client.command import Command
from engine.client.errors import (
    SandboxAuthError,
    SandboxConnectionError,
    SandboxError,
    SandboxNotStartedError,
    SandboxTimeoutError,
)
from engine.client.execution import CommandExecution, Execution
from engine.client.metrics import Metrics
from engine.client.models import CommandResult, OutputLine, ReplResult, SandboxMetrics
from engine.client.sandbox import BaseSandbox, NodeSandbox, PythonSandbox

__all__ = [
    "BaseSandbox",
    "Command",
    "CommandExecution",
    "CommandResult",
    "Execution",
    "Metrics",
    "NodeSandbox",
    "OutputLine",
    "PythonSandbox",
    "ReplResult",
    "SandboxAuthError",
    "SandboxConnectionError",
    "SandboxError",
    "SandboxMetrics",
    "SandboxNotStartedError",
    "SandboxTimeoutError",
]
