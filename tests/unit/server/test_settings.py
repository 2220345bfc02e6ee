"""Server settings: warm pools from ``--pool`` / ``MSB_POOL`` and their memory bound."""

from __future__ import annotations

import pytest

from engine.errors import ConfigError
from engine.server.settings import PoolSetting, ServerSettings, parse_pools


def test_parse_pools() -> None:
    got = parse_pools(["microsandbox/python=2", "microsandbox/node", " /srv/rootfs = 3 ", "python:3.12@sha256:ab=1"])
    assert [(p.image, p.size) for p in got] == [("microsandbox/python", 2), ("microsandbox/node", 1),
                                                ("/srv/rootfs", 3), ("python:3.12@sha256:ab", 1)]  # fmt: skip
    assert parse_pools(["a=1", "a=4"]) == [PoolSetting(image="a", size=4)]  # the later one wins
    assert parse_pools(["a=0"]) == [PoolSetting(image="a", size=0)]


@pytest.mark.parametrize("bad", ["", "=2", "a=", "a=x", "a=-1", "a=65", "a=1.5"])
def test_bad_pools_are_refused(bad: str) -> None:
    with pytest.raises(ConfigError, match="IMAGE\\[=N\\]") as err:
        parse_pools([bad])
    assert err.value.hint and "--pool" in err.value.hint


def test_pools_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MSB_POOL", "microsandbox/python=2, microsandbox/node,")
    monkeypatch.setenv("MSB_POOL_MAX_MIB", "4096")
    s = ServerSettings.from_env()
    assert [(p.image, p.size) for p in s.pools] == [("microsandbox/python", 2), ("microsandbox/node", 1)]
    assert s.pool_max_mib == 4096
    flags = ServerSettings.from_env(pools=[PoolSetting(image="x")], pool_max_mib=512.0)
    assert [p.image for p in flags.pools] == ["x"] and flags.pool_max_mib == 512  # flags replace the env


def test_no_pools_by_default(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("MSB_POOL", raising=False)
    monkeypatch.delenv("MSB_POOL_MAX_MIB", raising=False)
    s = ServerSettings.from_env()
    assert s.pools == [] and s.pool_max_mib is None
    assert ServerSettings.model_validate_json(s.model_dump_json()) == s  # `--detach` passes them as JSON


@pytest.mark.parametrize(("var", "value"), [("MSB_POOL", "a=x"), ("MSB_POOL_MAX_MIB", "lots"),
                                            ("MSB_POOL_MAX_MIB", "0")])  # fmt: skip
def test_bad_environment_is_a_config_error(monkeypatch: pytest.MonkeyPatch, var: str, value: str) -> None:
    monkeypatch.setenv(var, value)
    with pytest.raises(ConfigError, match=var.removeprefix("MSB_") if var != "MSB_POOL" else "pool"):
        ServerSettings.from_env()
