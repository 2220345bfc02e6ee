"""``sandbox.metrics`` — resource use of the sandbox (``sandbox.metrics.get``)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from engine.client.models import MetricsResult, SandboxMetrics

if TYPE_CHECKING:
    from engine.client.sandbox import BaseSandbox

__all__ = ["Metrics"]

METRICS_TIMEOUT_S = 30.0


class Metrics:
    """Reads one sandbox's metrics. Get it as ``sandbox.metrics``; every method asks the
    server afresh."""

    def __init__(self, sandbox: BaseSandbox) -> None:
        self._sandbox = sandbox

    async def get(self) -> SandboxMetrics | None:
        """This sandbox's metrics entry.

        Returns:
            The entry, or ``None`` when the server does not list this sandbox.

        Raises:
            SandboxNotStartedError: the sandbox was not started.
            SandboxError: the server refused or failed the call.
        """
        raw = await self._sandbox._call("sandbox.metrics.get", {}, timeout=METRICS_TIMEOUT_S)
        result = self._sandbox._parse(MetricsResult, raw, "sandbox.metrics.get")
        for entry in result.sandboxes:
            # A server may list more than was asked for; only our own entry counts.
            if entry.name == self._sandbox.name and entry.namespace in (None, self._sandbox.namespace):
                return entry
        return None

    async def all(self) -> dict[str, Any]:
        """All metrics as a dict, as microsandbox's SDK returns them: ``name``, ``namespace``,
        ``running``, ``cpu_usage`` (%), ``memory_usage`` (MiB), ``disk_usage`` (bytes).

        Returns:
            The dict, or ``{}`` when the server does not list this sandbox.

        Raises:
            SandboxError: as :meth:`get`.
        """
        entry = await self.get()
        return entry.model_dump() if entry else {}

    async def cpu(self) -> float | None:
        """CPU use in percent over the server's last sampling interval.

        Returns:
            The percentage, or ``None`` when not available (stopped, not listed).

        Raises:
            SandboxError: as :meth:`get`.
        """
        entry = await self.get()
        return entry.cpu_usage if entry else None

    async def memory(self) -> float | None:
        """Memory in use, MiB.

        Returns:
            MiB, or ``None`` when not available.

        Raises:
            SandboxError: as :meth:`get`.
        """
        entry = await self.get()
        return entry.memory_usage if entry else None

    async def disk(self) -> int | None:
        """Bytes used by the sandbox's writable layer.

        Returns:
            Bytes, or ``None`` when not available.

        Raises:
            SandboxError: as :meth:`get`.
        """
        entry = await self.get()
        return entry.disk_usage if entry else None

    async def started_by(self) -> str | None:
        """How the server started the sandbox (msb's addition): ``"pool"``, ``"restore"`` or
        ``"boot"``.

        Returns:
            The kind, or ``None`` when not available (stopped, not listed, a server without it).

        Raises:
            SandboxError: as :meth:`get`.
        """
        entry = await self.get()
        return entry.started_by if entry else None

    async def start_ms(self) -> float | None:
        """Milliseconds the server took from the start request to a ready sandbox (msb's addition).

        Returns:
            Milliseconds, or ``None`` when not available.

        Raises:
            SandboxError: as :meth:`get`.
        """
        entry = await self.get()
        return entry.start_ms if entry else None

    async def is_running(self) -> bool:
        """Whether the server reports the sandbox as running.

        Returns:
            True when running; False when stopped or not listed.

        Raises:
            SandboxError: as :meth:`get`.
        """
        entry = await self.get()
        return bool(entry and entry.running)
