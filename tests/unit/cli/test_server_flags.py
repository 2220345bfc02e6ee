"""``msb server start`` as the guide types it: ``--api-key``, ``--storage-path``, ``--log-level``
(and ``msb-tui --headless`` with the same), what reaches the settings, and bad keys as usage
errors with the fix. Nothing is served."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
from click.testing import CliRunner

from engine.cli import server as server_cli
from engine.cli.common import EXIT_USAGE
from engine.server import main
from engine.server.auth import load_secret, make_key
from engine.server.settings import ServerSettings
from msb_tui import main as tui_main

STATIC = "msb-operator-static-0123456789"  # the guide's "msb-…" (a hyphen: not a signed msb_ key)


@pytest.fixture
def served(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> list[ServerSettings]:
    """The settings ``serve`` would run with (it runs nothing here)."""
    got: list[ServerSettings] = []
    for var in ("MSB_API_KEY", "MSB_SERVER_KEY", "MSB_LOG_LEVEL", "MSB_DEV_MODE", "MSB_HOST", "MSB_PORT"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("MSB_STORAGE_PATH", str(tmp_path / "env-state"))
    monkeypatch.setattr(main, "serve", got.append)
    monkeypatch.setattr(main, "read_pid", lambda settings: None)
    monkeypatch.setattr(server_cli, "check_backend", lambda backend: None)
    return got


def test_the_guides_production_start(served: list[ServerSettings]) -> None:
    r = CliRunner().invoke(server_cli.server, ["start", "--host", "0.0.0.0", "--port", "8080", "--api-key", STATIC])
    assert r.exit_code == 0, r.output
    [s] = served
    assert (s.host, s.port, s.api_key, s.dev) == ("0.0.0.0", 8080, STATIC, False)


def test_storage_path_and_log_level(served: list[ServerSettings], tmp_path: Path) -> None:
    r = CliRunner().invoke(server_cli.server, ["start", "--storage-path", str(tmp_path / "s"), "--log-level", "DEBUG"])
    assert r.exit_code == 0, r.output
    assert (served[0].storage, served[0].log_level) == (tmp_path / "s", "debug")
    assert CliRunner().invoke(server_cli.server, ["start", "--log-level", "loud"]).exit_code == EXIT_USAGE


def test_msb_api_key_is_the_static_key_unless_it_is_a_client_key(served: list[ServerSettings],
                                                                 monkeypatch: pytest.MonkeyPatch) -> None:  # fmt: skip
    monkeypatch.setenv("MSB_API_KEY", STATIC)
    assert CliRunner().invoke(server_cli.server, ["start"]).exit_code == 0
    monkeypatch.setenv("MSB_API_KEY", make_key("another-server-secret-0123456789"))  # the README's export
    assert CliRunner().invoke(server_cli.server, ["start"]).exit_code == 0
    assert [s.api_key for s in served] == [STATIC, None]


@pytest.mark.parametrize(("args", "fragment"), [
    (["--api-key", "msb-short"], "shorter than 16 characters"),
    (["--dev", "--api-key", STATIC], "--dev turns authentication off"),
    (["--api-key", make_key("another-server-secret-0123456789")], "msb_ key this server does not accept"),
])  # fmt: skip
def test_bad_api_keys_are_usage_errors_with_the_fix(served: list[ServerSettings], args: list[str],
                                                    fragment: str) -> None:  # fmt: skip
    r = CliRunner().invoke(server_cli.server, ["start", *args])
    assert r.exit_code == EXIT_USAGE and not served
    assert fragment in r.stderr and "msb: hint: " in r.stderr


def test_keygen_then_start_with_that_key(served: list[ServerSettings], tmp_path: Path) -> None:
    """The guide: `msb server keygen`, then give the printed key to the server with --api-key."""
    state = tmp_path / "env-state"
    key = CliRunner().invoke(server_cli.server, ["keygen"]).stdout.strip()
    r = CliRunner().invoke(server_cli.server, ["start", "--api-key", key])
    assert r.exit_code == 0, r.output
    assert served[0].api_key == key and load_secret(state, create=False)


def test_tui_headless_takes_the_server_flags(served: list[ServerSettings], monkeypatch: pytest.MonkeyPatch,
                                             tmp_path: Path) -> None:  # fmt: skip
    monkeypatch.setattr(sys, "argv", ["msb-tui", "--headless", "--api-key", STATIC, "--storage-path",
                                      str(tmp_path / "t"), "--log-level", "ERROR", "--port", "8081"])  # fmt: skip
    tui_main.main()
    [s] = served
    assert (s.api_key, s.storage, s.log_level, s.port) == (STATIC, tmp_path / "t", "error", 8081)
