"""JSON-RPC 2.0 on ``POST /api/v1/rpc`` (CONTRACTS.md): envelope checks, params as pydantic
models, dispatch to the :class:`~engine.server.service.SandboxService`, errors mapped to
codes in one place. Internal errors are logged with detail and answered without it."""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Awaitable, Callable
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from engine.errors import MsbError, NotFoundError
from engine.server.auth import ApiAuthError, Claims, check_namespace
from engine.server.service import SandboxConfig, SandboxService

log = logging.getLogger(__name__)

PARSE_ERROR = -32700
INVALID_REQUEST = -32600
METHOD_NOT_FOUND = -32601
INVALID_PARAMS = -32602
INTERNAL_ERROR = -32603


DEFAULT_NAMESPACE = "default"


class _Params(BaseModel):
    model_config = ConfigDict(extra="forbid")


class StartParams(_Params):
    sandbox: str
    namespace: str
    config: SandboxConfig | None = None


class StopParams(_Params):
    sandbox: str
    namespace: str


class ReplParams(_Params):
    sandbox: str
    namespace: str = DEFAULT_NAMESPACE  # microsandbox's SDK 0.1.x leaves it out here
    language: str
    code: str
    timeout: float | None = Field(default=None, gt=0, le=3600)


class CommandParams(_Params):
    sandbox: str
    namespace: str = DEFAULT_NAMESPACE
    command: str = Field(min_length=1)
    args: list[str] = Field(default_factory=list)
    timeout: float | None = Field(default=None, gt=0, le=3600)


class MetricsParams(_Params):
    namespace: str = DEFAULT_NAMESPACE
    sandbox: str | None = None


class InfoParams(_Params):
    namespace: str = DEFAULT_NAMESPACE
    """Only for the key check: any key may ask which backend its sandboxes run on."""


class RpcError(Exception):
    def __init__(self, code: int, message: str, data: Any = None, *, http_status: int = 200) -> None:
        super().__init__(message)
        self.code, self.message, self.data, self.http_status = code, message, data, http_status


Handler = Callable[[SandboxService, Any], Awaitable[Any]]


async def _start(s: SandboxService, p: StartParams) -> Any:
    return await s.start(p.namespace, p.sandbox, p.config)


async def _stop(s: SandboxService, p: StopParams) -> Any:
    return await s.stop(p.namespace, p.sandbox)


async def _repl(s: SandboxService, p: ReplParams) -> Any:
    return (await s.run_code(p.namespace, p.sandbox, p.language, p.code, p.timeout)).model_dump()


async def _command(s: SandboxService, p: CommandParams) -> Any:
    return (await s.run_command(p.namespace, p.sandbox, p.command, p.args, p.timeout)).model_dump()


async def _metrics(s: SandboxService, p: MetricsParams) -> Any:
    return {"sandboxes": [m.model_dump() for m in await s.metrics(p.namespace, p.sandbox)]}


async def _info(s: SandboxService, p: InfoParams) -> Any:
    return (await s.info()).model_dump()


METHODS: dict[str, tuple[type[BaseModel], Handler]] = {
    "sandbox.start": (StartParams, _start),
    "sandbox.stop": (StopParams, _stop),
    "sandbox.repl.run": (ReplParams, _repl),
    "sandbox.command.run": (CommandParams, _command),
    "sandbox.metrics.get": (MetricsParams, _metrics),
    "server.info": (InfoParams, _info),
}


def error_body(id_: Any, code: int, message: str, data: Any = None) -> dict[str, Any]:
    err: dict[str, Any] = {"code": code, "message": message}
    if data is not None:
        err["data"] = data
    return {"jsonrpc": "2.0", "error": err, "id": id_}


def _params_error(exc: ValidationError) -> RpcError:
    err = exc.errors()[0]
    loc = ".".join(str(p) for p in err["loc"]) or "params"
    msg = "unknown field" if err["type"] == "extra_forbidden" else err["msg"]
    return RpcError(INVALID_PARAMS, f"Invalid params: {loc}: {msg}")


def msb_error(exc: MsbError) -> RpcError:
    message = exc.message
    if isinstance(exc, NotFoundError) and not message.startswith("Invalid params"):
        message = f"Invalid params: {message}"
    return RpcError(exc.code, message, {"hint": exc.hint} if exc.hint else None)


ABANDONED_WITH_THE_CLIENT = frozenset({"sandbox.command.run"})
"""Methods whose work stops when the client goes away: the command is killed (its output
budget and execution slot freed), since nobody is left to read what it prints. Starts and
REPL runs finish (a half-started sandbox or a REPL interrupted mid-statement helps nobody)."""


Answer = tuple[int, dict[str, Any] | None]


async def handle(body: bytes, service: SandboxService, claims: Claims | None,
                 client_gone: Callable[[], Awaitable[None]] | None = None) -> Answer:  # fmt: skip
    """Answer one HTTP request body. Returns ``(http status, JSON body or None)``.

    Args:
        client_gone: waits until the client disconnects; for the methods in
            :data:`ABANDONED_WITH_THE_CLIENT` the work is cancelled then (the answer is not sent).
    """
    try:
        doc = json.loads(body)
    except (ValueError, RecursionError) as exc:  # bad UTF-8/JSON, an int past 4300 digits, nesting past the stack
        return 200, error_body(None, PARSE_ERROR, f"Parse error: {exc}")
    if isinstance(doc, list):
        return 200, error_body(None, INVALID_REQUEST, "Invalid Request: batches are not supported")
    if not isinstance(doc, dict):
        return 200, error_body(None, INVALID_REQUEST, "Invalid Request: expected a JSON object")
    id_ = doc.get("id")
    notification = "id" not in doc
    if doc.get("jsonrpc") != "2.0" or not isinstance(doc.get("method"), str) or not (
        id_ is None or isinstance(id_, (str, int))
    ) or isinstance(id_, bool):
        return 200, error_body(id_ if isinstance(id_, (str, int)) else None, INVALID_REQUEST,
                               'Invalid Request: need "jsonrpc": "2.0", a string "method" and an id')  # fmt: skip
    try:
        work = _dispatch(doc["method"], doc.get("params", {}), service, claims)
        if client_gone is not None and doc["method"] in ABANDONED_WITH_THE_CLIENT:
            result = await _unless_gone(work, client_gone)
        else:
            result = await work
    except RpcError as exc:
        if exc.http_status != 200:
            return exc.http_status, error_body(id_, exc.code, exc.message, exc.data)
        return (204, None) if notification else (200, error_body(id_, exc.code, exc.message, exc.data))
    return (204, None) if notification else (200, {"jsonrpc": "2.0", "result": result, "id": id_})


class ClientGone(Exception):
    """The client disconnected before the answer was ready; nothing is sent."""


async def _unless_gone(work: Awaitable[Any], client_gone: Callable[[], Awaitable[None]]) -> Any:
    """``work``'s result, or :class:`ClientGone` once the client disconnects (``work`` cancelled)."""
    task = asyncio.ensure_future(work)
    watch = asyncio.ensure_future(client_gone())
    try:
        await asyncio.wait({task, watch}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        watch.cancel()
        if not task.done():
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
            raise ClientGone
    return task.result()


async def _dispatch(method: str, params: Any, service: SandboxService, claims: Claims | None) -> Any:
    entry = METHODS.get(method)
    if entry is None:
        raise RpcError(METHOD_NOT_FOUND, f"Method not found: {method}", {"methods": sorted(METHODS)})
    model, fn = entry
    if not isinstance(params, dict):
        raise RpcError(INVALID_PARAMS, "Invalid params: expected an object")
    try:
        parsed = model.model_validate(params)
    except ValidationError as exc:
        raise _params_error(exc) from None
    namespace = getattr(parsed, "namespace", "*")
    try:
        check_namespace(claims, namespace)
    except ApiAuthError as exc:
        raise RpcError(exc.code, exc.message, {"hint": exc.hint}, http_status=exc.http_status) from None
    try:
        return await fn(service, parsed)
    except MsbError as exc:
        raise msb_error(exc) from None
    except Exception:
        log.exception("internal error in %s", method)
        raise RpcError(INTERNAL_ERROR, "Internal error (details are in the server log)") from None
