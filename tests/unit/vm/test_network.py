"""QEMU arguments and boot parameters for the network scopes and published ports (pure)."""

from __future__ import annotations

import pytest

from engine.errors import ConfigError
from engine.sandbox.spec import PortMap
from engine.vm.network import check_network, network_args, network_cmdline
from engine.vm.qemu import build_argv, kernel_cmdline
from tests.unit.vm.test_qemu_argv import SOCKETS, make_spec, option_values


def mmio(kind: str) -> str:
    return f"{kind}-device"


def pci(kind: str) -> str:
    return f"{kind}-pci"


def test_scope_none_has_no_network_device() -> None:
    spec = make_spec(network="none")
    argv = build_argv("q", spec, SOCKETS)
    assert "-netdev" not in argv and not any("virtio-net" in d for d in option_values(argv, "-device"))
    assert not any(w.startswith(("msb.net", "msb.dns")) for w in kernel_cmdline(spec).split())


@pytest.mark.parametrize("scope", ["public", "any"])
def test_outbound_scopes_get_slirp_without_ipv6(scope: str) -> None:
    spec = make_spec(network=scope)
    assert network_args(spec, mmio) == ["-netdev", "user,id=net0,ipv6=off", "-device", "virtio-net-device,netdev=net0"]
    words = kernel_cmdline(spec).split()
    assert "msb.net=1" in words and "msb.dns=10.0.2.3" in words


def test_group_is_restricted_and_has_no_dns() -> None:
    spec = make_spec(network="group")
    netdev = option_values(build_argv("q", spec, SOCKETS), "-netdev")
    assert netdev == ["user,id=net0,ipv6=off,restrict=on"]
    assert network_cmdline(spec) == ["msb.net=1"]


def test_q35_uses_the_pci_nic_without_option_rom() -> None:
    args = network_args(make_spec(network="public", machine="q35"), pci)
    assert args[-1] == "virtio-net-pci,netdev=net0,romfile="


def test_ports_become_hostfwd_rules() -> None:
    ports = (
        PortMap(host_port=8080, guest_port=8000),
        PortMap(host_port=5353, guest_port=53, protocol="udp", host_ip="0.0.0.0"),
    )
    netdev = network_args(make_spec(network="group", ports=ports), mmio)[1]
    assert netdev.endswith(",hostfwd=tcp:127.0.0.1:8080-:8000,hostfwd=udp:0.0.0.0:5353-:53")


def test_ports_without_a_network_device_are_refused() -> None:
    spec = make_spec(network="none", ports=(PortMap(host_port=8080, guest_port=80),))
    with pytest.raises(ConfigError, match="publishes ports but its network scope is 'none'") as info:
        build_argv("q", spec, SOCKETS)
    assert "group" in (info.value.hint or "")


@pytest.mark.parametrize("host_ip", ["::1", "localhost", "127.0.0.1,hostfwd=tcp::22-:22"])
def test_host_ip_must_be_ipv4(host_ip: str) -> None:
    spec = make_spec(network="public", ports=(PortMap(host_port=8080, guest_port=80, host_ip=host_ip),))
    with pytest.raises(ConfigError, match="not an IPv4 address"):
        check_network(spec)


def test_one_host_port_published_twice_is_refused() -> None:
    ports = (PortMap(host_port=8080, guest_port=80), PortMap(host_port=8080, guest_port=81))
    with pytest.raises(ConfigError, match="published twice"):
        check_network(make_spec(network="any", ports=ports))
    # the same number for TCP and UDP is two different ports
    both = (PortMap(host_port=8080, guest_port=80), PortMap(host_port=8080, guest_port=80, protocol="udp"))
    check_network(make_spec(network="any", ports=both))


def test_vmspec_default_is_no_network() -> None:
    # The KVM probe boot and bare VmSpecs stay offline; SandboxSpec chooses "public" itself.
    spec = make_spec()
    assert spec.network == "none" and "-netdev" not in build_argv("q", spec, SOCKETS)
