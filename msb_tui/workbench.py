"""The seam between the TUI and whatever runs the sandboxes.

Screens talk only to a :class:`Workbench`. Three implement it:

- :class:`msb_tui.local.LocalWorkbench` — the embedded engine: the project's Sandboxfile,
  supervised persistent sandboxes (engine/project), the local image store;
- :class:`msb_tui.remote.RemoteWorkbench` — an msb server (``--server URL --api-key KEY``);
- :class:`msb_tui.fake.FakeWorkbench` — in memory, deterministic, for tests and snapshots.

Every method may raise :class:`engine.errors.MsbError` (message + hint); screens show it as a
notification or an error panel, never a traceback. Methods are coroutines and are always
called from Textual workers, so a slow VM boot never blocks the UI.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable, Mapping
from pathlib import Path
from typing import Any, Literal, Protocol, get_args

from pydantic import BaseModel, Field

from engine.project.control import StreamingProcess
from engine.repl.models import ReplResult
from engine.vm.select import backend_label

SandboxStatus = Literal["running", "starting", "stopping", "stopped", "crashed"]
StartedBy = Literal["pool", "restore", "boot"]
"""How a sandbox started: taken from a warm pool, restored from a saved VM template, or a cold boot."""


class SandboxRow(BaseModel):
    """One sandbox as the dashboard shows it."""

    name: str
    image: str | None = None
    status: SandboxStatus = "stopped"
    backend: str | None = None
    """What isolates it while running: ``"qemu"``, ``"gvisor"``, ``"krun"``."""
    accel: str | None = None
    """``"kvm"``, ``"tcg"`` or ``"none"`` (gVisor) while running."""

    @property
    def backend_label(self) -> str | None:
        """``gVisor``, ``QEMU/TCG``, ``QEMU/KVM``, ``libkrun/KVM`` while running (else None)."""
        if self.status != "running" or not (self.backend or self.accel):
            return None
        return backend_label(self.backend or "qemu", self.accel)  # an older supervisor: QEMU was all there was

    uptime_s: float | None = None
    cpu_percent: float | None = Field(default=None, ge=0)
    """CPU use over the last interval, % of one CPU."""
    memory_mib: float | None = Field(default=None, ge=0)
    disk_bytes: int | None = Field(default=None, ge=0)
    """Bytes used by the persistent writable layer."""
    command: list[str] | None = None
    """The main process, while running."""
    message: str | None = None
    """Why it stopped or crashed."""
    defined: bool = True
    """Defined in the Sandboxfile (``False``: running but no longer in the file)."""
    started_by: StartedBy | None = None
    """How it started (``"pool"``, ``"restore"``, ``"boot"``); None when stopped or unknown."""
    start_ms: float | None = Field(default=None, ge=0)
    """Milliseconds from the start request to ready; None when stopped or unknown."""


def start_of(source: Mapping[str, Any]) -> tuple[StartedBy | None, float | None]:
    """``(started_by, start_ms)`` for a :class:`SandboxRow` from an engine's answer (a server's
    list item, a supervisor's status), each None when absent or not understood: an older engine
    has neither, and a kind this TUI does not know must not fail the whole list.

    Args:
        source: The answer, read with ``.get``.

    Returns:
        How it started and in how many milliseconds.
    """
    kind, ms = source.get("started_by"), source.get("start_ms")
    known: StartedBy | None = kind if kind in get_args(StartedBy) else None
    if isinstance(ms, bool) or not isinstance(ms, int | float) or not ms >= 0:  # NaN is not >= 0 either
        return known, None
    return known, float(ms)


def backend_summary(choice: str | None, rows: list[SandboxRow]) -> str | None:
    """The header's words for the backend in force: the choice for new sandboxes (``gVisor``),
    and what running sandboxes use when that differs (``gVisor · also QEMU/TCG``); None if
    neither is known."""
    running = sorted({label for r in rows if (label := r.backend_label)})
    if choice is None:
        return f"running on {' + '.join(running)}" if running else None
    others = [label for label in running if label != choice]
    return choice + (f" · also {' + '.join(others)}" if others else "")


class ImageRow(BaseModel):
    """One image in the store."""

    name: str
    """Repository, e.g. ``docker.io/library/python``."""
    tag: str | None = None
    digest: str
    size_bytes: int = Field(ge=0)
    created: str | None = None
    """ISO 8601 from the image config, if it says."""


class LayerProgress(BaseModel):
    """Progress of one blob of a pull."""

    layer: str
    """Short digest."""
    done_bytes: int = Field(ge=0)
    total_bytes: int | None = None
    finished: bool = False


ProgressCallback = Callable[[LayerProgress], None]


class Workbench(Protocol):
    """What the screens need. See the module docstring for the implementations."""

    @property
    def sandboxfile(self) -> Path | None:
        """The project's Sandboxfile (``None`` for a remote server, whose files are not ours)."""
        ...

    @property
    def description(self) -> str:
        """One line for the header: ``"embedded engine · gVisor · ./Sandboxfile"`` and the like,
        with the backend in force once :meth:`backend` or :meth:`sandboxes` has found it."""
        ...

    async def backend(self) -> str | None:
        """The backend in force, as a label (``gVisor``, ``QEMU/TCG``), or ``None`` if unknown.

        May probe the host (seconds, the first time on a host); the app calls it in a worker.

        Raises:
            MsbError: the backend asked for does not work here (the probe's reason).
        """
        ...

    async def sandboxes(self) -> list[SandboxRow]:
        """Every sandbox the project defines plus anything running, with live metrics."""
        ...

    async def start(self, name: str) -> None:
        """Start ``name`` (its start script, or idle); returns once it is running."""
        ...

    async def stop(self, name: str) -> None:
        """Stop ``name``; returns once it has stopped. Not running is not an error."""
        ...

    async def shell(self, name: str, rows: int, cols: int) -> StreamingProcess:
        """An interactive shell with a pty in the running sandbox ``name``.

        Raises:
            MsbError: not running, or this workbench cannot open terminals (remote).
        """
        ...

    async def run_code(self, name: str, language: Literal["python", "node"], code: str,
                       timeout: float | None = None) -> ReplResult:  # fmt: skip
        """Run ``code`` in the sandbox's persistent interpreter (state kept between calls)."""
        ...

    async def interrupt(self, name: str, language: Literal["python", "node"]) -> None:
        """Interrupt the cell that is running in that interpreter, if any."""
        ...

    def logs(self, name: str) -> AsyncIterator[bytes]:
        """The sandbox's output log from the start, then new output as it comes (until the
        consumer stops iterating)."""
        ...

    async def images(self) -> list[ImageRow]:
        """Images in the store."""
        ...

    async def pull(self, reference: str, progress: ProgressCallback) -> ImageRow:
        """Pull ``reference``, reporting per-layer progress; returns the stored image."""
        ...

    async def remove_image(self, reference: str) -> None:
        """Remove an image from the store."""
        ...

    async def build_base_image(self, name: str, log: Callable[[str], None]) -> ImageRow:
        """Build an offline base image (``microsandbox/python``, ``microsandbox/node``,
        ``busybox``) from the host's packages."""
        ...

    async def close(self) -> None:
        """Release what the workbench holds (sandboxes it owns keep running)."""
        ...
