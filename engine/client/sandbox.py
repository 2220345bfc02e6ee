"""The sandbox objects: :class:`PythonSandbox` and :class:`NodeSandbox` on a shared
:class:`BaseSandbox` that holds the lifecycle (start/stop, ``async with``) and the RPC plumbing.
"""

from __future__ import annotations

import functools
import logging
import uuid
from types import TracebackType
from typing import Any, ClassVar, Self, TypeVar

import httpx
from pydantic import BaseModel, ValidationError

from engine.client.command import Command
from engine.client.creation import SandboxCreation
from engine.client.errors import SandboxError, SandboxNotStartedError
from engine.client.execution import Execution
from engine.client.metrics import Metrics
from engine.client.models import ReplResult, StartConfig
from engine.client.rpc import RpcClient, http_timeout, resolve_api_key, resolve_server_url

__all__ = ["BaseSandbox", "NodeSandbox", "PythonSandbox"]

log = logging.getLogger(__name__)

M = TypeVar("M", bound=BaseModel)

DEFAULT_MEMORY_MIB = 512
DEFAULT_CPUS = 1
DEFAULT_START_TIMEOUT_S = 180.0
"""Long enough for a first start that pulls and builds the image."""
STOP_TIMEOUT_S = 60.0


class BaseSandbox:
    """One named sandbox on an msb server. Subclasses fix the image and REPL language.

    Use ``async with PythonSandbox.create(...) as sb`` (started on entry, stopped on exit),
    ``sb = await PythonSandbox.create(...)`` (started; ``await sb.stop()`` when done), or
    construct it and call :meth:`start` / :meth:`stop` yourself.
    """

    default_image: ClassVar[str] = ""
    language: ClassVar[str] = ""

    def __init__(
        self,
        server_url: str | None = None,
        namespace: str = "default",
        name: str | None = None,
        api_key: str | None = None,
        *,
        client: httpx.AsyncClient | None = None,
    ) -> None:
        """Describe a sandbox; nothing is sent until :meth:`start`.

        Args:
            server_url: the msb server; default ``MSB_SERVER_URL``, else ``http://127.0.0.1:5555``.
            namespace: the sandbox's namespace.
            name: the sandbox's name; default a random ``sandbox-xxxxxxxx``.
            api_key: the key from ``msb server keygen``; default ``MSB_API_KEY``; none for
                servers started with ``--dev``.
            client: an ``httpx.AsyncClient`` to use (and not close); default one of our own,
                closed by :meth:`stop`.
        """
        self._rpc = RpcClient(resolve_server_url(server_url), resolve_api_key(api_key), client)
        self._namespace = namespace
        self._name = name or f"sandbox-{uuid.uuid4().hex[:8]}"
        self._started = False
        self._command = Command(self)
        self._metrics = Metrics(self)

    @property
    def name(self) -> str:
        return self._name

    @property
    def namespace(self) -> str:
        return self._namespace

    @property
    def server_url(self) -> str:
        return self._rpc.server_url

    @property
    def is_started(self) -> bool:
        return self._started

    @property
    def command(self) -> Command:
        """Run programs in the sandbox: ``await sb.command.run("ls", ["-la"])``."""
        return self._command

    @property
    def metrics(self) -> Metrics:
        """Resource use: ``await sb.metrics.cpu()``, ``.memory()``, ``.disk()``, ``.all()``."""
        return self._metrics

    async def get_default_image(self) -> str:
        """The image :meth:`start` uses when given none (microsandbox's SDK has this too).

        Returns:
            The image reference.
        """
        return self.default_image

    @classmethod
    def create(
        cls,
        server_url: str | None = None,
        namespace: str = "default",
        name: str | None = None,
        api_key: str | None = None,
        cpus: int = DEFAULT_CPUS,
        memory: int = DEFAULT_MEMORY_MIB,
        timeout: float = DEFAULT_START_TIMEOUT_S,
        *,
        image: str | None = None,
        client: httpx.AsyncClient | None = None,
        ephemeral: bool = False,
    ) -> SandboxCreation[Self]:
        """A sandbox to start: ``async with`` it (stopped after the body) or ``await`` it (you stop it).

        ``async with PythonSandbox.create(...) as sb`` starts the sandbox and stops it after the
        body; if the body raises, a failure to stop is logged and the body's exception propagates.
        ``sb = await PythonSandbox.create(...)`` starts it and returns it; a later ``await
        sb.start()`` sends nothing, and ``await sb.stop()`` is the caller's. Nothing is sent before
        either.

        Args:
            server_url, namespace, name, api_key, client: as for the constructor.
            cpus, memory, timeout, image, ephemeral: as for :meth:`start`.

        Returns:
            A :class:`~engine.client.creation.SandboxCreation`: awaitable and an async context
            manager, each giving the started sandbox.

        Raises:
            SandboxError: (when awaited or entered) the sandbox could not be started; (on leaving a
                clean ``async with`` body) stopped.
        """
        sandbox = cls(server_url=server_url, namespace=namespace, name=name, api_key=api_key, client=client)
        start = functools.partial(sandbox.start, image=image, memory=memory, cpus=cpus, timeout=timeout,
                                  ephemeral=ephemeral)  # fmt: skip
        return SandboxCreation(sandbox, start)

    async def __aenter__(self) -> Self:
        if not self._started:
            await self.start()
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        if exc is None:
            await self.stop()
        else:
            await self._stop_quietly()

    async def start(
        self,
        image: str | None = None,
        memory: int = DEFAULT_MEMORY_MIB,
        cpus: int = DEFAULT_CPUS,
        timeout: float = DEFAULT_START_TIMEOUT_S,
        *,
        ephemeral: bool = False,
    ) -> None:
        """Start the sandbox (``sandbox.start``). Does nothing if this object already started it.

        Args:
            image: OCI image; default the class's (``microsandbox/python``, ``microsandbox/node``).
            memory: MiB of guest memory.
            cpus: virtual CPUs.
            timeout: seconds to wait for the server, which may have to pull and build the
                image first.
            ephemeral: msb's addition (``config.ephemeral``): the sandbox keeps nothing after it
                stops, and a server with a warm pool of the image hands one out in
                milliseconds. Default: persistent, as microsandbox's.

        Raises:
            SandboxError: bad arguments (code ``-32602``) or the server refused or failed.
            SandboxTimeoutError: the server did not answer within ``timeout`` (plus a margin).
        """
        if self._started:
            return
        try:
            config = StartConfig(
                image=image or self.default_image, memory=memory, cpus=cpus, ephemeral=True if ephemeral else None
            )
        except ValidationError as exc:
            raise SandboxError(f"invalid sandbox config: {exc.errors()[0]['msg']}", code=-32602) from None
        try:
            answer = await self._rpc.call(
                "sandbox.start", {**self._ids(), "config": config.wire()}, timeout=http_timeout(timeout)
            )
        except BaseException:
            await self._rpc.aclose()
            raise
        log.debug("%s", answer)
        self._started = True

    async def stop(self) -> None:
        """Stop the sandbox (``sandbox.stop``) and close the HTTP client this object owns.

        Does nothing on the server if this object has not started the sandbox.

        Raises:
            SandboxError: the server refused or failed; the sandbox counts as still started,
                so ``stop()`` may be retried.
        """
        try:
            if self._started:
                await self._rpc.call("sandbox.stop", self._ids(), timeout=STOP_TIMEOUT_S)
                self._started = False
        finally:
            await self._rpc.aclose()

    async def run(self, code: str, timeout: float | None = None) -> Execution:
        """Run ``code`` in the sandbox's long-lived REPL; state persists between calls.

        Args:
            code: source in the sandbox's language.
            timeout: seconds after which the server interrupts the code (status ``"error"``);
                ``None``: the server's default.

        Returns:
            The status and output.

        Raises:
            SandboxNotStartedError: the sandbox was not started.
            SandboxError: the server refused or failed the call.
        """
        params: dict[str, Any] = {"language": self.language, "code": code}
        if timeout is not None:
            params["timeout"] = timeout
        raw = await self._call("sandbox.repl.run", params, timeout=http_timeout(timeout))
        return Execution(self._parse(ReplResult, raw, "sandbox.repl.run"))

    async def _call(self, method: str, params: dict[str, Any], *, timeout: float) -> Any:
        """Call ``method`` for this sandbox (``sandbox``/``namespace`` added to ``params``),
        waiting ``timeout`` seconds for the HTTP answer. Raises SandboxNotStartedError first
        when the sandbox is not started."""
        if not self._started:
            raise SandboxNotStartedError(
                f"sandbox not started; use `async with {type(self).__name__}.create(...)` or `await sb.start()`"
            )
        return await self._rpc.call(method, {**self._ids(), **params}, timeout=timeout)

    @staticmethod
    def _parse(model: type[M], raw: Any, method: str) -> M:
        """Validate a result; a malformed one is the server's fault, reported as SandboxError."""
        try:
            return model.model_validate(raw)
        except ValidationError as exc:
            raise SandboxError(f"{method}: the server's result is malformed: {exc.errors()[0]['msg']}") from None

    def _ids(self) -> dict[str, Any]:
        return {"sandbox": self._name, "namespace": self._namespace}

    async def _stop_quietly(self) -> None:
        # Used while another exception is propagating: it must not be replaced by this one.
        try:
            await self.stop()
        except Exception as exc:
            log.warning("could not stop sandbox %s/%s: %s", self._namespace, self._name, exc)

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}(name={self._name!r}, namespace={self._namespace!r}, "
            f"server_url={self.server_url!r}, started={self._started})"
        )


class PythonSandbox(BaseSandbox):
    """A sandbox with a persistent Python REPL (image ``microsandbox/python``)."""

    default_image = "microsandbox/python"
    language = "python"


class NodeSandbox(BaseSandbox):
    """A sandbox with a persistent Node.js REPL (image ``microsandbox/node``)."""

    default_image = "microsandbox/node"
    language = "node"
