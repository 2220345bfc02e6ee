"""Attack surface: an emulator escape. The VMM process must not be root next to the server's
secret with the host's file system in view, nor be able to take the host's memory or pids.

QEMU drops to ``msb-vmm`` in an empty chroot (engine/vm/confine.py); every backend's processes
live in a cgroup of their own with memory and pids limits, removed at stop.
"""

from __future__ import annotations

import os
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from engine.sandbox.engine import Engine
from engine.sandbox.sandbox import Sandbox
from engine.sandbox.spec import SandboxSpec
from engine.vm import confine
from tests.integration.conftest import BACKENDS, BUSYBOX

pytestmark = pytest.mark.vm


@pytest.fixture
def busybox_rootfs() -> Path:
    if not (BUSYBOX / ".complete").exists():
        pytest.fail(f"{BUSYBOX} is missing: run `make setup` (scripts/build-test-rootfs.sh)")
    return BUSYBOX


def _status(pid: int) -> dict[str, str]:
    lines = Path(f"/proc/{pid}/status").read_text().splitlines()
    return dict(line.split(":", 1) for line in lines if ":" in line)


def _vmm_pids(sb: Sandbox) -> set[int]:
    """The VMM's host process and everything else in the sandbox's cgroup."""
    pid = sb.vm.pid if sb.vm is not None else None
    assert pid is not None
    return {pid}


def _cgroup_dirs(pid: int) -> list[Path]:
    """The directories of ``pid``'s memory and pids cgroups (v1) or its unified cgroup (v2)."""
    dirs = []
    for line in Path(f"/proc/{pid}/cgroup").read_text().splitlines():
        _, controllers, path = line.split(":", 2)
        if controllers in ("memory", "pids"):
            dirs.append(confine.CGROUP_ROOT / controllers / path.lstrip("/"))
        elif controllers == "" and (confine.CGROUP_ROOT / "cgroup.controllers").exists():
            dirs.append(confine.CGROUP_ROOT / path.lstrip("/"))
    return dirs


@pytest.fixture(params=[b for b in BACKENDS if b in ("qemu", "gvisor")])
async def sb(request: pytest.FixtureRequest, busybox_rootfs: Path) -> AsyncIterator[Sandbox]:
    engine = Engine(backend=request.param)
    sandbox = await engine.start(SandboxSpec(name="conf-" + os.urandom(3).hex(), rootfs=busybox_rootfs, memory_mib=256))
    try:
        yield sandbox
    finally:
        await sandbox.kill()


@pytest.mark.skipif(confine.vmm_user() is None, reason=f"no user {confine.VMM_USER} (run `make setup`) or not root")
async def test_qemu_runs_unprivileged_in_an_empty_root_and_cannot_read_a_root_secret(
    busybox_rootfs: Path, tmp_path: Path
) -> None:
    secret = tmp_path / "server.key"
    secret.write_text("s3cret")
    secret.chmod(0o600)
    sandbox = await Engine(backend="qemu").start(
        SandboxSpec(name="conf-" + os.urandom(3).hex(), rootfs=busybox_rootfs, memory_mib=256)
    )
    try:
        pid = sandbox.vm.pid if sandbox.vm is not None else None
        assert pid is not None
        status = _status(pid)
        uids = {int(u) for u in status["Uid"].split()}
        user = confine.vmm_user()
        assert user is not None and uids == {user.uid}, status["Uid"]
        assert int(status["CapEff"], 16) == 0 and int(status["CapPrm"], 16) == 0
        assert os.readlink(f"/proc/{pid}/root") != "/" and os.listdir(f"/proc/{pid}/root") == ["etc"]
        # the key is out of its view (chroot) and out of its reach (its uid may not read a 0600 root file)
        child = os.fork()
        if child == 0:  # pragma: no cover - runs in the child
            try:
                os.setgid(user.gid)
                os.setuid(user.uid)
                secret.read_text()
                os._exit(1)
            except PermissionError:
                os._exit(0)
            except BaseException:
                os._exit(2)
        assert os.waitpid(child, 0)[1] == 0
        assert (await sandbox.exec(["echo", "ok"], timeout=60)).stdout == b"ok\n"  # the guest still works
    finally:
        await sandbox.kill()


async def test_each_sandbox_has_its_own_cgroup_with_limits_removed_at_stop(sb: Sandbox) -> None:
    pids = _vmm_pids(sb)
    dirs = {d for pid in pids for d in _cgroup_dirs(pid)}
    assert dirs and all(confine.PARENT in d.parts for d in dirs), dirs
    limits = []
    for d in dirs:
        for knob in ("memory.max", "memory.limit_in_bytes"):
            if (d / knob).exists():
                limits.append(int((d / knob).read_text()))
    assert limits and all((256 << 20) <= lim < (4 << 30) for lim in limits), limits  # gVisor: exactly the guest's
    members = {int(p) for d in dirs for p in (d / "cgroup.procs").read_text().split()}
    assert pids <= members
    await sb.kill()
    assert not any(d.exists() for d in dirs)
