"""Hostile API clients pulling images: SSRF through ``config.image`` and the operator's credentials.

A pull an API client asks for runs under a :class:`~engine.images.policy.PullPolicy`. Attacks:
name a loopback/private/link-local registry (the server itself, cloud metadata, an internal
service), a name that resolves there, a DNS answer that changes between check and connect, a
redirect from an allowed registry to a private address, a proxy that would carry the request;
and make the server send the operator's registry credentials (msb's auth file, ``~/.netrc``)
to a registry of the client's choosing.
"""

from __future__ import annotations

import base64
import http.server
import ipaddress
import json
import socket
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from engine.errors import AuthError, ImageError
from engine.images import credentials
from engine.images.credentials import Credentials
from engine.images.policy import PullPolicy, RegistryPolicyError, blocked_reason
from engine.images.pull import pull_image
from engine.images.store import ImageStore
from tests.support.images import busybox_layer
from tests.support.registry import LocalRegistry, push_layout

TENANT = PullPolicy()
PUBLIC_V4 = "93.184.216.34"
Answer = tuple[int, dict[str, str], bytes]


class Recorder:
    """A tiny HTTP server on 127.0.0.1 that records every request's path and Authorization."""

    def __init__(self, answer: Callable[[str, str | None], Answer]) -> None:
        self.hits: list[tuple[str, str | None]] = []
        recorder = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                auth = self.headers.get("Authorization")
                recorder.hits.append((self.path, auth))
                status, headers, body = answer(self.path, auth)
                self.send_response(status)
                for key, value in {**headers, "Content-Length": str(len(body))}.items():
                    self.send_header(key, value)
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args: Any) -> None:
                pass

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.port = self.server.server_address[1]
        self.host = f"127.0.0.1:{self.port}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def serve() -> Iterator[Callable[[Callable[[str, str | None], Answer]], Recorder]]:
    servers: list[Recorder] = []

    def start(answer: Callable[[str, str | None], Answer]) -> Recorder:
        servers.append(Recorder(answer))
        return servers[-1]

    yield start
    for s in servers:
        s.close()


@pytest.fixture(autouse=True)
def hermetic(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """Credentials only from files this test writes; no proxy unless the test sets one."""
    home = tmp_path / "home"
    home.mkdir()
    for var, value in (("MSB_STORAGE_PATH", tmp_path / "state"), ("DOCKER_CONFIG", tmp_path / "docker"),
                       ("HOME", home), ("NETRC", home / ".netrc")):  # fmt: skip
        monkeypatch.setenv(var, str(value))
    for var in ("HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY", "NO_PROXY", "MSB_INSECURE_REGISTRIES"):
        monkeypatch.delenv(var, raising=False)
        monkeypatch.delenv(var.lower(), raising=False)


@pytest.fixture
def store(tmp_path: Path) -> ImageStore:
    return ImageStore(tmp_path / "store")


@pytest.fixture
def connects(monkeypatch: pytest.MonkeyPatch) -> list[tuple[str, int]]:
    """Every outgoing TCP connect, recorded; only loopback ones really happen (no traffic out)."""
    log: list[tuple[str, int]] = []
    real = socket.socket.connect

    def connect(self: socket.socket, address: Any) -> None:
        log.append((str(address[0]), int(address[1])))
        if not ipaddress.ip_address(address[0]).is_loopback:
            raise ConnectionRefusedError(111, "refused by the test")
        real(self, address)

    monkeypatch.setattr(socket.socket, "connect", connect)
    return log


def fake_dns(monkeypatch: pytest.MonkeyPatch, answers: dict[str, Callable[[], list[str]]]) -> None:
    """``getaddrinfo`` answers for made-up names; everything else goes to the real resolver."""
    real = socket.getaddrinfo

    def getaddrinfo(host: Any, port: Any, *args: Any, **kwargs: Any) -> Any:
        if host not in answers:
            return real(host, port, *args, **kwargs)
        return [(socket.AF_INET, socket.SOCK_STREAM, 6, "", (a, int(port))) for a in answers[host]()]

    monkeypatch.setattr(socket, "getaddrinfo", getaddrinfo)


@pytest.fixture(scope="module")
def pushed(registry: LocalRegistry, tmp_path_factory: pytest.TempPathFactory) -> str:
    image = busybox_layer(tmp_path_factory.mktemp("img"))
    return push_layout(image.layout, image.ref, registry, "msb-security/busybox:1").ref


# --- the real registry on loopback ---------------------------------------------------------


async def test_tenant_pull_from_a_loopback_registry_is_refused(pushed: str, store: ImageStore) -> None:
    with pytest.raises(RegistryPolicyError, match=r"127\.0\.0\.1.*loopback") as info:
        await pull_image(pushed, store, policy=TENANT)
    assert "--allow-registry 127.0.0.1:" in (info.value.hint or "")
    assert store.find(pushed) is None


async def test_listed_private_registry_and_operator_pulls_work(pushed: str, registry: LocalRegistry,
                                                               tmp_path: Path) -> None:  # fmt: skip
    allowed = PullPolicy(allowed_private=(registry.host,))
    record = (await pull_image(pushed, ImageStore(tmp_path / "a"), policy=allowed)).record
    assert record.name == pushed
    assert (await pull_image(pushed, ImageStore(tmp_path / "b"))).record.digest == record.digest


# --- addresses refused before any connection -----------------------------------------------


@pytest.mark.parametrize("image", [
    "169.254.169.254/latest/meta-data", "127.0.0.1:22/x", "localhost:5555/x", "10.0.0.5:5000/x",
    "192.168.1.1/x", "172.16.0.1:443/x", "100.64.0.1/x", "0.0.0.0:80/x", "2130706433:5000/x",
    "[::1]:5000/x", "[::ffff:127.0.0.1]:5000/x", "[fe80::1]/x", "[fd00::1]/x", "224.0.0.1/x",
])  # fmt: skip
async def test_private_addresses_are_refused_without_traffic(image: str, store: ImageStore,
                                                             connects: list[tuple[str, int]]) -> None:  # fmt: skip
    with pytest.raises(RegistryPolicyError, match="may not reach it"):
        await pull_image(image, store, policy=TENANT)
    assert connects == []


async def test_a_name_with_any_private_address_is_refused(monkeypatch: pytest.MonkeyPatch, store: ImageStore,
                                                          connects: list[tuple[str, int]]) -> None:  # fmt: skip
    fake_dns(monkeypatch, {"registry.example": lambda: [PUBLIC_V4, "10.1.2.3"]})
    with pytest.raises(RegistryPolicyError, match=r"resolves to 10\.1\.2\.3, a private address"):
        await pull_image("registry.example/app:1", store, policy=TENANT)
    assert connects == []


async def test_dns_rebinding_after_the_check_is_not_followed(monkeypatch: pytest.MonkeyPatch, store: ImageStore,
                                                             connects: list[tuple[str, int]]) -> None:  # fmt: skip
    """The first answer is public, every later one is loopback: only the checked address is dialled."""
    calls = {"n": 0}

    def rebinding() -> list[str]:
        calls["n"] += 1
        return [PUBLIC_V4] if calls["n"] == 1 else ["127.0.0.1"]

    fake_dns(monkeypatch, {"rebind.example": rebinding})
    with pytest.raises(ImageError):
        await pull_image("rebind.example/app:1", store, policy=TENANT)
    assert (PUBLIC_V4, 443) in connects
    assert all(ip == PUBLIC_V4 for ip, _ in connects), connects


async def test_a_proxy_does_not_carry_a_private_target(monkeypatch: pytest.MonkeyPatch, store: ImageStore,
                                                       serve: Callable[..., Recorder]) -> None:  # fmt: skip
    proxy = serve(lambda path, auth: (502, {}, b""))
    for var in ("HTTPS_PROXY", "HTTP_PROXY"):
        monkeypatch.setenv(var, f"http://{proxy.host}")
    with pytest.raises(RegistryPolicyError, match=r"10\.0\.0\.5"):
        await pull_image("10.0.0.5:5000/x", store, policy=TENANT)
    assert proxy.hits == []


async def test_redirect_from_an_allowed_registry_to_a_private_one_is_refused(
    store: ImageStore, serve: Callable[..., Recorder]
) -> None:
    inner = serve(lambda path, auth: (200, {"Content-Type": "application/json"}, b"{}"))
    outer = serve(lambda path, auth: (307, {"Location": f"http://localhost:{inner.port}/secret"}, b""))
    policy = PullPolicy(allowed_private=(outer.host,))
    with pytest.raises(RegistryPolicyError, match=rf"localhost:{inner.port} resolves to .*loopback"):
        await pull_image(f"{outer.host}/app:1", store, policy=policy)
    assert outer.hits and inner.hits == []


# --- the operator's credentials ------------------------------------------------------------

OPERATOR = Credentials(username="operator", password="s3cret-op")
OPERATOR_BASIC = "Basic " + base64.b64encode(b"operator:s3cret-op").decode()


def _registry_answer(scheme: str, port_of: Callable[[], int]) -> Callable[[str, str | None], Answer]:
    """401 with a ``scheme`` challenge until authorised; a token endpoint for Bearer; 404 after."""

    def answer(path: str, auth: str | None) -> Answer:
        if path.startswith("/token"):
            token = "authed" if auth == OPERATOR_BASIC else "anonymous"
            return 200, {"Content-Type": "application/json"}, json.dumps({"token": token}).encode()
        if auth is None or auth == "Bearer anonymous":
            challenge = ('Basic realm="t"' if scheme == "basic"
                         else f'Bearer realm="http://127.0.0.1:{port_of()}/token",service="t"')  # fmt: skip
            return 401, {"WWW-Authenticate": challenge}, b""
        return 404, {"Content-Type": "application/json"}, b'{"errors":[{"code":"MANIFEST_UNKNOWN"}]}'

    return answer


@pytest.mark.parametrize("scheme", ["basic", "bearer"])
async def test_tenant_pulls_never_send_the_operators_credentials(
    scheme: str, store: ImageStore, serve: Callable[..., Recorder]
) -> None:
    port: list[int] = []
    reg = serve(_registry_answer(scheme, lambda: port[0]))
    port.append(reg.port)
    credentials.save(reg.host, OPERATOR)
    Path(credentials.docker_config_file()).parent.mkdir(parents=True, exist_ok=True)
    Path(credentials.docker_config_file()).write_text(json.dumps({"auths": {reg.host: {"auth": "b3A6ZG9ja2Vy"}}}))
    Path.home().joinpath(".netrc").write_text("machine 127.0.0.1 login netrc password n3trc\n")
    tenant = PullPolicy(allowed_private=(reg.host,))
    with pytest.raises(AuthError):
        await pull_image(f"{reg.host}/app:1", store, policy=tenant)
    assert reg.hits and all(auth in (None, "Bearer anonymous") for _, auth in reg.hits), reg.hits

    reg.hits.clear()
    Path.home().joinpath(".netrc").unlink()  # requests would send it first for the operator
    with pytest.raises(ImageError, match="not found"):  # the operator's own pull: credentials sent
        await pull_image(f"{reg.host}/app:1", store)
    assert OPERATOR_BASIC in {auth for _, auth in reg.hits}


async def test_operator_may_let_tenants_use_the_credentials(store: ImageStore, serve: Callable[..., Recorder]) -> None:
    reg = serve(_registry_answer("basic", lambda: 0))
    credentials.save(reg.host, OPERATOR)
    policy = PullPolicy(allowed_private=(reg.host,), use_credentials=True)
    with pytest.raises(ImageError, match="not found"):
        await pull_image(f"{reg.host}/app:1", store, policy=policy)
    assert OPERATOR_BASIC in {auth for _, auth in reg.hits}


# --- the address classifier ----------------------------------------------------------------

_CGNAT = ipaddress.ip_network("100.64.0.0/10")


def _special(ip: ipaddress.IPv4Address | ipaddress.IPv6Address) -> bool:
    """What the ``ipaddress`` module itself says makes an address unfit for a tenant's pull."""
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        return True
    return (ip.is_loopback or ip.is_private or ip.is_link_local or ip.is_multicast or ip.is_unspecified
            or ip.is_reserved or ip in _CGNAT)  # fmt: skip


@given(st.ip_addresses(v=4))
def test_ipv4_blocked_exactly_when_special(ip: ipaddress.IPv4Address) -> None:
    assert (blocked_reason(ip) is not None) == _special(ip)


@given(st.ip_addresses(v=6))
def test_ipv6_blocked_whenever_special(ip: ipaddress.IPv6Address) -> None:
    if _special(ip):
        assert blocked_reason(ip) is not None


@given(st.ip_addresses(v=4))
def test_ipv4_forms_in_ipv6_are_blocked_like_ipv4(ip: ipaddress.IPv4Address) -> None:
    mapped = ipaddress.IPv6Address(f"::ffff:{ip}")
    six_to_four = ipaddress.IPv6Address((0x2002 << 112) | (int(ip) << 80) | 1)
    assert blocked_reason(mapped) is not None
    assert (blocked_reason(six_to_four) is not None) >= (blocked_reason(ip) is not None)


@pytest.mark.parametrize("text,blocked", [
    ("8.8.8.8", False), ("2606:4700::1111", False), ("169.254.169.254", True), ("fd00:ec2::254", True),
    ("100.127.255.255", True), ("255.255.255.255", True), ("::", True), ("64:ff9b::a9fe:a9fe", True),
])  # fmt: skip
def test_known_addresses(text: str, blocked: bool) -> None:
    assert (blocked_reason(ipaddress.ip_address(text)) is not None) is blocked


def test_server_settings_build_the_tenant_policy(monkeypatch: pytest.MonkeyPatch) -> None:
    from engine.errors import ConfigError
    from engine.server.settings import ServerSettings

    assert ServerSettings.from_env().pull_policy() == PullPolicy()  # tenants: anonymous, public only
    monkeypatch.setenv("MSB_ALLOWED_REGISTRIES", "registry.internal:5000, 10.0.0.5")
    monkeypatch.setenv("MSB_TENANT_REGISTRY_CREDENTIALS", "1")
    policy = ServerSettings.from_env().pull_policy()
    assert policy.use_credentials and policy.allows_private("10.0.0.5", 443)
    assert policy.allows_private("REGISTRY.internal", 5000) and not policy.allows_private("registry.internal", 5001)
    monkeypatch.setenv("MSB_ALLOWED_REGISTRIES", "registry.internal:http")
    with pytest.raises(ConfigError, match="not host or host:port"):
        ServerSettings.from_env()
