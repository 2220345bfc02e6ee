"""MCP at ``/mcp``: sandboxes as tools for AI agents, on the official ``mcp`` SDK (2.x).

Streamable HTTP, **stateless with JSON responses**: one POST in, one JSON-RPC answer out; no
``Mcp-Session-Id``, no SSE (GET/DELETE → 405). Every era the SDK speaks works: the 2026-07-28
per-request envelope (``mcp.Client`` probes it first via ``server/discover``) and the
``initialize`` handshake at 2024-11-05 … 2025-11-25 (unknown versions get 2025-11-25).

Seed-style ``tools/call`` (``{"tool_name": "sandbox.command.run", "sandbox_name": …}``, no
``name``) predates MCP tools; :class:`McpEndpoint` answers it itself, before the SDK (which
would reject it), and replays every other body to the SDK untouched.

Wiring::

    mcp = build_mcp(service, authorize=authorize_for)
    app = Starlette(routes=[Route("/mcp", endpoint=mcp.asgi)], lifespan=lambda _: mcp.lifespan())
"""

from __future__ import annotations

import base64
import binascii
import contextlib
import json
import logging
import shlex
from collections.abc import AsyncIterator, Callable
from typing import Any, ClassVar, Literal, TypeAlias

import mcp_types as types
from mcp.server import Server, ServerRequestContext
from mcp.server.streamable_http_manager import StreamableHTTPSessionManager
from mcp.shared.exceptions import MCPError
from pydantic import BaseModel, ConfigDict, Field, ValidationError
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from engine.errors import ConfigError, MsbError, NotFoundError
from engine.server import rpc
from engine.server.service import SandboxConfig, SandboxService

log = logging.getLogger(__name__)

_Ctx: TypeAlias = ServerRequestContext[Any]
_Page: TypeAlias = types.PaginatedRequestParams | None
Authorize: TypeAlias = Callable[[Scope], Callable[[str], None]]
"""``authorize(scope)(namespace)`` raises an :class:`MsbError` when the request behind ``scope``
may not touch ``namespace``."""
DEFAULT_MAX_BODY_BYTES = 10 << 20
DEFAULT_NAMESPACE = "default"
_NAME = r"^[A-Za-z0-9][A-Za-z0-9_-]{0,62}$"
_NAME_OR_ALL = r"^(\*|[A-Za-z0-9][A-Za-z0-9_-]{0,62})$"
INSTRUCTIONS = ("msb runs untrusted code in microVM sandboxes. Start one with sandbox_start (image microsandbox/"
                "python or microsandbox/node), run code with sandbox_run_code (state persists between calls) or "
                "programs with sandbox_run_command, and always sandbox_stop it when done.")  # fmt: skip

# --- tools: one pydantic model each; its docstring, fields and ``run`` are the tool ---------


class _Args(BaseModel):
    model_config = ConfigDict(extra="forbid")
    read_only: ClassVar[bool] = False
    namespace: str = Field(pattern=_NAME, description="Namespace of the sandbox")

    async def run(self, s: SandboxService) -> Any:
        raise NotImplementedError


class _SandboxArgs(_Args):
    sandbox: str = Field(pattern=_NAME, description="Name of the sandbox: 1-63 of [A-Za-z0-9_-]")


class StartArgs(_SandboxArgs):
    """Start a sandbox (an isolated microVM) for running code, or keep it if it already runs. Images:
    'microsandbox/python' and 'microsandbox/node'. Always stop it with sandbox_stop when done."""

    config: SandboxConfig | None = Field(None, description=(
        "How to make the sandbox: image ('microsandbox/python' or 'microsandbox/node'), memory (MiB), "
        "cpus, envs ['K=V'], workdir, shell, scripts {name: body}. Leave out to start a sandbox already "
        "defined in the namespace's Sandboxfile."))  # fmt: skip

    async def run(self, s: SandboxService) -> Any:
        return await s.start(self.namespace, self.sandbox, self.config)


class StopArgs(_SandboxArgs):
    """Stop a running sandbox and free its resources. Call it when you are done with it."""

    async def run(self, s: SandboxService) -> Any:
        return await s.stop(self.namespace, self.sandbox)


class RunCodeArgs(_SandboxArgs):
    """Run code in a started sandbox's interpreter (one per language; variables persist between
    calls). Returns status 'success' or 'error' and the output lines in order."""

    language: Literal["python", "node", "nodejs", "javascript"] = Field(description="Language of the code")
    code: str = Field(description="Code to run")
    timeout: float | None = Field(None, gt=0, le=3600, description="Seconds before the code is interrupted")

    async def run(self, s: SandboxService) -> Any:
        return await s.run_code(self.namespace, self.sandbox, self.language, self.code, self.timeout)


class RunCommandArgs(_SandboxArgs):
    """Run a program in a started sandbox (no shell) and wait for it. Returns exit_code, stdout,
    stderr and the output lines in order."""

    command: str = Field(min_length=1, description="Program to run (no shell; use 'sh' with args for one)")
    args: list[str] = Field(default_factory=list, description="Arguments of the program")
    timeout: float | None = Field(None, gt=0, le=3600, description="Seconds before the process group is killed")

    async def run(self, s: SandboxService) -> Any:
        return await s.run_command(self.namespace, self.sandbox, self.command, self.args, self.timeout)


class ListArgs(_Args):
    """List the sandboxes of a namespace with their image and status."""

    read_only = True
    namespace: str = Field(pattern=_NAME_OR_ALL, description="Namespace, or '*' for all of them")

    async def run(self, s: SandboxService) -> Any:
        return {"sandboxes": [i.model_dump() for i in await s.list(self.namespace)]}


class MetricsArgs(ListArgs):
    """CPU (% of one CPU), memory (MiB) and disk (bytes) of sandboxes; stopped ones show nulls."""

    sandbox: str | None = Field(None, pattern=_NAME, description="Only this sandbox")

    async def run(self, s: SandboxService) -> Any:
        return {"sandboxes": [m.model_dump() for m in await s.metrics(self.namespace, self.sandbox)]}


class FileReadArgs(_SandboxArgs):
    """Read a file from a started sandbox. The result's 'encoding' says how 'content' is given:
    'utf-8' text, or 'base64' when the file is not valid UTF-8."""

    read_only = True
    path: str = Field(min_length=1, description="Path of the file in the sandbox")

    async def run(self, s: SandboxService) -> Any:
        data = await s.read_file(self.namespace, self.sandbox, self.path)
        try:
            encoding, content = "utf-8", data.decode("utf-8")
        except UnicodeDecodeError:
            encoding, content = "base64", base64.b64encode(data).decode()
        return {"path": self.path, "size": len(data), "encoding": encoding, "content": content}


class FileWriteArgs(FileReadArgs):
    """Write a file in a started sandbox, replacing it."""

    read_only = False
    content: str = Field(description="What to write: text, or base64 when encoding is 'base64'")
    encoding: Literal["utf-8", "base64"] = Field("utf-8", description="How content is encoded")

    async def run(self, s: SandboxService) -> Any:
        try:
            text = self.content if self.encoding == "utf-8" else "".join(self.content.split())  # wrapped base64 ok
            data = text.encode() if self.encoding == "utf-8" else base64.b64decode(text, validate=True)
        except binascii.Error:
            raise ConfigError("Invalid params: content is not valid base64") from None
        await s.write_file(self.namespace, self.sandbox, self.path, data)
        return {"path": self.path, "size": len(data), "message": f"Wrote {len(data)} bytes to {self.path}"}


TOOLS: dict[str, type[_Args]] = {
    "sandbox_start": StartArgs, "sandbox_stop": StopArgs, "sandbox_run_code": RunCodeArgs,
    "sandbox_run_command": RunCommandArgs, "sandbox_get_metrics": MetricsArgs, "sandbox_list": ListArgs,
    "sandbox_file_read": FileReadArgs, "sandbox_file_write": FileWriteArgs,
}


def _tool(name: str, model: type[_Args]) -> types.Tool:
    """The tool as ``tools/list`` shows it: the model's JSON Schema with ``$ref``s inlined and
    titles dropped (plainer for LLMs), its docstring as the description."""
    doc = model.model_json_schema()
    defs, description = doc.pop("$defs", {}), doc.pop("description")

    def walk(node: Any) -> Any:
        if isinstance(node, dict):
            if "$ref" in node:  # the field's own description beats the model's docstring
                return walk({k: v for k, v in defs[node["$ref"].rsplit("/", 1)[-1]].items() if k != "description"})
            return {k: walk(v) for k, v in node.items() if k != "title"}
        return [walk(v) for v in node] if isinstance(node, list) else node

    hints = types.ToolAnnotations(read_only_hint=True) if model.read_only else None
    return types.Tool(name=name, description=" ".join(description.split()), input_schema=walk(doc), annotations=hints)


# --- prompts --------------------------------------------------------------------------------

_PROMPTS = {  # name → (language label, image, run_code language, example)
    "create_python_sandbox": ("Python", "microsandbox/python", "python", "print('hello')"),
    "create_node_sandbox": ("Node.js", "microsandbox/node", "node", "console.log('hello')"),
}
_PROMPT_ARGS = [types.PromptArgument(name="sandbox_name", description="Name for the new sandbox", required=True),
                types.PromptArgument(name="namespace", description="Namespace for the sandbox", required=True)]
PROMPTS = [types.Prompt(name=n, description=f"Create a {p[0]} sandbox", arguments=_PROMPT_ARGS)
           for n, p in _PROMPTS.items()]  # fmt: skip


def _prompt(name: str, arguments: dict[str, str] | None) -> types.GetPromptResult:
    if name not in _PROMPTS:
        raise MCPError(types.INVALID_PARAMS, f"Unknown prompt: {name}")
    label, image, language, example = _PROMPTS[name]
    args = arguments or {}  # lenient like microsandbox: defaults for missing arguments
    sandbox = args.get("sandbox_name") or f"{language}-sandbox"
    namespace = args.get("namespace") or DEFAULT_NAMESPACE
    text = (
        f"Create a {label} sandbox named '{sandbox}' in namespace '{namespace}' with the sandbox_start tool, "
        f'config {{"image": "{image}", "memory": 512, "cpus": 1}}.\n\nThen run {label} code in it with '
        f'sandbox_run_code (language "{language}", e.g. code "{example}"); variables persist between calls. '
        "Run programs with sandbox_run_command. When you are done, stop it with sandbox_stop."
    )
    message = types.PromptMessage(role="user", content=types.TextContent(text=text))
    return types.GetPromptResult(description=f"Create a {label} sandbox", messages=[message])


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
        """The request if it is a seed-style ``tools/call`` (``tool_name``, no ``name``), else ``None``."""
        if b"tool_name" not in body:  # cheap pre-check: most bodies are never parsed twice
            return None
        try:
            doc = json.loads(body)
        except ValueError:
            return None
        params = doc.get("params") if isinstance(doc, dict) and doc.get("method") == "tools/call" else None
        return doc if isinstance(params, dict) and "tool_name" in params and "name" not in params else None

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
        if args is None:  # "ls -la" in one string: split like a shell would, but run no shell
            try:
                command, *args = shlex.split(command) or [command]
            except ValueError as exc:
                raise ConfigError(f"Invalid params: command: {exc}") from None
        r = await service.run_command(self.namespace, self.sandbox_name, command, args, self.timeout)
        return {"stdout": r.stdout, "stderr": r.stderr, "exit_code": r.exit_code}


# --- the endpoint ---------------------------------------------------------------------------


class McpEndpoint:
    """What :func:`build_mcp` returns: ``asgi`` to route at ``/mcp``, ``lifespan()`` to run it.

    ``asgi`` is this object (so ``Route("/mcp", endpoint=asgi)`` treats it as ASGI, not as a
    request handler): it answers seed-style calls itself and replays every other POST body to
    the SDK. ``server`` is the SDK's low-level ``Server`` (in-process use: ``mcp.Client(server)``);
    ``manager`` is the SDK's session manager while ``lifespan()`` runs.
    """

    def __init__(self, service: SandboxService, authorize: Authorize | None, max_body_bytes: int) -> None:
        self.service, self.authorize, self.max_body_bytes = service, authorize, max_body_bytes
        self.server = self._build_server()
        self.manager: StreamableHTTPSessionManager | None = None
        self.asgi: ASGIApp = self

    @contextlib.asynccontextmanager
    async def lifespan(self) -> AsyncIterator[None]:
        """Run the SDK's session manager; enter it from the app's lifespan. A new manager each
        time (the SDK's runs only once), so the app may be started again."""
        manager = StreamableHTTPSessionManager(
            app=self.server, json_response=True, stateless=True, max_request_body_size=self.max_body_bytes
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
        if self.manager is None:
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

    async def _call(self, scope: Scope | None, tool: type[_Args], arguments: dict[str, Any]) -> types.CallToolResult:
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
            call = _SeedCall.model_validate(doc["params"])
            self._check(scope, call.namespace)
            body: dict[str, Any] = {"jsonrpc": "2.0", "result": await call.run(self.service), "id": id_}
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

    def _build_server(self) -> Server[Any]:
        tools = [_tool(name, model) for name, model in TOOLS.items()]
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
            return _prompt(params.name, params.arguments)

        return Server(
            "msb", version="0.1.0", instructions=INSTRUCTIONS, get_tool_input_schema=schemas.get,
            on_list_tools=list_tools, on_call_tool=call_tool, on_list_prompts=list_prompts, on_get_prompt=get_prompt,
        )  # fmt: skip


def build_mcp(service: SandboxService, *, authorize: Authorize | None = None,
              max_body_bytes: int = DEFAULT_MAX_BODY_BYTES) -> McpEndpoint:  # fmt: skip
    """The MCP endpoint over ``service``.

    Args:
        service: what the tools call.
        authorize: ``authorize(scope)(namespace)`` is called before every tool acts, with the
            ASGI scope of the HTTP request and the tool's ``namespace`` argument; an
            :class:`MsbError` it raises becomes an ``isError`` result (seed-style calls: a JSON-RPC
            error, with the error's ``http_status`` if it has one). ``None``: no checks.
        max_body_bytes: larger POST bodies get HTTP 413 with a JSON-RPC error.

    Returns:
        The endpoint; route ``.asgi`` at ``/mcp`` and enter ``.lifespan()`` in the app's lifespan.
    """
    return McpEndpoint(service, authorize, max_body_bytes)
