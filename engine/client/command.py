"""``sandbox.command`` — run a program in the sandbox (``sandbox.command.run``)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from engine.client.execution import CommandExecution
from engine.client.models import CommandResult
from engine.client.rpc import http_timeout

if TYPE_CHECKING:
    from engine.client.sandbox import BaseSandbox

__all__ = ["Command"]


class Command:
    """Runs commands in one sandbox. Get it as ``sandbox.command``."""

    def __init__(self, sandbox: BaseSandbox) -> None:
        self._sandbox = sandbox

    async def run(
        self, command: str, args: Sequence[str] | None = None, timeout: float | None = None
    ) -> CommandExecution:
        """Run ``command`` with ``args`` (no shell: use ``"sh", ["-c", "…"]`` for one).

        Args:
            command: the program, e.g. ``"ls"``.
            args: its arguments.
            timeout: seconds after which the server kills the command's process group; the
                HTTP request waits that long plus a margin. ``None``: the server's default.

        Returns:
            The exit code and output.

        Raises:
            SandboxNotStartedError: the sandbox was not started.
            SandboxError: the server refused or failed the call.
        """
        params: dict[str, Any] = {"command": command, "args": list(args or [])}
        if timeout is not None:
            params["timeout"] = timeout
        raw = await self._sandbox._call("sandbox.command.run", params, timeout=http_timeout(timeout))
        return CommandExecution(self._sandbox._parse(CommandResult, raw, "sandbox.command.run"))
