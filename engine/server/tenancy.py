"""What API clients may ask of the host, and how much of it: the tenant policy and quotas.

API clients are hostile (docs/security.md). A client chooses ``config.image``, volumes,
ports, memory and CPUs; each is checked here before anything is resolved or started:

- a host directory as the image only where the operator allowed it (``--allow-image-dir``);
- pulls without the operator's registry credentials and never from loopback or private
  addresses unless listed (:class:`~engine.images.policy.PullPolicy`);
- published ports only on loopback and from 1024 up (``--allow-public-ports`` lifts it);
- memory, CPUs, sandboxes per namespace and server, memory per namespace, concurrent
  executions per namespace: reserved atomically (no await between check and reservation),
  so concurrent requests cannot race past a limit.
"""

from __future__ import annotations

import ipaddress
import os
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

from engine.errors import ConfigError, MsbError
from engine.images.policy import PullPolicy
from engine.images.resolve import is_directory_arg
from engine.sandbox.spec import PortMap
from engine.server.settings import Limits

LOWEST_TENANT_PORT = 1024


class LimitError(MsbError):
    """A configured server limit or quota was hit."""

    code = -32030


@dataclass(frozen=True)
class TenantPolicy:
    """The operator's allowances for API clients (``msb server start`` flags)."""

    allowed_image_dirs: tuple[Path, ...] = ()
    allow_public_ports: bool = False
    pull: PullPolicy = field(default_factory=PullPolicy)
    """Image pulls clients ask for: no operator credentials, no private registries unless listed."""

    def check_image(self, image: str) -> Path | None:
        """None for an image reference; the real path of an allowed directory image.

        Raises:
            ConfigError: a directory the operator did not allow (``/`` would be the host's root).
        """
        if not is_directory_arg(image):
            return None
        hint = ("use an image name such as microsandbox/python; the operator can allow a root filesystem "
                "directory with `msb server start --allow-image-dir DIR`")  # fmt: skip
        if not image.startswith("/"):
            raise ConfigError(f"Invalid params: image {image!r} is a host path; API clients may not boot host "
                              "directories", hint=hint)  # fmt: skip
        real = Path(os.path.realpath(image))
        for allowed in self.allowed_image_dirs:
            base = Path(os.path.realpath(allowed))
            if real == base or real.is_relative_to(base):
                return real
        raise ConfigError(f"Invalid params: image {image!r} is a host directory that the operator has not allowed",
                          hint=hint)  # fmt: skip

    def check_ports(self, ports: tuple[PortMap, ...]) -> None:
        """Raises:
        ConfigError: a port published off loopback, or below 1024, unless allowed."""
        if self.allow_public_ports:
            return
        hint = "publish on 127.0.0.1 from port 1024 up, or the operator starts the server with --allow-public-ports"
        for p in ports:
            if not ipaddress.ip_address(p.host_ip).is_loopback:
                raise ConfigError(f"Invalid params: port {p.host_ip}:{p.host_port} is not on loopback", hint=hint)
            if p.host_port < LOWEST_TENANT_PORT:
                raise ConfigError(f"Invalid params: host port {p.host_port} is below {LOWEST_TENANT_PORT}", hint=hint)


@dataclass
class Quotas:
    """Running sandboxes and executions per namespace, reserved before any await."""

    limits: Limits
    _sandboxes: dict[tuple[str, str], int] = field(default_factory=dict)
    """(namespace, name) → MiB of every sandbox starting or running."""
    _execs: Counter[str] = field(default_factory=Counter)

    def check_shape(self, memory_mib: int, cpus: int | None) -> None:
        """Raises:
        LimitError: memory or CPUs over the per-sandbox maximum."""
        lim = self.limits
        if memory_mib > lim.max_memory_mib:
            raise LimitError(f"memory {memory_mib} MiB is over this server's maximum of {lim.max_memory_mib} MiB",
                             hint="ask for less, or the operator raises MSB_MAX_MEMORY_MIB")  # fmt: skip
        if cpus is not None and cpus > lim.max_cpus:
            raise LimitError(f"cpus {cpus} is over this server's maximum of {lim.max_cpus}",
                             hint="ask for fewer, or the operator raises MSB_MAX_CPUS")  # fmt: skip

    def reserve(self, namespace: str, name: str, memory_mib: int) -> None:
        """Count a sandbox as running from now on; :meth:`release` when it stops or fails.

        Raises:
            LimitError: the server's, the namespace's sandbox count, or the namespace's memory.
        """
        lim = self.limits
        if len(self._sandboxes) >= lim.max_sandboxes:
            raise LimitError(f"this server already runs {lim.max_sandboxes} sandboxes (its limit)",
                             hint="stop one (sandbox.stop) or raise MSB_MAX_SANDBOXES")  # fmt: skip
        mine = [mib for (ns, _), mib in self._sandboxes.items() if ns == namespace]
        per_ns = lim.max_sandboxes_per_namespace or lim.max_sandboxes
        if len(mine) >= per_ns:
            raise LimitError(f"namespace {namespace!r} already runs {per_ns} sandboxes (its quota)",
                             hint="stop one (sandbox.stop) or raise MSB_MAX_SANDBOXES_PER_NAMESPACE")  # fmt: skip
        if sum(mine) + memory_mib > lim.max_namespace_memory_mib:
            raise LimitError(f"namespace {namespace!r} would use {sum(mine) + memory_mib} MiB, over its quota of "
                             f"{lim.max_namespace_memory_mib} MiB",
                             hint="stop a sandbox or ask for less memory; the operator can raise "
                             "MSB_MAX_NAMESPACE_MEMORY_MIB")  # fmt: skip
        self._sandboxes[(namespace, name)] = memory_mib

    def release(self, namespace: str, name: str) -> None:
        self._sandboxes.pop((namespace, name), None)

    def begin_exec(self, namespace: str) -> None:
        """Raises:
        LimitError: the namespace runs its maximum of executions at once."""
        if self._execs[namespace] >= self.limits.max_execs_per_namespace:
            raise LimitError(f"namespace {namespace!r} already runs {self.limits.max_execs_per_namespace} "
                             "commands at once (its quota)",
                             hint="wait for some to finish, or raise MSB_MAX_EXECS_PER_NAMESPACE")  # fmt: skip
        self._execs[namespace] += 1

    def end_exec(self, namespace: str) -> None:
        self._execs[namespace] -= 1
        if self._execs[namespace] <= 0:
            del self._execs[namespace]


def tree_mib(path: Path, stop_after_mib: int) -> float:
    """Disk use of a tree in MiB (allocated blocks), without following symlinks; stops
    counting once past ``stop_after_mib`` (a hostile tree may hold millions of files)."""
    total = 0
    stack = [path]
    budget = stop_after_mib << 20
    while stack and total <= budget:
        try:
            with os.scandir(stack.pop()) as it:
                for entry in it:
                    st = entry.stat(follow_symlinks=False)
                    total += st.st_blocks * 512
                    if entry.is_dir(follow_symlinks=False):
                        stack.append(Path(entry.path))
        except OSError:
            continue
    return total / (1 << 20)
