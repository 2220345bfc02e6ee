"""libkrun backend: the call plan for a VM and the child process that runs it.

:func:`krun_plan` turns a :class:`~engine.vm.backend.VmSpec` into the exact sequence of
libkrun calls (pure, unit-tested); :func:`apply_plan` runs them against a
:class:`~engine.vm.krun_ffi.KrunContext`; :func:`spawn` / :func:`child_command` start
``python -m engine.vm.krun_child`` which loads libkrun, applies the plan and calls
``krun_start_enter``. That call never returns on success (the process *becomes* the VMM), so
it must not run in the engine's own process. A subprocess rather than ``os.fork``: forking a
process that runs an asyncio loop and threads is unsafe. :mod:`engine.vm.krun_backend` is the
:class:`~engine.vm.backend.VmBackend` built on this.

libkrun takes the root file system as a host **directory** (shared over virtio-fs), not as
an ext4 image; callers pass the directory as ``root_dir`` (the host overlay of the image tree,
:mod:`engine.vm.krun_root`). It runs no kernel or initramfs of ours either (libkrunfw brings
the kernel), so the guest agent is exec'd from inside the root (``msb-agent --krun``) with its
boot parameters in the environment.

Network scopes (libkrun's networking is TSI: the guest's sockets become sockets of the VMM
process on the host; there is no virtual network device to filter):

- ``none``: the vsock device is added without TSI (``krun_add_vsock(ctx, 0)``); libkrun's VMM
  then refuses the guest's socket proxies, so only the agent's port crosses.
- ``any``: TSI for IP sockets; published ports are ``krun_set_port_map`` entries.
- ``public`` and ``group`` cannot be honoured (TSI has no destination filter, and published
  ports need TSI) and are refused with a :class:`~engine.errors.ConfigError`.

Volumes are shared read-only only: libkrun's virtio-fs server applies the guest's owners,
modes and device nodes to the host directory for real, so a read-write volume would let a
hostile guest leave a device node or a setuid-root program there for host users.
"""

from __future__ import annotations

import ipaddress
import os
import resource
import subprocess
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, TypeAdapter

from engine.errors import ConfigError, VmError
from engine.vm.backend import VmSpec
from engine.vm.krun_ffi import KRUN_TSI_HIJACK_INET, KrunContext
from engine.vm.volumes import check_volumes, encode_guest_path

CallName = Literal[
    "krun_set_vm_config",
    "krun_set_root",
    "krun_add_virtiofs",
    "krun_disable_implicit_vsock",
    "krun_add_vsock",
    "krun_add_vsock_port",
    "krun_set_port_map",
    "krun_set_rlimits",
    "krun_set_workdir",
    "krun_set_exec",
]
Arg = int | str | tuple[str, ...]

DEFAULT_AGENT_PATH = "/.msb/agent"
"""Where the guest agent sits inside the root directory (placed there by the caller)."""
AGENT_ARGS = ("--krun",)
"""The agent's arguments under libkrun (engine/guest/agent/krun.c)."""
DEFAULT_RLIMITS: Mapping[int, tuple[int, int]] = {resource.RLIMIT_NOFILE: (65536, 65536)}
"""Guest rlimits set by libkrun's init before it execs the agent (resource → (soft, hard))."""
_OTHER_BACKENDS = "use --backend qemu (slirp with msb's filter) or --backend gvisor"


class KrunCall(BaseModel):
    """One libkrun call of a plan, without the context id (added when it is applied)."""

    model_config = ConfigDict(frozen=True)

    name: CallName
    args: tuple[Arg, ...] = ()


PlanAdapter = TypeAdapter(list[KrunCall])
"""JSON form of a plan, as handed to the child process."""


def tsi_features(spec: VmSpec) -> int:
    """The TSI features that give ``spec``'s network scope, as ``krun_add_vsock`` takes them.

    Raises:
        ConfigError: a scope libkrun cannot enforce (``public``, ``group``).
    """
    if spec.network == "none":
        return 0
    if spec.network == "any":
        return KRUN_TSI_HIJACK_INET
    why = {
        "public": "TSI turns the guest's sockets into host sockets with no destination filter, so the "
        "host's loopback and private networks would be reachable",
        "group": "published ports need TSI, and TSI also opens outbound access",
    }[spec.network]
    raise ConfigError(f"network scope {spec.network!r} cannot be enforced by the libkrun backend: {why}",
                      hint=f"{_OTHER_BACKENDS}, or choose scope 'none' or 'any'")  # fmt: skip


def _is_wildcard(ip: str) -> bool:
    try:
        return ipaddress.ip_address(ip).is_unspecified
    except ValueError:
        return False


def _port_map(spec: VmSpec) -> tuple[str, ...]:
    if spec.ports and spec.network == "none":
        raise ConfigError("ports are published, but the network scope is 'none'",
                          hint="set network scope 'any', or drop the ports")  # fmt: skip
    for p in spec.ports:
        if p.protocol != "tcp":
            raise ConfigError(f"port {p.host_port}/{p.protocol}: libkrun publishes TCP ports only",
                              hint=_OTHER_BACKENDS)  # fmt: skip
        if not _is_wildcard(p.host_ip):
            # TSI binds the host port on the address the guest's program listens on (often
            # 0.0.0.0): a promise to stay on 127.0.0.1 would be broken by the guest.
            raise ConfigError(
                f"port {p.host_port}: libkrun listens on whatever address the guest binds, so it cannot "
                f"keep the port on {p.host_ip}",
                hint=f"publish it with host_ip 0.0.0.0, or {_OTHER_BACKENDS}",
            )
    return tuple(f"{p.host_port}:{p.guest_port}" for p in spec.ports)


def _check_volumes(spec: VmSpec) -> None:
    check_volumes(spec.volumes)
    rw = [v for v in spec.volumes if not v.readonly]
    if rw:
        # QEMU keeps a guest's owners, modes and device nodes in xattrs (mapped-xattr);
        # libkrun's virtio-fs server creates them for real, with msb's (root) privileges.
        raise ConfigError(
            f"read-write volume {rw[0].host} -> {rw[0].guest}: libkrun's virtio-fs server would create the "
            "guest's device nodes and setuid files for real in the host directory, where host users could use them",
            hint=f"share it read-only, or {_OTHER_BACKENDS}",
        )


def _agent_env(spec: VmSpec, agent_port: int, env: Mapping[str, str]) -> tuple[str, ...]:
    """The agent's whole environment: its boot parameters (the kernel command line's
    ``msb.*`` under QEMU; parsed by engine/guest/agent/krun.c) plus the caller's variables."""
    boot = {"MSB_PORT": f"vsock:{agent_port}", "MSB_HOSTNAME": spec.name[:63]}
    if spec.upper_image is not None:
        boot["MSB_SYNC"] = "1"  # persistent writable layer: syncfs after each exec
    for i, v in enumerate(spec.volumes):
        boot[f"MSB_VOL{i}"] = f"msbvol{i}:{'ro' if v.readonly else 'rw'}:{encode_guest_path(v.guest)}"
    clash = sorted(k for k in env if k.startswith("MSB_"))
    if clash:
        raise ConfigError(f"environment variables {', '.join(clash)} are reserved for msb's guest agent")
    return tuple(f"{k}={v}" for k, v in (boot | dict(env)).items())


def check_spec(spec: VmSpec) -> None:
    """Refuse what libkrun cannot honour in ``spec`` (pure), before anything is prepared: for
    ``auto`` backend selection to fall back to another backend.

    Raises:
        ConfigError: a network scope, published port or read-write volume libkrun cannot honour.
    """
    tsi_features(spec)
    _port_map(spec)
    _check_volumes(spec)


def krun_plan(
    spec: VmSpec,
    *,
    root_dir: Path,
    agent_socket: Path,
    agent_port: int,
    agent_path: str = DEFAULT_AGENT_PATH,
    agent_args: Sequence[str] = AGENT_ARGS,
    env: Mapping[str, str] | None = None,
    workdir: str = "/",
    rlimits: Mapping[int, tuple[int, int]] = DEFAULT_RLIMITS,
    volume_dirs: Sequence[Path] | None = None,
) -> list[KrunCall]:
    """The libkrun calls that configure a VM for ``spec`` (pure; nothing is touched).

    Args:
        spec: the VM (vCPUs, RAM, volumes, ports, network scope; kernel/initrd/images unused).
        root_dir: host directory used as the guest root (libkrun takes no disk image here).
        agent_socket: host unix socket the agent's vsock port leads to (listened on by us).
        agent_port: guest vsock port the agent connects to.
        agent_path: the agent inside ``root_dir``; agent_args: its arguments (no argv[0]).
        env: extra environment of the agent (names starting ``MSB_`` are reserved).
        workdir: working directory in the guest.
        rlimits: resource (``resource.RLIMIT_*``) → (soft, hard).
        volume_dirs: host directory shared for each volume, in order (the backend's
            nosuid/nodev/read-only bind mounts); ``None`` = the volumes' own host paths.

    Returns:
        The calls, in the order they must be made.

    Raises:
        ConfigError: a network scope, read-write volumes, ports or environment libkrun or the
            agent cannot honour.
    """
    if not root_dir.is_absolute() or not agent_socket.is_absolute():
        raise ConfigError("root_dir and agent_socket must be absolute paths")
    _check_volumes(spec)
    shares = list(volume_dirs) if volume_dirs is not None else [v.host for v in spec.volumes]
    if len(shares) != len(spec.volumes):
        raise ConfigError(f"{len(shares)} volume directories for {len(spec.volumes)} volumes")
    features = tsi_features(spec)
    calls = [
        KrunCall(name="krun_set_vm_config", args=(spec.cpus, spec.memory_mib)),
        KrunCall(name="krun_set_root", args=(str(root_dir),)),
    ]
    calls += [KrunCall(name="krun_add_virtiofs", args=(f"msbvol{i}", str(d))) for i, d in enumerate(shares)]
    calls += [
        KrunCall(name="krun_disable_implicit_vsock"),
        KrunCall(name="krun_add_vsock", args=(features,)),
        KrunCall(name="krun_add_vsock_port", args=(agent_port, str(agent_socket))),
        KrunCall(name="krun_set_port_map", args=(_port_map(spec),)),
        KrunCall(name="krun_set_rlimits", args=(tuple(f"{r}={s}:{h}" for r, (s, h) in rlimits.items()),)),
        KrunCall(name="krun_set_workdir", args=(workdir,)),
        KrunCall(name="krun_set_exec", args=(agent_path, tuple(agent_args), _agent_env(spec, agent_port, env or {}))),
    ]
    return calls


def _ints(call: KrunCall, n: int) -> list[int]:
    vals = [a for a in call.args[:n] if isinstance(a, int)]
    if len(vals) != n:
        raise VmError(f"bad arguments for {call.name}: {call.args!r}")
    return vals


def _strs(call: KrunCall, start: int = 0) -> list[str]:
    vals = [a for a in call.args[start:] if isinstance(a, str)]
    if len(vals) != len(call.args) - start:
        raise VmError(f"bad arguments for {call.name}: {call.args!r}")
    return vals


def _vec(call: KrunCall, i: int) -> tuple[str, ...]:
    a = call.args[i] if i < len(call.args) else None
    if not isinstance(a, tuple):
        raise VmError(f"bad arguments for {call.name}: {call.args!r}")
    return a


def apply_plan(ctx: KrunContext, plan: Sequence[KrunCall]) -> None:
    """Make the calls of ``plan`` on ``ctx``, in order (``krun_start_enter`` is not part of it).

    Raises:
        VmError: a call failed (names the call and the errno), or a call's arguments are malformed.
    """
    for c in plan:
        match c.name:
            case "krun_set_vm_config":
                ctx.set_vm_config(*_ints(c, 2))
            case "krun_set_root":
                ctx.set_root(*_strs(c))
            case "krun_add_virtiofs":
                ctx.add_virtiofs(*_strs(c))
            case "krun_disable_implicit_vsock":
                ctx.disable_implicit_vsock()
            case "krun_add_vsock":
                ctx.add_vsock(_ints(c, 1)[0])
            case "krun_add_vsock_port":
                ctx.add_vsock_port(_ints(c, 1)[0], *_strs(c, 1))
            case "krun_set_port_map":
                ctx.set_port_map(_vec(c, 0))
            case "krun_set_rlimits":
                ctx.set_rlimits(_vec(c, 0))
            case "krun_set_workdir":
                ctx.set_workdir(*_strs(c))
            case "krun_set_exec":
                path = c.args[0] if c.args else None
                if not isinstance(path, str):
                    raise VmError(f"bad arguments for {c.name}: {c.args!r}")
                ctx.set_exec(path, _vec(c, 1), _vec(c, 2))


def child_command(plan: Sequence[KrunCall], plan_file: Path, *, libkrun: str | None = None,
                  log_level: int = 0) -> tuple[list[str], dict[str, str]]:  # fmt: skip
    """Write ``plan`` to ``plan_file`` and return the VMM child's argv and environment.

    Args:
        plan: from :func:`krun_plan`.
        plan_file: where to write the plan for the child (in the VM's private run dir).
        libkrun: library path for the child (``None`` = its own lookup, see krun_ffi).
        log_level: libkrun's log level (0 off … 5 trace; the log goes to the child's stderr).
    """
    plan_file.write_bytes(PlanAdapter.dump_json(list(plan)))
    env = dict(os.environ)
    if libkrun:
        env["MSB_LIBKRUN"] = libkrun
    return [sys.executable, "-m", "engine.vm.krun_child", str(plan_file), str(log_level)], env


def spawn(plan: Sequence[KrunCall], plan_file: Path, *, libkrun: str | None = None,
          log_level: int = 0, stderr: int | None = None) -> subprocess.Popen[bytes]:  # fmt: skip
    """Start the VMM child: it applies ``plan`` and enters ``krun_start_enter``.

    The child exits with the guest's status once the VM ends; if libkrun refuses a call it
    writes the :class:`VmError` to stderr and exits with :data:`engine.vm.krun_child.EXIT_CONFIG`.
    Arguments as :func:`child_command`; ``stderr``: where the child's stderr goes (``None`` =
    inherited).
    """
    argv, env = child_command(plan, plan_file, libkrun=libkrun, log_level=log_level)
    return subprocess.Popen(argv, env=env, stdin=subprocess.DEVNULL, stderr=stderr, close_fds=True)
