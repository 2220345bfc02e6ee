"""The warm pool over the fake backend: filling, taking, replacing, matching, memory, closing.

Every wait is a bounded poll (``eventually``); the pool's own timers (retry back-off, the 5 s
re-check of a memory-limited pool) never have to pass for a test to finish.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest

from engine.errors import ConfigError
from engine.sandbox import pool as pool_module
from engine.sandbox.engine import Engine
from engine.sandbox.instant import StartInfo
from engine.sandbox.pool import PoolShape, PoolStatus, WarmPool
from engine.sandbox.sandbox import Sandbox, Status
from engine.sandbox.spec import PortMap, SandboxSpec, VolumeMount
from engine.vm.fake import FakeBackend, FakeVm
from engine.vm.kernel import Kernel
from tests.unit.helpers import STEP_TIMEOUT_S, eventually

T = STEP_TIMEOUT_S
KERNEL = Kernel(kind="custom", path=Path("/nonexistent/bzImage"), version="0.0-fake")
PLENTY = 1e9


class Rig:
    """One fake engine, its backend, and the pools and sandboxes a test made."""

    def __init__(self, tmp_path: Path) -> None:
        self.tmp_path = tmp_path
        self.rootfs = tmp_path / "rootfs"
        self.rootfs.mkdir()
        self.backend = FakeBackend(tmp_dir=tmp_path)
        self.engine = Engine(backend=self.backend, kernel=KERNEL, accel="tcg", cache_dir=tmp_path / "cache")
        self.pools: list[WarmPool] = []
        self.taken: list[Sandbox] = []

    def spec(self, name: str = "member", **kw: Any) -> SandboxSpec:
        return SandboxSpec(name=name, **{"rootfs": self.rootfs, "memory_mib": 128, **kw})

    def pool(
        self,
        size: int,
        *,
        warm: Callable[[Sandbox], Awaitable[Any]] | None = None,
        start: bool = True,
        **kw: Any,
    ) -> WarmPool:
        kw.setdefault("max_mib", PLENTY)
        kw.setdefault("available", lambda: PLENTY)
        pool = WarmPool(self.engine, **kw)
        pool.add(PoolShape(label="base", spec=self.spec(), size=size), warm)
        self.pools.append(pool)
        if start:
            pool.start()
        return pool

    async def take(self, pool: WarmPool, name: str = "wanted", **kw: Any) -> tuple[Sandbox, Any] | None:
        async with asyncio.timeout(T):
            got = await pool.take(self.spec(name, **kw))
        if got is not None:
            self.taken.append(got[0])
        return got

    async def close(self) -> None:
        for pool in self.pools:
            await pool.close()
        for sb in self.taken:
            await sb.kill()


@pytest.fixture
async def rig(tmp_path: Path) -> AsyncIterator[Rig]:
    r = Rig(tmp_path)
    yield r
    await r.close()


def status(pool: WarmPool) -> PoolStatus:
    (s,) = pool.status()
    return s


async def filled(pool: WarmPool, n: int) -> PoolStatus:
    await eventually(lambda: status(pool).ready == n and status(pool).starting == 0)
    return status(pool)


def fake_vm(sb: Sandbox) -> FakeVm:
    assert isinstance(sb.vm, FakeVm)
    return sb.vm


# ---------------------------------------------------------------- filling and taking


async def test_fills_to_size_and_warms_each_member(rig: Rig) -> None:
    warmed: list[str] = []

    async def warm(sb: Sandbox) -> str:
        warmed.append(sb.name)
        return f"extra-{len(warmed)}"

    pool = rig.pool(2, warm=warm)
    s = await filled(pool, 2)
    assert (s.label, s.size, s.taken, s.replaced, s.limited_by_memory) == ("base", 2, 0, 0, False)
    assert len(rig.backend.vms) == 2 and len(set(warmed)) == 2
    assert all(name.startswith("pool-") for name in warmed)
    got = await rig.take(pool)
    assert got is not None and got[1] in ("extra-1", "extra-2")


async def test_take_hands_out_a_renamed_member_with_its_own_identity(rig: Rig) -> None:
    pool = rig.pool(1)
    await filled(pool, 1)
    member_vm = rig.backend.vms[0]
    assert member_vm.hostname.startswith("pool-")
    t0 = time.time_ns()
    got = await rig.take(pool, "wanted", env={"GREETING": "hi"})
    assert got is not None
    sb, extra = got
    assert extra is None and sb.vm is member_vm and sb.status is Status.RUNNING
    assert sb.name == "wanted" and sb.spec.env == {"GREETING": "hi"}
    assert sb.start_info.kind == "pool" and sb.start_info.ms >= 0 and "base" in sb.start_info.detail
    assert fake_vm(sb).hostname == "wanted"
    (identity,) = fake_vm(sb).guest.identities
    assert len(identity.entropy) == 64 and identity.hostname == b"wanted"
    assert t0 <= identity.realtime_ns <= time.time_ns()
    async with asyncio.timeout(T):
        res = await sb.exec(["sh", "-c", 'echo "$HOSTNAME $GREETING"'])
    assert res.stdout == b"wanted hi\n"
    assert status(pool).taken == 1


async def test_the_pool_refills_after_takes(rig: Rig) -> None:
    pool = rig.pool(1)
    await filled(pool, 1)
    first = await rig.take(pool, "a")
    s = await filled(pool, 1)
    assert s.taken == 1 and len(rig.backend.vms) == 2
    second = await rig.take(pool, "b")
    assert first is not None and second is not None and first[0] is not second[0]
    assert (await filled(pool, 1)).taken == 2


async def test_an_empty_pool_gives_none(rig: Rig) -> None:
    pool = rig.pool(1, start=False)
    assert await rig.take(pool) is None
    assert rig.backend.vms == []


# ---------------------------------------------------------------- members that must not be handed out


async def test_a_member_whose_vm_died_is_replaced_not_handed_out(rig: Rig) -> None:
    pool = rig.pool(2)
    await filled(pool, 2)
    dead, alive = rig.backend.vms
    await dead.crash()
    got = await rig.take(pool)  # whichever noticed first (the watcher or take), never the dead one
    assert got is not None and got[0].vm is alive
    s = await filled(pool, 2)
    assert s.replaced == 1 and s.taken == 1 and len(rig.backend.vms) == 4


async def test_when_every_member_died_take_gives_none(rig: Rig) -> None:
    pool = rig.pool(2)
    await filled(pool, 2)
    for vm in list(rig.backend.vms):
        await vm.crash()
    assert await rig.take(pool) is None
    s = await filled(pool, 2)  # and replacements follow
    assert s.replaced == 2 and s.taken == 0


async def members(rig: Rig, size: int, *, restored: bool) -> tuple[WarmPool, list[Sandbox]]:
    """A full pool and its members, oldest first; ``restored`` makes them look restored from a
    template (the fake backend only boots), whose members share the template's memory."""
    made: list[Sandbox] = []

    async def warm(sb: Sandbox) -> None:
        made.append(sb)

    pool = rig.pool(size, warm=warm)
    await filled(pool, size)
    if restored:
        for sb in made:
            sb.start_info = StartInfo(kind="restore", ms=1.0)
    return pool, made


@pytest.mark.parametrize("how", ["refuses", "hangs"])
async def test_a_restored_member_without_its_identity_is_dropped(
    rig: Rig, monkeypatch: pytest.MonkeyPatch, how: str
) -> None:
    monkeypatch.setattr(pool_module, "TAKE_IDENTITY_S", 0.1)
    pool, (bad, good) = await members(rig, 2, restored=True)
    if how == "refuses":
        fake_vm(bad).guest.refuse_identity = True
    else:
        fake_vm(bad).guest.answer_identity = False
    got = await rig.take(pool)
    assert got is not None and got[0] is good and fake_vm(good).hostname == "wanted"
    assert fake_vm(bad).exited() and bad.status is Status.STOPPED and fake_vm(bad).hostname != "wanted"
    s = await filled(pool, 2)
    assert s.replaced == 1 and s.taken == 1


async def test_when_every_restored_member_refuses_take_gives_none(rig: Rig) -> None:
    rig.backend.misbehave = "refuse_identity"
    pool, (member,) = await members(rig, 1, restored=True)
    assert await rig.take(pool) is None
    assert fake_vm(member).exited() and status(pool).replaced == 1


async def test_a_booted_member_that_refuses_a_new_hostname_is_handed_out(rig: Rig) -> None:
    # gVisor or libkrun may refuse to rename it; a booted member shares nothing with others
    rig.backend.misbehave = "refuse_identity"
    pool, (member,) = await members(rig, 1, restored=False)
    got = await rig.take(pool)
    assert got is not None and got[0] is member and member.name == "wanted"
    assert member.start_info.kind == "pool" and fake_vm(member).hostname.startswith("pool-")
    assert (status(pool).replaced, status(pool).taken) == (0, 1)


async def test_a_booted_member_that_does_not_answer_is_not_handed_out(
    rig: Rig, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(pool_module, "TAKE_IDENTITY_S", 0.1)
    pool, (member,) = await members(rig, 1, restored=False)
    fake_vm(member).guest.answer_identity = False
    got = await rig.take(pool)
    assert fake_vm(member).exited() and status(pool).replaced == 1
    assert got is None or got[0] is not member  # a replacement that came up meanwhile is fine


# ---------------------------------------------------------------- matching


@pytest.mark.parametrize("other", ["memory", "persistent", "volumes", "network", "rootfs", "ports"])
async def test_a_spec_of_another_shape_gets_none(rig: Rig, other: str) -> None:
    pool = rig.pool(1)
    await filled(pool, 1)
    elsewhere = rig.tmp_path / "elsewhere"
    elsewhere.mkdir()
    kw: dict[str, Any] = {
        "memory": {"memory_mib": 256},
        "persistent": {"persist_dir": elsewhere},
        "volumes": {"volumes": (VolumeMount(host=elsewhere, guest="/data"),)},
        "network": {"network": "none"},
        "rootfs": {"rootfs": elsewhere},
        "ports": {"ports": (PortMap(host_port=18080, guest_port=80),)},
    }[other]
    assert await rig.take(pool, "wanted", **kw) is None
    s = status(pool)
    assert (s.ready, s.taken) == (1, 0) and rig.backend.vms[0].hostname != "wanted"


@pytest.mark.parametrize(
    "shape",
    [{"persist_dir": Path("/tmp/p")}, {"volumes": (VolumeMount(host=Path("/tmp"), guest="/d"),)},
     {"ports": (PortMap(host_port=18081, guest_port=80),)}],
    ids=["persistent", "volumes", "ports"],
)  # fmt: skip
def test_shapes_must_be_ephemeral(tmp_path: Path, shape: dict[str, Any]) -> None:
    pool = WarmPool(Engine(backend=FakeBackend()), max_mib=PLENTY, available=lambda: PLENTY)
    spec = SandboxSpec(name="s", rootfs=tmp_path, **shape)
    with pytest.raises(ConfigError, match="ephemeral"):
        pool.add(PoolShape(label="x", spec=spec, size=1))


# ---------------------------------------------------------------- memory


async def test_the_memory_bound_caps_the_members(rig: Rig) -> None:
    pool = rig.pool(5, cost=lambda sb: 100.0, max_mib=250)
    await eventually(lambda: status(pool).limited_by_memory)
    s = status(pool)
    assert (s.ready, s.starting, s.member_pss_mib) == (2, 0, 100.0)
    assert len(rig.backend.vms) == 2 and pool.used_mib() == 200.0


async def test_a_host_short_of_memory_gets_no_members(rig: Rig) -> None:
    pool = rig.pool(2, available=lambda: 500.0)  # under the 1024 MiB reserve after one member
    await eventually(lambda: status(pool).limited_by_memory)
    s = status(pool)
    assert (s.ready, s.starting) == (0, 0) and rig.backend.vms == []


# ---------------------------------------------------------------- closing


async def test_close_kills_idle_members_but_not_taken_ones(rig: Rig) -> None:
    pool = rig.pool(3)
    await filled(pool, 3)
    got = await rig.take(pool)
    assert got is not None
    await pool.close()
    taken_vm = got[0].vm
    idle = [vm for vm in rig.backend.vms if vm is not taken_vm]
    assert idle and all(vm.exited() for vm in idle)
    assert not fake_vm(got[0]).exited() and got[0].status is Status.RUNNING
    assert status(pool).ready == 0
    assert await rig.take(pool) is None


async def test_close_while_members_start_leaves_no_vm_running(rig: Rig) -> None:
    for turns in range(0, 40, 3):  # close at many points of a member's start
        pool = rig.pool(2)
        for _ in range(turns):
            await asyncio.sleep(0)
        await pool.close()
        assert status(pool).ready == 0
    await eventually(lambda: all(vm.exited() for vm in rig.backend.vms))
    assert rig.backend.vms  # some closes did interrupt a start


async def test_a_cancelled_take_leaves_no_vm_running(rig: Rig) -> None:
    pool = rig.pool(1)
    await filled(pool, 1)
    (member_vm,) = rig.backend.vms
    task = asyncio.create_task(pool.take(rig.spec("wanted")))
    await asyncio.sleep(0)  # take has popped the member and waits for its IDENTITY answer
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    await pool.close()
    try:
        assert member_vm.exited()
    finally:
        await member_vm.kill()
