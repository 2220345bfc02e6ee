"""Warm pools in the server (engine/server/pools.py) on the fake VMM backend: ephemeral starts
served by the pool, the rest booted, the reporting fields, and a bad pool image."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from engine.errors import ExecError
from engine.sandbox.engine import Engine
from engine.sandbox.pool import WarmPool
from engine.sandbox.spec import SandboxSpec
from engine.server.main import JsonFormatter
from engine.server.manager import SandboxManager
from engine.server.pools import Warmed, warm
from engine.server.service import SandboxConfig
from engine.server.settings import Limits, PoolSetting
from engine.server.tenancy import TenantPolicy
from engine.vm.fake import FakeBackend
from tests.unit.helpers import eventually

NS = "default"


@pytest.fixture
def rootfs(tmp_path: Path) -> Path:
    d = tmp_path / "rootfs"
    (d / "etc").mkdir(parents=True)
    return d


async def _pooled(tmp_path: Path, pools: list[PoolSetting]) -> SandboxManager:
    m = SandboxManager(tmp_path / "state", Limits(), engine=Engine(backend=FakeBackend(), accel="tcg"), pools=pools,
                       policy=TenantPolicy(allowed_image_dirs=(tmp_path,)))  # fmt: skip
    if m.pools.pool is not None:  # the test host's free memory must not decide whether members start
        m.pools.pool = WarmPool(m.engine, max_mib=1 << 20, available=lambda: float(1 << 30))
    await m.prepare()
    await m.pools.wait_configured()
    return m


def _idle_extra(m: SandboxManager) -> Warmed:
    """What the warm-up left with the one idle member (the fake's guest runs no REPL, so its
    Python REPL is logged as not started; the REPLs object is handed over all the same)."""
    assert m.pools.pool is not None
    [member] = m.pools.pool._slots[0].members
    assert isinstance(member.extra, Warmed)
    return member.extra


@pytest.fixture
async def pooled(tmp_path: Path, rootfs: Path) -> AsyncIterator[SandboxManager]:
    m = await _pooled(tmp_path, [PoolSetting(image=str(rootfs), size=1)])
    await eventually(lambda: m.pools.status()[0].ready == 1)
    yield m
    await m.shutdown()


async def test_an_ephemeral_start_is_served_by_the_pool(pooled: SandboxManager, rootfs: Path, tmp_path: Path,
                                                         caplog: pytest.LogCaptureFixture) -> None:  # fmt: skip
    warmed = _idle_extra(pooled)
    with caplog.at_level("INFO", logger="engine.server.manager"):
        await pooled.start(NS, "e1", SandboxConfig(image=str(rootfs), ephemeral=True))
    run = pooled._get(NS, "e1")
    assert run.sandbox.name == "e1" and run.sandbox.spec.persist_dir is None
    assert run.repl is warmed.repls  # the REPLs the pool warmed are the sandbox's now
    [info] = await pooled.list(NS)
    assert (info.name, info.running, info.started_by) == ("e1", True, "pool") and info.start_ms is not None
    [metrics] = await pooled.metrics(NS, "e1")
    assert metrics.started_by == "pool" and metrics.start_ms == info.start_ms
    [status] = (await pooled.info()).pools
    assert (status.label, status.size, status.taken) == (str(rootfs), 1, 1)
    record = next(r for r in caplog.records if r.getMessage() == "sandbox started")
    line = JsonFormatter().format(record)
    assert '"started_by": "pool"' in line and '"start_ms": ' in line and '"ephemeral": true' in line
    assert (await pooled.run_command(NS, "e1", "echo", ["hi"], None)).stdout == "hi\n"
    # ephemeral: no definition, no writable layer; gone once stopped
    assert not (tmp_path / "state" / "sandboxes" / NS / "e1").exists()
    await pooled.stop(NS, "e1")
    assert await pooled.list(NS) == []
    await eventually(lambda: pooled.pools.status()[0].ready == 1)  # refilled


async def test_persistent_and_other_shapes_boot(pooled: SandboxManager, rootfs: Path) -> None:
    await pooled.start(NS, "p1", SandboxConfig(image=str(rootfs)))  # persistent: never from a pool
    await pooled.start(NS, "big", SandboxConfig(image=str(rootfs), memory=1024, ephemeral=True))  # other shape
    by = {i.name: i.started_by for i in await pooled.list(NS)}
    assert by == {"p1": "boot", "big": "boot"}
    assert (await pooled.info()).pools[0].taken == 0
    assert pooled._get(NS, "p1").sandbox.spec.persist_dir is not None


async def test_a_taker_with_its_own_env_gets_fresh_repls(pooled: SandboxManager, rootfs: Path) -> None:
    warmed = _idle_extra(pooled)
    await pooled.start(NS, "env", SandboxConfig(image=str(rootfs), envs=["GREETING=hi"], ephemeral=True))
    assert (await pooled.list(NS))[0].started_by == "pool"  # the VM still comes from the pool …
    assert pooled._get(NS, "env").repl is not warmed.repls  # … its interpreters start in its own environment
    result = await pooled.run_command(NS, "env", "sh", ["-c", "echo $GREETING"], None)
    assert result.stdout == "hi\n"


def test_warmed_repls_fit_only_the_same_environment(tmp_path: Path) -> None:
    spec = SandboxSpec(name="a", rootfs=tmp_path, env={"A": "1"}, workdir="/w")
    warmed = Warmed(repls=None, env={"A": "1"}, workdir="/w", user=(None, None))  # type: ignore[arg-type]
    assert warmed.fits(spec.model_copy(update={"name": "b"}))
    assert not warmed.fits(spec.model_copy(update={"env": {"A": "2"}}))
    assert not warmed.fits(spec.model_copy(update={"workdir": "/"}))
    assert not warmed.fits(spec.model_copy(update={"uid": 1000}))


async def test_a_pool_image_that_cannot_be_had_is_skipped(tmp_path: Path, rootfs: Path,
                                                          caplog: pytest.LogCaptureFixture) -> None:  # fmt: skip
    missing = str(tmp_path / "no-such-rootfs")
    with caplog.at_level(logging.ERROR, logger="engine.server.pools"):
        m = await _pooled(tmp_path, [PoolSetting(image=missing, size=2), PoolSetting(image=str(rootfs), size=1)])
    try:
        assert f"pool {missing}: skipped, its image cannot be had" in caplog.text
        assert missing in m.pools.skipped
        assert [p.label for p in (await m.info()).pools] == [str(rootfs)]  # the good one still runs
        await m.start(NS, "s", SandboxConfig(image=str(rootfs)))  # and so does the server
    finally:
        await m.shutdown()


async def test_no_pools_and_empty_pools(tmp_path: Path, rootfs: Path) -> None:
    m = await _pooled(tmp_path, [PoolSetting(image=str(rootfs), size=0)])
    try:
        assert m.pools.pool is None and (await m.info()).pools == []
        await m.start(NS, "e", SandboxConfig(image=str(rootfs), ephemeral=True))
        assert (await m.list(NS))[0].started_by == "boot"
    finally:
        await m.shutdown()


async def test_shutdown_kills_the_idle_members(pooled: SandboxManager) -> None:
    pool = pooled.pools.pool
    assert pool is not None
    [member] = pool._slots[0].members
    await pooled.shutdown()
    assert member.sandbox.vm.exited()


class _NoShell:
    """A member whose image has no /bin/sh (every exec fails to start)."""

    name = "pool-1"

    def __init__(self, spec: SandboxSpec) -> None:
        self.spec = spec

    async def exec(self, argv: list[str], **_: object) -> None:
        raise ExecError("cannot run /bin/sh: no such file", errno=2)


async def test_a_member_without_a_shell_is_still_a_member(tmp_path: Path) -> None:
    spec = SandboxSpec(name="pool-1", rootfs=tmp_path)
    warmed = await warm(_NoShell(spec))  # type: ignore[arg-type]
    assert warmed.fits(spec)  # no exception: the pool keeps it instead of retrying forever
