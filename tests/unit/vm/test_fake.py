"""The fake backend itself: VM lifecycle, channel, confinement, knobs."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from engine.errors import ConfigError
from engine.sandbox.spec import PortMap, VolumeMount
from engine.vm import protocol as p
from engine.vm.channel import ChannelClosed
from engine.vm.fake import MISBEHAVIOURS, FakeBackend
from engine.vm.fake_exec import confine, confine_mounted
from tests.unit.conftest import Launch
from tests.unit.helpers import STEP_TIMEOUT_S, vm_spec


async def test_backend_shape_and_launch(tmp_path: Path) -> None:
    backend = FakeBackend(tmp_dir=tmp_path)
    assert backend.name == "fake" and backend.needs_boot_assets is False
    vm = await backend.launch(vm_spec(tmp_path, cpus=1, accel="kvm"))
    assert backend.vms == [vm] and vm.pid is None and vm.accel == "kvm" and not vm.exited()
    assert vm.root.parent == tmp_path and (vm.root / "tmp").is_dir()
    assert "msb-agent (fake)" in vm.console_tail()
    assert len(vm.console_tail(10)) == 10
    await vm.kill()
    await vm.kill()  # twice is fine
    assert vm.exited() and await vm.wait_exited() == -9 and not vm.root.exists()


async def test_unknown_misbehaviour_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="unknown misbehaviour"):
        await FakeBackend(misbehave="sulk", tmp_dir=tmp_path).launch(vm_spec(tmp_path))
    assert list(tmp_path.iterdir()) == []  # no root dir left behind
    assert {"garbage", "never_ready", "die_mid_exec"} <= MISBEHAVIOURS


async def test_channel_is_closed_after_the_vm_ends(launch: Launch) -> None:
    vm, client = await launch()
    await client.close()
    await vm.crash(code=3)
    with pytest.raises(ChannelClosed):
        await vm.channel.send(p.frame(p.T.PING, 1))
    with pytest.raises(ChannelClosed):
        await asyncio.wait_for(vm.channel.recv(), STEP_TIMEOUT_S)
    assert await vm.wait_exited() == 3 and "fake crash" in vm.console_tail()


async def test_bad_host_frames_are_logged_not_fatal(launch: Launch) -> None:
    vm, client = await launch()
    await vm.channel.send(p.frame(p.T.ACK, 1, b"\0"))  # ACK needs 4 bytes
    await vm.channel.send(p.frame(p.T.SIGNAL, 99, b"\0\0\0\x63\x01"))  # no such exec, bad signal
    assert await asyncio.wait_for(client.ping(b"still here"), STEP_TIMEOUT_S) >= 0


def test_confine_maps_into_the_root(tmp_path: Path) -> None:
    root = tmp_path.resolve()
    (root / "d").mkdir()
    (root / "d" / "up").symlink_to("../..")
    assert confine(root, "/") == root
    assert confine(root, "/d/../d/x") == root / "d" / "x"
    assert confine(root, "relative") == root / "relative"
    for escape in ("/../../..", "/d/up/etc"):  # by "..", or by a symlink
        with pytest.raises(PermissionError) as info:
            confine(root, escape)
        assert info.value.errno == 13


async def test_volumes_ports_and_network_are_recorded(tmp_path: Path) -> None:
    vol = VolumeMount(host=tmp_path, guest="/data", readonly=True)
    port = PortMap(host_port=8080, guest_port=80)
    vm = await FakeBackend(tmp_dir=tmp_path).launch(vm_spec(tmp_path, volumes=(vol,), ports=(port,), network="group"))
    try:
        assert (vm.volumes, vm.ports, vm.network) == ((vol,), (port,), "group")
    finally:
        await vm.kill()


async def test_the_fake_refuses_what_qemu_refuses(tmp_path: Path) -> None:
    port = PortMap(host_port=8080, guest_port=80)
    with pytest.raises(ConfigError, match="network scope is 'none'"):
        await FakeBackend(tmp_dir=tmp_path).launch(vm_spec(tmp_path, ports=(port,), network="none"))
    with pytest.raises(ConfigError, match="/dev, /proc or /sys"):
        await FakeBackend(tmp_dir=tmp_path).launch(
            vm_spec(tmp_path, volumes=(VolumeMount(host=tmp_path, guest="/proc"),))
        )


def test_confine_mounted_maps_volumes_to_their_host_directories(tmp_path: Path) -> None:
    root, data, ref = tmp_path / "root", tmp_path / "data", tmp_path / "ref"
    for d in (root, data, ref):
        d.mkdir()
    (data / "out").symlink_to(tmp_path)
    vols = (VolumeMount(host=data, guest="/data"), VolumeMount(host=ref, guest="/mnt/ref", readonly=True))
    assert confine_mounted(root, "/data/x", vols) == (data / "x", False)
    assert confine_mounted(root, "/data", vols) == (data, False)
    assert confine_mounted(root, "/mnt/ref/y", vols) == (ref / "y", True)
    assert confine_mounted(root, "/database/z", vols) == (root / "database" / "z", False)
    assert confine_mounted(root, "/data/../etc", vols) == (root / "etc", False)  # ".." as the guest sees it
    with pytest.raises(PermissionError):
        confine_mounted(root, "/data/out/root", vols)  # a symlink out of the volume
