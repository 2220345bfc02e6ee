"""The host side of a libkrun guest's file systems: its root and its volumes, as mounts in
the VM's run directory that are undone when the VM ends.

- **Root**: an overlay (:func:`engine.vm.overlay.mount_overlay`) at ``run_dir/root`` whose
  lower layer is the image tree (``VmSpec.root_image``, never written) and whose upper layer
  is ``VmSpec.upper_image`` (persistent) or ``run_dir/upper``. It is re-mounted ``nosuid,nodev``:
  libkrun's virtio-fs server runs with msb's privileges, and a device node or setuid file the
  guest creates in its root must mean nothing on the host.
- **Agent**: the static agent binary is bind-mounted read-only at ``/.msb/agent`` in the root,
  rather than copied: nothing is written per start, and the guest cannot change the binary
  (which is the host's shared copy in the cache) — a read-only bind mount refuses writes from
  the VMM process itself. ``/.msb`` is reserved: whatever a persistent upper layer left there
  (a symlink pointing out of the root, a FIFO) is removed first, never followed.
- **Volumes**: each host directory is bind-mounted (not recursively) at ``run_dir/vol/N``,
  ``nosuid,nodev``, and read-only for a read-only volume. ``krun_add_virtiofs`` has no
  read-only flag, so this is what makes ``readonly=True`` hold against a guest that remounts
  its side read-write.

Mounting needs root (``CAP_SYS_ADMIN``).
"""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
import stat
from pathlib import Path

from engine.errors import AgentError, ConfigError, VmError
from engine.vm import overlay
from engine.vm.backend import VmSpec
from engine.vm.overlay import MS_BIND, MS_NODEV, MS_NOSUID, MS_REMOUNT, bind
from engine.vm.overlay import mount_raw as _mount
from engine.vm.volumes import bind_volumes

log = logging.getLogger(__name__)


AGENT_IN_ROOT = ".msb/agent"


def _reserve_agent_path(root: Path) -> Path:
    """Make ``root/.msb/agent`` a plain empty file to mount on, removing anything else that
    is there without following it (a persistent upper layer is the guest's to shape)."""
    msb = root / ".msb"
    if msb.is_symlink() or (msb.exists() and not msb.is_dir()):
        msb.unlink()
    msb.mkdir(mode=0o755, exist_ok=True)
    target = msb / "agent"
    try:
        st = target.lstat()
    except FileNotFoundError:
        st = None
    if st is not None and not stat.S_ISREG(st.st_mode):
        if stat.S_ISDIR(st.st_mode):
            shutil.rmtree(target)
        else:
            target.unlink()
    fd = os.open(target, os.O_WRONLY | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NONBLOCK, 0o755)
    os.close(fd)
    return target


def find_agent(agent: Path) -> Path:
    """The agent binary to put in the root, resolved.

    Raises:
        AgentError: it is missing or not executable.
    """
    real = agent.resolve()
    if not real.is_file() or not os.access(real, os.X_OK):
        raise AgentError(f"guest agent {agent} is missing or not executable",
                         hint="build it with `make agent` (or point MSB_AGENT at a static msb-agent)")  # fmt: skip
    return real


class KrunRoot:
    """The mounts of one libkrun VM: :meth:`setup` once, :meth:`teardown` when it ends."""

    def __init__(self, run_dir: Path) -> None:
        self.run_dir = run_dir
        self.root = run_dir / "root"
        self._mounts: list[Path] = []

    def planned_volume_dirs(self, spec: VmSpec) -> list[Path]:
        """Where :meth:`setup` bind-mounts each volume (known before mounting, for the plan)."""
        return [self.run_dir / "vol" / str(i) for i in range(len(spec.volumes))]

    def setup(self, spec: VmSpec, agent: Path) -> None:
        """Mount the root overlay, the agent and the volumes. On failure, what was mounted is
        unmounted again.

        Raises:
            ConfigError: the root is not a directory.
            AgentError: the agent binary is missing.
            VmError: a mount failed (not root, no overlayfs, …).
        """
        lower = spec.root_image
        if not lower.is_dir():
            raise ConfigError(f"the libkrun backend runs a root directory, but {lower} is not one",
                              hint="pass the image's unpacked tree as the root")  # fmt: skip
        agent_bin = find_agent(agent)
        upper = spec.upper_image if spec.upper_image is not None else self.run_dir / "upper"
        work = upper.parent / "work" if spec.upper_image is not None else self.run_dir / "work"
        try:
            overlay.mount_overlay(lower, upper, work, self.root)
            self._mounts.append(self.root)
            _mount(None, self.root, MS_BIND | MS_REMOUNT | MS_NOSUID | MS_NODEV)
            bind(agent_bin, _reserve_agent_path(self.root), readonly=True)
            self._mounts.append(self.root / AGENT_IN_ROOT)
            # opened with no symlink followed and mounted from the fd (engine/vm/safepath.py)
            self._mounts += bind_volumes(spec.volumes, self.planned_volume_dirs(spec))
        except OSError as e:
            self.teardown()
            raise VmError(f"cannot prepare the sandbox's root in {self.root}: {e}") from e
        except BaseException:
            self.teardown()
            raise

    def teardown(self) -> None:
        """Unmount everything :meth:`setup` mounted, newest first. Safe to call twice."""
        while self._mounts:
            path = self._mounts.pop()
            try:
                overlay.unmount(path)
            except VmError as e:  # keep going: the others must not stay mounted either
                log.warning("%s", e)
        with contextlib.suppress(OSError):
            for d in (self.run_dir / "vol").iterdir():
                d.rmdir()  # empty mount points only: never a tree that may still be mounted
