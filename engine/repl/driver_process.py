"""One running REPL driver as the host sees it: a pump task reads its messages and hands
each to the run it belongs to; messages of any other run (a timed-out one) are dropped."""

from __future__ import annotations

import asyncio
import contextlib
import signal
from dataclasses import dataclass
from typing import Any

from engine.errors import ExecError, MsbError, ProtocolError
from engine.repl.host import ReplProcess
from engine.repl.output import OutputCollector
from engine.repl.wire import Done, LineBuffer, Out, Ready, decode

EXITED = "exited"
"""What a run's ``done`` future holds when the driver went away before answering."""
STDERR_TAIL_BYTES = 4096
"""The driver's own stderr kept (a start-up failure, a fatal error); user output never goes there."""
KILL_WAIT_S = 5.0


@dataclass
class Run:
    id: int
    output: OutputCollector
    done: asyncio.Future[str]
    """``"success"``, ``"error"`` or :data:`EXITED`."""


class DriverProcess:
    """A started driver process and the task that reads it."""

    def __init__(self, proc: ReplProcess, name: str) -> None:
        self.proc = proc
        self.name = name
        """The interpreter binary (``python3``, ``node``), for messages."""
        self.exit_code: int | None = None
        self.failure: MsbError | None = None
        """Why reading stopped other than a plain exit: a protocol violation or a dead VM."""
        self.version = ""
        self._lines = LineBuffer()
        self._stderr = bytearray()
        self._run: Run | None = None
        self._ready: asyncio.Future[Ready] = asyncio.get_running_loop().create_future()
        self._task = asyncio.create_task(self._pump(), name=f"repl-{name}")

    @property
    def alive(self) -> bool:
        return not self._task.done()

    async def wait_ready(self, timeout: float) -> None:
        """Wait for the driver's "ready" message.

        Raises:
            ExecError: it exited first or did not answer within ``timeout`` seconds (killed).
            VmCrashedError: the sandbox died meanwhile.
        """
        waiters: set[asyncio.Future[Any]] = {self._ready, self._task}
        await asyncio.wait(waiters, timeout=timeout, return_when=asyncio.FIRST_COMPLETED)
        if self._ready.done():
            self.version = self._ready.result().version
            return
        if self.alive:
            await self.kill()
            raise ExecError(f"the {self.name} REPL did not start within {timeout:g} s",
                            hint="the sandbox may be overloaded; try again or give it more CPU/memory")  # fmt: skip
        if self.failure is not None and not isinstance(self.failure, ProtocolError):
            raise self.failure
        tail = "".join(f"\n{line}" for line in self.stderr_tail())
        raise ExecError(
            f"the {self.name} REPL driver exited at start-up (status {self.exit_code}){tail}",
            hint=f"check that {self.name} in this image works (a recent version is needed)",
        )

    def start_run(self, run_id: int, output: OutputCollector) -> asyncio.Future[str]:
        """Route messages of ``run_id`` to ``output``; the future resolves with its status."""
        done: asyncio.Future[str] = asyncio.get_running_loop().create_future()
        if not self.alive:
            done.set_result(EXITED)
        self._run = Run(run_id, output, done)
        return done

    def end_run(self) -> None:
        self._run = None

    async def send(self, data: bytes) -> None:
        with contextlib.suppress(ExecError):  # it exited meanwhile: the pump reports that
            await self.proc.write(data)

    async def interrupt(self) -> None:
        """SIGINT to the whole group: the interpreter and whatever the user's code started."""
        await self.proc.signal(signal.SIGINT, group=True)

    async def kill(self) -> None:
        """SIGKILL the driver's process group and wait (bounded) for the pump to see it go."""
        if self.alive:
            with contextlib.suppress(MsbError):
                await self.proc.signal(signal.SIGKILL, group=True)
            await asyncio.wait({self._task}, timeout=KILL_WAIT_S)
        self._task.cancel()

    def stderr_tail(self) -> list[str]:
        """The last lines the driver itself wrote to its stderr."""
        text = self._stderr.decode("utf-8", "replace")
        return [line for line in text.splitlines() if line.strip()][-20:]

    async def _pump(self) -> None:
        try:
            while (chunk := await self.proc.read()) is not None:
                if chunk.stream == "stdout":
                    for line in self._lines.feed(chunk.data):
                        self._dispatch(decode(line))
                else:
                    self._stderr += chunk.data
                    del self._stderr[:-STDERR_TAIL_BYTES]
            self.exit_code = self.proc.returncode
        except ProtocolError as exc:
            self.failure = exc
            await self._kill_and_drain()
        except MsbError as exc:  # the VM or its channel died
            self.failure = exc
        except Exception as exc:  # a bug of ours: never leave a run waiting, nor the driver running
            self.failure = ProtocolError(f"reading the REPL driver failed: {exc!r}")
            await self._kill_and_drain()
        finally:
            if self._run is not None and not self._run.done.done():
                self._run.done.set_result(EXITED)

    async def _kill_and_drain(self) -> None:
        """After a protocol violation: kill, and read to the exit so nothing is left queued."""
        with contextlib.suppress(MsbError, TimeoutError):
            await self.proc.signal(signal.SIGKILL, group=True)
            async with asyncio.timeout(KILL_WAIT_S):
                while await self.proc.read() is not None:
                    pass
        self.exit_code = self.proc.returncode

    def _dispatch(self, msg: Ready | Out | Done) -> None:
        if isinstance(msg, Ready):
            if not self._ready.done():
                self._ready.set_result(msg)
            return
        run = self._run
        if run is None or msg.id != run.id or run.done.done():
            return  # a stale message of an earlier (timed-out) run
        if isinstance(msg, Out):
            run.output.add(msg.stream, msg.data)
        else:
            run.done.set_result(msg.status)
