"""The warm pool on real QEMU VMs restored from a template (docs/instant.md)."""

from __future__ import annotations

import asyncio
import os
import signal
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from engine.sandbox.engine import Engine
from engine.sandbox.instant import Restorer
from engine.sandbox.pool import PoolShape, WarmPool
from engine.sandbox.spec import SandboxSpec
from engine.vm.template import TemplateStore

pytestmark = pytest.mark.qemu_only


async def until(cond: Callable[[], bool], timeout: float = 60.0) -> None:
    end = time.monotonic() + timeout
    while not cond():
        assert time.monotonic() < end, "condition not reached in time"
        await asyncio.sleep(0.05)


@pytest.fixture
async def engine(tmp_path: Path) -> Engine:
    engine = Engine(backend="qemu")
    await engine.prepare()
    engine._restorer = Restorer(engine.backend, TemplateStore(tmp_path))
    return engine


def proto(rootfs: Path) -> SandboxSpec:
    return SandboxSpec(name="proto", rootfs=rootfs, memory_mib=256, network="none")


async def test_takes_are_warm_fresh_and_refilled(engine: Engine, busybox_rootfs: Path) -> None:
    pool = WarmPool(engine)
    pool.add(PoolShape(label="busybox", spec=proto(busybox_rootfs), size=2))
    pool.start()
    try:
        await until(lambda: pool.status()[0].ready == 2)
        taken = []
        for name in ("first", "second"):
            got = await pool.take(proto(busybox_rootfs).model_copy(update={"name": name}))
            assert got is not None
            sb, _ = got
            taken.append(sb)
            assert sb.start_info.kind == "pool" and sb.name == name
            res = await sb.exec(["sh", "-c", "hostname; head -c 16 /dev/urandom | od -An -tx1"])
            assert res.stdout.decode().startswith(f"{name}\n")
        outs = [(await sb.exec(["sh", "-c", "head -c 16 /dev/urandom | od -An -tx1"])).stdout for sb in taken]
        assert outs[0] != outs[1]
        assert (await pool.take(SandboxSpec(name="x", rootfs=busybox_rootfs, memory_mib=320))) is None  # other shape
        await until(lambda: pool.status()[0].ready == 2)  # refilled after the takes
        assert pool.status()[0].taken == 2
        for sb in taken:
            await sb.kill()
    finally:
        await pool.close()


async def test_a_member_that_died_is_replaced_not_handed_out(engine: Engine, busybox_rootfs: Path) -> None:
    pool = WarmPool(engine)
    pool.add(PoolShape(label="busybox", spec=proto(busybox_rootfs), size=1))
    pool.start()
    try:
        await until(lambda: pool.status()[0].ready == 1)
        (victim,) = pool._slots[0].members
        assert victim.sandbox.vm.pid is not None
        os.kill(victim.sandbox.vm.pid, signal.SIGKILL)
        await until(lambda: pool.status()[0].replaced == 1)
        await until(lambda: pool.status()[0].ready == 1)
        got = await pool.take(proto(busybox_rootfs).model_copy(update={"name": "after"}))
        assert got is not None
        sb, _ = got
        assert sb is not victim.sandbox
        assert (await sb.exec(["hostname"])).stdout == b"after\n"
        await sb.kill()
    finally:
        await pool.close()


async def test_the_memory_bound_is_respected(engine: Engine, busybox_rootfs: Path) -> None:
    pool = WarmPool(engine, max_mib=1.0)
    pool.add(PoolShape(label="busybox", spec=proto(busybox_rootfs), size=2))
    pool.start()
    try:
        await until(lambda: pool.status()[0].limited_by_memory)
        assert pool.status()[0].ready == 0 and pool.status()[0].starting == 0
    finally:
        await pool.close()
    # the bound counts the members' measured memory
    pool = WarmPool(engine, max_mib=10_000)
    pool.add(PoolShape(label="busybox", spec=proto(busybox_rootfs), size=3))
    pool.start()
    try:
        await until(lambda: pool.status()[0].ready == 3)
        cost = pool.status()[0].member_pss_mib
        assert cost is not None and 5 < cost < 256
        pool.max_mib = cost * 1.5  # one member fits, two do not
        for _ in range(2):
            got = await pool.take(proto(busybox_rootfs).model_copy(update={"name": "t" + os.urandom(2).hex()}))
            assert got is not None
            await got[0].kill()
        await until(lambda: pool.status()[0].limited_by_memory)
        await asyncio.sleep(1)
        assert pool.status()[0].ready == 1
    finally:
        await pool.close()
