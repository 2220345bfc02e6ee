"""One long-lived interpreter of one language in one sandbox.

The interpreter is a small driver script (``drivers/``) written into the guest and started on
first use; it keeps its state between calls. A run that passes its timeout is interrupted with
SIGINT (state kept); one that ignores the interrupt for :data:`GRACE_S` is killed and the next
call starts a fresh interpreter. Every run has an id, and output of any other run is dropped,
so a timed-out run never leaks into the next one.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from importlib import resources

from engine.errors import ConfigError, ExecError, ProtocolError, SandboxStateError
from engine.repl.driver_process import EXITED, DriverProcess
from engine.repl.host import ReplHost, ReplProcess
from engine.repl.models import Language, OutputLine
from engine.repl.output import MAX_OUTPUT_BYTES, OutputCollector
from engine.repl.wire import encode_run

GRACE_S = 2.0
"""Seconds an interrupted run has to stop before the interpreter is killed."""
START_TIMEOUT_S = 120.0
"""Seconds an interpreter may take to start (node under TCG takes a few)."""
DRIVER_DIR = "/tmp/.msb"


@dataclass(frozen=True)
class DriverSpec:
    """How to start one language's driver."""

    resource: str
    """File name in ``engine/repl/drivers/``."""
    guest_path: str
    commands: tuple[tuple[str, ...], ...]
    """Interpreter argv prefixes, tried in order while the program is not found."""
    binary: str
    image: str
    """An msb image that has the interpreter, for the error message."""

    def source(self) -> bytes:
        return (resources.files("engine.repl") / "drivers" / self.resource).read_bytes()


DRIVERS: dict[Language, DriverSpec] = {
    "python": DriverSpec("python_driver.py", f"{DRIVER_DIR}/repl-python.py", (("python3", "-u"),),
                         "python3", "microsandbox/python"),
    "node": DriverSpec("node_driver.js", f"{DRIVER_DIR}/repl-node.js", (("node",), ("nodejs",)),
                       "node", "microsandbox/node"),
}  # fmt: skip


class ReplSession:
    """One interpreter process in one sandbox; calls are serialised."""

    def __init__(self, sandbox: ReplHost, language: Language) -> None:
        """Bind a session to a sandbox; the interpreter starts on the first :meth:`run`.

        Args:
            sandbox: a :class:`~engine.sandbox.sandbox.Sandbox` (or any :class:`ReplHost`).
            language: ``"python"`` or ``"node"``.
        """
        self._host = sandbox
        self.language = language
        self._spec = DRIVERS[language]
        self._lock = asyncio.Lock()
        self._driver: DriverProcess | None = None
        self._next_id = 1
        self._closed = False
        self._reaping: set[asyncio.Task[None]] = set()

    async def run(self, code: str, timeout: float | None = None) -> tuple[str, list[OutputLine]]:
        """Run ``code`` in the persistent interpreter.

        Args:
            code: source; a trailing expression's value is echoed like at an interactive prompt.
            timeout: seconds (None = no limit); when it passes the code is interrupted.

        Returns:
            ``("success" | "error", output lines in arrival order)``.

        Raises:
            ConfigError: a bad timeout, or the image has no such interpreter.
            ExecError: the interpreter could not start.
            SandboxStateError: the session is closed.
            VmCrashedError: the sandbox died.
        """
        if timeout is not None and not timeout > 0:
            raise ConfigError(f"timeout must be a positive number of seconds, not {timeout!r}",
                              hint="leave it out for no limit")  # fmt: skip
        async with self._lock:
            if self._closed:
                raise SandboxStateError(f"this {self.language} REPL session is closed", hint="start a new one")
            output = OutputCollector()
            try:
                driver = await self._ensure_driver(output)
                status = await self._execute(driver, code, timeout, output)
                return status, output.finish()
            finally:
                output.release()  # the run failed or was cancelled: give its budget back

    async def interrupt(self) -> bool:
        """Interrupt the call that is running, if any: it returns with the interpreter's
        KeyboardInterrupt as an error (calls made with a timeout are interruptible; the
        interpreter and its state survive).

        Returns:
            Whether a call was running.
        """
        driver = self._driver
        if driver is None or not driver.alive or not self._lock.locked():
            return False
        await driver.interrupt()
        return True

    async def close(self) -> None:
        """Kill the interpreter (and what it started); a running call returns with an error."""
        self._closed = True
        driver, self._driver = self._driver, None
        if driver is not None:
            await driver.kill()
        if self._reaping:
            await asyncio.wait(self._reaping)

    # ------------------------------------------------------------------ internals

    async def _ensure_driver(self, output: OutputCollector) -> DriverProcess:
        driver = self._driver
        if driver is not None and driver.alive:
            return driver
        if driver is not None:
            self._driver = None
            self._raise_if_vm_died(driver)
            output.note(f"The {self._spec.binary} interpreter had exited since the last call "
                        f"(status {driver.exit_code}); started a new one (its state is lost)")  # fmt: skip
        driver = await self._start()
        if self._closed:  # closed while it started
            await driver.kill()
            raise SandboxStateError(f"this {self.language} REPL session is closed", hint="start a new one")
        self._driver = driver
        return driver

    async def _start(self) -> DriverProcess:
        spec = self._spec
        await self._host.write_file(spec.guest_path, spec.source(), mode=0o644)
        proc = await self._spawn(spec)
        driver = DriverProcess(proc, spec.binary)
        try:
            await driver.wait_ready(START_TIMEOUT_S)
        except BaseException:
            await driver.kill()
            raise
        return driver

    async def _spawn(self, spec: DriverSpec) -> ReplProcess:
        for prefix in spec.commands:
            try:
                return await self._host.spawn([*prefix, spec.guest_path], stdin=True)
            except ExecError as exc:
                if exc.errno != 2:
                    raise
        raise ConfigError(
            f"this image has no {spec.binary}; use {spec.image} or an image with {spec.binary}",
            hint=f"start the sandbox from {spec.image}, or install {spec.binary} in the image",
        )

    async def _execute(self, driver: DriverProcess, code: str, timeout: float | None, output: OutputCollector) -> str:
        run_id, self._next_id = self._next_id, self._next_id + 1
        done = driver.start_run(run_id, output)
        try:
            await driver.send(encode_run(run_id, code, MAX_OUTPUT_BYTES, interruptible=timeout is not None))
            return await self._await_done(driver, done, timeout, output)
        except BaseException:  # cancelled: don't leave user code running behind our back
            self._discard(driver)
            raise
        finally:
            driver.end_run()

    async def _await_done(
        self, driver: DriverProcess, done: asyncio.Future[str], timeout: float | None, output: OutputCollector
    ) -> str:
        if await _settled(done, timeout):
            return self._outcome(driver, done.result(), output)
        await driver.interrupt()
        if await _settled(done, GRACE_S):
            if done.result() == EXITED:
                return self._outcome(driver, EXITED, output)
            output.note(f"Execution timed out after {timeout:g} s; interrupted (interpreter state kept)")
            return "error"
        self._driver = None
        await driver.kill()
        output.note(f"Execution timed out after {timeout:g} s and did not stop when interrupted; "
                    "the interpreter was restarted; its state is lost")  # fmt: skip
        return "error"

    def _outcome(self, driver: DriverProcess, status: str, output: OutputCollector) -> str:
        if status != EXITED:
            return status
        if self._driver is driver:
            self._driver = None
        self._raise_if_vm_died(driver)
        for line in driver.stderr_tail():
            output.note(line)
        if isinstance(driver.failure, ProtocolError):
            output.note(f"The {driver.name} interpreter broke the REPL protocol ({driver.failure.message}); "
                        "it was stopped and will restart on the next call (its state is lost)")  # fmt: skip
        else:
            output.note(f"The {driver.name} interpreter exited (status {driver.exit_code}); "
                        "it will restart on the next call (its state is lost)")  # fmt: skip
        return "error"

    @staticmethod
    def _raise_if_vm_died(driver: DriverProcess) -> None:
        if driver.failure is not None and not isinstance(driver.failure, ProtocolError):
            raise driver.failure

    def _discard(self, driver: DriverProcess) -> None:
        if self._driver is driver:
            self._driver = None
        task = asyncio.get_running_loop().create_task(driver.kill())
        self._reaping.add(task)
        task.add_done_callback(self._reaping.discard)


async def _settled(future: asyncio.Future[str], timeout: float | None) -> bool:
    """Wait up to ``timeout`` seconds (None = forever) for ``future``; True once it is done."""
    await asyncio.wait({future}, timeout=timeout)
    return future.done()
