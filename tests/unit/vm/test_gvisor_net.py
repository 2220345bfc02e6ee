"""The gVisor backend's network (engine/vm/gvisor_net.py) without runsc: command lines per scope,
the slirp4netns API, checks made before anything starts, and the filter's ``deny`` mode.

Starting slirp4netns and runsc for real is in tests/integration/test_gvisor_network.py.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import shutil
import socket
import subprocess
import sys
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import pytest

from engine.errors import ConfigError, VmError
from engine.sandbox.spec import NetScope, PortMap
from engine.vm import gvisor_net, netfilter
from engine.vm.gvisor_net import GvisorNetwork
from tests.unit.helpers import vm_spec
from tests.unit.vm.test_netfilter import SOURCE, free_udp_port, run_probe

SCOPES: tuple[NetScope, ...] = ("none", "group", "public", "any")


def slirp_flags(scope: NetScope, ports: tuple[PortMap, ...] = ()) -> list[str]:
    spec = vm_spec(Path("/r"), network=scope, ports=ports)
    argv = gvisor_net.slirp_argv("/usr/bin/slirp4netns", spec, "/proc/1/fd/7", Path("/r/slirp.sock"), 5, 6)
    assert argv[:6] == ["unshare", "--mount", "--propagation", "private", "--", "/usr/bin/slirp4netns"]
    assert argv[-2:] == ["/proc/1/fd/7", "tap0"]
    return argv[6:-2]


def test_runsc_flags_per_scope() -> None:
    assert gvisor_net.runsc_flags("none") == ["--network=none"]
    for scope in ("group", "public", "any"):
        assert gvisor_net.runsc_flags(scope) == ["--network=sandbox"]


def test_runsc_runs_in_its_own_mount_namespace_with_the_netns_check_hidden() -> None:
    assert gvisor_net.runsc_wrapper(None) == []
    argv = gvisor_net.runsc_wrapper("/proc/9/fd/4")
    assert argv[:5] == ["unshare", "--mount", "--propagation", "private", "--"]
    assert argv[5:7] == ["sh", "-c"] and argv[8] == "/proc/9/fd/4"  # $0 of the script
    assert 'nsenter --net="$0" mount -t tmpfs' in argv[7] and "/proc/sys/net/core" in argv[7]
    assert argv[7].endswith('exec "$@"')


@pytest.mark.parametrize("scope", ["group", "public", "any"])
def test_slirp4netns_flags_per_scope(scope: NetScope) -> None:
    flags = slirp_flags(scope)
    for always in ("--configure", "--mtu=65520", "--netns-type=path", "--api-socket=/r/slirp.sock",
                   "--exit-fd=5", "--ready-fd=6", "--enable-sandbox", "--enable-seccomp"):  # fmt: skip
        assert always in flags
    assert ("--disable-host-loopback" in flags) == (scope != "any")  # any: 10.0.2.2 is the host's loopback
    assert ("--disable-dns" in flags) == (scope == "group")
    tcp = (PortMap(host_port=8080, guest_port=80),)
    assert ("--disable-host-loopback" in slirp_flags(scope, tcp)) == (scope != "any")
    # slirp4netns would drop the replies of a UDP port to peers on the host's loopback: the filter guards alone
    udp = (PortMap(host_port=5353, guest_port=53, protocol="udp"),)
    assert "--disable-host-loopback" not in slirp_flags(scope, udp)


def test_filter_mode_per_scope() -> None:
    assert [gvisor_net.filter_mode(s) for s in SCOPES] == [None, "deny", "filter", None]


def test_the_hostfwd_request_names_the_guest_address() -> None:
    port = PortMap(host_port=8080, guest_port=80, host_ip="0.0.0.0", protocol="udp")
    assert json.loads(gvisor_net.hostfwd_request(port)) == {
        "execute": "add_hostfwd",
        "arguments": {"proto": "udp", "host_addr": "0.0.0.0", "host_port": 8080,
                      "guest_addr": "10.0.2.100", "guest_port": 80},
    }  # fmt: skip


@pytest.mark.parametrize(
    ("raw", "error"),
    [
        (b'{"return":{"id":1}}', None),
        (b'{"error":{"desc":"bad request: add_hostfwd: slirp_add_hostfwd failed"}}', "slirp_add_hostfwd failed"),
        (b"not json", "unreadable answer"),
        (b'{"x"', "unreadable answer"),
        (b"[1, 2]", "unexpected answer"),
        (b'{"error": "flat"}', "unexpected answer"),
        (b'{"error":{"desc":"' + b"d" * 1000 + b'"}}', "d" * 300),
    ],
)
def test_hostfwd_answers(raw: bytes, error: str | None) -> None:
    got = gvisor_net.parse_hostfwd_answer(raw)
    if error is None:
        assert got is None
    else:
        assert got is not None and error in got and len(got) <= 300 + 40


def test_why_a_port_cannot_be_published() -> None:
    with socket.create_server(("127.0.0.1", 0)) as taken:
        port = taken.getsockname()[1]
        busy = PortMap(host_port=port, guest_port=80)
        assert gvisor_net.why_bind_fails(busy) == f"host port {port} is already in use"
    foreign = PortMap(host_port=port, guest_port=80, host_ip="198.51.100.9")
    assert gvisor_net.why_bind_fails(foreign) == "198.51.100.9 is not an address of this host"
    assert gvisor_net.why_bind_fails(PortMap(host_port=free_udp_port(), guest_port=1, protocol="udp")) == (
        "slirp4netns refused it"
    )


def test_etc_files_per_scope() -> None:
    assert gvisor_net.resolv_conf("none") is None
    assert "nameserver" not in (gvisor_net.resolv_conf("group") or "")
    assert gvisor_net.resolv_conf("public") == gvisor_net.resolv_conf("any") == "nameserver 10.0.2.3\n"
    hosts = gvisor_net.hosts_file("web-1")
    assert "127.0.0.1\tlocalhost\n" in hosts and hosts.endswith("127.0.1.1\tweb-1\n")
    assert gvisor_net.hosts_file("a b\n127.0.0.1 evil").endswith("\ta-b-127-0-0-1-evil\n")
    assert gvisor_net.hosts_file("___").endswith("\tlocalhost\n")
    assert len(gvisor_net.hosts_file("x" * 200).splitlines()[-1]) == len("127.0.1.1\t") + 63


@pytest.mark.parametrize(
    ("kw", "match"),
    [
        ({"network": "none", "ports": (PortMap(host_port=8080, guest_port=80),)}, "network scope is 'none'"),
        ({"network": "group", "ports": (PortMap(host_port=8080, guest_port=80, host_ip="::1"),)}, "not an IPv4"),
        ({"network": "public", "ports": (PortMap(host_port=1, guest_port=2),) * 2}, "published twice"),
    ],
)
async def test_what_slirp4netns_cannot_honour_is_refused(tmp_path: Path, kw: dict[str, Any], match: str) -> None:
    with pytest.raises(ConfigError, match=match):
        await GvisorNetwork.create(vm_spec(tmp_path, **kw), tmp_path)
    assert not list(tmp_path.iterdir())  # refused before writing anything


async def test_a_run_dir_too_long_for_the_api_socket_is_refused(tmp_path: Path) -> None:
    deep = tmp_path / ("d" * 100)
    with pytest.raises(ConfigError, match="too long"):
        await GvisorNetwork.create(vm_spec(deep, network="any"), deep)


async def test_scope_none_starts_nothing(tmp_path: Path) -> None:
    net = await GvisorNetwork.create(vm_spec(tmp_path, name="quiet", network="none"), tmp_path)
    assert net.runsc_flags == ["--network=none"] and net.runsc_prefix == []
    assert net.netns_path is None and net.slirp_pid is None
    assert list(net.etc_files) == ["/etc/hosts"]
    assert net.etc_files["/etc/hosts"].read_text().endswith("\tquiet\n")
    assert net.etc_files["/etc/hosts"].stat().st_mode & 0o777 == 0o644
    await net.close()
    await net.close()


def missing(tmp_path: Path) -> str:
    return str(tmp_path / "nowhere" / "tool")


async def test_missing_slirp4netns_says_how_to_install_it(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MSB_SLIRP4NETNS", missing(tmp_path))
    with pytest.raises(VmError, match="nowhere/tool is needed") as info:
        await GvisorNetwork.create(vm_spec(tmp_path, network="any"), tmp_path)
    assert "apt-get install slirp4netns (or `make setup`)" in (info.value.hint or "")


@pytest.mark.parametrize("scope", ["group", "public"])
async def test_a_missing_filter_stops_the_scopes_that_need_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, scope: NetScope
) -> None:
    monkeypatch.setenv("MSB_SLIRP4NETNS", "/bin/true")  # never reached
    monkeypatch.setenv("MSB_NETFILTER", str(tmp_path / "missing.so"))
    with pytest.raises(VmError, match=f"network filter for the '{scope}' network scope is missing") as info:
        await GvisorNetwork.create(vm_spec(tmp_path, network=scope), tmp_path)
    assert "make netfilter" in (info.value.hint or "")


async def test_a_filter_built_before_deny_mode_stops_a_group_sandbox(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    old = tmp_path / "old.so"
    old.write_bytes(b"\x7fELF an old build that only knows MSB_NETFILTER_DNS")
    monkeypatch.setenv("MSB_SLIRP4NETNS", "/bin/true")
    monkeypatch.setenv("MSB_NETFILTER", str(old))
    with pytest.raises(VmError, match="predates its 'deny' mode"):
        await GvisorNetwork.create(vm_spec(tmp_path, network="group"), tmp_path)
    assert netfilter.require_shim("public", "filter") == old.resolve()  # the public filter is the same as before


# ---- the API socket, against a stand-in slirp4netns ----

Answer = Callable[[bytes], bytes | None]


@pytest.fixture
async def api(tmp_path: Path) -> AsyncIterator[tuple[list[bytes], list[Answer]]]:
    """A unix socket at run_dir/slirp.sock that records requests and answers each one."""
    requests: list[bytes] = []
    answers: list[Answer] = [lambda req: b'{"return":{"id":1}}']

    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        req = await reader.read(4096)
        requests.append(req)
        answer = answers[0](req)
        if answer is None:
            await asyncio.sleep(30)  # say nothing
        with contextlib.suppress(ConnectionError):
            writer.write(answer or b"")
            await writer.drain()
        writer.close()

    server = await asyncio.start_unix_server(serve, path=str(tmp_path / "slirp.sock"))
    try:
        yield requests, answers
    finally:
        server.close()


async def test_publish_sends_one_request_per_port(tmp_path: Path, api: tuple[list[bytes], list[Answer]]) -> None:
    requests, _ = api
    net = GvisorNetwork(vm_spec(tmp_path, network="group"), tmp_path)
    port = PortMap(host_port=8080, guest_port=80)
    await net._publish(port)
    assert requests == [gvisor_net.hostfwd_request(port)]


async def test_an_api_error_names_the_port(tmp_path: Path, api: tuple[list[bytes], list[Answer]]) -> None:
    _, answers = api
    answers[0] = lambda req: b'{"error":{"desc":"bad request: add_hostfwd: slirp_add_hostfwd failed"}}'
    with socket.create_server(("127.0.0.1", 0)) as taken:
        port = PortMap(host_port=taken.getsockname()[1], guest_port=80)
        with pytest.raises(VmError, match=f"host port {port.host_port} is already in use") as info:
            await GvisorNetwork(vm_spec(tmp_path, network="group"), tmp_path)._publish(port)
    assert "host forwarding rule tcp 127.0.0.1" in str(info.value) and "free host port" in (info.value.hint or "")


async def test_a_huge_api_answer_is_read_bounded(tmp_path: Path, api: tuple[list[bytes], list[Answer]]) -> None:
    _, answers = api
    answers[0] = lambda req: b"x" * (1 << 20)
    with pytest.raises(VmError, match="unreadable answer") as info:
        await GvisorNetwork(vm_spec(tmp_path, network="group"), tmp_path)._publish(PortMap(host_port=1, guest_port=1))
    assert len(str(info.value)) < 1000


async def test_a_silent_api_times_out(
    tmp_path: Path, api: tuple[list[bytes], list[Answer]], monkeypatch: pytest.MonkeyPatch
) -> None:
    _, answers = api
    answers[0] = lambda req: None
    monkeypatch.setattr(gvisor_net, "API_TIMEOUT_S", 0.2)
    with pytest.raises(VmError, match="slirp4netns's API failed"):
        await GvisorNetwork(vm_spec(tmp_path, network="group"), tmp_path)._publish(PortMap(host_port=1, guest_port=1))


async def test_the_log_keeps_only_its_tail(tmp_path: Path) -> None:
    net = GvisorNetwork(vm_spec(tmp_path, network="public"), tmp_path)
    stream = asyncio.StreamReader()
    stream.feed_data(b"a" * (3 * gvisor_net.LOG_TAIL_MAX))
    stream.feed_data(b"last line\n")
    stream.feed_eof()
    await net._pump_log(stream)
    assert len(net._log) == gvisor_net.LOG_TAIL_MAX and net.log_tail(10) == "last line\n"


async def test_read_fd_waits_for_data_or_end_of_file() -> None:
    r, w = os.pipe()
    try:
        pending = asyncio.ensure_future(gvisor_net._read_fd(r, 16))
        await asyncio.sleep(0)
        assert not pending.done()
        os.write(w, b"1")
        assert await asyncio.wait_for(pending, 5) == b"1"
        os.close(w)
        w = -1
        assert await asyncio.wait_for(gvisor_net._read_fd(r, 16), 5) == b""
    finally:
        os.close(r)
        if w >= 0:
            os.close(w)


# ---- the filter's deny mode (the group scope), in the C shim itself ----


@pytest.fixture(scope="module")
def shim(tmp_path_factory: pytest.TempPathFactory) -> Path:
    if shutil.which("gcc") is None or shutil.which("make") is None:
        pytest.skip("gcc/make are needed to build the shim (make setup installs them)")
    out = tmp_path_factory.mktemp("netfilter")
    subprocess.run(["make", "-s", "-C", str(SOURCE), f"OUT={out}"], check=True, capture_output=True)
    return out / "msb-netfilter.so"


def test_deny_mode_refuses_every_destination_and_dns(shim: Path) -> None:
    attempts = [(k, h, 80) for h in ("9.9.9.9", "198.51.100.7", "2001:db8::1", "127.0.0.1") for k in ("tcp", "udp")]
    attempts += [("udp", "10.9.8.7", 53), ("tcp", "10.9.8.7", 53), ("sendmsg", "9.9.9.9", 443)]
    results = run_probe(shim, attempts, MSB_NETFILTER_MODE="deny", MSB_NETFILTER_DNS="10.9.8.7")
    assert results == ["EACCES"] * len(attempts)
    assert netfilter.supports_mode(shim, "deny")


def test_filter_mode_by_name_is_the_default(shim: Path) -> None:
    attempts = [("tcp", "9.9.9.9", 9), ("tcp", "127.0.0.1", 9)]
    default = run_probe(shim, attempts)
    assert run_probe(shim, attempts, MSB_NETFILTER_MODE="filter") == default
    assert default[1] == "EACCES" and default[0] != "EACCES"


def test_a_bad_mode_stops_the_process(shim: Path) -> None:
    env = os.environ | {"LD_PRELOAD": str(shim), "MSB_NETFILTER_MODE": "allow"}
    proc = subprocess.run([sys.executable, "-c", "print('ran')"], env=env, capture_output=True, text=True, timeout=30)
    assert proc.returncode == 70 and "ran" not in proc.stdout
    assert "bad MSB_NETFILTER_MODE entry 'allow'; refusing to run unfiltered" in proc.stderr


DENY_FORWARDER = """
import socket
fwd = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
fwd.bind(("127.0.0.1", {port}))
print("ready", flush=True)
fwd.settimeout(10)
data, peer = fwd.recvfrom(10)
out = []
for dest in (peer, ("127.0.0.1", {other})):
    try:
        fwd.sendto(b"r", dest)
        out.append("sent")
    except PermissionError:
        out.append("EACCES")
print(*out, flush=True)
"""


def test_deny_mode_still_answers_the_peers_of_published_udp_ports(shim: Path) -> None:
    port = free_udp_port()
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as peer:
        peer.bind(("127.0.0.1", 0))
        code = DENY_FORWARDER.format(port=port, other=free_udp_port())
        env = {k: v for k, v in os.environ.items() if not k.startswith("MSB_NETFILTER")}
        env |= {"LD_PRELOAD": str(shim), "MSB_NETFILTER_MODE": "deny", "MSB_NETFILTER_UDP_PORTS": str(port)}
        with subprocess.Popen([sys.executable, "-c", code], env=env, stdout=subprocess.PIPE, text=True) as child:
            assert child.stdout is not None
            assert child.stdout.readline() == "ready\n"
            peer.sendto(b"q", ("127.0.0.1", port))
            assert child.stdout.readline().split() == ["sent", "EACCES"]
        peer.settimeout(5)
        assert peer.recvfrom(10)[0] == b"r"


def test_filter_env_per_mode() -> None:
    ports = (PortMap(host_port=5353, guest_port=53, protocol="udp"),)
    deny = netfilter.filter_env(Path("/c/nf.so"), ports, {"MSB_NETFILTER_MODE": "x"}, ["10.0.0.53"], "deny")
    assert deny["MSB_NETFILTER_MODE"] == "deny" and deny["MSB_NETFILTER_DNS"] == ""
    assert deny["MSB_NETFILTER_UDP_PORTS"] == "5353"
    public = netfilter.filter_env(Path("/c/nf.so"), ports, {"MSB_NETFILTER_MODE": "deny"}, ["10.0.0.53"])
    assert public["MSB_NETFILTER_MODE"] == "filter" and public["MSB_NETFILTER_DNS"] == "10.0.0.53"
