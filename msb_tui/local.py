"""The embedded-engine :class:`~msb_tui.workbench.Workbench`: the project's Sandboxfile, its
supervised persistent sandboxes (engine/project) and the local image store.

Sandboxes started here are the same ones ``msb run -d`` starts: each is owned by its own
supervisor process, so they keep running when the TUI exits, and ``msb status``/``msb stop``
see them. Shells and REPLs go through the supervisor's control socket.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Literal

from engine.errors import MsbError
from engine.images.progress import Progress
from engine.images.store import ImageRecord, ImageStore
from engine.project.control import ControlError, RemoteProcess, StreamingProcess, request
from engine.project.runtime import Project, SandboxDir
from engine.project.sandboxfile import Sandboxfile
from engine.repl.models import ReplResult
from msb_tui.workbench import ImageRow, LayerProgress, ProgressCallback, SandboxRow, backend_summary, start_of

STATUS_TIMEOUT_S = 5.0
LOG_POLL_S = 0.25
REPL_TIMEOUT_S = 3600.0
"""Cells run with a timeout so they can be interrupted; this one is effectively "none"."""


def image_row(record: ImageRecord) -> ImageRow:
    short = record.ref.short()  # as `msb images` shows it
    name, sep, tag = short.rpartition(":")
    if not sep or "/" in tag:  # a registry port, not a tag
        name, tag = short, ""
    return ImageRow(name=name, tag=tag or None, digest=record.digest, size_bytes=record.size, created=record.created)


class _LayerProgress(Progress):
    def __init__(self, callback: ProgressCallback) -> None:
        self.callback = callback

    def layer(self, label: str, done_bytes: int, total_bytes: int) -> None:
        done = max(0, min(done_bytes, total_bytes))
        self.callback(LayerProgress(layer=label, done_bytes=done, total_bytes=total_bytes,
                                    finished=done_bytes >= total_bytes))  # fmt: skip


class LocalWorkbench:
    """See the module docstring."""

    def __init__(self, sandboxfile: Path, store: ImageStore | None = None, *, backend: str | None = None) -> None:
        """Args:
        backend: ``auto`` or a backend name for the sandboxes started here, over their
            ``backend:`` (default: theirs, else ``MSB_BACKEND``, else auto).
        """
        self._path = sandboxfile
        self._store = store
        self._backend = backend
        self._choice: str | None = None
        """The label of the engine's choice for new sandboxes, once :meth:`backend` found it."""
        self._rows: list[SandboxRow] = []

    @classmethod
    def open(cls, file: Path | None, *, backend: str | None = None) -> LocalWorkbench:
        """The workbench for ``file`` or the nearest Sandboxfile from the current directory.

        Raises:
            ConfigError: there is no Sandboxfile (hint: ``msb init``).
        """
        path = file if file is not None else Sandboxfile.find(Path.cwd())
        if path.is_dir():
            path = path / "Sandboxfile"
        return cls(path.resolve(), backend=backend)

    @property
    def store(self) -> ImageStore:
        if self._store is None:
            self._store = ImageStore.default()
        return self._store

    def project(self) -> Project:
        """The project as the file says now (re-read on every call: the editor changes it)."""
        return Project(Sandboxfile.load(self._path))

    @property
    def sandboxfile(self) -> Path | None:
        return self._path

    @property
    def description(self) -> str:
        backend = backend_summary(self._choice, self._rows)
        return " · ".join(p for p in ("embedded engine", backend, str(self._path)) if p)

    async def backend(self) -> str | None:
        """The engine's choice for new sandboxes (``--backend``, else ``MSB_BACKEND``, else
        auto; the probes are cached per host); a running sandbox's own backend is in its row."""
        if self._choice is None:
            from engine.sandbox.engine import Engine
            from engine.vm.select import backend_label

            engine = Engine(backend=self._backend)  # prepared as a start would: QEMU's KVM-or-TCG is known
            assets = await engine.prepare()
            self._choice = backend_label(engine.backend.name, assets.accel.accel)
        return self._choice

    # ------------------------------------------------------------------ sandboxes

    async def sandboxes(self) -> list[SandboxRow]:
        project = await asyncio.to_thread(self.project)
        names = project.sandboxfile.names()
        extra = []
        sandboxes_dir = project.menv / "sandboxes"
        if sandboxes_dir.is_dir():
            extra = sorted(p.name for p in sandboxes_dir.iterdir() if p.name not in names and p.is_dir())
        rows = []
        for name in names:
            entry = project.sandboxfile.get(name)
            rows.append(await self._row(project.sandbox_dir(name), entry.image if entry else None, True))
        for name in extra:
            sdir = project.sandbox_dir(name)
            if sdir.alive():
                rows.append(await self._row(sdir, None, False))
        self._rows = rows
        return rows

    async def _row(self, sdir: SandboxDir, image: str | None, defined: bool) -> SandboxRow:
        st = sdir.state()
        running = st.status == "running"
        row = SandboxRow(name=sdir.name, image=image, status=st.status, backend=st.backend if running else None,
                         accel=st.accel if running else None, command=st.command if running else None,
                         message=st.message if not running else None, defined=defined)  # fmt: skip
        if running:  # a newer supervisor records how it started in state.json (and says so live)
            row.started_by, row.start_ms = start_of(st.model_dump())
        if running and st.socket:
            with contextlib.suppress(ControlError):
                live = await request(Path(st.socket), {"op": "status"}, timeout=STATUS_TIMEOUT_S)
                row.uptime_s, row.cpu_percent = live.get("uptime_s"), live.get("cpu_percent")
                row.memory_mib, row.disk_bytes = live.get("memory_mib"), live.get("disk_bytes")
                if "started_by" in live:
                    row.started_by, row.start_ms = start_of(live)
        return row

    async def start(self, name: str) -> None:
        from engine.project.up import start_in_background

        await start_in_background(await asyncio.to_thread(self.project), name, keep_alive=True, backend=self._backend)

    async def stop(self, name: str) -> None:
        from engine.project.runtime import stop

        await stop((await asyncio.to_thread(self.project)).sandbox_dir(name))

    def _socket(self, name: str, project: Project | None = None) -> Path:
        sdir = (project or self.project()).sandbox_dir(name)
        st = sdir.state()
        if st.status != "running" or not st.socket:
            raise MsbError(f"sandbox {name!r} is not running ({st.status})",
                           hint="start it on the dashboard (s), or with `msb run -d NAME`")  # fmt: skip
        return Path(st.socket)

    async def shell(self, name: str, rows: int, cols: int) -> StreamingProcess:
        project = await asyncio.to_thread(self.project)
        entry = project.sandboxfile.get(name)
        shell = (entry.shell if entry else None) or "/bin/sh"
        msg = {"op": "spawn", "argv": [shell], "tty": True, "rows": rows, "cols": cols}
        return await RemoteProcess.open(self._socket(name, project), msg)

    async def run_code(self, name: str, language: Literal["python", "node"], code: str,
                       timeout: float | None = None) -> ReplResult:  # fmt: skip
        limit = timeout or REPL_TIMEOUT_S
        msg = {"op": "repl", "language": language, "code": code, "timeout": limit}
        answer = await request(self._socket(name), msg, timeout=limit + 30)
        return ReplResult.model_validate(answer.get("result"))

    async def interrupt(self, name: str, language: Literal["python", "node"]) -> None:
        await request(self._socket(name), {"op": "repl_interrupt", "language": language}, timeout=STATUS_TIMEOUT_S)

    async def logs(self, name: str) -> AsyncIterator[bytes]:
        """The output log from the start (the rotated part first), then new output, polling."""
        sdir = (await asyncio.to_thread(self.project)).sandbox_dir(name)
        rotated = sdir.output_log.with_name("output.log.1")
        if rotated.is_file():
            yield rotated.read_bytes()
        offset = 0
        while True:
            try:
                size = sdir.output_log.stat().st_size
            except FileNotFoundError:
                size = 0
            if size < offset:
                offset = 0
            if size > offset:
                with open(sdir.output_log, "rb") as f:
                    f.seek(offset)
                    data = f.read(size - offset)
                offset += len(data)
                yield data
            await asyncio.sleep(LOG_POLL_S)

    # ------------------------------------------------------------------ images

    async def images(self) -> list[ImageRow]:
        return [image_row(r) for r in await asyncio.to_thread(self.store.list)]

    async def pull(self, reference: str, progress: ProgressCallback) -> ImageRow:
        from engine.images.pull import pull_image

        result = await pull_image(reference, self.store, progress=_LayerProgress(progress))
        return image_row(result.record)

    async def remove_image(self, reference: str) -> None:
        record = self.store.find(reference)
        if record is None:
            raise MsbError(f"no image {reference!r} in the store", hint="refresh the list")
        await asyncio.to_thread(self.store.remove, record.name)

    async def build_base_image(self, name: str, log: Callable[[str], None]) -> ImageRow:
        from engine.images.resolve import build_offline

        loop = asyncio.get_running_loop()

        def threadsafe_log(line: str) -> None:
            loop.call_soon_threadsafe(log, line)

        record = await asyncio.to_thread(build_offline, name, self.store, threadsafe_log)
        return image_row(record)

    async def close(self) -> None:
        """Nothing to release: the sandboxes belong to their supervisors and keep running."""
