"""``msb server start --pool IMAGE[=N] --pool-max-mib N``: what reaches the server's settings,
and bad values as usage errors. Nothing is served."""

from __future__ import annotations

from pathlib import Path

import pytest
from click.testing import CliRunner

from engine.cli import server as server_cli
from engine.cli.common import EXIT_USAGE
from engine.server import main
from engine.server.settings import ServerSettings


@pytest.fixture
def served(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> list[ServerSettings]:
    """The settings ``serve`` would run with (it runs nothing here)."""
    got: list[ServerSettings] = []
    monkeypatch.setenv("MSB_STORAGE_PATH", str(tmp_path))
    monkeypatch.delenv("MSB_POOL", raising=False)
    monkeypatch.delenv("MSB_POOL_MAX_MIB", raising=False)
    monkeypatch.setattr(main, "serve", got.append)
    monkeypatch.setattr(main, "read_pid", lambda settings: None)
    monkeypatch.setattr(server_cli, "check_backend", lambda backend: None)
    return got


def test_pool_flags_reach_the_settings(served: list[ServerSettings]) -> None:
    r = CliRunner().invoke(server_cli.server, ["start", "--dev", "--pool", "microsandbox/python=2", "--pool",
                                               "microsandbox/node", "--pool-max-mib", "2048"])  # fmt: skip
    assert r.exit_code == 0, r.output
    [s] = served
    assert [(p.image, p.size) for p in s.pools] == [("microsandbox/python", 2), ("microsandbox/node", 1)]
    assert s.pool_max_mib == 2048


def test_msb_pool_is_used_without_the_flag(served: list[ServerSettings], monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MSB_POOL", "microsandbox/python=3")
    assert CliRunner().invoke(server_cli.server, ["start", "--dev"]).exit_code == 0
    assert [(p.image, p.size) for p in served[0].pools] == [("microsandbox/python", 3)]


@pytest.mark.parametrize("args", [["--pool", "microsandbox/python=many"], ["--pool-max-mib", "0"]])
def test_bad_pool_flags_are_usage_errors(served: list[ServerSettings], args: list[str]) -> None:
    r = CliRunner().invoke(server_cli.server, ["start", "--dev", *args])
    assert r.exit_code == EXIT_USAGE and not served
    assert "microsandbox/python=many" in r.output or "--pool-max-mib" in r.output


def test_a_bad_msb_pool_is_a_usage_error_for_every_verb(served: list[ServerSettings],
                                                        monkeypatch: pytest.MonkeyPatch) -> None:  # fmt: skip
    monkeypatch.setenv("MSB_POOL", "a=b")
    for verb in (["start", "--dev"], ["status"]):
        r = CliRunner().invoke(server_cli.server, verb)
        assert r.exit_code == EXIT_USAGE and "msb: error: pool 'a=b' is not IMAGE[=N]" in r.stderr
