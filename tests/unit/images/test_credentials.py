from __future__ import annotations

import base64
import json
import os
from pathlib import Path

import pytest

from engine.images import credentials
from engine.images.credentials import Credentials


@pytest.fixture(autouse=True)
def _homes(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MSB_STORAGE_PATH", str(tmp_path / "state"))
    monkeypatch.setenv("DOCKER_CONFIG", str(tmp_path / "docker"))


def _docker(tmp_path: Path, auths: dict[str, object]) -> None:
    (tmp_path / "docker").mkdir(exist_ok=True)
    (tmp_path / "docker" / "config.json").write_text(json.dumps({"auths": auths}))


def test_nothing_configured() -> None:
    assert credentials.lookup("ghcr.io") is None


def test_docker_config_inline_auth_and_hub_alias(tmp_path: Path) -> None:
    enc = base64.b64encode(b"alice:s3cret").decode()
    _docker(tmp_path, {"https://index.docker.io/v1/": {"auth": enc}, "ghcr.io": {"auth": enc}})
    hub = credentials.lookup("docker.io")
    assert hub is not None and (hub.username, hub.password) == ("alice", "s3cret")
    assert credentials.lookup("ghcr.io") is not None
    assert credentials.lookup("quay.io") is None
    assert "s3cret" not in repr(hub) and "s3cret" not in str(hub)


def test_msb_login_file_wins_and_is_private(tmp_path: Path) -> None:
    _docker(tmp_path, {"127.0.0.1:5000": {"auth": base64.b64encode(b"old:old").decode()}})
    path = credentials.save("127.0.0.1:5000", Credentials(username="new", password="pw"))
    assert os.stat(path).st_mode & 0o777 == 0o600
    got = credentials.lookup("localhost:5000")  # loopback aliases match
    assert got is not None and got.username == "new"
    assert credentials.forget("127.0.0.1:5000")
    got = credentials.lookup("127.0.0.1:5000")
    assert got is not None and got.username == "old"
    assert not credentials.forget("127.0.0.1:5000")
