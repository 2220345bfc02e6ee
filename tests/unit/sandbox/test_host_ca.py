"""engine.sandbox.host_ca: the bundle is checked, staged alone in a content-addressed directory,
mounted read-only and named by the usual variables."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from engine.errors import ConfigError
from engine.sandbox.host_ca import (
    ENV_VARS,
    GUEST_DIR,
    GUEST_FILE,
    MAX_BUNDLE_BYTES,
    default_bundle,
    host_ca_env,
    stage_bundle,
    with_host_ca,
)
from engine.sandbox.spec import SandboxSpec, VolumeMount

PEM = b"-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----\n"


@pytest.fixture
def bundle(tmp_path: Path) -> Path:
    path = tmp_path / "host" / "ca.crt"
    path.parent.mkdir()
    path.write_bytes(PEM)
    return path


def spec(tmp_path: Path, **kw: object) -> SandboxSpec:
    return SandboxSpec(name="s", rootfs=tmp_path, **kw)  # type: ignore[arg-type]


def test_env_names_the_guest_file_for_every_client() -> None:
    env = host_ca_env()
    assert set(env) == {"SSL_CERT_FILE", "PIP_CERT", "REQUESTS_CA_BUNDLE", "NODE_EXTRA_CA_CERTS", "CURL_CA_BUNDLE"}
    assert set(env.values()) == {GUEST_FILE} and GUEST_FILE.startswith(GUEST_DIR + "/")
    assert set(ENV_VARS) == set(env)


def test_with_host_ca_adds_a_read_only_volume_and_the_env(tmp_path: Path, bundle: Path) -> None:
    base = spec(tmp_path, env={"PIP_CERT": "/mine.pem", "X": "1"})
    got = with_host_ca(base, bundle, tmp_path / "stage")
    [mount] = got.volumes
    assert (mount.guest, mount.readonly) == (GUEST_DIR, True)
    assert sorted(p.name for p in mount.host.iterdir()) == ["ca-certificates.crt"]  # the bundle alone
    assert (mount.host / "ca-certificates.crt").read_bytes() == PEM
    assert oct(mount.host.stat().st_mode & 0o777) == "0o755"
    assert oct((mount.host / "ca-certificates.crt").stat().st_mode & 0o777) == "0o644"
    assert got.env["SSL_CERT_FILE"] == GUEST_FILE and got.env["NODE_EXTRA_CA_CERTS"] == GUEST_FILE
    assert got.env["PIP_CERT"] == "/mine.pem" and got.env["X"] == "1"  # the spec's own values win
    assert base.volumes == ()  # specs are frozen: a new one


def test_staging_is_by_content_and_a_later_host_change_is_a_new_directory(tmp_path: Path, bundle: Path) -> None:
    first = stage_bundle(bundle, tmp_path / "stage")
    assert stage_bundle(bundle, tmp_path / "stage") == first
    bundle.write_bytes(PEM * 2)
    second = stage_bundle(bundle, tmp_path / "stage")
    assert second != first and (first / "ca-certificates.crt").read_bytes() == PEM
    assert not [p for p in (tmp_path / "stage").iterdir() if p.name.startswith(".")]  # no leftovers


def test_a_volume_already_at_the_guest_dir_is_refused(tmp_path: Path, bundle: Path) -> None:
    taken = spec(tmp_path, volumes=(VolumeMount(host=tmp_path, guest=GUEST_DIR),))
    with pytest.raises(ConfigError, match="already mounted"):
        with_host_ca(taken, bundle, tmp_path / "stage")


@pytest.mark.parametrize(("content", "match"), [
    (b"hello", "no PEM certificate"),
    (PEM + b"-----BEGIN PRIVATE KEY-----\nx\n-----END PRIVATE KEY-----\n", "private key"),
    (PEM + b"-----BEGIN RSA PRIVATE KEY-----\n", "private key"),
])  # fmt: skip
def test_bad_bundles_are_refused(tmp_path: Path, content: bytes, match: str) -> None:
    path = tmp_path / "b.pem"
    path.write_bytes(content)
    with pytest.raises(ConfigError, match=match):
        stage_bundle(path, tmp_path / "stage")
    assert not (tmp_path / "stage").exists() or not any((tmp_path / "stage").iterdir())


def test_missing_oversized_and_non_regular_files_are_refused(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="cannot read"):
        stage_bundle(tmp_path / "missing.pem", tmp_path / "stage")
    with pytest.raises(ConfigError, match="not a regular file"):
        stage_bundle(tmp_path, tmp_path / "stage")
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    with pytest.raises(ConfigError, match="not a regular file"):  # and no hang
        stage_bundle(fifo, tmp_path / "stage")
    big = tmp_path / "big.pem"
    big.write_bytes(PEM + b"#" * MAX_BUNDLE_BYTES)
    with pytest.raises(ConfigError, match="over"):
        stage_bundle(big, tmp_path / "stage")


def test_default_bundle_is_msb_host_ca_else_debian(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("MSB_HOST_CA", raising=False)
    assert default_bundle() == Path("/etc/ssl/certs/ca-certificates.crt")
    monkeypatch.setenv("MSB_HOST_CA", "/opt/corp.pem")
    assert default_bundle() == Path("/opt/corp.pem")
