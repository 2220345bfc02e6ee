"""Network scopes and published ports of gVisor sandboxes (engine/vm/gvisor_net.py), for real:
runsc, slirp4netns and the filter, against servers this test runs on the host.

Mirrors tests/integration/test_network.py (the QEMU backend): ``any`` reaching the host's
loopback proves the ``public`` and ``group`` checks can fail. Every test also checks that the
sandbox leaves nothing behind: no slirp4netns, and no process or fd in its network namespace.
"""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import subprocess
import sys
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from engine.errors import VmError
from engine.images.resolve import resolve_root
from engine.sandbox.engine import Engine
from engine.sandbox.sandbox import Sandbox
from engine.sandbox.spec import NetScope, PortMap, SandboxSpec
from engine.vm.gvisor import GvisorVm
from engine.vm.gvisor_net import GvisorNetwork
from tests.integration.conftest import pid_alive
from tests.integration.test_network import UDP_ECHO, free_port, host_address, http_get
from tests.unit.helpers import eventually


@pytest.fixture
def gv() -> Engine:
    return Engine(backend="gvisor")


@dataclass
class HostServer:
    """A TCP server on the host that records what guests send it."""

    port: int
    received: list[bytes] = field(default_factory=list)


async def serve(host: str) -> tuple[asyncio.Server, HostServer]:
    state = HostServer(port=0)

    async def on_connect(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        state.received.append(await reader.read(100))
        writer.close()

    server = await asyncio.start_server(on_connect, host=host, port=0)
    state.port = server.sockets[0].getsockname()[1]
    return server, state


@pytest.fixture
async def host_server() -> AsyncIterator[HostServer]:
    """Listens on all host addresses (so on 127.0.0.1 and the host's own address)."""
    server, state = await serve("0.0.0.0")
    try:
        yield state
    finally:
        server.close()
        await server.wait_closed()


@pytest.fixture
async def loopback_server() -> AsyncIterator[HostServer]:
    """Listens on the host's 127.0.0.1 only."""
    server, state = await serve("127.0.0.1")
    try:
        yield state
    finally:
        server.close()
        await server.wait_closed()


def network(sb: Sandbox) -> GvisorNetwork:
    assert isinstance(sb.vm, GvisorVm)
    return sb.vm._net


def netns_inode(sb: Sandbox) -> int | None:
    path = network(sb).netns_path
    return os.stat(path).st_ino if path else None


def users_of_netns(inode: int) -> list[str]:
    """Processes in the namespace, and fds of any process (this one too) that hold it."""
    found = []
    for pid in filter(str.isdigit, os.listdir("/proc")):
        for link in [f"/proc/{pid}/ns/net"] + [f"/proc/{pid}/fd/{fd}" for fd in _fds(pid)]:
            try:
                if os.readlink(link) == f"net:[{inode}]":
                    found.append(link)
            except OSError:
                continue
    return found


def _fds(pid: str) -> list[str]:
    try:
        return os.listdir(f"/proc/{pid}/fd")
    except OSError:
        return []


async def stop_and_check_released(sb: Sandbox) -> None:
    """Stop the sandbox; then no slirp4netns may run and nothing may hold its namespace."""
    slirp, inode = network(sb).slirp_pid, netns_inode(sb)
    await sb.kill()
    await eventually(lambda: not pid_alive(slirp), 10)
    if inode is not None:
        await eventually(lambda: not users_of_netns(inode), 10)
    assert "msb" not in subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout


async def boot(engine: Engine, rootfs: Path, scope: NetScope, **kw: object) -> Sandbox:
    spec = SandboxSpec(name=f"gnet-{scope}-{os.urandom(2).hex()}", rootfs=rootfs, network=scope, **kw)  # type: ignore[arg-type]
    return await engine.start(spec)


async def sh(sb: Sandbox, script: str, timeout: float = 30) -> tuple[int, str]:
    res = await sb.exec(["sh", "-c", script], timeout=timeout)
    return res.exit_code, (res.stdout + res.stderr).decode()


def internet_ip() -> str:
    """An address of deb.debian.org that the host itself reaches on port 80 (else skip)."""
    try:
        ip = sorted({str(a[4][0]) for a in socket.getaddrinfo("deb.debian.org", 80, socket.AF_INET)})[0]
        socket.create_connection((ip, 80), timeout=5).close()
    except OSError:
        pytest.skip("the host cannot resolve or reach deb.debian.org: no internet to test with")
    return ip


async def test_scope_none_has_only_loopback(gv: Engine, busybox_rootfs: Path) -> None:
    sb = await boot(gv, busybox_rootfs, "none", memory_mib=256)
    try:
        assert network(sb).runsc_flags == ["--network=none"] and network(sb).slirp_pid is None
        assert (await sh(sb, "tail -n +3 /proc/net/dev | cut -d: -f1"))[1].split() == ["lo"]
        for target in ("10.0.2.2 22", "1.1.1.1 80"):
            code, out = await sh(sb, f"echo | nc -w 3 {target}")
            assert code != 0 and ("No route to host" in out or "Network is unreachable" in out), out
        assert (await sh(sb, "cat /etc/hosts"))[1].endswith(f"\t{sb.spec.name}\n")
    finally:
        await stop_and_check_released(sb)


async def test_public_blocks_the_host_but_not_the_internet(
    gv: Engine, busybox_rootfs: Path, host_server: HostServer
) -> None:
    sb = await boot(gv, busybox_rootfs, "public", memory_mib=256)
    own = host_address()
    try:
        assert (await sh(sb, "cat /etc/resolv.conf"))[1] == "nameserver 10.0.2.3\n"
        for ip in ["10.0.2.2"] + ([own] if own else []):  # the host's loopback (slirp's alias), its address
            code, out = await sh(sb, f"echo sneak | nc -w 3 {ip} {host_server.port}")
            assert code != 0 and "Network is unreachable" in out, (ip, out)
        assert host_server.received == []
        if own:  # 10.0.2.2 is refused by slirp4netns itself (--disable-host-loopback), this by the filter
            line = f"msb-netfilter: blocked connect to {own} port {host_server.port} (an address of this host)"
            await eventually(lambda: line in network(sb).log_tail(8000), 5)

        ip = internet_ip()
        code, out = await sh(sb, "nslookup deb.debian.org")  # through 10.0.2.3 to the host's resolver
        assert code == 0 and ip in out, out
        code, out = await sh(sb, f"printf 'HEAD / HTTP/1.0\\r\\n\\r\\n' | nc -w 10 {ip} 80 | head -1")
        assert out.startswith("HTTP/1."), out
    finally:
        await stop_and_check_released(sb)


async def test_any_reaches_the_hosts_loopback(gv: Engine, busybox_rootfs: Path, loopback_server: HostServer) -> None:
    sb = await boot(gv, busybox_rootfs, "any", memory_mib=256)
    try:
        code, out = await sh(sb, f"echo hello | nc -w 3 10.0.2.2 {loopback_server.port}")
        assert code == 0, out
        await eventually(lambda: loopback_server.received == [b"hello\n"], 5)
        assert "msb-netfilter" not in network(sb).log_tail(8000)
    finally:
        await stop_and_check_released(sb)


async def test_group_publishes_ports_without_outbound_access(
    gv: Engine, busybox_rootfs: Path, host_server: HostServer
) -> None:
    port = free_port()
    sb = await boot(gv, busybox_rootfs, "group", ports=(PortMap(host_port=port, guest_port=8000),), memory_mib=256)
    try:
        code, out = await sh(sb, "mkdir -p /www && echo grouped > /www/index.html && httpd -p 8000 -h /www")
        assert code == 0, out
        assert (await asyncio.to_thread(http_get, port)) == b"grouped\n"  # on the host's 127.0.0.1
        code, out = await sh(sb, f"echo sneak | nc -w 3 10.0.2.2 {host_server.port}")
        assert code != 0 and host_server.received == []
        assert "nameserver" not in (await sh(sb, "cat /etc/resolv.conf"))[1]
        assert (await sh(sb, "nslookup deb.debian.org 10.0.2.3", timeout=60))[0] != 0
        ip = internet_ip()
        code, out = await sh(sb, f"echo | nc -w 5 {ip} 80")
        assert code != 0 and "Network is unreachable" in out, out
        line = f"msb-netfilter: blocked connect to {ip} port 80 (no outbound access in this network scope)"
        await eventually(lambda: line in network(sb).log_tail(8000), 5)
    finally:
        await stop_and_check_released(sb)


async def test_published_ports_in_a_public_python_sandbox(gv: Engine, base_images: None) -> None:
    tcp, udp = free_port(), free_port(socket.SOCK_DGRAM)
    ports = (PortMap(host_port=tcp, guest_port=8000), PortMap(host_port=udp, guest_port=5000, protocol="udp"))
    root = await resolve_root("microsandbox/python")
    sb = await gv.start(root.spec(f"gnet-py-{os.urandom(2).hex()}", ports=ports, memory_mib=512))
    try:
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
        await stop_and_check_released(sb)


async def test_a_host_port_in_use_is_a_clear_error_and_leaves_nothing(gv: Engine, busybox_rootfs: Path) -> None:
    before = set(_slirp_pids())
    with socket.create_server(("127.0.0.1", 0)) as taken:
        port = taken.getsockname()[1]
        with pytest.raises(VmError, match=f"host port {port} is already in use"):
            await boot(gv, busybox_rootfs, "group", ports=(PortMap(host_port=port, guest_port=80),))
    await eventually(lambda: set(_slirp_pids()) <= before, 10)


def _slirp_pids() -> list[int]:
    out = subprocess.run(["pgrep", "-x", "slirp4netns"], capture_output=True, text=True).stdout
    return [int(p) for p in out.split()]


CREATOR = """
import asyncio, sys
from pathlib import Path
from engine.vm.backend import VmSpec
from engine.vm.gvisor_net import GvisorNetwork

async def main():
    run = Path(sys.argv[1])
    spec = VmSpec(name="orphan", kernel=run, initrd=run, root_image=run, run_dir=run, network="public")
    net = await GvisorNetwork.create(spec, run)
    print(net.slirp_pid, flush=True)
    await asyncio.sleep(60)

asyncio.run(main())
"""


async def test_slirp4netns_dies_with_msb(tmp_path: Path) -> None:
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-c", CREATOR, str(tmp_path), stdout=asyncio.subprocess.PIPE, cwd=Path(__file__).parents[2]
    )
    assert proc.stdout is not None
    slirp = int(await asyncio.wait_for(proc.stdout.readline(), 20))
    assert pid_alive(slirp)
    os.kill(proc.pid, signal.SIGKILL)  # no close(), no cleanup: only --exit-fd can stop it
    await proc.wait()
    await eventually(lambda: not pid_alive(slirp), 10)
