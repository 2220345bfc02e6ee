"""Browser safety of ``/api/v1/rpc`` and ``/mcp``: web pages in the user's browser are hostile.

A page the user opens can make the browser send requests to the server on loopback, and in
dev mode nothing else stands in its way. :class:`WebGuard` refuses them before auth and before
any body is read:

- **DNS rebinding** (``evil.example`` re-resolved to 127.0.0.1, so the page becomes "same
  origin" with the server): the ``Host`` header still says ``evil.example`` → HTTP 421.
  Accepted by default: ``localhost``, ``127.0.0.1``, ``[::1]`` and the bind address if it is not
  a wildcard, on any port; the operator adds names (``--allowed-host``, ``MSB_ALLOWED_HOSTS``;
  ``*`` allows any).
- **Cross-site requests** (CSRF): a browser marks them with ``Origin`` → HTTP 403 unless it is
  the server's own loopback origin or one the operator allows (``--allowed-origin``,
  ``MSB_ALLOWED_ORIGINS``). Requests without ``Origin`` (curl, SDKs) pass.
- **"Simple" requests**: a page may POST ``text/plain`` or a form cross-site without a CORS
  preflight; a POST must say ``Content-Type: application/json`` → else HTTP 415.

Every refusal is a JSON-RPC error saying what to configure. ``/api/v1/health`` is left open:
its answer is a constant, so a page learns nothing it could not learn from a refused request.
The MCP SDK's own DNS-rebinding protection gets the same lists (:meth:`WebPolicy.mcp_security`).
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable
from typing import Any

from mcp.server.transport_security import TransportSecuritySettings
from pydantic import BaseModel, ConfigDict
from starlette.datastructures import Headers
from starlette.responses import JSONResponse
from starlette.types import ASGIApp, Receive, Scope, Send

from engine.errors import ConfigError

ANY = "*"
LOOPBACK_NAMES = ("localhost", "127.0.0.1", "[::1]")
WILDCARD_BINDS = frozenset({"", "0.0.0.0", "::", "[::]"})
INVALID_REQUEST = -32600  # engine.server.rpc's; not imported from there: rpc imports the service layer
_SHOWN = 80
"""Characters of a refused header echoed back (the value is hostile; keep answers small)."""


def is_loopback(host: str) -> bool:
    """Whether ``host`` (a bind address or name) is only reachable from this host.

    Args:
        host: ``127.0.0.0/8``, ``::1`` (bracketed or not), ``localhost``, or anything else.

    Returns:
        True for loopback addresses and ``localhost``.
    """
    name = host.strip().lower().removeprefix("[").removesuffix("]")
    if name == "localhost":
        return True
    try:
        return ipaddress.ip_address(name).is_loopback
    except ValueError:
        return False


def check_dev_bind(dev: bool, host: str) -> None:
    """Refuse dev mode (no authentication) on an address other machines can reach.

    Raises:
        ConfigError: ``dev`` and ``host`` is not loopback.
    """
    if dev and not is_loopback(host):
        raise ConfigError(f"--dev (no authentication) on {host!r} would let anyone who reaches it run code",
                          hint="use --dev only with --host 127.0.0.1 (the default); for other addresses run "
                               "without --dev and give clients a key from `msb server keygen`")  # fmt: skip


def _split_host(value: str) -> tuple[str, str | None]:
    """``name[:port]`` → (lowercase name, port or None); IPv6 stays in brackets."""
    value = value.strip().lower()
    if value.startswith("["):
        name, _, rest = value.partition("]")
        return name + "]", rest[1:] if rest.startswith(":") else None
    if value.count(":") > 1:  # a bare IPv6 address, as in --host ::1
        return f"[{value}]", None
    name, sep, port = value.partition(":")
    return name, port if sep else None


def _host_entry(raw: str) -> str:
    entry = raw.strip().lower()
    if entry != ANY and (not entry or "/" in entry or any(c.isspace() for c in entry) or not _split_host(entry)[0]):
        raise ConfigError(f"allowed host {raw!r} is not a host name[:port]",
                          hint="e.g. --allowed-host msb.example.com or MSB_ALLOWED_HOSTS=msb.example.com:5555")
    return entry


def _origin_entry(raw: str) -> str:
    entry = raw.strip().lower().rstrip("/")
    scheme, sep, rest = entry.partition("://")
    if entry != ANY and (not sep or scheme not in ("http", "https") or not rest or "/" in rest):
        raise ConfigError(f"allowed origin {raw!r} is not scheme://host[:port]",
                          hint="e.g. --allowed-origin https://app.example.com")  # fmt: skip
    return entry


class WebPolicy(BaseModel):
    """Which ``Host`` and ``Origin`` values a request may carry (all lowercase)."""

    model_config = ConfigDict(frozen=True)
    hosts: frozenset[str]
    """``name`` (any port) or ``name:port``; IPv6 addresses in brackets; ``*`` = any."""
    origins: frozenset[str]
    """``scheme://host[:port]`` exactly; ``*`` = any."""

    @classmethod
    def for_server(cls, host: str, port: int, allowed_hosts: Iterable[str] = (),
                   allowed_origins: Iterable[str] = ()) -> WebPolicy:  # fmt: skip
        """The loopback defaults, the bind address (unless a wildcard) and the operator's entries.

        Args:
            host: the bind address (``--host``).
            port: the port (``--port``); the default origins are ``http://<loopback name>:<port>``.
            allowed_hosts: extra ``Host`` names (``name`` or ``name:port``), or ``*``.
            allowed_origins: extra origins (``scheme://host[:port]``), or ``*``.

        Raises:
            ConfigError: a malformed entry.
        """
        names = list(LOOPBACK_NAMES)
        if host.strip().lower() not in WILDCARD_BINDS:
            names.append(_split_host(host)[0])
        hosts = {*names, *(_host_entry(h) for h in allowed_hosts)}
        origins = {f"http://{n}:{port}" for n in names} | {_origin_entry(o) for o in allowed_origins}
        return cls(hosts=frozenset(hosts), origins=frozenset(origins))

    def host_ok(self, value: str | None) -> bool:
        """Whether a request's ``Host`` header is one this server answers to."""
        if ANY in self.hosts:
            return True
        if not value:
            return False
        name, port = _split_host(value)
        return name in self.hosts or (port is not None and f"{name}:{port}" in self.hosts)

    def origin_ok(self, value: str | None) -> bool:
        """Whether a request's ``Origin`` header (absent: not from a web page) may call."""
        return value is None or ANY in self.origins or value.strip().lower().rstrip("/") in self.origins

    def mcp_security(self) -> TransportSecuritySettings:
        """The same lists for the MCP SDK's DNS-rebinding protection (off only when ``*`` is allowed:
        the SDK has no way to say "any")."""
        if ANY in self.hosts or ANY in self.origins:
            return TransportSecuritySettings(enable_dns_rebinding_protection=False)
        hosts = sorted(h for n in self.hosts for h in ((n,) if _split_host(n)[1] is not None else (n, f"{n}:*")))
        return TransportSecuritySettings(allowed_hosts=hosts, allowed_origins=sorted(self.origins))


LOOPBACK_POLICY = WebPolicy(hosts=frozenset(LOOPBACK_NAMES), origins=frozenset())
"""Loopback names on any port and no web page at all: for an MCP endpoint built on its own."""


def _is_json(content_type: str | None) -> bool:
    """``application/json``, parameters (``; charset=utf-8``) allowed."""
    return content_type is not None and content_type.partition(";")[0].strip().lower() == "application/json"


def _refusal(status: int, message: str, hint: str) -> JSONResponse:
    body: dict[str, Any] = {"jsonrpc": "2.0", "error": {"code": INVALID_REQUEST, "message": message,
                                                        "data": {"hint": hint}}, "id": None}  # fmt: skip
    return JSONResponse(body, status_code=status)


class WebGuard:
    """ASGI middleware: the ``Host``, ``Origin`` and ``Content-Type`` checks of the module docstring."""

    def __init__(self, app: ASGIApp, policy: WebPolicy) -> None:
        self.app, self.policy = app, policy

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        refusal = self.refusal(scope) if scope["type"] == "http" else None
        if refusal is not None:
            await refusal(scope, receive, send)
            return
        await self.app(scope, receive, send)

    def refusal(self, scope: Scope) -> JSONResponse | None:
        """The error response for a request a web page may have forged, or ``None`` to let it through."""
        headers = Headers(scope=scope)
        host, origin = headers.get("host"), headers.get("origin")
        if not self.policy.host_ok(host):
            return _refusal(421, f"Host {str(host)[:_SHOWN]!r} is not one this server answers to (DNS rebinding "
                                 "protection)",
                            "connect to 127.0.0.1 or localhost, or have the operator allow the name: "
                            "--allowed-host NAME or MSB_ALLOWED_HOSTS=NAME,... ('*' allows any)")  # fmt: skip
        if not self.policy.origin_ok(origin):
            return _refusal(403, f"Origin {str(origin)[:_SHOWN]!r} may not call this server (cross-site request)",
                            "have the operator allow the web app's origin: --allowed-origin https://app.example "
                            "or MSB_ALLOWED_ORIGINS=... ('*' allows any)")  # fmt: skip
        if scope["method"] == "POST" and not _is_json(headers.get("content-type")):
            return _refusal(415, "Unsupported Media Type: POST JSON-RPC with Content-Type: application/json",
                            "e.g. curl -H 'Content-Type: application/json' -d '{...}'")
        return None
