"""``host_ca: true`` in a Sandboxfile: a boolean only (a file never names a host path), the
bundle mounted read-only with the variables set for ``msb run``/``up``, ignored by the server."""

from __future__ import annotations

from pathlib import Path

import pytest

from engine.errors import ConfigError
from engine.project.sandboxfile import SandboxEntry, Sandboxfile
from engine.project.specs import spec_overrides
from engine.sandbox.host_ca import GUEST_DIR, GUEST_FILE

PEM = b"-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----\n"


@pytest.fixture
def bundle(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    path = tmp_path / "corp.pem"
    path.write_bytes(PEM)
    monkeypatch.setenv("MSB_HOST_CA", str(path))
    monkeypatch.setenv("MSB_CACHE_DIR", str(tmp_path / "cache"))
    return path


def test_host_ca_true_mounts_the_bundle_and_sets_the_env(tmp_path: Path, bundle: Path) -> None:
    got = spec_overrides(SandboxEntry(image="x", host_ca=True, envs=["CURL_CA_BUNDLE=/own.pem"]), tmp_path)
    [mount] = got["volumes"]
    assert (mount.guest, mount.readonly) == (GUEST_DIR, True)
    assert (mount.host / "ca-certificates.crt").read_bytes() == PEM
    assert got["env"]["SSL_CERT_FILE"] == got["env"]["PIP_CERT"] == GUEST_FILE
    assert got["env"]["CURL_CA_BUNDLE"] == "/own.pem"


def test_host_ca_off_or_on_the_server_adds_nothing(tmp_path: Path, bundle: Path) -> None:
    for entry, confine in ((SandboxEntry(image="x"), False), (SandboxEntry(image="x", host_ca=False), False),
                           (SandboxEntry(image="x", host_ca=True), True)):  # fmt: skip
        got = spec_overrides(entry, tmp_path, confine=confine)
        assert got["volumes"] == () and "SSL_CERT_FILE" not in got["env"]


def test_a_volume_at_the_bundle_dir_clashes(tmp_path: Path, bundle: Path) -> None:
    with pytest.raises(ConfigError, match="clashes with host_ca"):
        spec_overrides(SandboxEntry(image="x", host_ca=True, volumes=[f".:{GUEST_DIR}:ro"]), tmp_path)


@pytest.mark.parametrize("value", ['"/etc/shadow"', "1", "yes please", "[true]"])
def test_host_ca_must_be_a_boolean(tmp_path: Path, value: str) -> None:
    text = f"sandboxes:\n  api:\n    image: x\n    host_ca: {value}\n"
    with pytest.raises(ConfigError, match=r"host_ca.*must be true or false"):
        Sandboxfile.loads(text, tmp_path / "Sandboxfile")


def test_host_ca_true_loads_without_warnings(tmp_path: Path) -> None:
    sf = Sandboxfile.loads("sandboxes:\n  api:\n    image: x\n    host_ca: true\n", tmp_path / "Sandboxfile")
    [entry] = sf.entries().values()
    assert entry.host_ca is True and entry.unknown_keys() == []
