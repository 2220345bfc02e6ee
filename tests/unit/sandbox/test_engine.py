"""Engine.start's checks on volumes, and volumes and scopes reaching the backend (fake)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from engine.errors import ConfigError, GuestFileError
from engine.sandbox.engine import Engine
from engine.sandbox.sandbox import Sandbox
from engine.sandbox.spec import PortMap, SandboxSpec, VolumeMount
from engine.vm.fake import FakeBackend
from engine.vm.kernel import Kernel
from tests.unit.sandbox.test_sandbox import KERNEL, make_engine, spec, start, vm_of


@pytest.fixture
async def sandboxes() -> AsyncIterator[list[Sandbox]]:
    made: list[Sandbox] = []
    yield made
    for sb in made:
        await sb.kill()


class BootingFake(FakeBackend):
    """A fake that claims to boot a kernel, so the engine applies the kernel checks."""

    needs_boot_assets = True


def kernel(supports_9p: bool) -> Kernel:
    return KERNEL.model_copy(update={"supports_9p": supports_9p, "kind": "debian", "version": "6.1.0-cloud"})


def test_volumes_need_a_kernel_with_9p(tmp_path: Path) -> None:
    engine = Engine(backend=BootingFake(tmp_dir=tmp_path), kernel=KERNEL, cache_dir=tmp_path)
    s = spec(tmp_path, volumes=(VolumeMount(host=tmp_path, guest="/data"),))
    with pytest.raises(ConfigError, match="cannot mount them: it lacks 9p") as info:
        engine._check_volumes(s, kernel(supports_9p=False))
    assert "make kernel" in (info.value.hint or "")
    engine._check_volumes(s, kernel(supports_9p=True))
    engine._check_volumes(spec(tmp_path), kernel(supports_9p=False))  # no volumes, no question


async def test_a_missing_host_directory_fails_before_boot(tmp_path: Path, sandboxes: list[Sandbox]) -> None:
    backend = FakeBackend(tmp_dir=tmp_path)
    s = spec(tmp_path, volumes=(VolumeMount(host=tmp_path / "nope", guest="/data"),))
    with pytest.raises(ConfigError, match="does not exist"):
        await make_engine(tmp_path, backend).start(s)
    assert backend.vms == []


async def test_volumes_ports_and_scope_reach_the_vm(tmp_path: Path, sandboxes: list[Sandbox]) -> None:
    data, ref = tmp_path / "data", tmp_path / "ref"
    data.mkdir()
    ref.mkdir()
    (ref / "r.txt").write_bytes(b"reference")
    vols = (VolumeMount(host=data, guest="/data"), VolumeMount(host=ref, guest="/ref", readonly=True))
    ports = (PortMap(host_port=18080, guest_port=8000),)
    sb = await start(
        make_engine(tmp_path, FakeBackend(tmp_dir=tmp_path)), spec(tmp_path, volumes=vols, ports=ports), sandboxes
    )
    vm = vm_of(sb)
    assert (vm.volumes, vm.ports, vm.network) == (vols, ports, "public")  # public is the spec's default
    await sb.write_file("/data/from-guest.txt", b"hello")
    assert (data / "from-guest.txt").read_bytes() == b"hello"
    assert await sb.read_file("/ref/r.txt") == b"reference"
    with pytest.raises(GuestFileError) as info:
        await sb.write_file("/ref/new.txt", b"x")
    assert info.value.errno == 30 and not (ref / "new.txt").exists()


async def test_ports_with_scope_none_are_refused(tmp_path: Path, sandboxes: list[Sandbox]) -> None:
    s = spec(tmp_path, network="none", ports=(PortMap(host_port=18080, guest_port=8000),))
    with pytest.raises(ConfigError, match="network scope is 'none'"):
        await make_engine(tmp_path, FakeBackend(tmp_dir=tmp_path)).start(s)


def test_sandbox_spec_defaults_to_public() -> None:
    assert SandboxSpec(name="x", rootfs=Path("/r")).network == "public"
