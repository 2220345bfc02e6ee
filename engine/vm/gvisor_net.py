"""The network of a gVisor sandbox: a network namespace and a slirp4netns per sandbox.

Same scopes as the QEMU backend (docs/networking.md), different machinery. ``none``: runsc
``--network=none`` (a loopback only). Other scopes: a fresh network namespace (loopback up,
IPv6 off) where ``slirp4netns`` creates ``tap0`` (10.0.2.100/24, gateway 10.0.2.2, DNS
10.0.2.3) and turns the guest's connections into host socket calls, like QEMU's slirp; runsc
``--network=sandbox`` joins it and gVisor's netstack takes ``tap0`` over, so the guest's
packets reach only slirp4netns, never the host kernel's IP stack.

- ``group``: the filter (:mod:`engine.vm.netfilter`) in ``deny`` mode: every outbound call
  of slirp4netns fails, DNS too; published ports work (they are accepted, not connected).
- ``public``: the filter in ``filter`` mode (and ``--disable-host-loopback``, see slirp_argv).
- ``any``: unfiltered; 10.0.2.2 is the host's 127.0.0.1.

The namespace is held only by an fd of this process (``netns_path`` is ``/proc/<msb>/fd/N``)
and then by runsc's sandbox: nothing is mounted under ``/run/netns``, so a crash leaves no
namespace behind. slirp4netns gets ``--exit-fd`` (a pipe only msb holds the other end of: it
exits with msb), ``--enable-sandbox`` (pivot_root, capabilities dropped) and
``--enable-seccomp``. Published ports are ``add_hostfwd`` calls on its API socket.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import json
import logging
import os
import re
import shutil
import socket
from dataclasses import dataclass, field
from pathlib import Path

from engine.errors import ConfigError, VmError
from engine.sandbox.spec import NetScope, PortMap
from engine.vm import netfilter
from engine.vm.backend import VmSpec
from engine.vm.network import GUEST_DNS, check_network

log = logging.getLogger(__name__)

SLIRP_MTU = 65520
TAP = "tap0"
GUEST_IP = "10.0.2.100"
"""slirp4netns's address for the guest (``--configure``); gVisor takes it over."""
START_TIMEOUT_S = 10.0
API_TIMEOUT_S = 5.0
API_ANSWER_MAX = 4096
"""Bytes read at most from one slirp4netns API answer."""
LOG_TAIL_MAX = 8192
SUN_PATH_MAX = 107
SLIRP_HINT = "install it: apt-get install slirp4netns (or `make setup`), or point MSB_SLIRP4NETNS at the binary"

# Run in the fresh namespace: no IPv6 on the interfaces made later (tap0; as with QEMU: one
# stack less to get wrong, lo keeps ::1), loopback up (runsc skips interfaces that are down: the
# guest would have no 127.0.0.1), then wait for msb to close stdin once it holds the namespace.
NETNS_SCRIPT = (
    "f=/proc/sys/net/ipv6/conf/default/disable_ipv6; if [ -w $f ]; then echo 1 > $f; fi; "
    "ip link set lo up && echo ready && read _"
)

# runsc up to 0.0~20240729 (Debian's) refuses --network=sandbox when /proc/sys/net/core/
# rmem_default exists in the namespace it joins, to avoid taking over the host's own
# interfaces; newer kernels (this host: 6.18) have that file in every namespace. msb makes it
# and checks it is not the host's (GvisorNetwork._make_netns), so runsc runs with that
# directory hidden in its view of the namespace, in a private mount namespace of its own.
RUNSC_WRAPPER = 'nsenter --net="$0" mount -t tmpfs -o ro,size=4k msb-netns /proc/sys/net/core && exec "$@"'


def runsc_flags(scope: NetScope) -> list[str]:
    """runsc's global network flag for ``scope``."""
    return ["--network=none"] if scope == "none" else ["--network=sandbox"]


def runsc_wrapper(netns_path: str | None) -> list[str]:
    """The argv prefix runsc must run under with a slirp4netns namespace (see RUNSC_WRAPPER)."""
    if netns_path is None:
        return []
    return ["unshare", "--mount", "--propagation", "private", "--", "sh", "-c", RUNSC_WRAPPER, netns_path]


def filter_mode(scope: NetScope) -> netfilter.FilterMode | None:
    """The network filter mode slirp4netns runs with, or ``None`` for none (``any``)."""
    return "deny" if scope == "group" else "filter" if scope == "public" else None


def slirp_argv(
    slirp: str, spec: VmSpec, netns_path: str, api_socket: Path, exit_fd: int, ready_fd: int
) -> list[str]:
    """slirp4netns, in a private mount namespace (its ``--enable-sandbox`` unmounts the old root,
    which would propagate to shared host mounts such as ``/run/netns``). ``--disable-host-loopback``,
    a second lock behind the filter, also drops a published UDP port's replies to peers on the
    host's loopback (seen as 10.0.2.2): with one published, the filter guards alone."""
    scope = spec.network
    argv = ["unshare", "--mount", "--propagation", "private", "--", slirp]
    argv += ["--configure", f"--mtu={SLIRP_MTU}", "--netns-type=path", f"--api-socket={api_socket}"]
    argv += [f"--exit-fd={exit_fd}", f"--ready-fd={ready_fd}", "--enable-sandbox", "--enable-seccomp"]
    if scope != "any" and not any(p.protocol == "udp" for p in spec.ports):
        argv.append("--disable-host-loopback")
    if scope == "group":
        argv.append("--disable-dns")
    return [*argv, netns_path, TAP]


def check_ports(spec: VmSpec, run_dir: Path) -> None:
    """Refuse what slirp4netns cannot honour (:func:`engine.vm.network.check_network`).

    Raises:
        ConfigError: ports without a network, a non-IPv4 host_ip, a port published twice, or
            a run directory too long for the API socket's path.
    """
    check_network(spec)
    if spec.network != "none" and len(str(run_dir / "slirp.sock")) > SUN_PATH_MAX:
        raise ConfigError(
            f"the run directory {run_dir} is too long for slirp4netns's API socket",
            hint="set XDG_RUNTIME_DIR or TMPDIR to a shorter directory",
        )


def hostfwd_request(port: PortMap) -> bytes:
    """The slirp4netns API request publishing ``port``."""
    args = {"proto": port.protocol, "host_addr": port.host_ip, "host_port": port.host_port}
    args |= {"guest_addr": GUEST_IP, "guest_port": port.guest_port}
    return json.dumps({"execute": "add_hostfwd", "arguments": args}).encode()


def rule_text(port: PortMap) -> str:
    """A published port in words, for errors."""
    return f"{port.protocol} {port.host_ip}:{port.host_port} -> guest port {port.guest_port}"


def parse_hostfwd_answer(raw: bytes) -> str | None:
    """The error of an ``add_hostfwd`` answer (at most API_ANSWER_MAX bytes), or ``None``."""
    try:
        answer = json.loads(raw.decode(errors="replace"))
    except ValueError:
        return f"unreadable answer {raw[:200]!r}"
    if isinstance(answer, dict) and isinstance(answer.get("return"), dict):
        return None
    error = answer.get("error") if isinstance(answer, dict) else None
    desc = error.get("desc") if isinstance(error, dict) else None
    return str(desc)[:300] if desc else f"unexpected answer {raw[:200]!r}"


def why_bind_fails(port: PortMap) -> str:
    """Why the host cannot listen on the port's address now (for the error message)."""
    kind = socket.SOCK_DGRAM if port.protocol == "udp" else socket.SOCK_STREAM
    try:
        with socket.socket(socket.AF_INET, kind) as s:
            s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as slirp does
            s.bind((port.host_ip, port.host_port))
    except OSError as e:
        if e.errno == errno.EADDRINUSE:
            return f"host port {port.host_port} is already in use"
        if e.errno == errno.EADDRNOTAVAIL:
            return f"{port.host_ip} is not an address of this host"
        return f"cannot listen on {port.host_ip}:{port.host_port}: {e.strerror}"
    return "slirp4netns refused it"


def resolv_conf(scope: NetScope) -> str | None:
    """The guest's /etc/resolv.conf (``group``: no server, as none is reachable)."""
    if scope == "none":
        return None
    if scope == "group":
        return "# network scope 'group': no outbound access, no DNS server\n"
    return f"nameserver {GUEST_DNS}\n"


def hosts_file(name: str) -> str:
    """The guest's /etc/hosts: localhost and the sandbox's hostname."""
    host = re.sub(r"[^A-Za-z0-9-]", "-", name)[:63].strip("-") or "localhost"
    return f"127.0.0.1\tlocalhost\n::1\tlocalhost ip6-localhost ip6-loopback\n127.0.1.1\t{host}\n"


def find_tool(name: str, env: str | None = None, hint: str | None = None) -> str:
    """Return the path of a host tool (``env`` overrides); raises ``VmError`` if it is missing."""
    override = os.environ.get(env) if env else None
    path = override or shutil.which(name)
    if not path or not os.access(path, os.X_OK):
        raise VmError(
            f"{override or name} is needed for the gVisor backend's network and is not an executable",
            hint=hint or "install it (`make setup` does), or choose network 'none'",
        )
    return path


@dataclass
class SlirpPlan:
    """What slirp4netns runs with, settled before anything is started."""

    slirp: str
    env: dict[str, str] = field(default_factory=dict)
    shim: Path | None = None


def plan_slirp(spec: VmSpec) -> SlirpPlan:
    """Find the tools and the filter a network scope needs, without starting anything.

    Raises:
        VmError: slirp4netns, unshare or ip is missing, or the filter is missing or too old.
    """
    for tool in ("unshare", "nsenter", "ip"):
        find_tool(tool, hint=f"install {'iproute2' if tool == 'ip' else 'util-linux'} (or run `make setup`)")
    plan = SlirpPlan(find_tool("slirp4netns", "MSB_SLIRP4NETNS", SLIRP_HINT), dict(os.environ))
    mode = filter_mode(spec.network)
    if mode is not None:
        plan.shim = netfilter.require_shim(spec.network, mode)
        plan.env = netfilter.filter_env(plan.shim, spec.ports, os.environ, netfilter.host_resolvers(), mode)
    return plan


class GvisorNetwork:
    """The network of one gVisor sandbox; :meth:`close` undoes everything :meth:`create` did."""

    def __init__(self, spec: VmSpec, run_dir: Path) -> None:
        self.runsc_flags: list[str] = runsc_flags(spec.network)
        self.netns_path: Path | None = None
        self.etc_files: dict[str, Path] = {}
        self.slirp_pid: int | None = None
        self._spec = spec
        self._run_dir = run_dir
        self._netns_fd: int | None = None
        self._exit_w: int | None = None
        self._slirp: asyncio.subprocess.Process | None = None
        self._log = bytearray()
        self._log_task: asyncio.Task[None] | None = None

    @property
    def runsc_prefix(self) -> list[str]:
        """What runsc must run under (empty for ``none``): see :func:`runsc_wrapper`."""
        return runsc_wrapper(str(self.netns_path) if self.netns_path else None)

    @classmethod
    async def create(cls, spec: VmSpec, run_dir: Path) -> GvisorNetwork:
        """Set up the network for ``spec``: files, namespace, slirp4netns and published ports.

        Raises:
            ConfigError: ports or addresses the scope cannot honour.
            VmError: a tool is missing, the filter is not built, slirp4netns failed, or a host
                port cannot be published (the message names it).
        """
        check_ports(spec, run_dir)
        net = cls(spec, run_dir)
        try:
            net._write_etc_files()
            if spec.network != "none":
                log.info("%s: network scope %s (%s)", spec.name, spec.network, netfilter.describe(spec.network))
                plan = plan_slirp(spec)
                await net._make_netns()
                await net._start_slirp(plan)
                for port in spec.ports:
                    await net._publish(port)
        except BaseException:
            await net.close()
            raise
        return net

    def log_tail(self, max_bytes: int = 4096) -> str:
        """The last output of slirp4netns and the filter (blocked destinations)."""
        return bytes(self._log[-max_bytes:]).decode(errors="replace")

    async def close(self) -> None:
        """Stop slirp4netns and release the namespace. Safe to call twice, also after failures."""
        if self._exit_w is not None:
            os.close(self._exit_w)  # slirp4netns's --exit-fd: it ends on its own
            self._exit_w = None
        if self._slirp is not None:
            proc, self._slirp = self._slirp, None
            try:
                await asyncio.wait_for(proc.wait(), 2.0)
            except TimeoutError:
                with contextlib.suppress(ProcessLookupError):
                    proc.kill()
                await proc.wait()
        if self._log_task is not None:
            self._log_task.cancel()  # no-op once slirp4netns's stderr has ended with it
            self._log_task = None
        if self._netns_fd is not None:
            os.close(self._netns_fd)
            self._netns_fd = None
        (self._run_dir / "slirp.sock").unlink(missing_ok=True)

    def _write_etc_files(self) -> None:
        files = {"/etc/hosts": hosts_file(self._spec.name), "/etc/resolv.conf": resolv_conf(self._spec.network)}
        for guest, text in ((g, t) for g, t in files.items() if t is not None):
            host = self._run_dir / ("etc-" + guest.rsplit("/", 1)[1])
            host.write_text(text)
            host.chmod(0o644)
            self.etc_files[guest] = host

    async def _make_netns(self) -> None:
        """A fresh namespace, held by an fd of this process (no mount, nothing to clean up)."""
        holder = await asyncio.create_subprocess_exec(
            "unshare", "--net", "--", "sh", "-c", NETNS_SCRIPT,
            stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
        )  # fmt: skip
        assert holder.stdin is not None and holder.stdout is not None and holder.stderr is not None
        try:
            if await asyncio.wait_for(holder.stdout.read(16), START_TIMEOUT_S) != b"ready\n":
                err = (await asyncio.wait_for(holder.stderr.read(2000), 2.0)).decode(errors="replace").strip()
                raise VmError(
                    f"could not create a network namespace for sandbox {self._spec.name!r}: {err or 'no reason given'}",
                    hint="the gVisor backend's networks need root (CAP_SYS_ADMIN); or choose network 'none'",
                )
            self._netns_fd = fd = os.open(f"/proc/{holder.pid}/ns/net", os.O_RDONLY | os.O_CLOEXEC)
            if os.fstat(fd).st_ino == os.stat("/proc/self/ns/net").st_ino:  # runsc would take over eth0
                raise VmError("the new network namespace is the host's own", hint="report this as a bug")
        finally:
            holder.stdin.close()
            with contextlib.suppress(ProcessLookupError):
                if holder.returncode is None and self._netns_fd is None:
                    holder.kill()
            await holder.wait()
        self.netns_path = Path(f"/proc/{os.getpid()}/fd/{self._netns_fd}")

    async def _start_slirp(self, plan: SlirpPlan) -> None:
        spec, shim = self._spec, plan.shim
        exit_r, self._exit_w = os.pipe()
        ready_r, ready_w = os.pipe()
        api = self._run_dir / "slirp.sock"
        argv = slirp_argv(plan.slirp, spec, str(self.netns_path), api, exit_r, ready_w)
        try:
            self._slirp = await asyncio.create_subprocess_exec(
                *argv, env=plan.env, pass_fds=(exit_r, ready_w),
                stdin=asyncio.subprocess.DEVNULL, stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.PIPE,
            )  # fmt: skip
        finally:
            os.close(exit_r)
            os.close(ready_w)
        self.slirp_pid = self._slirp.pid
        assert self._slirp.stderr is not None
        self._log_task = asyncio.create_task(self._pump_log(self._slirp.stderr))
        try:
            ready = await asyncio.wait_for(_read_fd(ready_r, 16), START_TIMEOUT_S)
        except TimeoutError:
            ready = b""
        finally:
            os.close(ready_r)
        if ready != b"1":
            await asyncio.sleep(0.05)  # let the last of its stderr arrive
            raise VmError(
                f"slirp4netns did not start for sandbox {spec.name!r}: {self.log_tail(1000).strip() or 'no output'}",
                hint="check that slirp4netns >= 1.1 is installed (`make setup`); or choose network 'none'",
            )
        if shim is not None and not netfilter.shim_loaded(self._slirp.pid, shim):
            raise VmError(
                f"slirp4netns started without the network filter {shim} (the dynamic loader refused it)",
                hint=netfilter.BUILD_HINT + f"; slirp4netns said: {self.log_tail(500).strip()}",
            )

    async def _publish(self, port: PortMap) -> None:
        """Publish one port through slirp4netns's API (one request per connection)."""
        try:
            reader, writer = await asyncio.wait_for(
                asyncio.open_unix_connection(str(self._run_dir / "slirp.sock")), API_TIMEOUT_S
            )
            try:
                writer.write(hostfwd_request(port))
                await writer.drain()
                raw = await asyncio.wait_for(reader.read(API_ANSWER_MAX), API_TIMEOUT_S)
            finally:
                writer.close()
        except (OSError, TimeoutError) as e:
            raise VmError(
                f"could not set up the host forwarding rule {rule_text(port)}: slirp4netns's API failed ({e})",
                hint="see the slirp4netns output: " + self.log_tail(500).strip(),
            ) from e
        error = parse_hostfwd_answer(raw)
        if error is not None:
            raise VmError(
                f"could not set up the host forwarding rule {rule_text(port)}: {why_bind_fails(port)} ({error})",
                hint="pick a free host port (or a host_ip this host has), or stop what listens there",
            )

    async def _pump_log(self, stream: asyncio.StreamReader) -> None:
        """Keep the last LOG_TAIL_MAX bytes of slirp4netns's stderr (the guest can make it talk)."""
        while chunk := await stream.read(4096):
            self._log += chunk
            del self._log[:-LOG_TAIL_MAX]


async def _read_fd(fd: int, n: int) -> bytes:
    """Read up to ``n`` bytes from a pipe once it is readable (b"" at end of file)."""
    loop = asyncio.get_running_loop()
    readable: asyncio.Future[None] = loop.create_future()

    def wake() -> None:
        if not readable.done():
            readable.set_result(None)

    loop.add_reader(fd, wake)
    try:
        await readable
    finally:
        loop.remove_reader(fd)
    return os.read(fd, n)
