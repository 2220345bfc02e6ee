"""SandboxManager on the fake VMM backend: namespaces, Sandboxfile entries, limits, errors."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from engine.errors import ConfigError, NotFoundError
from engine.sandbox.engine import Engine
from engine.server.manager import LimitError, SandboxManager
from engine.server.service import SandboxConfig
from engine.server.settings import Limits
from engine.vm.fake import FakeBackend


@pytest.fixture
def rootfs(tmp_path: Path) -> Path:
    d = tmp_path / "rootfs"
    (d / "etc").mkdir(parents=True)
    return d


def manager(tmp_path: Path, **limits: int) -> SandboxManager:
    return SandboxManager(tmp_path / "state", Limits(**limits), engine=Engine(backend=FakeBackend(), accel="tcg"))


async def test_start_writes_sandboxfile_keeping_comments(tmp_path: Path, rootfs: Path) -> None:
    m = manager(tmp_path)
    ns_dir = tmp_path / "state" / "namespaces" / "team"
    ns_dir.mkdir(parents=True)
    (ns_dir / "Sandboxfile").write_text("# my notes\nsandboxes:\n  other:\n    image: busybox  # keep me\n")
    msg = await m.start("team", "s1", SandboxConfig(image=str(rootfs), memory=256, envs=["A=1"]))
    assert msg == "Sandbox s1 started successfully"
    text = (ns_dir / "Sandboxfile").read_text()
    assert "# my notes" in text and "# keep me" in text and "s1:" in text and "A=1" in text
    assert await m.start("team", "s1", None) == msg  # already running: idempotent
    res = await m.run_command("team", "s1", "echo", ["hi"], None)
    assert res.stdout == "hi\n" and res.output[0].text == "hi"
    await m.stop("team", "s1")
    assert await m.start("team", "s1", None) == msg  # again, from the Sandboxfile entry
    await m.shutdown()


async def test_unknown_and_invalid(tmp_path: Path, rootfs: Path) -> None:
    m = manager(tmp_path)
    with pytest.raises(NotFoundError, match="Invalid params: Sandbox 'ghost' not found"):
        await m.start("default", "ghost", None)
    with pytest.raises(NotFoundError):
        await m.run_command("default", "ghost", "true", [], None)
    with pytest.raises(ConfigError, match="name"):
        await m.start("bad/ns", "x", SandboxConfig(image=str(rootfs)))
    with pytest.raises(ConfigError, match="outside"):  # API clients cannot mount the host's files
        await m.start("default", "v", SandboxConfig(image=str(rootfs), volumes=["/etc:/b"]))
    with pytest.raises(ConfigError, match="outside"):
        await m.start("default", "v", SandboxConfig(image=str(rootfs), volumes=["../..:/b"]))


async def test_volumes_inside_the_namespace_and_ports_reach_the_spec(tmp_path: Path, rootfs: Path) -> None:
    m = manager(tmp_path)
    (m.namespace_dir("default") / "data").mkdir(parents=True)
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
    m = SandboxManager(tmp_path / "state", Limits(), engine=Engine(backend=gvisor_like()))
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


async def test_a_sandboxfile_backend_other_than_the_servers_is_refused(
    tmp_path: Path, rootfs: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("MSB_AGENT", str(tmp_path / "agent"))
    m = SandboxManager(tmp_path / "state", Limits(), engine=Engine(backend=gvisor_like()))
    ns_dir = m.namespace_dir("default")
    ns_dir.mkdir(parents=True)
    (ns_dir / "Sandboxfile").write_text(f"sandboxes:\n  q:\n    image: {rootfs}\n    backend: qemu\n"
                                        f"  g:\n    image: {rootfs}\n    backend: gvisor\n")  # fmt: skip
    with pytest.raises(ConfigError, match="asks for backend 'qemu', but this server runs its sandboxes on gVisor") as e:
        await m.start("default", "q", None)
    assert e.value.hint and "msb server start --backend qemu" in e.value.hint
    assert await m.start("default", "g", None) == "Sandbox g started successfully"
    await m.shutdown()
