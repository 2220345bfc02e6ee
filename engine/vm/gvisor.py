"""gVisor backend: each sandbox is one ``runsc run`` of an OCI bundle.

gVisor's Sentry is a user-space kernel: the sandbox's system calls are served by it, not by the
host kernel, which sees only the Sentry's small, seccomp-filtered set of calls. No hardware
virtualisation is needed, so this runs on hosts without usable KVM (cloud VMs, CI runners,
this PVM machine), and it is the isolation msb recommends there over QEMU with TCG.

The bundle (in the VM's private run directory):

- root: the image's directory tree. An ephemeral sandbox gets gVisor's in-memory overlay over
  it (``--overlay2=root:memory``: writes stay in the Sentry's memory, counted against the
  sandbox's memory limit). A persistent one gets a host overlayfs mount whose upper layer is
  its own ``persist_dir/upper`` directory (:mod:`engine.vm.overlay`), so its files survive any
  crash; the image tree is never written either way.
- process: the static guest agent, bind-mounted read-only at ``/.msb/agent``, run as
  ``--serve-stdio``: the frames of :mod:`engine.vm.protocol` travel over the stdin/stdout
  pipes of the ``runsc run`` process, and the agent's stderr is the "console".
- volumes: bind mounts, served by gVisor's gofer. Each host directory is opened with no symlink
  followed and bind-mounted from that fd into the run directory (``nosuid,nodev``, read-only
  for a read-only volume), and runsc gets that mount (:func:`engine.vm.volumes.bind_volumes`).
  The gofer runs as root and creates the guest's files for real: a guest could leave a
  setuid-root program in a read-write volume. So when msb runs as root, read-write volumes that
  other host users can reach are refused (:func:`check_spec`; ``auto`` then falls back to another
  backend) unless the operator sets ``MSB_GVISOR_RW_VOLUMES=allow``.
- limits: memory and CPU quota as OCI resources; every process of the sandbox (runsc, its
  Sentry and gofer, slirp4netns) in a cgroup of its own (:mod:`engine.vm.confine`).
- network: per scope, from :mod:`engine.vm.gvisor_net`.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import signal
import time
from pathlib import Path
from typing import Any

from engine import paths
from engine.errors import AgentError, ConfigError, VmError
from engine.vm import confine, overlay
from engine.vm.backend import Accel, VmSpec
from engine.vm.channel import StreamChannel
from engine.vm.confine import cgroup_cpu_ticks
from engine.vm.console import Console, pump_console
from engine.vm.gvisor_net import GvisorNetwork
from engine.vm.runsc import find_runsc
from engine.vm.volumes import bind_volumes

log = logging.getLogger(__name__)

AGENT_IN_GUEST = "/.msb/agent"
CAPS = (
    "CAP_AUDIT_WRITE", "CAP_CHOWN", "CAP_DAC_OVERRIDE", "CAP_FOWNER", "CAP_FSETID", "CAP_KILL",
    "CAP_MKNOD", "CAP_NET_BIND_SERVICE", "CAP_NET_RAW", "CAP_SETFCAP", "CAP_SETGID", "CAP_SETPCAP",
    "CAP_SETUID", "CAP_SYS_CHROOT",
)  # fmt: skip
"""Docker's default set: enough for the agent to switch users and for ordinary programs."""
NOFILE = 1 << 16
CPU_PERIOD_US = 100_000
DELETE_TIMEOUT_S = 10.0
RW_VOLUMES_ENV = "MSB_GVISOR_RW_VOLUMES"
PLATFORM_ENV = "MSB_GVISOR_PLATFORM"
PLATFORMS = ("systrap", "ptrace", "kvm")
"""How the Sentry intercepts the guest's system calls (docs/backends.md has the trade-off):
systrap (runsc's default) is fast for system calls but idles at a few % of a core per sandbox;
ptrace idles at none and is slower for system calls; kvm needs working nested virtualisation."""


def runsc_platform(env: dict[str, str] | None = None) -> str:
    """The platform from ``MSB_GVISOR_PLATFORM`` (default systrap).

    Raises:
        ConfigError: not one of :data:`PLATFORMS`.
    """
    value = (os.environ if env is None else env).get(PLATFORM_ENV, "").strip() or "systrap"
    if value not in PLATFORMS:
        raise ConfigError(f"{PLATFORM_ENV}={value!r} is not a gVisor platform",
                          hint=f"use one of {', '.join(PLATFORMS)} (docs/backends.md)")  # fmt: skip
    return value


def check_spec(spec: VmSpec) -> None:
    """Refuse what gVisor cannot run safely here (pure), before anything is prepared.

    A setuid-root program the guest leaves in a read-write volume only matters to host users
    who can reach it: a volume below a root-owned directory that nobody else may enter (the
    server's 0700 volume areas, ``/root``) is fine.

    Raises:
        ConfigError: a read-write volume other users can reach while msb runs as root, unless
            ``MSB_GVISOR_RW_VOLUMES=allow``.
    """
    if os.geteuid() != 0 or os.environ.get(RW_VOLUMES_ENV) == "allow":
        return
    rw = [v for v in spec.volumes if not v.readonly and reachable_by_others(v.host)]
    if rw:
        raise ConfigError(
            f"read-write volume {rw[0].host} -> {rw[0].guest}: gVisor's gofer runs as root and would create the "
            "guest's setuid-root programs for real in a host directory that other users can reach",
            hint=f"share it read-only, keep it below a directory only root may enter (chmod 700), use the QEMU "
            f"backend (--backend qemu; it keeps owners and modes in xattrs), or accept the risk with "
            f"{RW_VOLUMES_ENV}=allow",
        )


def reachable_by_others(path: Path) -> bool:
    """Whether a user other than root may walk down to ``path``: False when it or a parent is
    a root-owned directory without search permission for others (nor for a group other than
    root's)."""
    current = Path(os.path.abspath(path))
    for d in (current, *current.parents):
        try:
            st = os.stat(d)
        except OSError:
            return True
        closed_group = not st.st_mode & 0o010 or st.st_gid == 0
        if st.st_uid == 0 and not st.st_mode & 0o001 and closed_group:
            return False
    return True


def container_id(spec: VmSpec) -> str:
    """runsc container ids are per ``--root``; each VM has its own root, so the name is enough."""
    return f"msb-{spec.name}"


def oci_config(
    spec: VmSpec, *, root: Path, agent: Path, etc_files: dict[str, Path], netns: Path | None,
    volume_sources: list[Path] | None = None, cgroup_path: str | None = None,
) -> dict[str, Any]:
    """The OCI runtime config of a sandbox (pure).

    Args:
        spec: the VM (name, cpus, memory, volumes).
        root: the directory runsc uses as ``/``.
        agent: the host path of the static agent binary.
        etc_files: guest path → host file, bind-mounted read-only (resolv.conf, hosts).
        netns: the network namespace to join, or None for a new, empty one.
        volume_sources: the host path runsc gets for each volume (default: the volume's own
            directory; read-only volumes get a read-only bind of it, see :meth:`GvisorBackend.launch`).
        cgroup_path: the sandbox's cgroup (:meth:`engine.vm.confine.SandboxCgroup.oci_path`): runsc
            puts the Sentry and gofer there and applies the resources, whose memory limit is also
            what the guest sees as MemTotal.
    """
    mounts: list[dict[str, Any]] = [
        {"destination": "/proc", "type": "proc", "source": "proc"},
        {"destination": "/dev", "type": "tmpfs", "source": "tmpfs", "options": ["nosuid", "mode=755"]},
        {"destination": "/dev/pts", "type": "devpts", "source": "devpts",
         "options": ["nosuid", "noexec", "newinstance", "ptmxmode=0666", "mode=0620"]},
        {"destination": "/dev/shm", "type": "tmpfs", "source": "shm", "options": ["nosuid", "nodev", "mode=1777"]},
        {"destination": "/sys", "type": "sysfs", "source": "sysfs", "options": ["nosuid", "noexec", "nodev", "ro"]},
        {"destination": AGENT_IN_GUEST, "type": "bind", "source": str(agent), "options": ["rbind", "ro"]},
    ]  # fmt: skip
    for guest, host in sorted(etc_files.items()):
        mounts.append({"destination": guest, "type": "bind", "source": str(host), "options": ["rbind", "ro"]})
    sources = volume_sources or [vol.host for vol in spec.volumes]
    for vol, source in zip(spec.volumes, sources, strict=True):
        opts = ["rbind", "ro" if vol.readonly else "rw"]
        mounts.append({"destination": vol.guest, "type": "bind", "source": str(source), "options": opts})
    namespaces: list[dict[str, str]] = [{"type": t} for t in ("pid", "ipc", "uts", "mount")]
    namespaces.append({"type": "network", "path": str(netns)} if netns else {"type": "network"})
    caps = list(CAPS)
    cgroup = {"cgroupsPath": cgroup_path} if cgroup_path else {}
    return {
        "ociVersion": "1.0.2",
        "process": {
            "terminal": False,
            "user": {"uid": 0, "gid": 0},
            "args": [AGENT_IN_GUEST, "--serve-stdio"],
            "env": ["PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin", f"HOSTNAME={spec.name}"],
            "cwd": "/",
            "capabilities": {k: caps for k in ("bounding", "effective", "permitted")},
            "rlimits": [{"type": "RLIMIT_NOFILE", "hard": NOFILE, "soft": NOFILE}],
            "noNewPrivileges": False,
        },
        "root": {"path": str(root), "readonly": False},
        "hostname": spec.name,
        "mounts": mounts,
        "linux": {
            **cgroup,
            "namespaces": namespaces,
            "resources": {
                "memory": {"limit": spec.memory_mib << 20},
                "cpu": {"quota": spec.cpus * CPU_PERIOD_US, "period": CPU_PERIOD_US},
                "pids": {"limit": 32768},
            },
        },
    }


def runsc_argv(
    runsc: str, spec: VmSpec, state: Path, net_flags: list[str], bundle: Path, platform: str = "systrap"
) -> list[str]:
    """The ``runsc run`` command line (pure). runsc configures cgroups itself, in the sandbox's
    own cgroup (``linux.cgroupsPath`` of :func:`oci_config`)."""
    overlay_flag = "--overlay2=none" if spec.upper_image is not None else "--overlay2=root:memory"
    debug = [f"--debug-log={spec.run_dir}/runsc-debug/"] if os.environ.get("MSB_RUNSC_DEBUG") else []
    return [
        runsc, f"--root={state}", f"--platform={platform}", *debug, *net_flags, overlay_flag, "--host-uds=none",
        "run", f"--bundle={bundle}", container_id(spec),
    ]  # fmt: skip


def find_child(parent: int, argv0: bytes) -> int | None:
    """The pid of a direct child of ``parent`` whose ``argv[0]`` is ``argv0``, if any."""
    try:
        tids = os.listdir(f"/proc/{parent}/task")
    except OSError:
        return None
    for tid in tids:
        try:
            with open(f"/proc/{parent}/task/{tid}/children") as f:
                children = [int(c) for c in f.read().split()]
        except (OSError, ValueError):
            continue
        for child in children:
            try:
                with open(f"/proc/{child}/cmdline", "rb") as f:
                    if f.read(256).split(b"\0", 1)[0] == argv0:
                        return child
            except OSError:
                continue
    return None


class GvisorVm:
    """A running ``runsc run`` (implements :class:`~engine.vm.backend.VmHandle`)."""

    def __init__(self, spec: VmSpec, runsc: str, state: Path, console: Console, net: GvisorNetwork) -> None:
        self.spec = spec
        self.runsc = runsc
        self.state = state
        self.proc: asyncio.subprocess.Process | None = None
        self._sandbox_pid: int | None = None
        self.accel: Accel = "none"
        self.channel: StreamChannel
        self.merged: Path | None = None
        self.mounts: list[Path] = []
        """Host mounts made for this sandbox (read-only volume binds), unmounted at the end."""
        self._disk: tuple[float, int | None] = (0.0, None)
        self._console = console
        self._net = net
        self._tasks: list[asyncio.Task[None]] = []
        self._cleanup_task: asyncio.Future[None] | None = None
        self.cgroup: confine.SandboxCgroup | None = None

    @property
    def pid(self) -> int | None:
        """The Sentry's host pid (``runsc-sandbox``, the process that runs the guest and holds
        its memory), else ``runsc run``'s while the Sentry is still starting."""
        if self.proc is None:
            return None
        if self._sandbox_pid is None and self.proc.returncode is None:
            self._sandbox_pid = find_child(self.proc.pid, b"runsc-sandbox")
        return self._sandbox_pid or self.proc.pid

    def host_disk_bytes(self) -> int | None:
        """Bytes in a persistent sandbox's writable layer, counted on the host (the guest's
        statfs would report the host file system under the overlay). At most every 5 s, and
        bounded: a layer of more than 200 000 entries reports what was counted so far."""
        if self.spec.upper_image is None:
            return None
        now = time.monotonic()
        if now - self._disk[0] < 5.0:
            return self._disk[1]
        total, seen = 0, 0
        for dirpath, dirnames, filenames in os.walk(self.spec.upper_image):
            for name in filenames:
                with contextlib.suppress(OSError):
                    total += os.lstat(os.path.join(dirpath, name)).st_blocks * 512
            seen += len(filenames) + len(dirnames)
            if seen > 200_000:
                break
        self._disk = (now, total)
        return total

    def host_cpu_ticks(self) -> int | None:
        """CPU time (in clock ticks) the sandbox has used on the host: its cgroup's usage, which
        covers the Sentry and the stub processes that run the guest's code."""
        return cgroup_cpu_ticks(self.pid)

    def console_tail(self, max_bytes: int = 4096) -> str:
        """runsc's and the agent's stderr, then the network's log (e.g. blocked destinations)."""
        net = self._net.log_tail(max_bytes)
        tail = self._console.tail(max_bytes)
        return (tail + ("\n" + net if net else ""))[-max_bytes:]

    def exited(self) -> bool:
        return self.proc is None or self.proc.returncode is not None

    async def wait_exited(self) -> int:
        code = 0 if self.proc is None else await self.proc.wait()
        await self._cleanup()
        return code

    async def kill(self) -> None:
        """Kill the sandbox (every process of it) and reap ``runsc run``. Safe to call twice."""
        if self.proc is not None and self.proc.returncode is None:
            await self._runsc("kill", "--all", container_id(self.spec), "KILL")
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(asyncio.shield(self.proc.wait()), 3)
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.proc.pid, signal.SIGKILL)
            await self.proc.wait()
        await self._cleanup()

    async def _runsc(self, *args: str) -> int:
        """Run a runsc management command against this sandbox's state (bounded in time)."""
        proc = await asyncio.create_subprocess_exec(
            self.runsc, f"--root={self.state}", *args,
            stdin=asyncio.subprocess.DEVNULL, stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.DEVNULL,
        )  # fmt: skip
        try:
            return await asyncio.wait_for(proc.wait(), DELETE_TIMEOUT_S)
        except TimeoutError:
            with contextlib.suppress(ProcessLookupError):
                proc.kill()
            return await proc.wait()

    async def _cleanup(self) -> None:
        """Tear down once. A waiter that is cancelled (``wait_exited`` raced against READY) must
        not cut the teardown short: it runs as its own task, shielded, and every caller
        (``kill`` too) awaits that same task, so unmounts and the cgroup removal always finish."""
        if self._cleanup_task is None:
            self._cleanup_task = asyncio.ensure_future(self._teardown())
        await asyncio.shield(self._cleanup_task)

    async def _teardown(self) -> None:
        for task in self._tasks:
            task.cancel()
        if self.state.exists():
            await self._runsc("delete", "--force", container_id(self.spec))
        await self._net.close()
        for mnt in reversed(self.mounts):
            with contextlib.suppress(VmError):
                overlay.unmount(mnt)
        if self.merged is not None:
            with contextlib.suppress(VmError):
                overlay.unmount(self.merged)
        if self.cgroup is not None:  # after runsc's delete: whatever is still in it is a straggler
            await asyncio.to_thread(self.cgroup.destroy)
        self._console.close()


class GvisorBackend:
    """Starts sandboxes in gVisor (``runsc``)."""

    name = "gvisor"
    needs_boot_assets = False
    fixed_accel: Accel = "none"
    check_spec = staticmethod(check_spec)
    """Refuses (ConfigError) read-write volumes as root; ``auto`` then falls back to another backend."""

    def __init__(self, runsc: str | None = None, platform: str | None = None) -> None:
        """Args:
        runsc: the runsc binary (default: found by :func:`find_runsc`).
        platform: one of :data:`PLATFORMS` (default ``MSB_GVISOR_PLATFORM`` or systrap).

        Raises:
            VmError: runsc is missing, or msb is not root (runsc's gofer mounts and cgroups need it).
            ConfigError: an unknown platform.
        """
        self.platform = runsc_platform(None if platform is None else {PLATFORM_ENV: platform})
        self.runsc = runsc or find_runsc()
        if os.geteuid() != 0:
            raise VmError("the gVisor backend needs root: msb runs runsc as root (its mounts and cgroups need it)",
                          hint="run msb as root to use gVisor, or choose --backend qemu")  # fmt: skip

    async def launch(self, spec: VmSpec) -> GvisorVm:
        """Start ``runsc run`` and return once its pipes are connected (not yet READY).

        Raises:
            AgentError: the agent binary is missing.
            VmError: runsc failed to start, the network or root could not be set up.
        """
        agent = paths.agent_path()
        if not agent.is_file():
            raise AgentError(f"the guest agent {agent} is missing", hint="build it with `make agent` (or `make setup`)")
        if not spec.root_image.is_dir():
            raise ConfigError(f"the gVisor backend needs the image as a directory; {spec.root_image} is not one",
                          hint="start it from an image in the store (msb pull) or a rootfs directory")  # fmt: skip
        check_spec(spec)
        state = spec.run_dir / "runsc"
        state.mkdir(mode=0o700, exist_ok=True)
        console = Console(spec.run_dir / "console.log")
        limits = confine.vmm_limits(spec.memory_mib, backend="gvisor", cpus=spec.cpus)
        name = confine.cgroup_name(spec.name, spec.run_dir)
        cgroup = await asyncio.to_thread(confine.SandboxCgroup.create, name, limits)
        try:
            net = await GvisorNetwork.create(spec, spec.run_dir)
        except BaseException:
            if cgroup is not None:
                await asyncio.to_thread(cgroup.destroy)
            raise
        vm = GvisorVm(spec, self.runsc, state, console, net)
        vm.cgroup = cgroup
        try:
            if cgroup is not None and net.slirp_pid is not None:
                cgroup.add(net.slirp_pid)
            root = spec.root_image
            if spec.upper_image is not None:
                vm.merged = spec.run_dir / "root"
                work = spec.upper_image.parent / "work"  # the same place as libkrun's
                await asyncio.to_thread(overlay.mount_overlay, spec.root_image, spec.upper_image, work, vm.merged)
                root = vm.merged
            bundle = spec.run_dir / "bundle"
            bundle.mkdir(mode=0o700, exist_ok=True)
            # A read-only bind also makes the host kernel refuse the gofer's writes: runsc 20240729
            # lets an open(O_TRUNC) of a file on a read-only volume empty it before failing with EROFS.
            targets = [spec.run_dir / "vol" / str(i) for i in range(len(spec.volumes))]
            sources = await asyncio.to_thread(bind_volumes, spec.volumes, targets)
            vm.mounts += sources
            config = oci_config(spec, root=root, agent=agent, etc_files=net.etc_files, netns=net.netns_path,
                                volume_sources=sources, cgroup_path=cgroup.oci_path() if cgroup else None)  # fmt: skip
            (bundle / "config.json").write_text(json.dumps(config, indent=1))
            # runsc_prefix: for scopes with a network, runsc runs in a private mount namespace
            # (engine/vm/gvisor_net.py says why); empty for `none`
            # runsc still configures the Sentry's own cgroup from the OCI resources: that limit is
            # also what the guest sees as MemTotal (with --ignore-cgroups it would see the host's)
            argv = [*net.runsc_prefix, *runsc_argv(self.runsc, spec, state, net.runsc_flags, bundle, self.platform)]
            log.debug("starting %s", " ".join(argv))
            vm.proc = await asyncio.create_subprocess_exec(
                *argv, stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE,
                stderr=asyncio.subprocess.PIPE, start_new_session=True, limit=1 << 21,
                preexec_fn=cgroup.enter if cgroup is not None else None,  # runsc's children are born in it
            )  # fmt: skip
        except BaseException:
            await vm.kill()
            raise
        proc = vm.proc
        assert proc.stdin is not None and proc.stdout is not None and proc.stderr is not None
        vm._tasks.append(asyncio.create_task(pump_console(proc.stderr, console)))
        vm.channel = StreamChannel(proc.stdout, proc.stdin)
        return vm
