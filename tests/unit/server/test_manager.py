"""SandboxManager on the fake VMM backend: namespaces, definitions, the old layout's migration,
limits, errors."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import pytest

from engine.errors import ConfigError, NotFoundError
from engine.sandbox.engine import Engine
from engine.server.manager import LimitError, SandboxManager
from engine.server.service import SandboxConfig
from engine.server.settings import Limits
from engine.server.tenancy import TenantPolicy
from engine.vm.fake import FakeBackend


@pytest.fixture
def rootfs(tmp_path: Path) -> Path:
    d = tmp_path / "rootfs"
    (d / "etc").mkdir(parents=True)
    return d


def manager(tmp_path: Path, **limits: int) -> SandboxManager:
    return SandboxManager(tmp_path / "state", Limits(**limits), engine=Engine(backend=FakeBackend(), accel="tcg"),
                          policy=TenantPolicy(allowed_image_dirs=(tmp_path,)))  # fmt: skip


async def test_start_saves_the_definition_where_no_volume_reaches(tmp_path: Path, rootfs: Path) -> None:
    m = manager(tmp_path)
    msg = await m.start("team", "s1", SandboxConfig(image=str(rootfs), memory=256, envs=["A=1"]))
    assert msg == "Sandbox s1 started successfully"
    own = tmp_path / "state" / "sandboxes" / "team" / "s1"
    saved = json.loads((own / "sandbox.json").read_text())
    assert saved == {"image": str(rootfs), "memory": 256, "envs": ["A=1"]}
    assert (own.stat().st_mode & 0o777) == 0o700
    assert not any(m.volume_area("team").iterdir())  # the volume area holds nothing of the server's
    assert await m.start("team", "s1", None) == msg  # already running: idempotent
    res = await m.run_command("team", "s1", "echo", ["hi"], None)
    assert res.stdout == "hi\n" and res.output[0].text == "hi"
    await m.stop("team", "s1")
    assert await m.start("team", "s1", None) == msg  # again, from the saved definition
    await m.shutdown()


async def test_unknown_and_invalid(tmp_path: Path, rootfs: Path) -> None:
    m = manager(tmp_path)
    with pytest.raises(NotFoundError, match="Invalid params: Sandbox 'ghost' not found"):
        await m.start("default", "ghost", None)
    with pytest.raises(NotFoundError):
        await m.run_command("default", "ghost", "true", [], None)
    with pytest.raises(ConfigError, match="name"):
        await m.start("bad/ns", "x", SandboxConfig(image=str(rootfs)))
    with pytest.raises(ConfigError, match="relative to the namespace's volume area"):  # not the host's files
        await m.start("default", "v", SandboxConfig(image=str(rootfs), volumes=["/etc:/b"]))
    with pytest.raises(ConfigError, match="relative to the namespace's volume area"):
        await m.start("default", "v", SandboxConfig(image=str(rootfs), volumes=["../..:/b"]))
    with pytest.raises(ConfigError, match="may not boot host directories"):
        await m.start("default", "i", SandboxConfig(image="../rootfs"))
    with pytest.raises(ConfigError, match="operator has not allowed"):
        await m.start("default", "i", SandboxConfig(image="/"))
    assert m.quotas._sandboxes == {}  # refused starts hold no quota


async def test_volumes_inside_the_namespace_and_ports_reach_the_spec(tmp_path: Path, rootfs: Path) -> None:
    m = manager(tmp_path)
    (m.volume_area("default") / "data").mkdir(parents=True)
    await m.start("default", "v", SandboxConfig(image=str(rootfs), volumes=["./data:/data:ro"], ports=["18080:80"]))
    spec = m._get("default", "v").sandbox.spec
    assert [(v.host.name, v.guest, v.readonly) for v in spec.volumes] == [("data", "/data", True)]
    assert [(p.host_ip, p.host_port, p.guest_port) for p in spec.ports] == [("127.0.0.1", 18080, 80)]
    assert spec.network == "public"
    await m.shutdown()


async def test_sandbox_limit(tmp_path: Path, rootfs: Path) -> None:
    m = manager(tmp_path, max_sandboxes=1)
    await m.start("default", "a", SandboxConfig(image=str(rootfs)))
    with pytest.raises(LimitError, match="MSB_MAX_SANDBOXES"):
        await m.start("default", "b", SandboxConfig(image=str(rootfs)))
    await m.stop("default", "a")
    await m.start("default", "b", SandboxConfig(image=str(rootfs)))
    await m.shutdown()


async def test_exec_limit(tmp_path: Path, rootfs: Path) -> None:
    m = manager(tmp_path, max_execs_per_sandbox=1)
    await m.start("default", "a", SandboxConfig(image=str(rootfs)))
    slow = asyncio.ensure_future(m.run_command("default", "a", "sleep", ["0.5"], None))
    await asyncio.sleep(0.1)
    with pytest.raises(LimitError, match="MSB_MAX_EXECS_PER_SANDBOX"):
        await m.run_command("default", "a", "true", [], None)
    assert (await slow).exit_code == 0
    assert (await m.run_command("default", "a", "true", [], None)).success
    await m.shutdown()


async def test_metrics_and_list(tmp_path: Path, rootfs: Path) -> None:
    m = manager(tmp_path)
    await m.start("n1", "a", SandboxConfig(image=str(rootfs)))
    await m.start("n2", "b", SandboxConfig(image=str(rootfs)))
    await m.stop("n2", "b")
    every = {(x.namespace, x.name): x for x in await m.metrics("*", None)}
    assert every[("n1", "a")].running and every[("n1", "a")].memory_usage is not None
    assert not every[("n2", "b")].running and every[("n2", "b")].cpu_usage is None
    assert [x.name for x in await m.list("n2")] == ["b"]
    await m.shutdown()


def gvisor_like() -> FakeBackend:
    backend = FakeBackend()
    backend.name = "gvisor"  # type: ignore[misc]
    backend.fixed_accel = "none"  # type: ignore[attr-defined]
    return backend


async def test_one_backend_per_server_reported_and_logged(tmp_path: Path, rootfs: Path,
                                                          monkeypatch: pytest.MonkeyPatch,
                                                          caplog: pytest.LogCaptureFixture) -> None:  # fmt: skip
    monkeypatch.setenv("MSB_AGENT", str(tmp_path / "agent"))  # no agent version check
    m = SandboxManager(tmp_path / "state", Limits(), engine=Engine(backend=gvisor_like()),
                       policy=TenantPolicy(allowed_image_dirs=(tmp_path,)))
    with caplog.at_level("INFO"):
        await m.prepare()
    assert "backend: gVisor (given); isolation: gVisor: the code's system calls" in caplog.text
    assert "TCG" not in caplog.text  # the TCG warning is for QEMU/TCG only
    info = await m.info()
    assert (info.backend, info.accel, info.label) == ("gvisor", "none", "gVisor")
    await m.start("default", "s1", SandboxConfig(image=str(rootfs)))
    [metrics] = await m.metrics("default", "s1")
    assert (metrics.backend, metrics.accel) == ("gvisor", "none")
    [listed] = await m.list("default")
    assert (listed.backend, listed.accel) == ("gvisor", "none")
    await m.stop("default", "s1")
    [metrics] = await m.metrics("default", "s1")
    assert metrics.running is False and metrics.backend is None
    await m.shutdown()


async def test_tcg_is_still_a_warning(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level("INFO"):
        await manager(tmp_path).prepare()
    assert "accelerator: TCG" in caplog.text and "not treat TCG as a security boundary" in caplog.text


async def test_the_old_layout_is_migrated_once_and_its_symlinks_refused(tmp_path: Path, rootfs: Path) -> None:
    old = tmp_path / "state" / "namespaces" / "team"
    (old / ".menv" / "sandboxes" / "kept" / "upper" / "root").mkdir(parents=True)
    (old / ".menv" / "sandboxes" / "kept" / "upper" / "root" / "keep.txt").write_text("mine")
    target = tmp_path / "elsewhere"
    target.mkdir()
    (old / ".menv" / "sandboxes" / "evil").mkdir()
    (old / ".menv" / "sandboxes" / "evil" / "upper").symlink_to(target)
    (old / "data").mkdir()
    (old / "Sandboxfile").write_text(f"sandboxes:\n  kept:\n    image: {rootfs}\n    scope: any\n    backend: qemu\n"
                                     f"  evil:\n    image: {rootfs}\n")  # fmt: skip
    m = manager(tmp_path)
    state = tmp_path / "state"
    assert (state / "sandboxes" / "team" / "kept" / "upper" / "root" / "keep.txt").read_text() == "mine"
    assert json.loads((state / "sandboxes" / "team" / "kept" / "sandbox.json").read_text()) == {"image": str(rootfs)}
    assert (m.volume_area("team") / "data").is_dir()  # the data its volumes pointed at
    assert not (state / "sandboxes" / "team" / "evil" / "upper").exists()
    assert [r for r in m.migration_refused if "evil" in r and "symlink" in r]
    assert not (state / "namespaces").exists()
    [left] = state.glob("namespaces.migrated-*")  # sealed: private, and the refused link is gone
    assert all((p.stat().st_mode & 0o077) == 0 for p in [left, *left.rglob("*")] if not p.is_symlink())
    assert not any(p.is_symlink() for p in left.rglob("*"))
    await m.start("team", "kept", None)
    assert m._get("team", "kept").sandbox.spec.network == "public"  # `scope: any` was not carried over
    await m.shutdown()
    assert list(target.iterdir()) == []
    assert manager(tmp_path).migration_refused == []  # once


async def test_quotas_are_reserved_before_any_await(tmp_path: Path, rootfs: Path) -> None:
    m = manager(tmp_path, max_sandboxes=3, max_sandboxes_per_namespace=2)
    starts = [m.start("a", f"s{i}", SandboxConfig(image=str(rootfs), ephemeral=True)) for i in range(6)]
    results = await asyncio.gather(*starts, return_exceptions=True)
    assert sum(isinstance(r, str) for r in results) == 2
    assert all(isinstance(r, LimitError) for r in results if not isinstance(r, str))
    await m.start("b", "s0", SandboxConfig(image=str(rootfs), ephemeral=True))
    with pytest.raises(LimitError, match="MSB_MAX_SANDBOXES"):
        await m.start("c", "s0", SandboxConfig(image=str(rootfs), ephemeral=True))
    with pytest.raises(LimitError, match="MSB_MAX_MEMORY_MIB"):
        await m.start("b", "big", SandboxConfig(image=str(rootfs), memory=8192))
    with pytest.raises(LimitError, match="MSB_MAX_CPUS"):
        await m.start("b", "wide", SandboxConfig(image=str(rootfs), cpus=64))
    await m.shutdown()


async def test_ports_stay_on_loopback_unless_allowed(tmp_path: Path, rootfs: Path) -> None:
    m = manager(tmp_path)
    for ports in (["0.0.0.0:18081:80"], ["[::]:18081:80"], ["80:80"]):
        with pytest.raises(ConfigError, match="--allow-public-ports"):
            await m.start("default", "p", SandboxConfig(image=str(rootfs), ports=ports, ephemeral=True))
    await m.shutdown()
