"""An in-memory :class:`~msb_tui.workbench.Workbench` for tests and snapshots.

Deterministic: no clocks, no randomness; metrics advance only when :meth:`tick` is called.
``api`` runs, restored from a template in 84 ms; a sandbox started here reports a cold boot
of :data:`FAKE_BOOT_MS`.
Each behaviour a screen must handle can be switched on: ``fail`` makes a named method raise
an :class:`~engine.errors.MsbError` with a hint; ``delay`` makes every call wait on an
event the test sets (the "loading" state).
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import TYPE_CHECKING, Literal

from engine.errors import MsbError
from engine.repl.models import OutputLine, ReplResult
from engine.vm.process import ExitStatus, OutputChunk
from msb_tui.workbench import ImageRow, LayerProgress, ProgressCallback, SandboxRow

DEFAULT_SANDBOXES = [
    SandboxRow(name="api", image="microsandbox/python", status="running", backend="qemu", accel="tcg", uptime_s=754.0,
               cpu_percent=12.5, memory_mib=88.0, disk_bytes=3 << 20, command=["python3", "-m", "http.server"],
               started_by="restore", start_ms=84.0),
    SandboxRow(name="db", image="busybox", status="stopped", message="stopped by request"),
    SandboxRow(name="worker", image="microsandbox/node", status="crashed", message="the VM exited unexpectedly"),
]  # fmt: skip
FAKE_BOOT_MS = 1120.0
"""How long a start through the fake takes (reported as a cold boot: ``boot 1.1s``)."""
FAKE_BACKEND = "QEMU/TCG"
"""The fake's backend in force (its running sandboxes are on QEMU/TCG, like this host without KVM)."""
DEFAULT_IMAGES = [
    ImageRow(name="microsandbox/python", tag="latest", digest="sha256:" + "a1" * 32, size_bytes=48_500_000,
             created="2026-11-20T10:00:00Z"),
    ImageRow(name="busybox", tag="latest", digest="sha256:" + "b2" * 32, size_bytes=1_100_000, created=None),
]  # fmt: skip


class FakeShell:
    """A pretend shell: echoes each line it gets as ``$ line`` and its output; ``exit``
    ends it. Implements :class:`~engine.project.control.StreamingProcess`."""

    def __init__(self, banner: bytes = b"fake shell\r\n$ ") -> None:
        self.queue: asyncio.Queue[OutputChunk | None] = asyncio.Queue()
        self.queue.put_nowait(OutputChunk(stream="stdout", data=banner))
        self.size = (24, 80)
        self.written = b""
        self._line = b""
        self.status: ExitStatus | None = None

    async def write(self, data: bytes) -> None:
        self.written += data
        for byte in data:
            ch = bytes([byte])
            if ch in (b"\r", b"\n"):
                line, self._line = self._line.decode(errors="replace"), b""
                if line.strip() == "exit":
                    self.status = ExitStatus(exit_code=0)
                    self.queue.put_nowait(OutputChunk(stream="stdout", data=b"\r\nexit\r\n"))
                    self.queue.put_nowait(None)
                    return
                self.queue.put_nowait(OutputChunk(stream="stdout", data=f"\r\n{line}\r\n$ ".encode()))
            else:
                self._line += ch
                self.queue.put_nowait(OutputChunk(stream="stdout", data=ch))

    async def close_stdin(self) -> None:
        await self.write(b"exit\n")

    async def resize(self, rows: int, cols: int) -> None:
        self.size = (rows, cols)

    def __aiter__(self) -> AsyncIterator[OutputChunk]:
        return self._iter()

    async def _iter(self) -> AsyncIterator[OutputChunk]:
        while (chunk := await self.queue.get()) is not None:
            yield chunk

    async def wait(self) -> ExitStatus:
        while self.status is None:
            await asyncio.sleep(0)
        return self.status


class FakeWorkbench:
    """See the module docstring."""

    def __init__(self, sandboxfile: Path | None = None, *, sandboxes: list[SandboxRow] | None = None,
                 images: list[ImageRow] | None = None, fail: dict[str, str] | None = None,
                 delay: asyncio.Event | None = None, backend: str | None = FAKE_BACKEND) -> None:  # fmt: skip
        self._sandboxfile = sandboxfile
        self.backend_label = backend
        """What :meth:`backend` answers (a fixed label; ``None``: unknown)."""
        self.rows = {r.name: r.model_copy() for r in (DEFAULT_SANDBOXES if sandboxes is None else sandboxes)}
        self.image_rows = [i.model_copy() for i in (DEFAULT_IMAGES if images is None else images)]
        self.fail = dict(fail or {})
        self.delay = delay
        self.calls: list[tuple[str, object]] = []
        self.repl_state: dict[str, dict[str, object]] = {}
        self.shells: list[FakeShell] = []
        self.log_lines: dict[str, list[bytes]] = {"api": [b"Serving HTTP on 0.0.0.0 port 8000\n"]}
        self.interrupted: list[str] = []

    async def _enter(self, method: str, arg: object = None) -> None:
        self.calls.append((method, arg))
        if self.delay is not None:
            await self.delay.wait()
        if method in self.fail:
            raise MsbError(self.fail[method], hint=f"the fake was told to fail {method}")

    # ------------------------------------------------------------------ Workbench

    @property
    def sandboxfile(self) -> Path | None:
        return self._sandboxfile

    @property
    def description(self) -> str:
        return " · ".join(p for p in ("fake engine", self.backend_label) if p)

    async def backend(self) -> str | None:
        await self._enter("backend")
        return self.backend_label

    def tick(self) -> None:
        """Advance the running sandboxes' metrics one step (deterministically)."""
        for row in self.rows.values():
            if row.status == "running":
                row.uptime_s = (row.uptime_s or 0) + 1
                row.cpu_percent = ((row.cpu_percent or 0) + 7.5) % 100
                row.memory_mib = ((row.memory_mib or 64) + 3) % 512

    async def sandboxes(self) -> list[SandboxRow]:
        await self._enter("sandboxes")
        return [r.model_copy() for r in self.rows.values()]

    def _row(self, name: str) -> SandboxRow:
        row = self.rows.get(name)
        if row is None:
            raise MsbError(f"no sandbox named {name!r}", hint="add it to the Sandboxfile")
        return row

    async def start(self, name: str) -> None:
        await self._enter("start", name)
        row = self._row(name)
        row.status, row.backend, row.accel, row.uptime_s = "running", "qemu", "tcg", 0.0
        row.cpu_percent, row.memory_mib, row.message = 0.0, 64.0, None
        row.started_by, row.start_ms = "boot", FAKE_BOOT_MS

    async def stop(self, name: str) -> None:
        await self._enter("stop", name)
        row = self._row(name)
        row.status, row.message, row.uptime_s, row.cpu_percent, row.memory_mib = "stopped", "stopped by request", \
            None, None, None  # fmt: skip
        row.started_by, row.start_ms = None, None

    async def shell(self, name: str, rows: int, cols: int) -> FakeShell:
        await self._enter("shell", name)
        if self._row(name).status != "running":
            raise MsbError(f"sandbox {name!r} is not running", hint="start it first (s on the dashboard)")
        shell = FakeShell()
        shell.size = (rows, cols)
        self.shells.append(shell)
        return shell

    async def run_code(self, name: str, language: Literal["python", "node"], code: str,
                       timeout: float | None = None) -> ReplResult:  # fmt: skip
        """Understands ``NAME = <int>``, ``NAME + <int>``, ``print(<text>)`` and ``raise``."""
        await self._enter("run_code", (name, language, code))
        env = self.repl_state.setdefault(f"{name}/{language}", {})
        out: list[OutputLine] = []
        status: Literal["success", "error"] = "success"
        for line in code.splitlines():
            line = line.strip()
            if line.startswith("raise"):
                out.append(OutputLine(stream="stderr", text="Traceback (most recent call last):"))
                out.append(OutputLine(stream="stderr", text="RuntimeError: boom"))
                status = "error"
            elif line.startswith("print(") and line.endswith(")"):
                out.append(OutputLine(stream="stdout", text=line[6:-1].strip("'\"")))
            elif "=" in line and "==" not in line:
                key, value = (p.strip() for p in line.split("=", 1))
                env[key] = int(value) if value.lstrip("-").isdigit() else value
            elif "+" in line:
                left, right = (p.strip() for p in line.split("+", 1))
                a = env.get(left, int(left) if left.lstrip("-").isdigit() else 0)
                out.append(OutputLine(stream="stdout", text=str(int(a) + int(right))))  # type: ignore[call-overload]
            elif line:
                out.append(OutputLine(stream="stdout", text=str(env.get(line, line))))
        return ReplResult(status=status, language=language, output=out)

    async def interrupt(self, name: str, language: Literal["python", "node"]) -> None:
        self.interrupted.append(f"{name}/{language}")

    async def logs(self, name: str) -> AsyncIterator[bytes]:  # type: ignore[override]
        await self._enter("logs", name)
        for line in self.log_lines.get(name, []):
            yield line

    async def images(self) -> list[ImageRow]:
        await self._enter("images")
        return [i.model_copy() for i in self.image_rows]

    async def pull(self, reference: str, progress: ProgressCallback) -> ImageRow:
        await self._enter("pull", reference)
        for layer, total in (("sha256:1111", 4000), ("sha256:2222", 1000)):
            for done in range(0, total + 1, total // 4):
                progress(LayerProgress(layer=layer, done_bytes=done, total_bytes=total, finished=done == total))
                await asyncio.sleep(0)
        name, _, tag = reference.partition(":")
        row = ImageRow(name=name, tag=tag or "latest", digest="sha256:" + "c3" * 32, size_bytes=5000)
        self.image_rows.append(row)
        return row

    async def remove_image(self, reference: str) -> None:
        await self._enter("remove_image", reference)
        self.image_rows = [i for i in self.image_rows if f"{i.name}:{i.tag}" != reference and i.name != reference]

    async def build_base_image(self, name: str, log: Callable[[str], None]) -> ImageRow:
        await self._enter("build_base_image", name)
        for step in ("mmdebstrap: resolving packages", "mmdebstrap: unpacking", "writing the OCI layout"):
            log(step)
            await asyncio.sleep(0)
        row = ImageRow(name=name, tag="latest", digest="sha256:" + "d4" * 32, size_bytes=42_000_000)
        self.image_rows.append(row)
        return row

    async def close(self) -> None:
        self.calls.append(("close", None))


if TYPE_CHECKING:  # the fake must stay a complete Workbench
    from msb_tui.workbench import Workbench

    _CHECK: Workbench = FakeWorkbench()
