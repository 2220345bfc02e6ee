"""KrunBackend's launch path against the C stand-in libkrun (krun_standin.c).

The stand-in records every call the VMM child makes; with ``KRUN_STANDIN_BOOT`` its
``krun_start_enter`` emulates the guest (chroot into the root libkrun was given, private
namespaces, the real agent exec'd with the given environment, the vsock port as a connected
socket), so the whole path — overlay, agent bind mount, socket, child, channel, READY, exec,
kill, unmount — runs for real except KVM itself. Mounting needs root.
"""

from __future__ import annotations

import asyncio
import errno
import hashlib
import os
import resource
import shutil
import tempfile
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest

from engine import paths
from engine.errors import ConfigError, GuestFileError, VmError
from engine.sandbox.spec import PortMap, VolumeMount
from engine.vm.agent import AgentClient
from engine.vm.backend import VmSpec
from engine.vm.krun_backend import AGENT_PORT, KrunBackend, KrunVm
from engine.vm.krun_root import KrunRoot
from engine.vm.overlay import overlay_mounts_of
from tests.unit.vm import krun_standin
from tests.unit.vm.krun_standin import CTX, recorded

AGENT = paths.agent_path()
pytestmark = [
    pytest.mark.skipif(os.geteuid() != 0, reason="the libkrun backend mounts the sandbox's root: needs root"),
    pytest.mark.skipif(not AGENT.is_file(), reason=f"guest agent not built at {AGENT}: run `make agent`"),
]
READY_TIMEOUT_S = 30.0


@pytest.fixture(scope="module")
def standin(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return krun_standin.build(tmp_path_factory.mktemp("krun"))


@pytest.fixture
def calls_log(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, standin: Path) -> Path:
    log = tmp_path / "calls.jsonl"
    krun_standin.use(monkeypatch, standin, log)
    return log


@pytest.fixture
def run_dir() -> Iterator[Path]:
    d = Path(tempfile.mkdtemp(prefix="msb-krun-t-", dir="/tmp"))  # short: unix socket paths
    yield d
    assert mounts_under(d) == [], "a mount outlived the VM"
    shutil.rmtree(d, ignore_errors=True)


@pytest.fixture
def image(tmp_path: Path) -> Path:
    img = tmp_path / "image"
    (img / "etc").mkdir(parents=True)
    (img / "etc" / "motd").write_text("from the image\n")
    return img


def mounts_under(d: Path) -> list[str]:
    text = Path("/proc/self/mountinfo").read_text()
    return [f.split()[4] for f in text.splitlines() if f.split()[4].startswith(str(d))]


def tree(d: Path) -> dict[str, bytes]:
    return {str(p.relative_to(d)): p.read_bytes() if p.is_file() else b"" for p in sorted(d.rglob("*"))}


def full_spec(tmp_path: Path, image: Path, run_dir: Path) -> VmSpec:
    """cpus, memory, two volumes, a port, scope any, a persistent upper layer."""
    data, src = tmp_path / "data", tmp_path / "src"
    data.mkdir()
    src.mkdir()
    return VmSpec(name="demo", kernel=Path(os.devnull), initrd=Path(os.devnull), root_image=image,
                  upper_image=tmp_path / "persist" / "upper", run_dir=run_dir, cpus=2, memory_mib=512,
                  accel="kvm", network="any",
                  volumes=(VolumeMount(host=data, guest="/data", readonly=True),
                           VolumeMount(host=src, guest="/src", readonly=True)),
                  ports=(PortMap(host_port=8080, guest_port=80, host_ip="0.0.0.0"),))  # fmt: skip


def boot_spec(image: Path, run_dir: Path, **kw: Any) -> VmSpec:
    return VmSpec(name="demo", kernel=Path(os.devnull), initrd=Path(os.devnull), root_image=image,
                  run_dir=run_dir, accel="kvm", network="none", **kw)  # fmt: skip


def expected_calls(run_dir: Path) -> list[tuple[str, list[Any]]]:
    env = ["MSB_PORT=vsock:10000", "MSB_HOSTNAME=demo", "MSB_SYNC=1",
           "MSB_VOL0=msbvol0:ro:/data", "MSB_VOL1=msbvol1:ro:/src"]  # fmt: skip
    return [
        ("krun_set_log_level", [0]),
        ("krun_create_ctx", []),
        ("krun_set_vm_config", [CTX, 2, 512]),
        ("krun_set_root", [CTX, str(run_dir / "root")]),
        ("krun_add_virtiofs", [CTX, "msbvol0", str(run_dir / "vol" / "0")]),
        ("krun_add_virtiofs", [CTX, "msbvol1", str(run_dir / "vol" / "1")]),
        ("krun_disable_implicit_vsock", [CTX]),
        ("krun_add_vsock", [CTX, 1]),
        ("krun_add_vsock_port", [CTX, AGENT_PORT, str(run_dir / "agent.sock")]),
        ("krun_set_port_map", [CTX, ["8080:80"]]),
        ("krun_set_rlimits", [CTX, [f"{resource.RLIMIT_NOFILE}=65536:65536"]]),
        ("krun_set_workdir", [CTX, "/"]),
        ("krun_set_exec", [CTX, "/.msb/agent", ["--krun"], env]),
        ("krun_start_enter", [CTX]),
    ]


async def test_launch_makes_the_exact_calls_for_a_full_spec(
    tmp_path: Path, image: Path, run_dir: Path, calls_log: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("KRUN_STANDIN_EXIT", "0")  # the "VM" ends at once: no agent connects
    before = tree(image)
    with pytest.raises(VmError, match="libkrun exited with status 0 before the guest agent connected"):
        await KrunBackend().launch(full_spec(tmp_path, image, run_dir))
    assert recorded(calls_log) == expected_calls(run_dir)
    assert (tmp_path / "persist" / "upper").is_dir() and (tmp_path / "persist" / "work").is_dir()
    assert tree(image) == before


CALLS = [name for name, _ in expected_calls(Path("/x"))]


@pytest.mark.parametrize("failing", list(dict.fromkeys(CALLS)))
async def test_an_error_from_any_call_is_a_vm_error_at_launch(
    failing: str, tmp_path: Path, image: Path, run_dir: Path, calls_log: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("KRUN_STANDIN_FAIL", failing)
    with pytest.raises(VmError) as err:
        await KrunBackend().launch(full_spec(tmp_path, image, run_dir))
    msg = str(err.value)
    assert "libkrun exited with status 70" in msg and "msb could not configure libkrun" in msg
    assert f"libkrun {failing} failed: Invalid argument (EINVAL)" in msg
    assert recorded(calls_log)[-1][0] == failing  # nothing is called after the failure


@pytest.fixture
async def booted(image: Path, run_dir: Path, calls_log: Path, monkeypatch: pytest.MonkeyPatch
                 ) -> AsyncIterator[tuple[KrunVm, AgentClient]]:  # fmt: skip
    monkeypatch.setenv("KRUN_STANDIN_BOOT", "1")
    vm = await KrunBackend().launch(boot_spec(image, run_dir))
    client = AgentClient(vm.channel)
    try:
        await asyncio.wait_for(client.wait_ready(), READY_TIMEOUT_S)
        yield vm, client
    finally:
        await client.close()
        await vm.kill()


async def test_boot_runs_the_agent_from_the_root_and_serves_frames(
    booted: tuple[KrunVm, AgentClient], image: Path, run_dir: Path
) -> None:
    vm, client = booted
    assert vm.accel == "kvm" and vm.pid is not None and not vm.exited()
    result = await client.exec(["/.msb/agent", "--version"])
    assert result.exit_code == 0 and result.stdout.startswith(b"msb-agent ")
    assert await client.read_file("/proc/sys/kernel/hostname") == b"demo\n"  # MSB_HOSTNAME
    assert await client.read_file("/etc/motd") == b"from the image\n"
    assert "krun-standin: starting /.msb/agent" in vm.console_tail()  # the VMM's stdout is the console
    assert len(mounts_under(run_dir)) >= 2  # the overlay and the agent, while it runs


async def test_guest_writes_land_in_the_upper_layer_never_in_the_image(
    booted: tuple[KrunVm, AgentClient], image: Path, run_dir: Path
) -> None:
    _, client = booted
    before = tree(image)
    await client.write_file("/etc/motd", b"changed\n")
    await client.write_file("/new.txt", b"new\n")
    assert (run_dir / "upper" / "etc" / "motd").read_bytes() == b"changed\n"
    assert (run_dir / "upper" / "new.txt").read_bytes() == b"new\n"
    assert tree(image) == before


async def test_the_agent_in_the_root_is_read_only(booted: tuple[KrunVm, AgentClient]) -> None:
    _, client = booted
    digest = hashlib.sha256(AGENT.read_bytes()).hexdigest()
    with pytest.raises(GuestFileError):
        await client.write_file("/.msb/agent", b"#!/bin/sh\n", mode=0o755)
    assert hashlib.sha256(AGENT.read_bytes()).hexdigest() == digest


async def test_shutdown_ends_the_vm_and_undoes_the_mounts(booted: tuple[KrunVm, AgentClient], run_dir: Path) -> None:
    vm, client = booted
    await client.shutdown()
    assert await asyncio.wait_for(vm.wait_exited(), READY_TIMEOUT_S) == 0
    assert mounts_under(run_dir) == []


async def test_kill_ends_the_vm_and_undoes_the_mounts(booted: tuple[KrunVm, AgentClient], run_dir: Path) -> None:
    vm, _ = booted
    await vm.kill()
    await vm.kill()  # idempotent
    assert vm.exited() and mounts_under(run_dir) == []


async def test_a_volume_the_guest_cannot_mount_stops_the_boot_with_the_reason(
    tmp_path: Path, image: Path, run_dir: Path, calls_log: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The stand-in has no virtio-fs: the agent's mount fails as it would without the driver.
    monkeypatch.setenv("KRUN_STANDIN_BOOT", "1")
    (tmp_path / "share").mkdir()
    spec = boot_spec(image, run_dir, volumes=(VolumeMount(host=tmp_path / "share", guest="/data", readonly=True),))
    with pytest.raises(VmError) as err:
        await KrunBackend().launch(spec)
    assert "libkrun exited with status 1" in str(err.value)
    assert "mounting volume msbvol0 on /data" in str(err.value)  # the agent's message, from the console


async def test_a_planted_msb_symlink_in_a_persistent_upper_is_not_followed(
    tmp_path: Path, image: Path, run_dir: Path, calls_log: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("KRUN_STANDIN_BOOT", "1")
    outside, upper = tmp_path / "outside", tmp_path / "persist" / "upper"
    outside.mkdir()
    upper.mkdir(parents=True)
    (upper / ".msb").symlink_to(outside)  # what a hostile guest could leave in its layer
    vm = await KrunBackend().launch(boot_spec(image, run_dir, upper_image=upper))
    client = AgentClient(vm.channel)
    try:
        await asyncio.wait_for(client.wait_ready(), READY_TIMEOUT_S)
        assert (await client.exec(["/.msb/agent", "--version"])).exit_code == 0
    finally:
        await client.close()
        await vm.kill()
    assert list(outside.iterdir()) == []
    assert overlay_mounts_of(upper) == []


async def test_scopes_libkrun_cannot_enforce_are_refused_before_anything_runs(
    image: Path, run_dir: Path, calls_log: Path
) -> None:
    for scope in ("public", "group"):
        with pytest.raises(ConfigError, match=f"network scope '{scope}' cannot be enforced") as err:
            await KrunBackend().launch(boot_spec(image, run_dir).model_copy(update={"network": scope}))
        assert err.value.hint is not None and "--backend gvisor" in err.value.hint
    assert recorded(calls_log) == [] and not (run_dir / "root").exists()


async def test_no_libkrun_is_a_vm_error_before_anything_is_mounted(
    image: Path, run_dir: Path, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv("MSB_LIBKRUN", str(tmp_path / "missing.so"))
    with pytest.raises(VmError, match=r"missing\.so does not exist"):
        await KrunBackend().launch(boot_spec(image, run_dir))
    assert not (run_dir / "root").exists()


def mount_options(mountpoint: Path) -> set[str]:
    for line in Path("/proc/self/mountinfo").read_text().splitlines():
        f = line.split()
        if f[4] == str(mountpoint):
            return set(f[5].split(","))
    raise AssertionError(f"{mountpoint} is not mounted")


def test_host_mounts_are_nosuid_nodev_and_read_only_where_promised(tmp_path: Path, image: Path, run_dir: Path) -> None:
    share = tmp_path / "share"
    share.mkdir()
    spec = boot_spec(image, run_dir, volumes=(VolumeMount(host=share, guest="/data", readonly=True),))
    root = KrunRoot(run_dir)
    root.setup(spec, AGENT)
    try:
        assert {"nosuid", "nodev"} <= mount_options(run_dir / "root")
        assert {"ro", "nosuid", "nodev"} <= mount_options(run_dir / "root" / ".msb" / "agent")
        assert {"ro", "nosuid", "nodev"} <= mount_options(run_dir / "vol" / "0")
        with pytest.raises(OSError) as err:  # what libkrun's virtio-fs server would meet, as root
            (run_dir / "vol" / "0" / "planted").write_text("x")
        assert err.value.errno == errno.EROFS
    finally:
        root.teardown()
    assert mounts_under(run_dir) == [] and list(share.iterdir()) == []
