"""The network filter of ``public`` sandboxes: the Python side, and the C shim itself.

The shim is compiled from engine/vm/netfilter/netfilter.c into a temporary directory and
preloaded into a Python child process that makes the socket calls libslirp would make.
Denied destinations fail with EACCES before any packet leaves; allowed ones are attempted
normally (a non-blocking connect returns EINPROGRESS, ENETUNREACH, … but never EACCES).
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from engine.errors import VmError
from engine.sandbox.spec import PortMap
from engine.vm import netfilter
from engine.vm.qemu import QemuBackend
from tests.unit.helpers import vm_spec

SOURCE = Path(netfilter.__file__).parent

PROBE = r"""
import errno, json, socket, sys

def attempt(kind, host, port):
    fam = socket.AF_INET6 if ":" in host else socket.AF_INET
    s = socket.socket(fam, socket.SOCK_STREAM if kind == "tcp" else socket.SOCK_DGRAM)
    s.setblocking(False)
    try:
        if kind == "tcp":
            s.connect((host, port))
        elif kind == "udp":
            s.sendto(b"x", (host, port))
        else:
            s.sendmsg([b"x"], [], 0, (host, port))
        return "sent"
    except OSError as e:
        return errno.errorcode.get(e.errno, str(e.errno))
    finally:
        s.close()

print(json.dumps([attempt(k, h, p) for k, h, p in json.loads(sys.argv[1])]))
"""


@pytest.fixture(scope="module")
def shim(tmp_path_factory: pytest.TempPathFactory) -> Path:
    if shutil.which("gcc") is None or shutil.which("make") is None:
        pytest.skip("gcc/make are needed to build the shim (make setup installs them)")
    out = tmp_path_factory.mktemp("netfilter")
    subprocess.run(["make", "-s", "-C", str(SOURCE), f"OUT={out}"], check=True, capture_output=True)
    return out / "msb-netfilter.so"


def probe(shim: Path | None, attempts: list[tuple[str, str, int]], **env: str) -> subprocess.CompletedProcess[str]:
    full = {k: v for k, v in os.environ.items() if not k.startswith("MSB_NETFILTER")} | env
    if shim is not None:
        full["LD_PRELOAD"] = str(shim)
    proc = subprocess.run(
        [sys.executable, "-c", PROBE, json.dumps(attempts)], env=full, capture_output=True, text=True, timeout=30
    )
    assert proc.returncode == 0, proc.stderr
    return proc


def run_probe(shim: Path | None, attempts: list[tuple[str, str, int]], **env: str) -> list[str]:
    result: list[str] = json.loads(probe(shim, attempts, **env).stdout)
    return result


DENIED = [
    "127.0.0.1", "127.1.2.3", "0.0.0.0", "10.0.2.2", "172.16.0.1", "172.31.255.254", "192.168.1.1",
    "100.64.0.1", "169.254.169.254", "224.0.0.1", "255.255.255.255",
    "::1", "::", "::ffff:127.0.0.1", "::ffff:10.1.1.1", "fe80::1", "fd00::1", "ff02::1",
    "64:ff9b::a9fe:a9fe", "2002:c0a8:101::1",
]  # fmt: skip
ALLOWED = ["198.51.100.7", "172.32.0.1", "100.128.0.1", "9.9.9.9", "2001:db8::1", "64:ff9b::909:909"]


def host_addresses() -> list[str]:
    """Non-loopback IPv4 addresses of this host outside the private ranges (may be none)."""
    out = subprocess.run(["hostname", "-I"], capture_output=True, text=True, check=False).stdout.split()
    return [a for a in out if "." in a and not a.startswith(("10.", "172.", "192.168.", "127.", "100."))]


@pytest.mark.parametrize("kind", ["tcp", "udp", "sendmsg"])
def test_denied_ranges_fail_with_eacces(shim: Path, kind: str) -> None:
    results = run_probe(shim, [(kind, h, 80) for h in DENIED])
    assert results == ["EACCES"] * len(DENIED), dict(zip(DENIED, results, strict=True))


def test_the_first_sixteen_blocked_destinations_are_logged(shim: Path) -> None:
    lines = probe(shim, [("tcp", "127.0.0.1", port) for port in range(1, 21)]).stderr.splitlines()
    assert lines[0] == "msb-netfilter: blocked connect to 127.0.0.1 port 1 (loopback)"
    assert lines[15].endswith("port 16 (loopback)")
    assert lines[16:] == ["msb-netfilter: further blocked destinations are not logged"]


def test_public_addresses_are_attempted_normally(shim: Path) -> None:
    results = run_probe(shim, [(k, h, 9) for h in ALLOWED for k in ("tcp", "udp")])
    assert "EACCES" not in results, results


def test_the_hosts_own_addresses_are_denied(shim: Path) -> None:
    own = host_addresses()
    if not own:
        pytest.skip("this host has no public-range address to test with")
    assert run_probe(shim, [("tcp", a, 80) for a in own]) == ["EACCES"] * len(own)


def test_resolvers_are_reachable_on_port_53_only(shim: Path) -> None:
    attempts = [("udp", "10.9.8.7", 53), ("tcp", "10.9.8.7", 53), ("udp", "10.9.8.7", 54), ("udp", "10.9.8.6", 53)]
    results = run_probe(shim, attempts, MSB_NETFILTER_DNS="10.9.8.7,fd00::53")
    assert "EACCES" not in results[:2]
    assert results[2:] == ["EACCES", "EACCES"]


def test_a_loopback_listener_is_reachable_only_without_the_shim(shim: Path) -> None:
    with socket.create_server(("127.0.0.1", 0)) as server:
        port = server.getsockname()[1]
        assert run_probe(None, [("tcp", "127.0.0.1", port)]) in (["EINPROGRESS"], ["sent"])
        assert run_probe(shim, [("tcp", "127.0.0.1", port)]) == ["EACCES"]


def free_udp_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


FORWARDER = """
import socket, sys
fwd = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
fwd.bind(("127.0.0.1", {port}))
def send(port):
    try:
        fwd.sendto(b"r", ("127.0.0.1", port))
        return "sent"
    except PermissionError:
        return "EACCES"
before = send({peer})
print("ready", flush=True)
fwd.settimeout(10)
fwd.recvfrom(10)
print(before, send({peer}), send({other}), flush=True)
"""


def test_a_published_udp_port_answers_its_peers_and_no_one_else(shim: Path) -> None:
    # Inside QEMU the forward socket is bound to the published port; its peers are outside
    # (here: this test process, which runs without the shim).
    port = free_udp_port()
    with (
        socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as peer,
        socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as other,
    ):
        peer.bind(("127.0.0.1", 0))
        other.bind(("127.0.0.1", 0))
        code = FORWARDER.format(port=port, peer=peer.getsockname()[1], other=other.getsockname()[1])
        env = {k: v for k, v in os.environ.items() if not k.startswith("MSB_NETFILTER")}
        env |= {"LD_PRELOAD": str(shim), "MSB_NETFILTER_UDP_PORTS": str(port)}
        with subprocess.Popen([sys.executable, "-c", code], env=env, stdout=subprocess.PIPE, text=True) as child:
            assert child.stdout is not None
            assert child.stdout.readline() == "ready\n"
            peer.sendto(b"q", ("127.0.0.1", port))
            # before the peer wrote: denied; after: the peer may be answered, someone else not
            assert child.stdout.readline().split() == ["EACCES", "sent", "EACCES"]
        peer.settimeout(5)
        assert peer.recvfrom(10)[0] == b"r"


@pytest.mark.parametrize(("var", "value"), [("MSB_NETFILTER_DNS", "not-an-ip"), ("MSB_NETFILTER_UDP_PORTS", "0")])
def test_a_malformed_setting_stops_the_process(shim: Path, var: str, value: str) -> None:
    env = os.environ | {"LD_PRELOAD": str(shim), var: value}
    proc = subprocess.run([sys.executable, "-c", "print('ran')"], env=env, capture_output=True, text=True, timeout=30)
    assert proc.returncode == 70 and "ran" not in proc.stdout
    assert f"bad {var} entry '{value}'; refusing to run unfiltered" in proc.stderr


def test_host_resolvers_reads_nameserver_lines(tmp_path: Path) -> None:
    conf = tmp_path / "resolv.conf"
    conf.write_text(
        "# comment\nsearch example.org\nnameserver 10.255.255.53\nnameserver fe80::1%eth0\n"
        "nameserver bogus\nnameserver 10.255.255.53\nnameserver\noptions edns0\n"
    )
    assert netfilter.host_resolvers(conf) == ["10.255.255.53", "fe80::1"]
    assert netfilter.host_resolvers(tmp_path / "missing") == []


def test_filter_env_preloads_the_shim_first() -> None:
    ports = (PortMap(host_port=8080, guest_port=80), PortMap(host_port=5353, guest_port=53, protocol="udp"))
    env = netfilter.filter_env(Path("/c/nf.so"), ports, {"LD_PRELOAD": "/x/other.so", "PATH": "/bin"}, ["10.0.0.53"])
    assert env["LD_PRELOAD"] == "/c/nf.so /x/other.so" and env["PATH"] == "/bin"
    assert env["MSB_NETFILTER_DNS"] == "10.0.0.53" and env["MSB_NETFILTER_UDP_PORTS"] == "5353"
    assert netfilter.filter_env(Path("/c/nf.so"), (), {}, [])["LD_PRELOAD"] == "/c/nf.so"


def test_shim_loaded_reads_the_process_maps() -> None:
    libc = next(line.split()[-1] for line in Path("/proc/self/maps").read_text().splitlines() if "libc.so" in line)
    assert netfilter.shim_loaded(os.getpid(), Path(libc))
    assert not netfilter.shim_loaded(os.getpid(), Path("/nonexistent/msb-netfilter.so"))
    assert not netfilter.shim_loaded(2**22 + 12345, Path(libc))  # no such process


def test_a_missing_shim_is_an_error_with_the_build_command(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("MSB_NETFILTER", str(tmp_path / "missing.so"))
    with pytest.raises(VmError, match=r"network filter .* is missing") as info:
        netfilter.require_shim()
    assert "make netfilter" in (info.value.hint or "")


async def test_public_sandbox_without_the_shim_never_starts_qemu(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv("MSB_NETFILTER", str(tmp_path / "missing.so"))
    backend = QemuBackend(qemu=str(tmp_path / "no-qemu"))  # would fail differently if it were run
    with pytest.raises(VmError, match="network filter"):
        await backend.launch(vm_spec(tmp_path, network="public"))
    assert not list(tmp_path.glob("*.sock"))
