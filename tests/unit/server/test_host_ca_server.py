"""The server's host CA trust: ``--host-ca[=PATH]`` / ``MSB_HOST_CA`` (the operator's, for every
sandbox), checked at start; the manager mounts it read-only and sets the variables."""

from __future__ import annotations

from pathlib import Path

import pytest

from engine.errors import ConfigError
from engine.sandbox.engine import Engine
from engine.sandbox.host_ca import GUEST_DIR, GUEST_FILE
from engine.server.manager import SandboxManager
from engine.server.service import SandboxConfig
from engine.server.settings import ServerSettings
from engine.server.tenancy import TenantPolicy
from engine.vm.fake import FakeBackend

PEM = b"-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----\n"


@pytest.fixture
def bundle(tmp_path: Path) -> Path:
    path = tmp_path / "corp.pem"
    path.write_bytes(PEM)
    return path


@pytest.fixture(autouse=True)
def _no_env(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("MSB_HOST_CA", raising=False)


def test_settings_take_the_flag_or_msb_host_ca(tmp_path: Path, bundle: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    assert ServerSettings.from_env(storage=tmp_path).host_ca is None
    assert ServerSettings.from_env(storage=tmp_path, host_ca=bundle).host_ca == bundle
    monkeypatch.setenv("MSB_HOST_CA", str(bundle))
    assert ServerSettings.from_env(storage=tmp_path).host_ca == bundle


def test_a_bad_bundle_fails_at_start(tmp_path: Path) -> None:
    (tmp_path / "key.pem").write_bytes(PEM + b"-----BEGIN PRIVATE KEY-----\n")
    for path in (tmp_path / "missing.pem", tmp_path / "key.pem"):
        with pytest.raises(ConfigError, match="host CA bundle"):
            ServerSettings.from_env(storage=tmp_path, host_ca=path)


def test_server_start_flag_reaches_the_settings(tmp_path: Path, bundle: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from click.testing import CliRunner

    from engine.cli import server as server_cli

    seen: list[ServerSettings] = []
    monkeypatch.setattr("engine.server.main.serve", seen.append)
    monkeypatch.setattr("engine.server.main.read_pid", lambda settings: None)
    monkeypatch.setattr(server_cli, "check_backend", lambda backend: None)
    monkeypatch.setenv("MSB_HOST_CA", str(bundle))
    result = CliRunner().invoke(server_cli.start, ["--dev", "--storage-path", str(tmp_path / "s"), "--host-ca"])
    assert result.exit_code == 0, result.output
    assert [s.host_ca for s in seen] == [bundle]
    bad = CliRunner().invoke(server_cli.start, ["--dev", "--storage-path", str(tmp_path / "s"),
                                                f"--host-ca={tmp_path / 'nope.pem'}"])  # fmt: skip
    assert bad.exit_code != 0 and "host CA bundle" in bad.output and len(seen) == 1


async def test_every_server_sandbox_gets_the_operators_bundle(tmp_path: Path, bundle: Path) -> None:
    rootfs = tmp_path / "rootfs"
    (rootfs / "etc").mkdir(parents=True)
    m = SandboxManager(tmp_path / "state", engine=Engine(backend=FakeBackend(), accel="tcg"),
                       policy=TenantPolicy(allowed_image_dirs=(tmp_path,)), host_ca=bundle)  # fmt: skip
    try:
        await m.start("team", "s1", SandboxConfig(image=str(rootfs), envs=["PIP_CERT=/mine.pem"]))
        spec = m._get("team", "s1").sandbox.spec
        [mount] = spec.volumes
        assert (mount.guest, mount.readonly) == (GUEST_DIR, True)
        assert mount.host.parent == tmp_path / "state" / "host-ca"  # a copy, never the host's own directory
        assert (mount.host / "ca-certificates.crt").read_bytes() == PEM
        assert spec.env["SSL_CERT_FILE"] == spec.env["NODE_EXTRA_CA_CERTS"] == GUEST_FILE
        assert spec.env["PIP_CERT"] == "/mine.pem"
    finally:
        await m.shutdown()
