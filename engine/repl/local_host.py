"""A :class:`~engine.repl.host.ReplHost` that runs processes on *this* machine.

For tests and development of the REPL drivers only: it gives no isolation at all, so never use
it for untrusted code. Files written through it land under ``root``; argv entries naming such a
file are rewritten to the real path, so a session's driver paths work unchanged.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal as _signal
from dataclasses import dataclass
from pathlib import Path

from engine.errors import ExecError


@dataclass(frozen=True)
class LocalChunk:
    stream: str
    data: bytes


class LocalProcess:
    """A host subprocess with the :class:`~engine.repl.host.ReplProcess` interface."""

    def __init__(self, proc: asyncio.subprocess.Process) -> None:
        self._proc = proc
        self._queue: asyncio.Queue[LocalChunk | None] = asyncio.Queue()
        self._open = 2
        self._tasks = [
            asyncio.create_task(self._pump("stdout", proc.stdout)),
            asyncio.create_task(self._pump("stderr", proc.stderr)),
        ]

    async def _pump(self, stream: str, reader: asyncio.StreamReader | None) -> None:
        while reader is not None and (data := await reader.read(65536)):
            await self._queue.put(LocalChunk(stream, data))
        await self._queue.put(None)

    @property
    def pid(self) -> int:
        return self._proc.pid

    @property
    def exited(self) -> bool:
        """The process has exited (its output may still be queued)."""
        return self._proc.returncode is not None

    @property
    def returncode(self) -> int | None:
        return self._proc.returncode if self._open == 0 else None

    async def write(self, data: bytes) -> None:
        if self._proc.stdin is None:
            return
        with contextlib.suppress(ConnectionError):
            self._proc.stdin.write(data)
            await self._proc.stdin.drain()

    async def close_stdin(self) -> None:
        if self._proc.stdin is not None:
            self._proc.stdin.close()

    async def read(self) -> LocalChunk | None:
        while self._open:
            chunk = await self._queue.get()
            if chunk is not None:
                return chunk
            self._open -= 1
        await self._proc.wait()
        return None

    async def signal(self, signo: int = _signal.SIGTERM, *, group: bool = True) -> None:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            if group:
                os.killpg(self._proc.pid, signo)
            else:
                os.kill(self._proc.pid, signo)


class LocalHost:
    """Runs processes on this machine, each in a new session (its own process group)."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self._files: dict[str, Path] = {}
        self.processes: list[LocalProcess] = []

    async def write_file(self, path: str, data: bytes, *, mode: int = 0o644) -> None:
        real = self.root / path.lstrip("/")
        real.parent.mkdir(parents=True, exist_ok=True)
        real.write_bytes(data)
        real.chmod(mode)
        self._files[path] = real

    async def spawn(self, argv: list[str], *, stdin: bool = False) -> LocalProcess:
        args = [str(self._files.get(a, a)) for a in argv]
        try:
            proc = await asyncio.create_subprocess_exec(
                *args, stdin=asyncio.subprocess.PIPE if stdin else asyncio.subprocess.DEVNULL,
                stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
                cwd=self.root, start_new_session=True,
            )  # fmt: skip
        except FileNotFoundError as exc:
            raise ExecError(f"command not found: {argv[0]}", errno=2) from exc
        process = LocalProcess(proc)
        self.processes.append(process)
        return process

    async def kill_all(self) -> None:
        """Kill every process group this host started (test cleanup)."""
        for process in self.processes:
            await process.signal(_signal.SIGKILL)
