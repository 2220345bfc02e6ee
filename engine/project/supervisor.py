"""The supervisor: the process that owns one persistent project sandbox's VM.

``msb run``/``msb shell`` start it (:func:`engine.project.runtime.launch`) in its own session
so it outlives the terminal. It holds ``supervisor.lock`` for its whole life, boots the VM
from the Sandboxfile entry with the writable layer in ``.menv/sandboxes/<name>/``, prints
one JSON line (ready or the error) on stdout for the launcher, then serves the control
socket (:mod:`engine.project.control`). The sandbox stops when its main process exits, on
``msb stop``, or on SIGTERM; if the VM dies, the state says ``crashed``.

Run as ``python -m engine.project.supervisor --file SANDBOXFILE --name NAME
[--command JSON] [--wait-attach] [--keep-alive] [--backend auto|qemu|gvisor|krun]``.

The backend: ``--backend`` (``msb run --backend``), else the entry's ``backend:``, else
``MSB_BACKEND``, else ``auto`` (:mod:`engine.vm.select`).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import fcntl
import json
import logging
import os
import shutil
import signal
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from engine.errors import ConfigError, MsbError
from engine.project.control import MAX_LINE, ControlError, encode, read_msg
from engine.project.runtime import SandboxDir, SandboxState, make_private_dirs
from engine.project.session import MainProcess, serve_spawn
from engine.repl.pool import ReplPool
from engine.sandbox.sandbox import Sandbox

log = logging.getLogger("msb.supervisor")

ATTACH_WAIT_S = 60.0
"""How long a ``--wait-attach`` main process waits for its client before running anyway."""


class Supervisor:
    def __init__(self, sdir: SandboxDir, sandbox: Sandbox, command: list[str] | None, wait_attach: bool,
                 keep_alive: bool = False) -> None:  # fmt: skip
        self.sdir = sdir
        self.sandbox = sandbox
        self.command = command
        self.main: MainProcess | None = None
        self.wait_attach = wait_attach and command is not None
        self.keep_alive = keep_alive
        """Stay up (idle) after the main process exits, until ``stop`` (msb-tui's start)."""
        self.done = asyncio.Event()
        self.exit_code: int | None = None
        self.reason = ""
        self.sessions: set[asyncio.Task[None]] = set()
        self.repls = ReplPool(sandbox)
        """Persistent interpreters (``repl`` op): the TUI's REPL screen."""

    def stop_on_signal(self, signo: int) -> None:
        self.reason = f"stopped by signal {signal.Signals(signo).name}"
        self.done.set()

    # ---------------------------------------------------------------- main process

    async def start_main(self, *, tty: bool = False, rows: int = 24, cols: int = 80) -> MainProcess:
        assert self.command is not None and self.main is None
        self.main = await MainProcess.start(self.sandbox, self.command, self.sdir.output_log,
                                            tty=tty, rows=rows, cols=cols)  # fmt: skip
        task = asyncio.create_task(self._main_finished(self.main))
        self.sessions.add(task)
        return self.main

    async def _main_finished(self, main: MainProcess) -> None:
        self.exit_code = await main.finished()
        self.reason = f"its main process exited with {self.exit_code}"
        if self.keep_alive:
            log.info("%s; staying up until stopped", self.reason)
        else:
            self.done.set()

    async def _attach_deadline(self) -> None:
        await asyncio.sleep(ATTACH_WAIT_S)
        if self.main is None and self.command is not None:
            log.info("no client attached within %.0f s; running %s detached", ATTACH_WAIT_S, self.command)
            await self.start_main()

    # ---------------------------------------------------------------- control socket

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        if task is not None:
            self.sessions.add(task)
        try:
            msg = await read_msg(reader)
            if msg is not None:
                await self._dispatch(msg, reader, writer)
        except ControlError as exc:
            with contextlib.suppress(Exception):
                writer.write(encode({"t": "error", "message": str(exc)}))
        except MsbError as exc:
            with contextlib.suppress(Exception):
                writer.write(encode({"t": "error", "message": exc.message, "hint": exc.hint}))
        except (ConnectionError, asyncio.IncompleteReadError):
            pass
        finally:
            with contextlib.suppress(Exception):
                await writer.drain()
            writer.close()
            if task is not None:
                self.sessions.discard(task)

    async def _dispatch(self, msg: dict[str, Any], reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        op = msg.get("op")
        rows, cols = _size(msg)
        if op == "status":
            writer.write(encode({"t": "status", **(await self.status())}))
        elif op == "stop":
            self.reason = "stopped by request"
            writer.write(encode({"t": "ok"}))
            self.done.set()
        elif op == "attach":
            if self.command is None:
                raise ControlError("this sandbox has no main process to attach to")
            main = self.main or await self.start_main(tty=bool(msg.get("tty")), rows=rows, cols=cols)
            await main.attach(reader, writer)
        elif op == "repl":
            language, code, timeout = msg.get("language"), msg.get("code"), msg.get("timeout")
            if not isinstance(language, str) or not isinstance(code, str):
                raise ControlError("repl needs language and code strings")
            if timeout is not None and not isinstance(timeout, int | float):
                raise ControlError("repl timeout must be a number of seconds")
            result = await self.repls.run(language, code, timeout)
            writer.write(encode({"t": "repl", "result": result.model_dump()}))
        elif op == "repl_interrupt":
            language = msg.get("language")
            if not isinstance(language, str):
                raise ControlError("repl_interrupt needs a language")
            writer.write(encode({"t": "ok", "interrupted": await self.repls.interrupt(language)}))
        elif op == "spawn":
            argv = msg.get("argv")
            if not isinstance(argv, list) or not argv or not all(isinstance(a, str) for a in argv):
                raise ControlError("spawn needs argv: a non-empty list of strings")
            await serve_spawn(self.sandbox, argv, reader, writer, tty=bool(msg.get("tty")), rows=rows, cols=cols)
        else:
            raise ControlError(f"unknown control op {op!r}")

    async def status(self) -> dict[str, Any]:
        metrics: dict[str, Any] = {}
        with contextlib.suppress(MsbError):
            m = await self.sandbox.metrics()
            metrics = {"cpu_percent": m.cpu_percent, "memory_mib": m.memory_mib, "disk_bytes": m.disk_bytes}
        return {
            "name": self.sandbox.name, "backend": self.sandbox.backend, "accel": self.sandbox.accel,
            "vm_pid": self.sandbox.vm.pid, **started(self.sandbox),
            "uptime_s": time.time() - self.sandbox.started_at, "command": self.command,
            "main_running": self.main is not None and not self.main.exited, "main_exit_code": self.exit_code,
            **metrics,
        }  # fmt: skip

    # ---------------------------------------------------------------- life

    async def run(self) -> None:
        crashed = asyncio.create_task(self.sandbox.vm.wait_exited())
        done = asyncio.create_task(self.done.wait())
        if self.command is not None and not self.wait_attach:
            await self.start_main()
        elif self.wait_attach:
            self.sessions.add(asyncio.create_task(self._attach_deadline()))
        await asyncio.wait({crashed, done}, return_when=asyncio.FIRST_COMPLETED)
        if crashed.done() and not self.done.is_set():
            self.reason = f"the VM exited unexpectedly (status {crashed.result()})"
        done.cancel()
        crashed.cancel()


def started(sandbox: Sandbox) -> dict[str, Any]:
    """``started_by`` (``pool``, ``restore``, ``boot``) and ``start_ms`` of ``sandbox``."""
    return {"started_by": sandbox.start_info.kind, "start_ms": round(sandbox.start_info.ms, 1)}


def _size(msg: dict[str, Any]) -> tuple[int, int]:
    rows, cols = msg.get("rows", 24), msg.get("cols", 80)
    ok = isinstance(rows, int) and isinstance(cols, int) and 0 < rows < 10000 and 0 < cols < 10000
    return (rows, cols) if ok else (24, 80)


def _ready(answer: dict[str, Any]) -> None:
    """Tell the launcher (one JSON line on stdout), then stop using stdout."""
    sys.stdout.write(json.dumps(answer) + "\n")
    sys.stdout.flush()
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, 1)
    os.close(devnull)


async def _boot(sandboxfile: Path, name: str, sdir: SandboxDir, backend: str | None = None) -> Sandbox:
    from engine.images.resolve import resolve_root
    from engine.project.sandboxfile import Sandboxfile
    from engine.project.specs import spec_overrides
    from engine.sandbox.engine import Engine

    sbf = Sandboxfile.load(sandboxfile)
    entry = sbf.get(name)
    if entry is None:
        raise MsbError(f"{sandboxfile}: no sandbox named {name!r}")
    if not entry.image:
        raise MsbError(f"sandbox {name!r} has no image", hint=f"set sandboxes.{name}.image in {sandboxfile}")
    root = await resolve_root(entry.image, base_dir=sandboxfile.parent)
    spec = root.spec(name, persist_dir=sdir.path, **spec_overrides(entry, sandboxfile.parent))
    return await Engine(backend=backend or entry.backend).start(spec)


async def amain(sandboxfile: Path, name: str, command: list[str] | None, wait_attach: bool,
                keep_alive: bool = False, backend: str | None = None) -> int:  # fmt: skip
    sdir = SandboxDir(make_private_dirs(sandboxfile.parent, f".menv/sandboxes/{name}"), name)
    lock_fd = os.open(sdir.lock_file, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
    try:
        fcntl.flock(lock_fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        _ready({"ok": False, "message": f"sandbox {name!r} is already running",
                "hint": f"use `msb shell {name}`, or `msb stop {name}` first"})  # fmt: skip
        return 1
    last = sdir.read_state()
    state = SandboxState(name=name, status="starting", supervisor_pid=os.getpid(), command=command)
    sdir.write_state(state)
    try:
        sandbox = await _boot(sandboxfile, name, sdir, backend)
    except MsbError as exc:
        ran_on = {"backend": last.backend, "accel": last.accel} if last else {}  # its files are still there
        sdir.write_state(state.model_copy(update={"status": "stopped", "message": str(exc), "stopped_at": time.time(),
                                                  **ran_on}))  # fmt: skip
        _ready({"ok": False, "message": exc.message, "hint": exc.hint, "config": isinstance(exc, ConfigError)})
        return 1
    ctl_dir = Path(tempfile.mkdtemp(prefix="msb-ctl-", dir=os.environ.get("XDG_RUNTIME_DIR") or None))
    sock = ctl_dir / "control.sock"
    sup = Supervisor(sdir, sandbox, command, wait_attach, keep_alive)
    server = await asyncio.start_unix_server(sup.handle, path=str(sock), limit=MAX_LINE)
    loop = asyncio.get_running_loop()
    for signo in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signo, sup.stop_on_signal, signo)
    state = state.model_copy(update={"status": "running", "vm_pid": sandbox.vm.pid, "socket": str(sock),
                                     "backend": sandbox.backend, "accel": sandbox.accel,
                                     "started_at": time.time(), **started(sandbox)})  # fmt: skip
    sdir.write_state(state)
    _ready({"ok": True, "socket": str(sock), "backend": sandbox.backend, "accel": sandbox.accel, **started(sandbox)})
    log.info("sandbox %s running (%s, %s, vm pid %s; started by %s in %.0f ms)", name, sandbox.backend,
             sandbox.accel, sandbox.vm.pid, sandbox.start_info.kind, sandbox.start_info.ms)  # fmt: skip
    try:
        await sup.run()
    finally:
        crashed = sandbox.crashed or sandbox.vm.exited()
        server.close()
        for task in list(sup.sessions):
            task.cancel()
        await sup.repls.close()
        await sandbox.stop()
        if sup.main is not None:
            sup.main.close()
        shutil.rmtree(ctl_dir, ignore_errors=True)
        log.info("sandbox %s stopped: %s", name, sup.reason)
        sdir.write_state(state.model_copy(update={
            "status": "crashed" if crashed else "stopped", "socket": None, "stopped_at": time.time(),
            "exit_code": sup.exit_code, "message": sup.reason,
        }))  # fmt: skip
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m engine.project.supervisor")
    parser.add_argument("--file", type=Path, required=True)
    parser.add_argument("--name", required=True)
    parser.add_argument("--command", help="main process argv as a JSON list")
    parser.add_argument("--wait-attach", action="store_true")
    parser.add_argument("--keep-alive", action="store_true", help="stay up after the main process exits")
    parser.add_argument("--backend", default=None, help="auto|qemu|gvisor|krun, over the entry's backend:")
    args = parser.parse_args(argv)
    logging.basicConfig(level=os.environ.get("MSB_LOG_LEVEL", "info").upper(),
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")  # fmt: skip
    signal.signal(signal.SIGHUP, signal.SIG_IGN)
    command = json.loads(args.command) if args.command else None
    return asyncio.run(amain(args.file.resolve(), args.name, command, args.wait_attach, args.keep_alive,
                             args.backend))  # fmt: skip


if __name__ == "__main__":
    sys.exit(main())
