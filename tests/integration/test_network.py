"""Network scopes and published ports in real VMs (docs/networking.md).

Each test boots one sandbox and checks a scope from inside it against servers this test runs
on the host: on 127.0.0.1 (what the guest reaches as 10.0.2.2) and on the host's own address.
``any`` reaching the loopback server proves the ``public`` checks can fail.
"""

from __future__ import annotations

import asyncio
import logging
import os
import socket
import subprocess
import time
import urllib.request
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from engine.errors import VmError
from engine.images.resolve import resolve_root
from engine.sandbox.engine import Engine
from engine.sandbox.sandbox import Sandbox
from engine.sandbox.spec import NetScope, PortMap, SandboxSpec

pytestmark = pytest.mark.qemu_only  # QEMU slirp; gVisor scopes: test_gvisor_network.py


@dataclass
class HostServer:
    """A TCP server on the host that records what guests send it."""

    port: int
    received: list[bytes] = field(default_factory=list)


@pytest.fixture
async def host_server() -> AsyncIterator[HostServer]:
    """Listens on all host addresses (so on 127.0.0.1 and the host's own address)."""
    state = HostServer(port=0)

    async def on_connect(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        state.received.append(await reader.read(100))
        writer.close()

    server = await asyncio.start_server(on_connect, host="0.0.0.0", port=0)
    state.port = server.sockets[0].getsockname()[1]
    try:
        yield state
    finally:
        server.close()
        await server.wait_closed()


def host_address() -> str | None:
    """The host's first global IPv4 address (e.g. its eth0 address), if it has one."""
    out = subprocess.run(["ip", "-4", "-o", "addr", "show", "scope", "global"], capture_output=True, text=True)
    for line in out.stdout.splitlines():
        words = line.split()
        if "inet" in words:
            return words[words.index("inet") + 1].split("/")[0]
    return None


def free_port(kind: int = socket.SOCK_STREAM) -> int:
    with socket.socket(socket.AF_INET, kind) as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


async def boot(engine: Engine, rootfs: Path, scope: NetScope, **kw: object) -> Sandbox:
    spec = SandboxSpec(name=f"net-{scope}-{os.urandom(2).hex()}", rootfs=rootfs, network=scope, **kw)  # type: ignore[arg-type]
    return await engine.start(spec)


async def sh(sb: Sandbox, script: str, timeout: float = 30) -> tuple[int, str]:
    res = await sb.exec(["sh", "-c", script], timeout=timeout)
    return res.exit_code, (res.stdout + res.stderr).decode()


async def test_scope_none_has_only_loopback(engine: Engine, busybox_rootfs: Path) -> None:
    sb = await boot(engine, busybox_rootfs, "none")
    try:
        code, out = await sh(sb, "tail -n +3 /proc/net/dev | cut -d: -f1")
        assert out.split() == ["lo"]
        for target in ("10.0.2.2 22", "1.1.1.1 80"):
            code, out = await sh(sb, f"echo | nc -w 3 {target}")
            assert code != 0 and "Network is unreachable" in out
    finally:
        await sb.kill()


async def test_public_blocks_the_host_but_not_the_internet(
    engine: Engine, busybox_rootfs: Path, host_server: HostServer
) -> None:
    sb = await boot(engine, busybox_rootfs, "public")
    own = host_address()
    try:
        assert (await sh(sb, "cat /etc/resolv.conf"))[1] == "nameserver 10.0.2.3\n"
        for ip in ["10.0.2.2"] + ([own] if own else []):  # the host's loopback (slirp's alias), its address
            code, out = await sh(sb, f"echo sneak | nc -w 3 {ip} {host_server.port}")
            assert code != 0 and "Network is unreachable" in out, (ip, out)
        assert host_server.received == []
        if own:
            assert (await sh(sb, f"ping -c 1 -W 2 {own}"))[0] != 0
        await asyncio.sleep(0.2)  # QEMU's stderr reaches the console tail asynchronously
        tail = sb.vm.console_tail(8000)
        assert f"msb-netfilter: blocked connect to 127.0.0.1 port {host_server.port} (loopback)" in tail
        if own:
            assert f"msb-netfilter: blocked connect to {own} port {host_server.port}" in tail
            assert f"msb-netfilter: blocked sendto to {own} port" in tail  # the ping

        # DNS goes to the host's resolver (often a private address: allowed on port 53 only)
        try:
            host_ips = {a[4][0] for a in socket.getaddrinfo("deb.debian.org", 80, socket.AF_INET)}
        except OSError:
            pytest.skip("the host cannot resolve deb.debian.org: no DNS or internet to test with")
        code, out = await sh(sb, "nslookup deb.debian.org")
        assert code == 0 and any(ip in out for ip in host_ips), out
        ip = sorted(host_ips)[0]
        try:
            socket.create_connection((ip, 80), timeout=5).close()
        except OSError:
            pytest.skip(f"the host cannot reach {ip}:80 itself")
        code, out = await sh(sb, f"printf 'HEAD / HTTP/1.0\\r\\n\\r\\n' | nc -w 10 {ip} 80 | head -1")
        assert out.startswith("HTTP/1."), out
    finally:
        await sb.kill()


async def test_any_reaches_the_hosts_loopback(
    engine: Engine, busybox_rootfs: Path, host_server: HostServer, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.INFO, logger="engine.vm.qemu"):
        sb = await boot(engine, busybox_rootfs, "any")
    assert "network scope any (unfiltered" in caplog.text
    try:
        code, out = await sh(sb, f"echo hello | nc -w 3 10.0.2.2 {host_server.port}")
        assert code == 0, out
        assert host_server.received == [b"hello\n"]
        assert "msb-netfilter" not in sb.vm.console_tail(8000)
    finally:
        await sb.kill()


async def test_group_publishes_ports_without_outbound_access(
    engine: Engine, busybox_rootfs: Path, host_server: HostServer
) -> None:
    port = free_port()
    sb = await boot(engine, busybox_rootfs, "group", ports=(PortMap(host_port=port, guest_port=8000),))
    try:
        code, out = await sh(sb, "mkdir -p /www && echo grouped > /www/index.html && httpd -p 8000 -h /www")
        assert code == 0, out
        assert (await asyncio.to_thread(http_get, port)) == b"grouped\n"
        code, out = await sh(sb, f"echo sneak | nc -w 3 10.0.2.2 {host_server.port}")
        assert code != 0 and host_server.received == []
        assert "nameserver" not in (await sh(sb, "cat /etc/resolv.conf"))[1]
    finally:
        await sb.kill()


def http_get(port: int, deadline_s: float = 30) -> bytes:
    """GET / on 127.0.0.1:port, retrying until the guest's server is up."""
    end = time.monotonic() + deadline_s
    while True:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/", timeout=5) as resp:
                body: bytes = resp.read()
                return body
        except OSError:
            if time.monotonic() > end:
                raise
            time.sleep(0.1)


UDP_ECHO = """
import socket, sys
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.bind(("0.0.0.0", 5000))
print("up", flush=True)
while True:
    data, peer = s.recvfrom(100)
    s.sendto(b"echo:" + data, peer)
    if data.startswith(b"to:"):  # try to use the published socket to reach another host port
        s.sendto(b"sneak", ("10.0.2.2", int(data[3:])))
"""


async def test_published_ports_in_a_public_python_sandbox(engine: Engine, base_images: None, tmp_path: Path) -> None:
    tcp, udp = free_port(), free_port(socket.SOCK_DGRAM)
    ports = (PortMap(host_port=tcp, guest_port=8000), PortMap(host_port=udp, guest_port=5000, protocol="udp"))
    root = await resolve_root("microsandbox/python")
    sb = await engine.start(root.spec(f"net-py-{os.urandom(2).hex()}", ports=ports, memory_mib=512))
    try:
        assert (await sh(sb, "cat /etc/resolv.conf"))[1] == "nameserver 10.0.2.3\n"  # the image's is replaced
        await sb.write_file("/srv/index.html", b"served from the guest\n")
        await sb.spawn(["python3", "-m", "http.server", "8000", "--directory", "/srv"])
        assert (await asyncio.to_thread(http_get, tcp)).endswith(b"served from the guest\n")

        echo = await sb.spawn(["python3", "-c", UDP_ECHO])
        first = await asyncio.wait_for(echo.read(), 30)
        assert first is not None and first.data.startswith(b"up")
        with (
            socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as client,
            socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as bystander,
        ):
            client.settimeout(10)
            bystander.settimeout(1)
            bystander.bind(("127.0.0.1", 0))
            client.sendto(b"to:%d" % bystander.getsockname()[1], ("127.0.0.1", udp))
            data, _ = await asyncio.to_thread(client.recvfrom, 100)
            assert data.startswith(b"echo:to:")  # the reply to the peer passes the filter
            with pytest.raises(TimeoutError):
                await asyncio.to_thread(bystander.recvfrom, 100)  # anyone else: blocked
    finally:
        await sb.kill()


async def test_a_host_port_in_use_is_a_clear_error(engine: Engine, busybox_rootfs: Path) -> None:
    with socket.create_server(("127.0.0.1", 0)) as taken:
        port = taken.getsockname()[1]
        with pytest.raises(VmError, match="host forwarding rule"):
            await boot(engine, busybox_rootfs, "group", ports=(PortMap(host_port=port, guest_port=80),))


async def test_a_shim_the_loader_refuses_stops_a_public_sandbox(
    engine: Engine, busybox_rootfs: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    broken = tmp_path / "msb-netfilter.so"
    broken.write_text("not an ELF file")  # ld.so only warns and runs QEMU without it
    monkeypatch.setenv("MSB_NETFILTER", str(broken))
    with pytest.raises(VmError, match="QEMU started without the network filter"):
        await boot(engine, busybox_rootfs, "public")
