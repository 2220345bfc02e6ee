"""The seam between a REPL session and where its interpreter runs.

A session needs only two things from its host: start a process with piped stdin/stdout/stderr,
and write a file. :class:`~engine.sandbox.sandbox.Sandbox` is the real host (checked by mypy
below); :class:`~engine.repl.local_host.LocalHost` runs drivers as host subprocesses for tests.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Protocol

if TYPE_CHECKING:
    from engine.sandbox.sandbox import Sandbox


class ReplChunk(Protocol):
    """A piece of process output."""

    @property
    def stream(self) -> str:
        """``"stdout"`` or ``"stderr"``."""
        ...

    @property
    def data(self) -> bytes: ...


class ReplProcess(Protocol):
    """A running process whose stdin we write and whose output we read."""

    async def write(self, data: bytes) -> None:
        """Send bytes to stdin."""
        ...

    async def close_stdin(self) -> None: ...

    async def read(self) -> ReplChunk | None:
        """The next output chunk, or None once the process has exited (``returncode`` set)."""
        ...

    async def signal(self, signo: int = ..., *, group: bool = ...) -> None:
        """Send ``signo`` to the process, or to its whole process group."""
        ...

    @property
    def returncode(self) -> int | None: ...


class ReplHost(Protocol):
    """Where interpreters run: a sandbox, or the host for tests."""

    async def spawn(self, argv: list[str], *, stdin: bool = ...) -> ReplProcess:
        """Start ``argv`` (looked up in PATH) in its own process group.

        Raises:
            ExecError: it could not start; ``errno == 2`` when the program does not exist.
        """
        ...

    async def write_file(self, path: str, data: bytes, *, mode: int = ...) -> None:
        """Write a file, creating parent directories."""
        ...


if TYPE_CHECKING:

    def _a_sandbox_is_a_repl_host(sandbox: Sandbox) -> ReplHost:
        return sandbox  # mypy proves Sandbox satisfies the protocol
