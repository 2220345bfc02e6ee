"""Attacks on host CA trust (engine/sandbox/host_ca.py) through the server: an API client must not
name a host file to be shared, nor replace or reach the operator's bundle. The manager runs on the
fake VMM backend; the read-only mount itself is checked in a real VM (tests/integration/test_host_ca.py)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from engine.errors import ConfigError
from engine.sandbox.engine import Engine
from engine.sandbox.host_ca import GUEST_DIR
from engine.server.manager import SandboxManager
from engine.server.service import SandboxConfig
from engine.server.tenancy import TenantPolicy
from engine.vm.fake import FakeBackend

PEM = b"-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----\n"


@pytest.fixture
def rootfs(tmp_path: Path) -> Path:
    d = tmp_path / "rootfs"
    (d / "etc").mkdir(parents=True)
    return d


async def make(tmp_path: Path, host_ca: Path | None) -> SandboxManager:
    return SandboxManager(tmp_path / "state", engine=Engine(backend=FakeBackend(), accel="tcg"),
                          policy=TenantPolicy(allowed_image_dirs=(tmp_path / "rootfs",)), host_ca=host_ca)  # fmt: skip


@pytest.fixture
async def plain(tmp_path: Path) -> AsyncIterator[SandboxManager]:
    m = await make(tmp_path, None)
    yield m
    await m.shutdown()


@pytest.fixture
async def trusting(tmp_path: Path) -> AsyncIterator[SandboxManager]:
    bundle = tmp_path / "corp.pem"
    bundle.write_bytes(PEM)
    m = await make(tmp_path, bundle)
    yield m
    await m.shutdown()


@pytest.mark.parametrize("field", ["host_ca", "hostCa", "host_ca_path"])
async def test_a_client_cannot_name_a_host_bundle(plain: SandboxManager, rootfs: Path, field: str) -> None:
    """Attack: ``config.host_ca: "/etc/shadow"`` (and look-alikes) in ``sandbox.start``."""
    config = SandboxConfig.model_validate({"image": str(rootfs), field: "/etc/shadow"})
    await plain.start("t1", "s", config)
    spec = plain._get("t1", "s").sandbox.spec
    assert spec.volumes == () and "SSL_CERT_FILE" not in spec.env  # nothing of the host is shared
    assert not (plain.state.storage / "host-ca").exists()


async def test_a_client_volume_cannot_replace_the_operators_bundle(trusting: SandboxManager, rootfs: Path) -> None:
    """Attack: mount the namespace's own (tenant-written) directory over the bundle's guest directory,
    so that the sandbox trusts a CA the tenant chose."""
    (trusting.volume_area("t1") / "evil").mkdir(parents=True)
    for guest in (GUEST_DIR, GUEST_DIR + "/"):
        with pytest.raises(ConfigError, match="already mounted"):
            await trusting.start("t1", f"s{len(guest)}", SandboxConfig(image=str(rootfs), volumes=[f"./evil:{guest}"]))
    assert trusting.quotas._sandboxes == {}  # the refused starts hold no quota


async def test_the_staged_bundle_is_out_of_the_volume_area(trusting: SandboxManager, rootfs: Path) -> None:
    """Attack: reach the staged copy (to swap it for the next sandboxes) with a volume path."""
    await trusting.start("t1", "ok", SandboxConfig(image=str(rootfs)))
    for path in ("../../host-ca", "../..", "/"):
        with pytest.raises(ConfigError, match="volume area"):
            await trusting.start("t1", "v", SandboxConfig(image=str(rootfs), volumes=[f"{path}:/x"]))
