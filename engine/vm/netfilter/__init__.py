"""The host-side filter that keeps ``public`` sandboxes off the host and its private networks.

QEMU's user-mode network (libslirp) makes a host socket call for every guest connection
(``connect``), UDP datagram and ICMP echo (``sendto``); guest traffic to 10.0.2.2 becomes
traffic to the host's 127.0.0.1. QEMU 7.2 cannot restrict that, so for the ``public`` scope
QEMU runs with ``netfilter.c`` (beside this file, built into ``msb-netfilter.so`` by
``make netfilter``) in ``LD_PRELOAD``: it fails those calls with ``EACCES`` for loopback,
private, shared, link-local, multicast and the host's own addresses, except the host's DNS
resolvers on port 53. The ranges are listed in ``netfilter.c`` and docs/networking.md.

The shim is mandatory for ``public``: a missing shim is an error, never a silent fallback to
an unfiltered network, and after QEMU starts the backend checks the shim is mapped into it
(:func:`shim_loaded`), because the dynamic loader only warns about a preload it cannot load.

The gVisor backend preloads the same shim into ``slirp4netns`` (:mod:`engine.vm.gvisor_net`):
``filter`` mode for ``public``, and ``deny`` mode (``MSB_NETFILTER_MODE=deny``: every
destination refused, DNS included) for ``group``, because slirp4netns has no ``restrict``.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Mapping
from pathlib import Path
from typing import Literal

from engine import paths
from engine.errors import VmError
from engine.sandbox.spec import PortMap

RESOLV_CONF = Path("/etc/resolv.conf")
BUILD_HINT = "build it with `make netfilter` (or `make setup`), or set MSB_NETFILTER to a built msb-netfilter.so"

FilterMode = Literal["filter", "deny"]


def host_resolvers(resolv_conf: Path = RESOLV_CONF) -> list[str]:
    """The nameservers of the host's resolv.conf, which slirp forwards the guest's DNS to.

    Args:
        resolv_conf: the file to read (a missing file means no resolvers).

    Returns:
        IP addresses in file order, without duplicates or IPv6 zone suffixes; unparsable
        entries are skipped.
    """
    try:
        text = resolv_conf.read_text(errors="replace")
    except OSError:
        return []
    found: list[str] = []
    for line in text.splitlines():
        words = line.split()
        if len(words) < 2 or words[0] != "nameserver":
            continue
        try:
            ip = str(ipaddress.ip_address(words[1].split("%", 1)[0]))
        except ValueError:
            continue
        if ip not in found:
            found.append(ip)
    return found[:8]  # the shim holds eight; glibc itself uses only the first three


def require_shim(scope: str = "public", mode: FilterMode = "filter") -> Path:
    """Return the built shim.

    Args:
        scope: the network scope that needs it (named in the error).
        mode: the mode it will run in (a shim built before ``deny`` existed is refused).

    Raises:
        VmError: it is not built, or too old for ``mode`` (the hint says how to build it).
    """
    shim = paths.netfilter_path()
    others = ", ".join(repr(s) for s in ("none", "group", "public", "any") if s != scope)
    if not shim.is_file():
        raise VmError(
            f"the network filter for the {scope!r} network scope is missing ({shim}); "
            f"msb does not start a {scope} sandbox without it",
            hint=BUILD_HINT + f"; or choose network {others}",
        )
    if not supports_mode(shim, mode):
        raise VmError(
            f"the network filter {shim} predates its {mode!r} mode, which the {scope!r} network scope needs",
            hint="rebuild it: " + BUILD_HINT + f"; or choose network {others}",
        )
    return shim.resolve()


def filter_env(
    shim: Path,
    ports: tuple[PortMap, ...],
    base: Mapping[str, str],
    resolvers: list[str],
    mode: FilterMode = "filter",
) -> dict[str, str]:
    """The environment QEMU (or slirp4netns) runs with for a filtered sandbox.

    Args:
        shim: the built ``msb-netfilter.so``.
        ports: the published ports (UDP ones may answer the peers that reach them).
        base: the environment to start from (usually ``os.environ``).
        resolvers: the host's DNS servers (:func:`host_resolvers`; unused in ``deny`` mode).
        mode: ``filter`` (the ``public`` ranges) or ``deny`` (every destination).

    Returns:
        ``base`` plus ``LD_PRELOAD`` (the shim first) and the shim's settings.
    """
    env = dict(base)
    preload = env.get("LD_PRELOAD", "").strip()
    env["LD_PRELOAD"] = f"{shim} {preload}".strip()
    env["MSB_NETFILTER_MODE"] = mode
    env["MSB_NETFILTER_DNS"] = "" if mode == "deny" else ",".join(resolvers)
    env["MSB_NETFILTER_UDP_PORTS"] = ",".join(str(p.host_port) for p in ports if p.protocol == "udp")
    return env


def supports_mode(shim: Path, mode: FilterMode) -> bool:
    """Whether the built shim knows ``mode``: one built before ``deny`` existed ignores it.

    Args:
        shim: the built ``msb-netfilter.so`` (only its first 4 MiB are read).
        mode: the mode it is to run in.
    """
    if mode == "filter":
        return True
    try:
        with open(shim, "rb") as f:
            return b"MSB_NETFILTER_MODE" in f.read(4 << 20)
    except OSError:
        return False


def shim_loaded(pid: int, shim: Path) -> bool:
    """Whether process ``pid`` has ``shim`` mapped (read from ``/proc/PID/maps``).

    Args:
        pid: the QEMU (or slirp4netns) process.
        shim: the resolved path of the shim it was started with.

    Returns:
        ``True`` if the shim is mapped; ``False`` if not, or if the process is gone.
    """
    try:
        with open(f"/proc/{pid}/maps") as f:
            return any(line.rstrip("\n").endswith(" " + str(shim)) for line in f)
    except OSError:
        return False


def describe(scope: str) -> str:
    """One line on what a network scope lets the guest reach (for logs and front ends)."""
    return {
        "none": "no network device",
        "group": "a network device without outbound access (published ports only)",
        "public": "internet only: host loopback, private, link-local and host addresses blocked",
        "any": "unfiltered: everything the host can reach, including its loopback (10.0.2.2)",
    }.get(scope, scope)
