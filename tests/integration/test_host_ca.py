"""Host CA trust in a real VM on the default backend: the bundle is at its guest path, the
variables name it, and the guest cannot change it (nor the host's copy)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from engine.sandbox.engine import Engine
from engine.sandbox.host_ca import DEBIAN_BUNDLE, ENV_VARS, GUEST_FILE, with_host_ca
from engine.sandbox.spec import SandboxSpec


async def test_the_bundle_is_read_only_at_its_path_with_the_env(busybox_rootfs: Path, tmp_path: Path) -> None:
    if not DEBIAN_BUNDLE.is_file():
        pytest.fail(f"{DEBIAN_BUNDLE} is missing: apt-get install ca-certificates")
    bundle = DEBIAN_BUNDLE.read_bytes()
    spec = with_host_ca(SandboxSpec(name="ca-" + os.urandom(3).hex(), rootfs=busybox_rootfs, memory_mib=256),
                        DEBIAN_BUNDLE, tmp_path / "stage")  # fmt: skip
    sb = await Engine().start(spec)
    try:
        got = await sb.exec(["cat", GUEST_FILE], timeout=60)
        assert got.exit_code == 0 and got.stdout == bundle
        env = (await sb.exec(["env"], timeout=60)).stdout.decode().splitlines()
        assert {f"{var}={GUEST_FILE}" for var in ENV_VARS} <= set(env)
        for attack in (f"echo evil >> {GUEST_FILE}", f"rm -f {GUEST_FILE}", f"touch {GUEST_FILE}.new",
                       f"chmod 666 {GUEST_FILE}", f"mv {GUEST_FILE} /tmp/x"):  # fmt: skip
            res = await sb.exec(["sh", "-c", attack], timeout=60)
            assert res.exit_code != 0, (attack, res)
        assert (await sb.exec(["cat", GUEST_FILE], timeout=60)).stdout == bundle
    finally:
        await sb.kill()
    [staged] = (tmp_path / "stage").iterdir()
    assert (staged / "ca-certificates.crt").read_bytes() == bundle and sorted(os.listdir(staged)) == [
        "ca-certificates.crt"]  # fmt: skip
