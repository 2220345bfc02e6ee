"""What ``PythonSandbox.create(...)`` returns: one object for both of the SDK's patterns.

microsandbox's SDK makes ``create()`` an async context manager only, so the long-lived pattern
its users also write (``sb = await PythonSandbox.create(...)`` … ``await sb.stop()``) fails with
"can't be used in 'await' expression". :class:`SandboxCreation` is awaitable *and* an async
context manager::

    async with PythonSandbox.create(name="job") as sb:   # started here, stopped on exit
        ...

    sb = await PythonSandbox.create(name="agent-env")    # started here; you stop it
    await sb.start()                                     # already started: nothing is sent
    ...
    await sb.stop()

Nothing is sent until the object is awaited or entered, so a ``create(...)`` never used leaves
no sandbox (and no "coroutine was never awaited" warning).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Generator
from types import TracebackType
from typing import TYPE_CHECKING, Any, Generic, TypeVar

if TYPE_CHECKING:
    from engine.client.sandbox import BaseSandbox

__all__ = ["SandboxCreation"]

S = TypeVar("S", bound="BaseSandbox")


class SandboxCreation(Generic[S]):
    """A sandbox about to be started: ``await`` it, or ``async with`` it."""

    def __init__(self, sandbox: S, start: Callable[[], Awaitable[None]]) -> None:
        """Args:
        sandbox: the (not yet started) sandbox object.
        start: starts it with the arguments given to ``create()``.
        """
        self._sandbox = sandbox
        self._start = start

    @property
    def sandbox(self) -> S:
        """The sandbox object (started once this was awaited or entered)."""
        return self._sandbox

    def __await__(self) -> Generator[Any, None, S]:
        """Start the sandbox and return it; stopping it is the caller's (``await sb.stop()``).

        Raises:
            SandboxError: the sandbox could not be started.
        """
        return self._started().__await__()

    async def _started(self) -> S:
        await self._start()
        return self._sandbox

    async def __aenter__(self) -> S:
        """Start the sandbox for the ``async with`` body.

        Raises:
            SandboxError: the sandbox could not be started.
        """
        return await self._started()

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        """Stop the sandbox. After a clean body a failure to stop is raised; when the body raised
        (or was cancelled) it is logged instead, so the body's exception is the one that propagates.

        Raises:
            SandboxError: the sandbox could not be stopped after a clean body.
        """
        await self._sandbox.__aexit__(exc_type, exc, tb)  # the sandbox's own `async with` exit: the same rules

    def __repr__(self) -> str:
        return f"SandboxCreation({self._sandbox!r})"
