"""A real sandbox on the libkrun backend — only where libkrun works.

The probe (engine/vm/krun_probe.py) boots a VM first; on hosts without a working libkrun (no
library, no usable /dev/kvm, or a KVM libkrun's guest cannot run on, such as this project's
PVM development host with its ``KVM_EXIT_INTERNAL_ERROR``) the tests are skipped with the
probe's reason. The launch path itself is covered everywhere by tests/unit/vm/test_krun_backend.py.
"""

from __future__ import annotations

import os
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from engine.errors import ExecError
from engine.sandbox.engine import Engine
from engine.sandbox.sandbox import Sandbox
from engine.sandbox.spec import SandboxSpec, VolumeMount
from engine.vm.krun_backend import KrunBackend
from engine.vm.krun_probe import KrunProbe, probe_krun


@pytest.fixture(scope="module")
def probe() -> KrunProbe:
    return probe_krun()


@pytest.fixture
async def krun_sandbox(probe: KrunProbe, busybox_rootfs: Path, tmp_path: Path) -> AsyncIterator[Sandbox]:
    if not probe["usable"]:
        pytest.skip(f"libkrun: {probe['reason']}")
    share = tmp_path / "share"
    share.mkdir()
    (share / "note").write_text("from the host\n")
    spec = SandboxSpec(name="k-" + os.urandom(3).hex(), rootfs=busybox_rootfs, memory_mib=256, network="none",
                       volumes=(VolumeMount(host=share, guest="/data", readonly=True),))  # fmt: skip
    sb = await Engine(backend=KrunBackend(), accel="kvm").start(spec)
    try:
        yield sb
    finally:
        await sb.kill()


async def test_echo_in_a_libkrun_sandbox(krun_sandbox: Sandbox) -> None:
    res = await krun_sandbox.exec(["echo", "hello from libkrun"])
    assert res.exit_code == 0 and res.stdout == b"hello from libkrun\n"


async def test_writes_stay_out_of_the_image_and_read_only_volumes_hold(
    krun_sandbox: Sandbox, busybox_rootfs: Path
) -> None:
    assert (await krun_sandbox.exec(["sh", "-c", "echo x > /krun-probe-file"])).exit_code == 0
    assert not (busybox_rootfs / "krun-probe-file").exists()
    assert (await krun_sandbox.exec(["cat", "/data/note"])).stdout == b"from the host\n"
    res = await krun_sandbox.exec(["sh", "-c", "mount -o remount,rw /data; echo y > /data/note"])
    assert res.exit_code != 0  # the host's read-only bind mount refuses, whatever the guest remounts


async def test_no_network_in_scope_none(krun_sandbox: Sandbox) -> None:
    try:
        res = await krun_sandbox.exec(["wget", "-T", "3", "-q", "-O-", "http://1.1.1.1/"])
    except ExecError:
        pytest.skip("the test rootfs has no wget")
    assert res.exit_code != 0
