"""A :class:`~msb_tui.workbench.Workbench` against a remote msb server
(``msb-tui --server URL --api-key KEY``), over the server's JSON-RPC API.

The API (CONTRACTS.md) covers sandboxes, metrics and REPLs. It has no terminals, logs or
image management, and the Sandboxfile lives on the server: those parts of the workbench
say so with a hint instead of pretending.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any, Literal

from engine.client.errors import SandboxError
from engine.client.rpc import RpcClient, resolve_api_key, resolve_server_url
from engine.errors import MsbError
from engine.project.control import StreamingProcess
from engine.repl.models import ReplResult
from msb_tui.workbench import ImageRow, ProgressCallback, SandboxRow, backend_summary, start_of

METHOD_NOT_FOUND = -32601
CALL_TIMEOUT_S = 60.0
START_TIMEOUT_S = 300.0
REPL_TIMEOUT_S = 3600.0


class UnsupportedRemotely(MsbError):
    """The server's API has no such operation."""


class RemoteWorkbench:
    """See the module docstring. Sandboxes live in ``namespace`` (default ``default``)."""

    def __init__(self, server_url: str | None = None, *, api_key: str | None = None,
                 namespace: str = "default", client: RpcClient | None = None) -> None:  # fmt: skip
        self.url = resolve_server_url(server_url)
        self.namespace = namespace
        self.rpc = client or RpcClient(self.url, resolve_api_key(api_key))
        self._choice: str | None = None
        """The server's backend (``server.info``), once :meth:`backend` asked."""
        self._rows: list[SandboxRow] = []

    @property
    def sandboxfile(self) -> Path | None:
        return None

    @property
    def description(self) -> str:
        backend = backend_summary(self._choice, self._rows)
        return " · ".join(p for p in (f"server {self.url}", backend, f"namespace {self.namespace}") if p)

    async def backend(self) -> str | None:
        """The server's one backend (``server.info``); ``None`` from a server without that
        method (an older msb, or microsandbox), where the rows still say what runs where."""
        if self._choice is None:
            try:
                info = await self._call("server.info", {})
            except SandboxError as exc:
                if exc.code == METHOD_NOT_FOUND:
                    return None
                raise
            self._choice = str(info.get("label")) if isinstance(info, dict) and info.get("label") else None
        return self._choice

    def _unsupported(self, what: str) -> UnsupportedRemotely:
        return UnsupportedRemotely(f"{what} is not part of the server's API",
                                   hint="run msb-tui on the server host (without --server) for this")  # fmt: skip

    async def _call(self, method: str, params: dict[str, Any], timeout: float = CALL_TIMEOUT_S) -> Any:
        return await self.rpc.call(method, {"namespace": self.namespace, **params}, timeout=timeout)

    async def sandboxes(self) -> list[SandboxRow]:
        """The namespace's sandboxes from ``sandbox.metrics.get``, whose items carry what
        ``sandbox.list``'s do for the table (``started_by``/``start_ms`` too, from a server
        that has them: None otherwise)."""
        result = await self._call("sandbox.metrics.get", {})
        rows = []
        for item in result.get("sandboxes", []) if isinstance(result, dict) else []:
            running = bool(item.get("running"))
            started_by, start_ms = start_of(item) if running else (None, None)
            rows.append(SandboxRow(
                name=str(item.get("name")), status="running" if running else "stopped",
                backend=item.get("backend") if running else None, accel=item.get("accel") if running else None,
                cpu_percent=item.get("cpu_usage") if running else None,
                memory_mib=item.get("memory_usage") if running else None,
                disk_bytes=item.get("disk_usage"), started_by=started_by, start_ms=start_ms,
            ))  # fmt: skip
        self._rows = rows
        return rows

    async def start(self, name: str) -> None:
        await self._call("sandbox.start", {"sandbox": name}, timeout=START_TIMEOUT_S)

    async def stop(self, name: str) -> None:
        await self._call("sandbox.stop", {"sandbox": name})

    async def shell(self, name: str, rows: int, cols: int) -> StreamingProcess:
        raise self._unsupported("an interactive terminal")

    async def run_code(self, name: str, language: Literal["python", "node"], code: str,
                       timeout: float | None = None) -> ReplResult:  # fmt: skip
        limit = timeout or REPL_TIMEOUT_S
        params = {"sandbox": name, "language": language, "code": code, "timeout": limit}
        return ReplResult.model_validate(await self._call("sandbox.repl.run", params, timeout=limit + 30))

    async def interrupt(self, name: str, language: Literal["python", "node"]) -> None:
        raise self._unsupported("interrupting a cell (cells end at their timeout)")

    async def logs(self, name: str) -> AsyncIterator[bytes]:
        raise self._unsupported("a sandbox's output log")
        yield b""  # pragma: no cover - makes this an async generator

    async def images(self) -> list[ImageRow]:
        raise self._unsupported("listing the server's images")

    async def pull(self, reference: str, progress: ProgressCallback) -> ImageRow:
        raise self._unsupported("pulling images")

    async def remove_image(self, reference: str) -> None:
        raise self._unsupported("removing images")

    async def build_base_image(self, name: str, log: Callable[[str], None]) -> ImageRow:
        raise self._unsupported("building images")

    async def close(self) -> None:
        await self.rpc.aclose()
