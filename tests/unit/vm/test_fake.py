"""The fake backend itself: VM lifecycle, channel, confinement, knobs."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from engine.errors import ConfigError
from engine.vm import protocol as p
from engine.vm.channel import ChannelClosed
from engine.vm.fake import MISBEHAVIOURS, FakeBackend
from engine.vm.fake_exec import confine
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
