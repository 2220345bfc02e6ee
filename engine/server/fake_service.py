"""``FakeService``: an in-memory :class:`~engine.server.service.SandboxService` for front-end
tests (JSON-RPC, MCP, TUI). No VM is involved.

It is a fake, not a sandbox: ``run_code`` executes the caller's code with Python's own
``exec``/``eval`` in a per-sandbox dict *in this process*. Only trusted test code may go
through it; never wire it to a server that faces the network.

Behaviour, chosen to be deterministic:

- sandboxes are keyed by ``(namespace, name)``; ``start`` needs ``config.image`` the first
  time; ``stop`` marks the sandbox stopped and drops its REPL state (files stay, as on a real
  persistent sandbox);
- ``run_code`` keeps one namespace dict per language per sandbox. An expression's value is
  printed like a REPL (``x + 1`` → ``42``); ``print`` writes stdout lines; an exception is a
  stderr line and ``status: "error"``. ``node``/``nodejs``/``javascript`` code goes through the
  same toy evaluator after ``let/const/var`` are dropped and ``console.log`` becomes ``print``;
- ``run_command`` knows ``echo``, ``true``, ``false`` (exit 1), ``cat`` (of written files) and
  ``sleep``; anything else exits 127 with ``<cmd>: command not found`` on stderr;
- ``delay`` (seconds) is awaited by ``run_code``/``run_command``; a ``timeout`` shorter than it
  gives the timed-out shape the real service returns;
- running sandboxes report the backend ``gvisor`` (``server.info`` says so too);
- ``started_by`` is ``"boot"`` (``start_ms`` 1100.0), or ``"pool"`` (3.0) for an ephemeral
  start of an image given in ``pools`` (``{image: size}``; the fake pool never runs dry and
  ``server.info`` lists it, counting what was taken); an ephemeral sandbox is forgotten, files
  and all, when it stops;
- ``fail(method, exc)`` makes a method raise ``exc`` on every call until ``fail(method, None)``.
"""

from __future__ import annotations

import asyncio
import io
import posixpath
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from engine.errors import ConfigError, GuestFileError, NotFoundError, SandboxStateError
from engine.repl.models import LANGUAGE_ALIASES, CommandResult, OutputLine, ReplResult, Stream
from engine.sandbox.instant import StartKind
from engine.sandbox.pool import PoolStatus
from engine.server.service import SandboxConfig, SandboxInfo, SandboxMetrics, SandboxService, ServerInfo

_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_-]{0,62}$")
_JS_DECL = re.compile(r"^(\s*)(?:let|const|var)\s+", re.MULTILINE)
BASE_MEMORY_MIB = 48.0
BASE_DISK_BYTES = 4096
FAKE_BACKEND, FAKE_ACCEL = "gvisor", "none"
"""What the fake says its sandboxes run on (``server.info``, metrics, list)."""
FAKE_BOOT_MS, FAKE_POOL_MS = 1100.0, 3.0
"""``start_ms`` of a booted and of a pool-served fake sandbox."""


@dataclass
class FakeSandbox:
    namespace: str
    name: str
    image: str
    running: bool = False
    files: dict[str, bytes] = field(default_factory=dict)
    scopes: dict[str, dict[str, Any]] = field(default_factory=dict)
    """One global dict per language ("python", "node")."""
    runs: int = 0
    ephemeral: bool = False
    started_by: StartKind = "boot"
    start_ms: float = FAKE_BOOT_MS


def _check(kind: str, value: str) -> None:
    if not _NAME.match(value):
        raise ConfigError(f"Invalid params: {kind} name {value!r} must be 1-63 of [A-Za-z0-9_-], starting "
                          "with a letter or digit")  # fmt: skip


def _lines(stream: Stream, text: str) -> list[OutputLine]:
    return [OutputLine(stream=stream, text=t) for t in text.splitlines()]


class FakeService:
    """In-memory sandboxes (see the module docstring for what they do)."""

    def __init__(self, *, delay: float = 0.0, pools: dict[str, int] | None = None) -> None:
        self.sandboxes: dict[tuple[str, str], FakeSandbox] = {}
        self.delay = delay
        self.pools = dict(pools or {})
        """Fake warm pools: image → size."""
        self.pool_taken: dict[str, int] = dict.fromkeys(self.pools, 0)
        self.calls: list[str] = []
        """Names of the methods called, in order."""
        self._failures: dict[str, BaseException] = {}

    def fail(self, method: str, exc: BaseException | None) -> None:
        """Make ``method`` raise ``exc`` on every call (``None`` = behave again)."""
        if exc is None:
            self._failures.pop(method, None)
        else:
            self._failures[method] = exc

    def _enter(self, method: str) -> None:
        self.calls.append(method)
        exc = self._failures.get(method)
        if exc is not None:
            raise exc

    def _find(self, namespace: str, name: str) -> FakeSandbox:
        _check("namespace", namespace)
        _check("sandbox", name)
        box = self.sandboxes.get((namespace, name))
        if box is None:
            raise NotFoundError(f"Sandbox '{name}' not found", hint=f"start it first in namespace {namespace!r}")
        return box

    def _running(self, namespace: str, name: str) -> FakeSandbox:
        box = self._find(namespace, name)
        if not box.running:
            raise SandboxStateError(f"sandbox {name!r} is stopped", hint="start it again with sandbox.start")
        return box

    # --- lifecycle -----------------------------------------------------------------------

    async def start(self, namespace: str, name: str, config: SandboxConfig | None) -> str:
        self._enter("start")
        _check("namespace", namespace)
        _check("sandbox", name)
        box = self.sandboxes.get((namespace, name))
        if box is not None and box.running:
            return f"Sandbox {name} started successfully"
        image = config.image if config is not None else None
        if box is None:
            if not image:
                raise NotFoundError(f"Sandbox '{name}' not found",
                                    hint="pass config.image to define it, e.g. microsandbox/python")  # fmt: skip
            box = self.sandboxes[(namespace, name)] = FakeSandbox(namespace, name, image)
        elif image:
            box.image = image
        box.ephemeral = bool(config is not None and config.ephemeral)
        box.started_by, box.start_ms = "boot", FAKE_BOOT_MS
        if box.ephemeral and self.pools.get(box.image, 0) > 0:
            box.started_by, box.start_ms = "pool", FAKE_POOL_MS
            self.pool_taken[box.image] += 1
        box.running = True
        return f"Sandbox {name} started successfully"

    async def stop(self, namespace: str, name: str) -> str:
        self._enter("stop")
        box = self._running(namespace, name)
        box.running = False
        box.scopes.clear()
        if box.ephemeral:
            del self.sandboxes[(namespace, name)]
        return f"Sandbox {name} stopped successfully"

    # --- work ----------------------------------------------------------------------------

    async def run_code(self, namespace: str, name: str, language: str, code: str,
                       timeout: float | None) -> ReplResult:  # fmt: skip
        self._enter("run_code")
        box = self._running(namespace, name)
        lang = LANGUAGE_ALIASES.get(language)
        if lang is None:
            raise ConfigError(f"Invalid params: unsupported language {language!r}",
                              hint="use python, node, nodejs or javascript")  # fmt: skip
        if await self._times_out(timeout):
            line = OutputLine(stream="stderr", text=f"msb: code timed out after {timeout} s and was interrupted")
            return ReplResult(status="error", language=language, output=[line])
        box.runs += 1
        if lang == "node":
            code = _JS_DECL.sub(r"\1", code).replace("console.log(", "print(")
        ok, output = _evaluate(box.scopes.setdefault(lang, {}), code)
        return ReplResult(status="success" if ok else "error", language=language, output=output)

    async def run_command(self, namespace: str, name: str, command: str, args: list[str],
                          timeout: float | None) -> CommandResult:  # fmt: skip
        self._enter("run_command")
        box = self._running(namespace, name)
        if await self._times_out(timeout):
            err = f"msb: command timed out after {timeout} s and was killed\n"
            return _command(command, args, -1, "", err, success=False)
        box.runs += 1
        code, out, err = _fake_exec(box, command, args)
        return _command(command, args, code, out, err)

    async def _times_out(self, timeout: float | None) -> bool:
        if not self.delay:
            return False
        if timeout is not None and timeout < self.delay:
            await asyncio.sleep(timeout)
            return True
        await asyncio.sleep(self.delay)
        return False

    # --- state ---------------------------------------------------------------------------

    async def metrics(self, namespace: str, name: str | None) -> list[SandboxMetrics]:
        self._enter("metrics")
        if namespace != "*":
            _check("namespace", namespace)
        boxes = [b for (ns, n), b in sorted(self.sandboxes.items()) if namespace in ("*", ns)]
        if name is not None:
            boxes = [b for b in boxes if b.name == name]
            if not boxes:
                raise NotFoundError(f"Sandbox '{name}' not found")
        return [_metrics(b) for b in boxes]

    async def list(self, namespace: str) -> list[SandboxInfo]:
        self._enter("list")
        if namespace != "*":
            _check("namespace", namespace)
        boxes = [b for (ns, _), b in sorted(self.sandboxes.items()) if namespace in ("*", ns)]
        return [
            SandboxInfo(namespace=b.namespace, name=b.name, running=b.running, image=b.image,
                        status="running" if b.running else "stopped", backend=FAKE_BACKEND if b.running else None,
                        accel=FAKE_ACCEL if b.running else None, started_by=b.started_by if b.running else None,
                        start_ms=b.start_ms if b.running else None)
            for b in boxes
        ]  # fmt: skip

    async def info(self) -> ServerInfo:
        self._enter("info")
        pools = [PoolStatus(label=image, size=size, ready=size, starting=0, taken=self.pool_taken[image], replaced=0,
                            member_pss_mib=BASE_MEMORY_MIB, limited_by_memory=False)
                 for image, size in self.pools.items()]  # fmt: skip
        return ServerInfo(backend=FAKE_BACKEND, accel=FAKE_ACCEL, label="gVisor",
                          isolation="gVisor: a user-space kernel (the fake runs nothing)", pools=pools)  # fmt: skip

    async def read_file(self, namespace: str, name: str, path: str) -> bytes:
        self._enter("read_file")
        box = self._running(namespace, name)
        data = box.files.get(_norm(path))
        if data is None:
            raise GuestFileError(f"cannot read {path!r}: no such file", errno=2)
        return data

    async def write_file(self, namespace: str, name: str, path: str, data: bytes) -> None:
        self._enter("write_file")
        self._running(namespace, name).files[_norm(path)] = bytes(data)


def _norm(path: str) -> str:
    """Relative paths are taken from ``/`` (the fake has no working directory)."""
    return posixpath.normpath(posixpath.join("/", path))


def _metrics(box: FakeSandbox) -> SandboxMetrics:
    if not box.running:
        return SandboxMetrics(namespace=box.namespace, name=box.name, running=False, cpu_usage=None,
                              memory_usage=None, disk_usage=None)  # fmt: skip
    disk = BASE_DISK_BYTES + sum(len(d) for d in box.files.values())
    return SandboxMetrics(namespace=box.namespace, name=box.name, running=True, cpu_usage=2.5 + box.runs % 10,
                          memory_usage=BASE_MEMORY_MIB + box.runs, disk_usage=disk, backend=FAKE_BACKEND,
                          accel=FAKE_ACCEL, started_by=box.started_by, start_ms=box.start_ms)  # fmt: skip


def _evaluate(scope: dict[str, Any], code: str) -> tuple[bool, list[OutputLine]]:
    """Run ``code`` in ``scope`` like a REPL cell; returns ``(ok, output lines)``."""
    out, err = io.StringIO(), io.StringIO()

    def _print(*values: object, sep: str | None = " ", end: str | None = "\n", **_: object) -> None:
        out.write((" " if sep is None else sep).join(str(v) for v in values) + ("\n" if end is None else end))

    # A print of our own instead of redirect_stdout: that one is process-wide and would
    # capture whatever else the test process prints meanwhile.
    scope["print"] = _print
    ok = True
    try:
        try:
            compiled = compile(code, "<sandbox>", "eval")
        except SyntaxError:
            exec(compile(code, "<sandbox>", "exec"), scope)
        else:
            value = eval(compiled, scope)
            if value is not None:
                out.write(repr(value) + "\n")
    except Exception as exc:
        ok = False
        err.write(f"{type(exc).__name__}: {exc}\n")
    return ok, _lines("stdout", out.getvalue()) + _lines("stderr", err.getvalue())


def _fake_exec(box: FakeSandbox, command: str, args: list[str]) -> tuple[int, str, str]:
    """``(exit code, stdout, stderr)`` of the few commands the fake knows."""
    if command in ("sh", "/bin/sh") and len(args) == 2 and args[0] == "-c":
        return _fake_shell(box, args[1])
    if command == "echo":
        return 0, " ".join(args) + "\n", ""
    if command in ("true", "sleep"):
        return 0, "", ""
    if command == "false":
        return 1, "", ""
    if command == "cat":
        out, err, code = io.StringIO(), io.StringIO(), 0
        for arg in args:
            data = box.files.get(_norm(arg))
            if data is None:
                err.write(f"cat: {arg}: No such file or directory\n")
                code = 1
            else:
                out.write(data.decode("utf-8", "replace"))
        return code, out.getvalue(), err.getvalue()
    return 127, "", f"{command}: command not found\n"


def _fake_shell(box: FakeSandbox, line: str) -> tuple[int, str, str]:
    """``sh -c LINE`` for lines of the known commands joined by ``&&`` (no quoting, pipes or redirects)."""
    code, out, err = 0, "", ""
    for part in line.split("&&"):
        command, *args = part.split() or [""]
        code, o, e = _fake_exec(box, command, args)
        out, err = out + o, err + e
        if code != 0:
            break
    return code, out, err


def _command(command: str, args: list[str], code: int, out: str, err: str,
             success: bool | None = None) -> CommandResult:  # fmt: skip
    return CommandResult(
        command=command, args=list(args), exit_code=code, success=code == 0 if success is None else success,
        output=_lines("stdout", out) + _lines("stderr", err), stdout=out, stderr=err,
    )  # fmt: skip


_CONFORMS: Callable[[], SandboxService] = FakeService
"""mypy proves here that the fake keeps up with the Protocol."""
