"""MCP at ``/mcp``: sandboxes as tools for AI agents, on the official ``mcp`` SDK (2.x).

Streamable HTTP, **stateless with JSON responses**: one POST in, one JSON-RPC answer out; no
``Mcp-Session-Id``, no SSE (GET/DELETE → 405). Every era the SDK speaks works: the 2026-07-28
per-request envelope (``mcp.Client`` probes it first via ``server/discover``) and the
``initialize`` handshake at 2024-11-05 … 2025-11-25 (unknown versions get 2025-11-25).

Seed-style ``tools/call`` (``{"tool_name": "sandbox.command.run", "sandbox_name": …}``, no
``name``) predates MCP tools, and so does ``prompts/get`` with ``prompt_name`` (no ``name``);
:class:`McpEndpoint` answers both itself, before the SDK (which would reject them), and replays
every other body to the SDK untouched.

Wiring::

    mcp = build_mcp(service, authorize=authorize_for)
    app = Starlette(routes=[Route("/mcp", endpoint=mcp.asgi)], lifespan=lambda _: mcp.lifespan())
"""

from __future__ import annotations

import contextlib
import json
import logging
from collections.abc import AsyncIterator, Callable
from typing import Any, TypeAlias

import mcp_types as types
from mcp.server import Server, ServerRequestContext
from mcp.server.streamable_http_manager import StreamableHTTPSessionManager
from mcp.shared.exceptions import MCPError
from pydantic import BaseModel, Field, ValidationError
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from engine.errors import ConfigError, MsbError, NotFoundError
from engine.server import rpc
from engine.server.mcp_tools import (
    DEFAULT_NAMESPACE,
    INSTRUCTIONS,
    PROMPTS,
    TOOLS,
    ToolArgs,
    prompt_result,
    tool_schema,
)
from engine.server.service import SandboxService
from engine.server.web_guard import LOOPBACK_POLICY, WebGuard, WebPolicy

log = logging.getLogger(__name__)

_Ctx: TypeAlias = ServerRequestContext[Any]
_Page: TypeAlias = types.PaginatedRequestParams | None
Authorize: TypeAlias = Callable[[Scope], Callable[[str], None]]
"""``authorize(scope)(namespace)`` raises an :class:`MsbError` when the request behind ``scope``
may not touch ``namespace``."""
DEFAULT_MAX_BODY_BYTES = 10 << 20

# --- results and wire helpers ---------------------------------------------------------------


def _failed(code: int, message: str, hint: str | None = None) -> types.CallToolResult:
    text = f"{message}\nhint: {hint}" if hint else message
    error = {"code": code, "message": message, **({"hint": hint} if hint else {})}
    return types.CallToolResult(content=[types.TextContent(text=text)], structured_content={"error": error},
                                is_error=True)  # fmt: skip


def _invalid(exc: ValidationError) -> str:
    err = exc.errors()[0]
    loc = ".".join(str(p) for p in err["loc"]) or "arguments"
    return f"Invalid params: {loc}: {'unknown field' if err['type'] == 'extra_forbidden' else err['msg']}"


def _error(status: int, code: int, message: str) -> Response:
    return JSONResponse(rpc.error_body(None, code, message), status_code=status)


async def _read_body(receive: Receive, limit: int) -> bytes | None:
    """The whole request body, or ``None`` once it grows past ``limit`` bytes."""
    body = bytearray()
    while True:
        msg = await receive()
        body += msg.get("body", b"")
        if len(body) > limit:
            return None
        if msg["type"] == "http.disconnect" or not msg.get("more_body"):
            return bytes(body)


def _replay(body: bytes, receive: Receive) -> Receive:
    sent = False

    async def replay() -> Message:
        nonlocal sent
        if not sent:
            sent = True
            return {"type": "http.request", "body": body, "more_body": False}
        return await receive()  # after the body: wait for http.disconnect like a live request

    return replay


# --- seed-style calls -----------------------------------------------------------------------


class _SeedCall(BaseModel):
    tool_name: str
    sandbox_name: str
    namespace: str = DEFAULT_NAMESPACE
    command: str | None = None
    args: list[str] | None = None
    timeout: float | None = Field(None, gt=0, le=3600)

    @staticmethod
    def find(body: bytes) -> dict[str, Any] | None:
        """The request if it is seed-style (see :data:`_SEED_KEYS`), else ``None``."""
        if b"tool_name" not in body and b"prompt_name" not in body:  # cheap: most bodies are parsed once
            return None
        try:
            doc = json.loads(body)
        except (ValueError, RecursionError):  # the SDK answers it: a parse error
            return None
        method = doc.get("method") if isinstance(doc, dict) else None
        key = _SEED_KEYS.get(method) if isinstance(method, str) else None  # a list "method" is unhashable
        params = doc.get("params") if key else None
        return doc if isinstance(params, dict) and key in params and "name" not in params else None

    async def run(self, service: SandboxService) -> dict[str, Any]:
        if self.tool_name == "sandbox.metrics.get":
            found = await service.metrics(self.namespace, self.sandbox_name)
            if not found:
                raise NotFoundError(f"Sandbox '{self.sandbox_name}' not found")
            return found[0].model_dump()
        if self.tool_name != "sandbox.command.run":
            raise ConfigError(f"Invalid params: unknown tool_name {self.tool_name!r}")
        if not self.command:
            raise ConfigError("Invalid params: command is required")
        command, args = self.command, self.args
        if args is None:  # one string, as the guide sends it ("pip install x && python -c …"): a shell line
            command, args = SEED_SHELL, ["-c", self.command]
        r = await service.run_command(self.namespace, self.sandbox_name, command, args, self.timeout)
        return {"stdout": r.stdout, "stderr": r.stderr, "exit_code": r.exit_code}


class _SeedPrompt(BaseModel):
    prompt_name: str = Field(max_length=128)  # echoed in "Unknown prompt: …": never a client's megabyte
    arguments: dict[str, str] | None = None

    def run(self) -> dict[str, Any]:
        return prompt_result(self.prompt_name, self.arguments).model_dump(mode="json", by_alias=True, exclude_none=True)


_SEED_KEYS = {"tools/call": "tool_name", "prompts/get": "prompt_name"}
"""The methods answered seed-style, and the key that marks their seed shape (when ``name`` is absent)."""
SEED_SHELL = "/bin/sh"
"""A seed-style command without ``args`` runs as ``/bin/sh -c COMMAND`` (the standard tool and the RPC
method never add a shell): every image msb runs has it, busybox included."""


# --- the endpoint ---------------------------------------------------------------------------


class McpEndpoint:
    """What :func:`build_mcp` returns: ``asgi`` to route at ``/mcp``, ``lifespan()`` to run it.

    ``asgi`` is this object (so ``Route("/mcp", endpoint=asgi)`` treats it as ASGI, not as a
    request handler): it answers seed-style calls itself and replays every other POST body to
    the SDK. ``server`` is the SDK's low-level ``Server`` (in-process use: ``mcp.Client(server)``);
    ``manager`` is the SDK's session manager while ``lifespan()`` runs.
    """

    def __init__(self, service: SandboxService, authorize: Authorize | None, max_body_bytes: int,
                 policy: WebPolicy) -> None:  # fmt: skip
        self.service, self.authorize, self.max_body_bytes, self.policy = service, authorize, max_body_bytes, policy
        self.server = self._build_server()
        self.manager: StreamableHTTPSessionManager | None = None
        self.asgi: ASGIApp = self
        self.guard = WebGuard(self, policy)

    @contextlib.asynccontextmanager
    async def lifespan(self) -> AsyncIterator[None]:
        """Run the SDK's session manager; enter it from the app's lifespan. A new manager each
        time (the SDK's runs only once), so the app may be started again."""
        manager = StreamableHTTPSessionManager(
            app=self.server, json_response=True, stateless=True, max_request_body_size=self.max_body_bytes,
            security_settings=self.policy.mcp_security(),
        )
        async with manager.run():
            self.manager = manager
            try:
                yield
            finally:
                self.manager = None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return
        resp: Response
        if (refused := self.guard.refusal(scope)) is not None:  # seed-style calls never reach the SDK's check
            resp = refused
        elif self.manager is None:
            resp = _error(503, rpc.INTERNAL_ERROR, "MCP is not running (its lifespan was not entered)")
        elif scope["method"] != "POST":  # stateless: no session to DELETE, no stream to GET
            resp = _error(405, rpc.INVALID_REQUEST, "Method not allowed: POST JSON-RPC here")
            resp.headers["Allow"] = "POST"
        elif (body := await _read_body(receive, self.max_body_bytes)) is None:
            resp = _error(413, rpc.INVALID_REQUEST, f"Request body over the {self.max_body_bytes}-byte limit")
        elif (doc := _SeedCall.find(body)) is not None:
            resp = await self._seed(scope, doc)
        else:
            await self.manager.handle_request(scope, _replay(body, receive), send)
            return
        await resp(scope, receive, send)

    def _check(self, scope: Scope | None, namespace: str) -> None:
        if self.authorize is None:
            return
        if scope is None:  # fail closed: without the HTTP request there is no key to check
            raise MsbError("no HTTP request to authorize this call against")
        check = self.authorize(scope)
        if not callable(check):  # fail closed on a mis-wired callback rather than skip the check
            raise MsbError("server misconfiguration: authorize(scope) must return a checker")
        check(namespace)

    async def _call(self, scope: Scope | None, tool: type[ToolArgs], arguments: dict[str, Any]) -> types.CallToolResult:
        """Validate, authorize and run one tool call; every failure becomes an ``isError`` result."""
        try:
            args = tool.model_validate(arguments)
            self._check(scope, args.namespace)
            result = await args.run(self.service)
        except ValidationError as exc:
            return _failed(rpc.INVALID_PARAMS, _invalid(exc))
        except MsbError as exc:
            err = rpc.msb_error(exc)
            return _failed(err.code, err.message, exc.hint)
        except Exception:
            log.exception("MCP tool call failed")
            return _failed(rpc.INTERNAL_ERROR, "Internal error (the details are in the server log)")
        structured = result.model_dump() if isinstance(result, BaseModel) else result
        structured = structured if isinstance(structured, dict) else {"message": structured}
        text = json.dumps(structured, indent=2, ensure_ascii=False)
        return types.CallToolResult(content=[types.TextContent(text=text)], structured_content=structured)

    async def _seed(self, scope: Scope, doc: dict[str, Any]) -> Response:
        """Answer one seed-style ``tools/call``: a JSON-RPC response (202 and no body for a notification)."""
        id_, status = doc.get("id"), 200
        try:
            result = await self._seed_result(scope, doc)
            body: dict[str, Any] = {"jsonrpc": "2.0", "result": result, "id": id_}
        except MCPError as exc:  # an unknown prompt
            body = rpc.error_body(id_, exc.code, exc.message)
        except ValidationError as exc:
            body = rpc.error_body(id_, rpc.INVALID_PARAMS, _invalid(exc))
        except NotFoundError:  # the seed's exact wording, trailing period included
            name = doc["params"].get("sandbox_name")
            body = rpc.error_body(id_, rpc.INVALID_PARAMS, f"Invalid params: Sandbox '{name}' not found.")
        except MsbError as exc:
            err = rpc.msb_error(exc)
            status, body = getattr(exc, "http_status", 200), rpc.error_body(id_, err.code, err.message, err.data)
        except Exception:
            log.exception("seed-style MCP call failed")
            body = rpc.error_body(id_, rpc.INTERNAL_ERROR, "Internal error")
        return Response(status_code=202) if "id" not in doc and status == 200 else JSONResponse(body, status)

    async def _seed_result(self, scope: Scope, doc: dict[str, Any]) -> dict[str, Any]:
        if doc["method"] == "prompts/get":  # static text: no namespace to authorize
            return _SeedPrompt.model_validate(doc["params"]).run()
        call = _SeedCall.model_validate(doc["params"])
        self._check(scope, call.namespace)
        return await call.run(self.service)

    def _build_server(self) -> Server[Any]:
        tools = [tool_schema(name, model) for name, model in TOOLS.items()]
        schemas = {t.name: t.input_schema for t in tools}

        async def list_tools(_: _Ctx, __: _Page) -> types.ListToolsResult:
            return types.ListToolsResult(tools=tools)

        async def call_tool(ctx: _Ctx, params: types.CallToolRequestParams) -> types.CallToolResult:
            tool = TOOLS.get(params.name)
            if tool is None:
                raise MCPError(types.INVALID_PARAMS, f"Unknown tool: {params.name}")
            scope = ctx.request.scope if isinstance(ctx.request, Request) else None
            return await self._call(scope, tool, params.arguments or {})

        async def list_prompts(_: _Ctx, __: _Page) -> types.ListPromptsResult:
            return types.ListPromptsResult(prompts=PROMPTS)

        async def get_prompt(_: _Ctx, params: types.GetPromptRequestParams) -> types.GetPromptResult:
            return prompt_result(params.name, params.arguments)

        return Server(
            "msb", version="0.1.0", instructions=INSTRUCTIONS, get_tool_input_schema=schemas.get,
            on_list_tools=list_tools, on_call_tool=call_tool, on_list_prompts=list_prompts, on_get_prompt=get_prompt,
        )  # fmt: skip


def build_mcp(service: SandboxService, *, authorize: Authorize | None = None,
              max_body_bytes: int = DEFAULT_MAX_BODY_BYTES, policy: WebPolicy = LOOPBACK_POLICY,
              ) -> McpEndpoint:  # fmt: skip
    """The MCP endpoint over ``service``.

    Args:
        service: what the tools call.
        authorize: ``authorize(scope)(namespace)`` is called before every tool acts, with the
            ASGI scope of the HTTP request and the tool's ``namespace`` argument; an
            :class:`MsbError` it raises becomes an ``isError`` result (seed-style calls: a JSON-RPC
            error, with the error's ``http_status`` if it has one). ``None``: no checks.
        max_body_bytes: larger POST bodies get HTTP 413 with a JSON-RPC error.
        policy: the ``Host``/``Origin`` values accepted (engine/server/web_guard.py), checked here and
            by the SDK's DNS-rebinding protection; default loopback names and no web page.

    Returns:
        The endpoint; route ``.asgi`` at ``/mcp`` and enter ``.lifespan()`` in the app's lifespan.
    """
    return McpEndpoint(service, authorize, max_body_bytes, policy)
