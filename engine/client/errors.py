"""Errors the SDK raises. Every one is a :class:`SandboxError`, itself an
:class:`~engine.errors.MsbError`, so ``except SandboxError`` catches all of them.

Tree::

    MsbError                          (engine.errors, the one root of msb)
    └── SandboxError                  .code = the server's JSON-RPC code, or the HTTP status
        ├── SandboxAuthError          HTTP 401/403: missing, wrong, expired or foreign-namespace key
        ├── SandboxConnectionError    code 0: the server could not be reached
        ├── SandboxTimeoutError       code 0: no answer in time (also a builtin ``TimeoutError``)
        └── SandboxNotStartedError    code 0: the sandbox object was used before ``start()``

``str(err)`` is the message plus, when there is one, a ``hint:`` line saying what to do.
"""

from __future__ import annotations

from typing import Any

from engine.errors import MsbError

__all__ = [
    "NO_CODE",
    "SandboxAuthError",
    "SandboxConnectionError",
    "SandboxError",
    "SandboxNotStartedError",
    "SandboxTimeoutError",
]

NO_CODE = 0
"""``.code`` of errors that happened before the server could answer (neither a JSON-RPC code
nor an HTTP status)."""


class SandboxError(MsbError):
    """A sandbox operation failed.

    Attributes:
        code: the JSON-RPC error code the server answered with (``-32602`` for an unknown
            sandbox, …), the HTTP status when the server answered without a JSON-RPC error
            (``401``, ``502``, …), or ``0`` when no answer arrived.
        data: the JSON-RPC error's ``data`` member, if any.
    """

    def __init__(self, message: str, *, code: int = NO_CODE, hint: str | None = None, data: Any = None) -> None:
        super().__init__(message, hint=hint)
        self.code = code
        self.data = data


class SandboxAuthError(SandboxError):
    """The server refused the API key (HTTP 401) or its namespace (HTTP 403)."""


class SandboxConnectionError(SandboxError):
    """The server could not be reached (refused, DNS, TLS, connection dropped)."""


class SandboxTimeoutError(SandboxError, TimeoutError):
    """The server did not answer in time. Also a ``TimeoutError``, as microsandbox's SDK raised."""


class SandboxNotStartedError(SandboxError):
    """The sandbox object was used before ``start()`` (or after ``stop()``)."""
