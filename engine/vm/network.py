"""QEMU arguments and guest boot parameters for a sandbox's network and published ports.

Every scope but ``none`` gets one virtio-net device on QEMU's user-mode network (slirp):
the guest is 10.0.2.15/24, its gateway 10.0.2.2, its DNS forwarder 10.0.2.3, and the guest
agent configures that from ``msb.net=1`` / ``msb.dns=`` (engine/guest/agent/net.c). IPv6 is
off (``ipv6=off``): the host-side filter of the ``public`` scope judges IPv4 and IPv6 alike,
but a guest without IPv6 has one stack less to get wrong.

- ``group``: ``restrict=on`` — slirp refuses everything the guest sends out; published ports work.
- ``public``: outbound access through the host filter (:mod:`engine.vm.netfilter`).
- ``any``: outbound access, unfiltered (10.0.2.2 is the host's 127.0.0.1).

Published ports are slirp ``hostfwd`` rules: the host listens on ``host_ip:host_port`` and
forwards to the guest's ``guest_port``. All checks here are pure; a port already in use on
the host makes QEMU exit with a message that reaches the user as a ``VmError``.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Callable

from engine.errors import ConfigError
from engine.vm.backend import VmSpec

GUEST_DNS = "10.0.2.3"


def check_network(spec: VmSpec) -> None:
    """Refuse port and scope combinations QEMU could not honour.

    Raises:
        ConfigError: ports without a network device, a host address slirp cannot listen on,
            or one host port published twice.
    """
    if spec.ports and spec.network == "none":
        raise ConfigError(
            f"sandbox {spec.name!r} publishes ports but its network scope is 'none' (no network device)",
            hint="use network 'group' (ports only, no outbound access), 'public' or 'any', or drop the ports",
        )
    seen: set[tuple[str, str, int]] = set()
    for p in spec.ports:
        try:
            ip = ipaddress.ip_address(p.host_ip)
        except ValueError:
            ip = None
        if ip is None or ip.version != 4:
            raise ConfigError(
                f"published port {p.host_port}: host_ip {p.host_ip!r} is not an IPv4 address",
                hint="user-mode networking (QEMU's slirp, slirp4netns) listens on IPv4 only; "
                "use 127.0.0.1 (default) or 0.0.0.0",
            )
        key = (p.protocol, p.host_ip, p.host_port)
        if key in seen:
            raise ConfigError(
                f"host port {p.protocol}/{p.host_ip}:{p.host_port} is published twice",
                hint="give each published port its own host port",
            )
        seen.add(key)


def network_args(spec: VmSpec, dev: Callable[[str], str]) -> list[str]:
    """QEMU arguments for the network device, or none for scope ``none``.

    Args:
        spec: the VM (``network``, ``ports``).
        dev: maps a virtio device kind to the machine's variant (``-device`` / ``-pci``).

    Raises:
        ConfigError: see :func:`check_network`.
    """
    check_network(spec)
    if spec.network == "none":
        return []
    netdev = "user,id=net0,ipv6=off"
    if spec.network == "group":
        netdev += ",restrict=on"
    for p in spec.ports:
        netdev += f",hostfwd={p.protocol}:{p.host_ip}:{p.host_port}-:{p.guest_port}"
    nic = f"{dev('virtio-net')},netdev=net0"
    if nic.endswith("-pci,netdev=net0"):
        nic += ",romfile="  # no iPXE option ROM: the kernel is loaded directly, and it costs boot time
    return ["-netdev", netdev, "-device", nic]


def network_cmdline(spec: VmSpec) -> list[str]:
    """Guest boot parameters for the network (see engine/guest/agent/net.c).

    ``group`` gets no ``msb.dns``: slirp refuses its DNS queries, so the guest's resolv.conf
    names no server.
    """
    if spec.network == "none":
        return []
    return ["msb.net=1"] if spec.network == "group" else ["msb.net=1", f"msb.dns={GUEST_DNS}"]
