"""The server's ASGI app: health, JSON-RPC and MCP behind bearer-key auth and a body limit."""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from engine.server import rpc
from engine.server.auth import ApiAuthError, Claims, authenticate, check_namespace, token_from_headers
from engine.server.service import SandboxService
from engine.server.settings import ServerSettings
from engine.server.web_guard import WebGuard, WebPolicy

log = logging.getLogger(__name__)
HEALTHY = {"message": "Service is healthy"}


class _TooLarge(Exception):
    pass


async def read_body(receive: Receive, limit: int) -> bytes:
    """The whole request body, or :class:`_TooLarge` past ``limit`` bytes."""
    chunks: list[bytes] = []
    size = 0
    while True:
        msg = await receive()
        if msg["type"] == "http.disconnect":
            break
        body = msg.get("body", b"")
        size += len(body)
        if size > limit:
            raise _TooLarge
        chunks.append(body)
        if not msg.get("more_body"):
            break
    return b"".join(chunks)


def _json(status: int, body: dict[str, Any]) -> Response:
    return JSONResponse(body, status_code=status)


class Gate:
    """Auth + body size for /api/v1/rpc and /mcp. Puts the key's claims in ``scope["msb.claims"]``
    (``None`` in dev mode) and replays the body it read to the app behind it."""

    def __init__(self, app: ASGIApp, settings: ServerSettings, secret: str | None) -> None:
        self.app, self.settings, self.secret = app, settings, secret

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        claims: Claims | None = None
        if not self.settings.dev:
            headers = {k.decode().lower(): v.decode("latin-1") for k, v in scope["headers"]}
            try:
                assert self.secret is not None
                claims = authenticate(self.secret, token_from_headers(headers), static_key=self.settings.api_key)
            except ApiAuthError as exc:
                denied = rpc.error_body(None, exc.code, exc.message, {"hint": exc.hint})
                await _json(exc.http_status, denied)(scope, receive, send)
                return
        scope["msb.claims"] = claims
        if scope["method"] in ("POST", "PUT"):
            try:
                body = await read_body(receive, self.settings.limits.max_body_bytes)
            except _TooLarge:
                limit = self.settings.limits.max_body_bytes
                too_big = rpc.error_body(None, rpc.INVALID_REQUEST, f"Request body over the {limit}-byte limit")
                await _json(413, too_big)(scope, receive, send)
                return
            sent = False

            async def replay() -> Message:
                nonlocal sent
                if not sent:
                    sent = True
                    return {"type": "http.request", "body": body, "more_body": False}
                return await receive()

            await self.app(scope, replay, send)
            return
        await self.app(scope, receive, send)


def build_app(
    settings: ServerSettings,
    service: SandboxService,
    *,
    secret: str | None,
    on_startup: Callable[[], Awaitable[None]] | None = None,
    on_shutdown: Callable[[], Awaitable[None]] | None = None,
) -> Starlette:
    """The Starlette app. ``secret`` is required unless ``settings.dev``.

    /api/v1/rpc and /mcp sit behind :class:`WebGuard` (Host, Origin, Content-Type: hostile web
    pages are refused before auth), then :class:`Gate` (key and body size).

    Raises:
        ApiAuthError: no ``secret`` outside dev mode.
        ConfigError: a malformed ``settings.allowed_hosts``/``allowed_origins`` entry.
    """
    if not settings.dev and not secret:
        raise ApiAuthError("the server has no secret", hint="run without --dev once to create one, or pass --key")
    from engine.server.mcp_app import build_mcp

    policy = WebPolicy.for_server(settings.host, settings.port, settings.allowed_hosts, settings.allowed_origins)

    def authorize_for(scope: Scope) -> Callable[[str], None]:
        claims = scope.get("msb.claims")
        return lambda ns: check_namespace(claims, ns)

    mcp = build_mcp(service, authorize=authorize_for, policy=policy)

    async def health(_: Request) -> Response:
        return JSONResponse(HEALTHY)

    async def rpc_endpoint(scope: Scope, receive: Receive, send: Send) -> None:
        t0 = time.perf_counter()
        body = await read_body(receive, settings.limits.max_body_bytes)
        try:
            status, doc = await rpc.handle(body, service, scope.get("msb.claims"), lambda: _client_gone(receive))
        except rpc.ClientGone:
            log.info("client went away: its command was stopped")
            return
        timing = {"Server-Timing": f"app;dur={(time.perf_counter() - t0) * 1000:.3f}"}
        response = (Response(status_code=status, headers=timing) if doc is None
                    else JSONResponse(doc, status_code=status, headers=timing))  # fmt: skip
        await response(scope, receive, send)

    @contextlib.asynccontextmanager
    async def lifespan(_: Starlette) -> AsyncIterator[None]:
        if on_startup is not None:
            await on_startup()
        async with mcp.lifespan():
            try:
                yield
            finally:
                if on_shutdown is not None:
                    await on_shutdown()

    return Starlette(
        routes=[
            Route("/api/v1/health", health, methods=["GET"]),
            Route("/api/v1/rpc", endpoint=WebGuard(Gate(_only_post(rpc_endpoint), settings, secret), policy)),
            Route("/mcp", endpoint=WebGuard(Gate(mcp.asgi, settings, secret), policy)),
        ],
        lifespan=lifespan,
    )


async def _client_gone(receive: Receive) -> None:
    """Return once the client disconnects (the body has been read: only ``http.disconnect`` is left)."""
    while (await receive())["type"] != "http.disconnect":
        pass


def _only_post(app: ASGIApp) -> ASGIApp:
    async def wrapped(scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and scope["method"] != "POST":
            wrong = rpc.error_body(None, rpc.INVALID_REQUEST, "Method not allowed: POST JSON-RPC here")
            await JSONResponse(wrong, status_code=405, headers={"Allow": "POST"})(scope, receive, send)
            return
        await app(scope, receive, send)

    return wrapped
