"""Who asked for a pull decides what it may reach and which credentials it may send.

The operator's own pulls (``msb pull``, ``msb exe``, the server's warm pools) have no policy:
any registry, with the operator's stored credentials. A pull an API client asks for
(``sandbox.start`` with ``config.image``) runs under a :class:`PullPolicy`:

* the operator's credentials (msb's auth file, Docker's config) are not sent unless
  ``use_credentials``;
* no connection reaches a loopback, private, link-local, multicast, reserved or otherwise
  non-global address (SSRF through ``config.image``: ``127.0.0.1:22/x``, ``169.254.169.254/…``,
  the server itself), unless its registry host is in ``allowed_private``.

How the address rule holds (:class:`GuardedAdapter`, mounted on the ``requests`` session of the
registry client): every new connection resolves its host once, refuses when *any* address is
not global, and connects to the checked addresses themselves, so a DNS answer that changes
between check and connect (rebinding) is never used. TLS still verifies the certificate for
the host name (SNI and the ``Host`` header keep the name). Redirects (blob downloads to a CDN)
and token realms are new requests on the same session and are checked the same way. When the
environment routes a request through a proxy (``HTTPS_PROXY``), the target's name is checked
before sending; the proxy resolves it again, which is the proxy operator's concern.
"""

from __future__ import annotations

import ipaddress
import socket
from collections.abc import Iterable
from http.cookiejar import DefaultCookiePolicy
from typing import Any

import requests
import requests.adapters
import urllib3.connection
import urllib3.connectionpool
import urllib3.exceptions
from pydantic import BaseModel, ConfigDict, Field
from urllib3.util import parse_url

from engine.errors import ConfigError, ImageError

__all__ = ["GuardedAdapter", "PolicySession", "PullPolicy", "RegistryPolicyError", "blocked_reason"]

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address

_CGNAT = ipaddress.IPv4Network("100.64.0.0/10")
_GLOBAL_UNICAST_V6 = ipaddress.IPv6Network("2000::/3")
ALLOW_HINT = ("an operator can allow it: `msb server start --allow-registry {host}` "
              "(or MSB_ALLOWED_REGISTRIES={host})")  # fmt: skip


class RegistryPolicyError(ImageError):
    """A pull an API client asked for would reach an address its policy forbids (nothing was sent)."""


def blocked_reason(ip: IPAddress) -> str | None:
    """Why a tenant's pull may not connect to ``ip``, or None when it is a global unicast address.

    IPv4: everything not globally reachable (loopback, private, link-local, CGNAT ``100.64/10``,
    reserved, documentation ranges …) and multicast. IPv6: everything outside global unicast
    ``2000::/3`` (so ``::1``, ``fe80::/10``, ``fc00::/7``, IPv4-mapped and NAT64 forms), the
    non-global parts of it, and 6to4 addresses whose embedded IPv4 address is blocked.
    """
    if isinstance(ip, ipaddress.IPv6Address):
        mapped = ip.ipv4_mapped
        if mapped is not None:
            inner = blocked_reason(mapped)
            return f"IPv4-mapped {inner or 'address'}"
        if ip.sixtofour is not None and (inner := blocked_reason(ip.sixtofour)):
            return f"6to4 form of a {inner}"
        if ip not in _GLOBAL_UNICAST_V6:
            return _label(ip) or "address outside IPv6 global unicast"
    if ip.is_multicast or not ip.is_global:
        return _label(ip) or "address that is not globally reachable"
    return None


def _label(ip: IPAddress) -> str | None:
    for flag, label in (("is_loopback", "loopback address"), ("is_unspecified", "unspecified address"),
                        ("is_link_local", "link-local address"), ("is_multicast", "multicast address"),
                        ("is_private", "private address"), ("is_reserved", "reserved address")):  # fmt: skip
        if getattr(ip, flag):
            return label
    if isinstance(ip, ipaddress.IPv4Address) and ip in _CGNAT:
        return "carrier-grade NAT address"
    return None


def split_host(host_port: str) -> tuple[str, int | None]:
    """``host[:port]`` (``[v6]:port`` too) as a lowercase host and a port or None.

    Raises:
        ValueError: the port is not a number.
    """
    text = host_port.strip().lower()
    if text.startswith("["):
        host, _, rest = text[1:].partition("]")
        return host, int(rest[1:]) if rest.startswith(":") else None
    if text.count(":") == 1:
        host, port = text.split(":")
        return host, int(port)
    return text, None


class PullPolicy(BaseModel):
    """What a pull asked for by an API client may do; the operator's own pulls have none."""

    model_config = ConfigDict(frozen=True)

    use_credentials: bool = False
    """Send the operator's stored registry credentials (``--tenant-registry-credentials``)."""
    allowed_private: tuple[str, ...] = Field(default=())
    """Registry hosts (``host`` or ``host:port``) that may be reached although they resolve to
    loopback/private/link-local/reserved addresses (``--allow-registry``). A bare host allows
    any port; names are compared as written, not by address."""

    @classmethod
    def for_tenants(cls, *, use_credentials: bool = False, allowed_private: Iterable[str] = ()) -> PullPolicy:
        """The policy of pulls API clients ask for, from the operator's settings.

        Raises:
            ConfigError: an ``allowed_private`` entry is not ``host`` or ``host:port``.
        """
        entries = tuple(e.strip() for e in allowed_private if e.strip())
        for entry in entries:
            try:
                host, port = split_host(entry)
            except ValueError:
                host, port = "", None
            if not host or "/" in host or (port is not None and not 0 < port < 65536):
                raise ConfigError(
                    f"allowed registry {entry!r} is not host or host:port",
                    hint="e.g. --allow-registry registry.internal:5000 (MSB_ALLOWED_REGISTRIES=a:5000,b)",
                )
        return cls(use_credentials=use_credentials, allowed_private=entries)

    def allows_private(self, host: str, port: int | None) -> bool:
        """True when ``host:port`` is listed in ``allowed_private``."""
        want = host.strip("[]").rstrip(".").lower()
        for entry in self.allowed_private:
            try:
                ahost, aport = split_host(entry)
            except ValueError:
                continue
            if ahost == want and aport in (None, port):
                return True
        return False

    def checked_addresses(self, host: str, port: int) -> list[str]:
        """Resolve ``host`` once and return its addresses, every one of them allowed.

        Returns:
            The addresses to connect to, in resolver order (the host itself when it is listed
            in ``allowed_private``: then the ordinary resolver runs at connect).

        Raises:
            RegistryPolicyError: an address is not global and the host is not allowed.
            OSError: the name does not resolve (``socket.gaierror``).
        """
        if self.allows_private(host, port):
            return [host]
        name = host.strip("[]")
        infos = socket.getaddrinfo(name, port, type=socket.SOCK_STREAM, proto=socket.IPPROTO_TCP)
        addresses: list[str] = []
        for *_, sockaddr in infos:
            addr = str(sockaddr[0]).split("%", 1)[0]
            reason = blocked_reason(ipaddress.ip_address(addr))
            if reason is not None:
                shown = host if ":" not in name else f"[{name}]"
                raise RegistryPolicyError(
                    f"registry {shown}:{port} resolves to {addr}, a {reason}; pulls asked for by API "
                    "clients may not reach it",
                    hint=ALLOW_HINT.format(host=f"{shown}:{port}"),
                )
            if addr not in addresses:
                addresses.append(addr)
        return addresses


class _GuardedConnection(urllib3.connection.HTTPConnection):
    """Connects only to addresses the policy checked, resolved once (no rebinding window)."""

    policy: PullPolicy

    def _new_conn(self) -> socket.socket:
        name = self._dns_host
        last: Exception | None = None
        try:
            addresses = self.policy.checked_addresses(name, self.port)
        except socket.gaierror:
            return super()._new_conn()  # urllib3 words the resolver failure
        try:
            for addr in addresses:
                self._dns_host = addr  # connect to the checked address; self.host is the name again below
                try:
                    return super()._new_conn()
                except (urllib3.exceptions.NewConnectionError, urllib3.exceptions.ConnectTimeoutError) as exc:
                    last = exc
        finally:
            self._dns_host = name  # TLS (SNI, certificate) and the Host header use the name
        assert last is not None
        raise last


class _GuardedHTTPSConnection(_GuardedConnection, urllib3.connection.HTTPSConnection):
    pass


class GuardedAdapter(requests.adapters.HTTPAdapter):
    """A ``requests`` transport whose every connection obeys ``policy`` (module docstring)."""

    def __init__(self, policy: PullPolicy, **kwargs: Any) -> None:
        self.policy = policy
        super().__init__(**kwargs)

    def init_poolmanager(self, connections: int, maxsize: int, block: bool = False, **pool_kwargs: Any) -> None:
        super().init_poolmanager(connections, maxsize, block, **pool_kwargs)
        attrs = {"policy": self.policy}
        http = type("PolicyHTTPConnection", (_GuardedConnection,), attrs)
        https = type("PolicyHTTPSConnection", (_GuardedHTTPSConnection,), attrs)
        self.poolmanager.pool_classes_by_scheme = {
            "http": type("PolicyHTTPPool", (urllib3.connectionpool.HTTPConnectionPool,), {"ConnectionCls": http}),
            "https": type("PolicyHTTPSPool", (urllib3.connectionpool.HTTPSConnectionPool,), {"ConnectionCls": https}),
        }

    def send(self, request: requests.PreparedRequest, *args: Any, **kwargs: Any) -> requests.Response:
        proxies = kwargs.get("proxies") or (args[4] if len(args) > 4 else None)
        if proxies and requests.utils.select_proxy(request.url or "", proxies):
            url = parse_url(request.url or "")
            if url.host is not None:  # through a proxy our connections go to the proxy: check the target's name
                self.policy.checked_addresses(url.host, url.port or (443 if url.scheme == "https" else 80))
        return super().send(request, *args, **kwargs)


class PolicySession(requests.Session):
    """The ``requests`` session of a pull under a policy: every connection through
    :class:`GuardedAdapter`, no cookies, and never the operator's ``~/.netrc`` credentials
    (``requests`` adds them for any host it is sent to, redirects included)."""

    def __init__(self, policy: PullPolicy) -> None:
        super().__init__()
        self.auth = _no_netrc
        self.cookies.set_policy(DefaultCookiePolicy(allowed_domains=[]))  # as oras does: registries set some
        adapter = GuardedAdapter(policy, pool_connections=4, pool_maxsize=16)
        self.mount("http://", adapter)
        self.mount("https://", adapter)

    def rebuild_auth(self, prepared_request: requests.PreparedRequest, response: requests.Response) -> None:
        # requests' own version would add ~/.netrc credentials for the redirect's host
        url = prepared_request.url or ""
        if "Authorization" in prepared_request.headers and self.should_strip_auth(response.request.url or "", url):
            del prepared_request.headers["Authorization"]


def _no_netrc(request: requests.PreparedRequest) -> requests.PreparedRequest:
    """A session-wide auth that adds nothing: with one set, requests does not read ``~/.netrc``."""
    return request
