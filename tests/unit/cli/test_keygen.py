"""``msb server keygen`` signs with the secret the server uses: ``--key``/``MSB_SERVER_KEY``,
``--storage-path``; a server running on that storage records where its secret comes from, and
keygen refuses (exit 2, with the fix) a key that server would reject."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import httpx
import pytest
from click.testing import CliRunner

from engine.cli import server as server_cli
from engine.cli.common import EXIT_USAGE
from engine.server import main
from engine.server.auth import ApiAuthError, load_secret, verify
from engine.server.settings import ServerSettings

KEY = "operator-server-secret-0123456789"


@pytest.fixture
def state(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Path:
    for var in ("MSB_API_KEY", "MSB_SERVER_KEY", "MSB_DEV_MODE", "MSB_HOST", "MSB_PORT"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("MSB_STORAGE_PATH", str(tmp_path / "state"))
    return tmp_path / "state"


def _keygen(*args: str) -> Any:
    return CliRunner().invoke(server_cli.server, ["keygen", "--expire", "1h", *args])


def _running(settings: ServerSettings, port: int = 1) -> None:
    """A pid file as :func:`main.serve` writes it, for a live process (this one)."""
    settings.storage.mkdir(parents=True, exist_ok=True)
    main.pid_file(settings).write_text(f"{os.getpid()}\n127.0.0.1\n{port}\n{main.secret_source(settings)}\n")


def test_started_with_key_then_keygen_with_that_key(state: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    served: list[ServerSettings] = []
    monkeypatch.setattr(main, "serve", served.append)
    monkeypatch.setattr(server_cli, "check_backend", lambda backend: None)
    assert CliRunner().invoke(server_cli.server, ["start", "--key", KEY]).exit_code == 0
    r = _keygen("--key", KEY)
    assert r.exit_code == 0, r.output
    secret = main.secret_for(served[0])
    assert secret == KEY and verify(secret, r.stdout.strip()).namespace == "*"


def test_without_a_server_it_signs_with_the_storage_secret(state: Path, tmp_path: Path) -> None:
    r = _keygen("--namespace", "team")
    assert r.exit_code == 0, r.output
    assert verify(load_secret(state, create=False) or "", r.stdout.strip()).namespace == "team"
    other = tmp_path / "other"
    r = _keygen("--storage-path", str(other))
    assert r.exit_code == 0, r.output
    verify(load_secret(other, create=False) or "", r.stdout.strip())
    with pytest.raises(ApiAuthError, match="signature is invalid"):
        verify(load_secret(state, create=False) or "", r.stdout.strip())


def test_msb_server_key_counts_as_key(state: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MSB_SERVER_KEY", KEY)
    r = _keygen()
    assert r.exit_code == 0 and verify(KEY, r.stdout.strip())


def test_refused_when_the_running_server_was_started_with_key(state: Path) -> None:
    _running(ServerSettings(storage=state, key=KEY))
    r = _keygen()
    assert r.exit_code == EXIT_USAGE and not r.stdout
    assert "msb: hint: this server was started with --key; pass the same --key to keygen" in r.stderr


def test_refused_when_the_running_server_uses_its_key_file(state: Path) -> None:
    _running(ServerSettings(storage=state))
    r = _keygen("--key", KEY)
    assert r.exit_code == EXIT_USAGE and not r.stdout
    assert "signs with" in r.stderr and "drop --key" in r.stderr


@pytest.mark.parametrize(("given", "ok"), [(KEY, True), ("a-different-server-secret-0123456789", False)])
def test_the_running_server_is_asked(state: Path, monkeypatch: pytest.MonkeyPatch, given: str, ok: bool) -> None:
    """Both use --key: only the server can say whether they are the same key (it is not stored)."""
    _running(ServerSettings(storage=state, key=KEY), port=5999)
    asked: list[str] = []

    def server(url: str, *, headers: dict[str, str], **_: Any) -> httpx.Response:
        asked.append(url)
        try:
            verify(KEY, headers["Authorization"].removeprefix("Bearer "))
        except ApiAuthError:
            return httpx.Response(401, json={"error": {"message": "signature is invalid"}})
        return httpx.Response(200, json={"result": {}})

    monkeypatch.setattr(httpx, "post", server)
    r = _keygen("--key", given)
    assert asked == ["http://127.0.0.1:5999/api/v1/rpc"]
    assert (r.exit_code == 0) is ok, r.output
    if not ok:
        assert "rejects keys signed with this secret" in r.stderr and not r.stdout


def test_an_unreachable_server_is_no_answer(state: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    _running(ServerSettings(storage=state, key=KEY), port=5999)

    def down(*_: Any, **__: Any) -> httpx.Response:
        raise httpx.ConnectError("refused")

    monkeypatch.setattr(httpx, "post", down)
    assert _keygen("--key", KEY).exit_code == 0


def test_pid_files_of_older_servers_still_read(state: Path) -> None:
    settings = ServerSettings(storage=state)
    state.mkdir(parents=True)
    main.pid_file(settings).write_text(f"{os.getpid()}\n127.0.0.1\n5555\n")
    assert main.read_pid(settings) == (os.getpid(), "127.0.0.1", 5555)
    assert main.running_secret_source(settings) is None
