"""libkrun backend, first piece: the call plan for a VM and the child process that runs it.

:func:`krun_plan` turns a :class:`~engine.vm.backend.VmSpec` into the exact sequence of
libkrun calls (pure, unit-tested); :func:`apply_plan` runs them against a
:class:`~engine.vm.krun_ffi.KrunContext`; :func:`spawn` starts ``python -m
engine.vm.krun_child`` which loads libkrun, applies the plan and calls ``krun_start_enter``.
That call never returns on success (the process *becomes* the VMM), so it must not run in the
engine's own process. A subprocess rather than ``os.fork``: forking a process that runs an
asyncio loop and threads is unsafe.

libkrun takes the root file system as a host **directory** (shared over virtio-fs), not as
the ext4 image in ``VmSpec.root_image``; callers pass the directory as ``root_dir`` (a
sandbox's ``SandboxSpec.rootfs``). It runs no kernel or initramfs of ours either (libkrunfw
brings the kernel), so the guest agent is exec'd from inside the root.

Not done yet (issue 7): a ``KrunBackend`` implementing :class:`~engine.vm.backend.VmBackend`
— listen on ``agent_socket``, :func:`spawn`, accept the agent's connection as a
``StreamChannel``, console capture and kill/wait — and the guest agent's vsock transport
(it reads ``MSB_PORT=vsock:N`` from its environment in this plan; today it only knows the
virtio-serial port from the kernel command line). Not selectable in the engine yet.
"""

from __future__ import annotations

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
from engine.vm.krun_ffi import KrunContext
from engine.vm.volumes import check_volumes, encode_guest_path

CallName = Literal[
    "krun_set_vm_config",
    "krun_set_root",
    "krun_add_virtiofs",
    "krun_add_vsock_port",
    "krun_set_port_map",
    "krun_set_rlimits",
    "krun_set_workdir",
    "krun_set_exec",
]
Arg = int | str | tuple[str, ...]

DEFAULT_AGENT_PATH = "/.msb/agent"
"""Where the guest agent sits inside the root directory (placed there by the caller)."""
DEFAULT_RLIMITS: Mapping[int, tuple[int, int]] = {resource.RLIMIT_NOFILE: (65536, 65536)}
"""Guest rlimits set by libkrun's init before it execs the agent (resource → (soft, hard))."""


class KrunCall(BaseModel):
    """One libkrun call of a plan, without the context id (added when it is applied)."""

    model_config = ConfigDict(frozen=True)

    name: CallName
    args: tuple[Arg, ...] = ()


PlanAdapter = TypeAdapter(list[KrunCall])
"""JSON form of a plan, as handed to the child process."""


def _port_map(spec: VmSpec) -> tuple[str, ...]:
    for p in spec.ports:
        if p.protocol != "tcp":
            raise ConfigError(f"port {p.host_port}/{p.protocol}: libkrun publishes TCP ports only",
                              hint="use the QEMU backend for UDP ports")  # fmt: skip
    if spec.ports and spec.network == "none":
        raise ConfigError("ports are published, but the network scope is 'none'",
                          hint="set a network scope, or drop the ports")  # fmt: skip
    return tuple(f"{p.host_port}:{p.guest_port}" for p in spec.ports)


def _agent_env(spec: VmSpec, agent_port: int, env: Mapping[str, str]) -> tuple[str, ...]:
    """The agent's whole environment: its boot parameters (the kernel command line's
    ``msb.*`` under QEMU) plus the caller's variables."""
    boot = {"MSB_PORT": f"vsock:{agent_port}", "MSB_HOSTNAME": spec.name[:63]}
    for i, v in enumerate(spec.volumes):
        boot[f"MSB_VOL{i}"] = f"msbvol{i}:{'ro' if v.readonly else 'rw'}:{encode_guest_path(v.guest)}"
    clash = sorted(k for k in env if k.startswith("MSB_"))
    if clash:
        raise ConfigError(f"environment variables {', '.join(clash)} are reserved for msb's guest agent")
    return tuple(f"{k}={v}" for k, v in (boot | dict(env)).items())


def krun_plan(
    spec: VmSpec,
    *,
    root_dir: Path,
    agent_socket: Path,
    agent_port: int,
    agent_path: str = DEFAULT_AGENT_PATH,
    agent_args: Sequence[str] = (),
    env: Mapping[str, str] | None = None,
    workdir: str = "/",
    rlimits: Mapping[int, tuple[int, int]] = DEFAULT_RLIMITS,
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

    Returns:
        The calls, in the order they must be made.

    Raises:
        ConfigError: volumes, ports or environment libkrun or the agent cannot honour.
    """
    if not root_dir.is_absolute() or not agent_socket.is_absolute():
        raise ConfigError("root_dir and agent_socket must be absolute paths")
    check_volumes(spec.volumes)
    calls = [
        KrunCall(name="krun_set_vm_config", args=(spec.cpus, spec.memory_mib)),
        KrunCall(name="krun_set_root", args=(str(root_dir),)),
    ]
    calls += [KrunCall(name="krun_add_virtiofs", args=(f"msbvol{i}", str(v.host))) for i, v in enumerate(spec.volumes)]
    calls += [
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


def spawn(plan: Sequence[KrunCall], plan_file: Path, *, libkrun: str | None = None,
          log_level: int = 0, stderr: int | None = None) -> subprocess.Popen[bytes]:  # fmt: skip
    """Start the VMM child: it applies ``plan`` and enters ``krun_start_enter``.

    The child exits with the guest's status once the VM ends; if libkrun refuses a call it
    writes the :class:`VmError` to stderr and exits with :data:`engine.vm.krun_child.EXIT_CONFIG`.

    Args:
        plan: from :func:`krun_plan`.
        plan_file: where to write the plan for the child (in the VM's private run dir).
        libkrun: library path for the child (``None`` = its own lookup, see krun_ffi).
        log_level: libkrun's log level (0 off … 5 trace).
        stderr: where the child's stderr goes (``None`` = inherited).
    """
    plan_file.write_bytes(PlanAdapter.dump_json(list(plan)))
    env = dict(os.environ)
    if libkrun:
        env["MSB_LIBKRUN"] = libkrun
    argv = [sys.executable, "-m", "engine.vm.krun_child", str(plan_file), str(log_level)]
    return subprocess.Popen(argv, env=env, stdin=subprocess.DEVNULL, stderr=stderr, close_fds=True)
