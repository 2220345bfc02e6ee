"""JSON-RPC 2.0 over ``POST {server_url}/api/v1/rpc`` — the SDK's only way to the server.

Transport failures, HTTP statuses and JSON-RPC errors become :class:`SandboxError`\\ s here and
nowhere else.
"""

from __future__ import annotations

import logging
import os
import uuid
from typing import Any

import httpx
from pydantic import ValidationError

from engine.client.errors import (
    SandboxAuthError,
    SandboxConnectionError,
    SandboxError,
    SandboxTimeoutError,
)
from engine.client.models import RpcResponse

__all__ = [
    "CALL_MARGIN_S",
    "CONNECT_TIMEOUT_S",
    "DEFAULT_CALL_TIMEOUT_S",
    "DEFAULT_SERVER_URL",
    "RPC_PATH",
    "RpcClient",
    "http_timeout",
    "resolve_api_key",
    "resolve_server_url",
]

log = logging.getLogger(__name__)

DEFAULT_SERVER_URL = "http://127.0.0.1:5555"
RPC_PATH = "/api/v1/rpc"
CONNECT_TIMEOUT_S = 10.0
"""Seconds to wait for the TCP connection; the read timeout is per call."""
CALL_MARGIN_S = 30.0
"""Added to an operation's own timeout for the HTTP wait: the server needs time to notice the
timeout, interrupt the work and answer."""
DEFAULT_CALL_TIMEOUT_S = 300.0
"""HTTP wait when the caller gives no timeout (the server then applies its own)."""
SERVER_HINT = "is the server running? start it with `msb server start`"
AUTH_HINT = "check MSB_API_KEY / msb server keygen"


def http_timeout(op_timeout: float | None) -> float:
    """Seconds to wait for the HTTP answer to an operation that may take ``op_timeout`` seconds.

    Args:
        op_timeout: the operation's own timeout, or ``None`` when the server picks it.

    Returns:
        ``op_timeout`` plus :data:`CALL_MARGIN_S`, or :data:`DEFAULT_CALL_TIMEOUT_S`.
    """
    return DEFAULT_CALL_TIMEOUT_S if op_timeout is None else op_timeout + CALL_MARGIN_S


def resolve_server_url(server_url: str | None) -> str:
    """The server URL to use: the argument, else ``MSB_SERVER_URL``, else the default.

    Args:
        server_url: an explicit URL, or ``None``.

    Returns:
        The URL without a trailing slash.
    """
    url = server_url or os.environ.get("MSB_SERVER_URL") or DEFAULT_SERVER_URL
    return url.rstrip("/")


def resolve_api_key(api_key: str | None) -> str | None:
    """The API key to send: the argument, else ``MSB_API_KEY``, else none (dev-mode servers).

    Args:
        api_key: an explicit key, or ``None``.

    Returns:
        The key, or ``None`` to send no ``Authorization`` header.
    """
    return api_key or os.environ.get("MSB_API_KEY") or None


KEEPALIVE_EXPIRY_S = 5.0
"""Idle expiry of the SDK's pooled connections: shorter than the server's keep-alive."""


class RpcClient:
    """Calls JSON-RPC methods on one msb server.

    Owns an ``httpx.AsyncClient`` (created on first use, closed by :meth:`aclose`) unless one
    was passed in, which it uses and never closes.
    """

    def __init__(self, server_url: str, api_key: str | None, client: httpx.AsyncClient | None = None) -> None:
        self.server_url = server_url
        self.api_key = api_key
        self._client = client
        self._owns_client = client is None

    @property
    def rpc_url(self) -> str:
        return f"{self.server_url}{RPC_PATH}"

    def _http(self) -> httpx.AsyncClient:
        if self._client is None:
            self._client = self._new_client()
        return self._client

    def _new_client(self) -> httpx.AsyncClient:
        # A seam for tests: they swap in a client on a fake transport to watch it get closed.
        # Idle connections expire here (5 s) well before the server closes them (75 s), so a
        # request never goes out on a connection the server is closing.
        return httpx.AsyncClient(limits=httpx.Limits(keepalive_expiry=KEEPALIVE_EXPIRY_S))

    async def aclose(self) -> None:
        """Close the HTTP client if this object created it; a later call opens a new one."""
        if self._owns_client and self._client is not None:
            client, self._client = self._client, None
            await client.aclose()

    async def call(self, method: str, params: dict[str, Any], *, timeout: float) -> Any:
        """Call one method and return its ``result``.

        Args:
            method: the JSON-RPC method, e.g. ``"sandbox.repl.run"``.
            params: its params object.
            timeout: seconds to wait for the answer (the server's own work included).

        Returns:
            The response's ``result`` member, as decoded JSON.

        Raises:
            SandboxConnectionError: the server could not be reached.
            SandboxTimeoutError: no answer within ``timeout`` seconds.
            SandboxAuthError: HTTP 401/403.
            SandboxError: any other HTTP failure or JSON-RPC error (``.code`` says which).
        """
        body = {"jsonrpc": "2.0", "method": method, "params": params, "id": uuid.uuid4().hex}
        log.debug("rpc %s %s", method, params.get("sandbox"))
        try:
            limits = httpx.Timeout(timeout, connect=CONNECT_TIMEOUT_S)
            response = await self._http().post(self.rpc_url, json=body, headers=self._headers(), timeout=limits)
        except httpx.ConnectTimeout as exc:
            raise SandboxTimeoutError(
                f"{method}: could not connect to {self.server_url} in time", hint=SERVER_HINT
            ) from exc
        except httpx.TimeoutException as exc:
            raise SandboxTimeoutError(f"{method}: no answer from {self.server_url} within {timeout:g} s") from exc
        except httpx.ConnectError as exc:
            raise SandboxConnectionError(
                f"{method}: cannot connect to the msb server at {self.server_url} ({exc})", hint=SERVER_HINT
            ) from exc
        except httpx.HTTPError as exc:
            raise SandboxConnectionError(f"{method}: talking to {self.server_url} failed: {exc!r}") from exc
        return self._result(method, response)

    def _headers(self) -> dict[str, str]:
        headers = {"Accept": "application/json"}
        if self.api_key:
            headers["Authorization"] = f"Bearer {self.api_key}"
        return headers

    def _result(self, method: str, response: httpx.Response) -> Any:
        status = response.status_code
        envelope = _envelope(response)
        if status in (401, 403):
            detail = envelope.error.message if envelope and envelope.error else response.text[:300]
            hint = AUTH_HINT if self.api_key else f"{AUTH_HINT} (no API key was sent)"
            raise SandboxAuthError(
                f"{method}: the server refused the request (HTTP {status}): {detail}", code=status, hint=hint
            )
        if envelope is not None and envelope.error is not None:
            raise _rpc_error(method, envelope)
        if status != 200 or envelope is None:
            raise SandboxError(
                f"{method}: unexpected HTTP {status} from {self.rpc_url}: {response.text[:300]!r}", code=status
            )
        if "result" not in envelope.model_fields_set:
            raise SandboxError(f"{method}: the server's answer has neither result nor error", code=status)
        return envelope.result


def _envelope(response: httpx.Response) -> RpcResponse | None:
    """The JSON-RPC envelope of ``response``, or ``None`` when the body is not one."""
    try:
        doc = response.json()
    except ValueError:  # json.JSONDecodeError and UnicodeDecodeError are both ValueErrors
        return None
    if not isinstance(doc, dict):
        return None
    try:
        return RpcResponse.model_validate(doc)
    except ValidationError:
        return None


def _rpc_error(method: str, envelope: RpcResponse) -> SandboxError:
    assert envelope.error is not None
    err = envelope.error
    data = err.data
    hint = data.get("hint") if isinstance(data, dict) and isinstance(data.get("hint"), str) else None
    return SandboxError(f"{method} failed: {err.message}", code=err.code, hint=hint, data=data)
