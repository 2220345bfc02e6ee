"""Per sandbox: one :class:`ReplSession` per language, started lazily."""

from __future__ import annotations

from engine.errors import ConfigError, SandboxStateError
from engine.repl.host import ReplHost
from engine.repl.models import LANGUAGE_ALIASES, Language, ReplResult
from engine.repl.session import ReplSession


class ReplPool:
    """The REPLs of one sandbox (``sandbox.repl.run`` in CONTRACTS.md)."""

    def __init__(self, sandbox: ReplHost) -> None:
        """Bind the pool to a sandbox; no interpreter starts until :meth:`run`.

        Args:
            sandbox: a :class:`~engine.sandbox.sandbox.Sandbox` (or any :class:`ReplHost`).
        """
        self._host = sandbox
        self._sessions: dict[Language, ReplSession] = {}
        self._closed = False

    async def run(self, language: str, code: str, timeout: float | None = None) -> ReplResult:
        """Run ``code`` in this sandbox's interpreter for ``language``.

        Args:
            language: ``python``, ``node``, ``nodejs`` or ``javascript`` (echoed back as given).
            code: the source to run; state persists between calls of the same language.
            timeout: seconds (None = no limit); on expiry the code is interrupted.

        Raises:
            ConfigError: an unknown language or bad timeout; the image lacks the interpreter.
            ExecError: the interpreter could not start.
            SandboxStateError: the pool is closed.
            VmCrashedError: the sandbox died.
        """
        canonical = LANGUAGE_ALIASES.get(language.strip().lower())
        if canonical is None:
            raise ConfigError(f"unknown REPL language {language!r}",
                              hint=f"use one of: {', '.join(sorted(LANGUAGE_ALIASES))}")  # fmt: skip
        if self._closed:
            raise SandboxStateError("the REPLs of this sandbox are closed", hint="the sandbox is stopping")
        session = self._sessions.get(canonical)
        if session is None:
            session = self._sessions[canonical] = ReplSession(self._host, canonical)
        status, output = await session.run(code, timeout)
        return ReplResult(status="success" if status == "success" else "error", language=language, output=output)

    def languages(self) -> list[str]:
        """The languages whose interpreter this sandbox has started."""
        return sorted(self._sessions)

    async def interrupt(self, language: str) -> bool:
        """Interrupt the running call of ``language``'s interpreter; ``False`` if none runs."""
        canonical = LANGUAGE_ALIASES.get(language.strip().lower())
        session = self._sessions.get(canonical) if canonical else None
        return await session.interrupt() if session is not None else False

    async def close(self) -> None:
        """Stop every interpreter of this sandbox."""
        self._closed = True
        sessions, self._sessions = list(self._sessions.values()), {}
        for session in sessions:
            await session.close()
