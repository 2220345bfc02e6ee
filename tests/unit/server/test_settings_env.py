"""The ``MSB_*`` variables of the guide's table (``MSB_HOST``, ``MSB_PORT``, ``MSB_API_KEY``,
``MSB_STORAGE_PATH``, ``MSB_LOG_LEVEL``, ``MSB_DEV_MODE``) reach the server's settings; flags
win; malformed values are :class:`ConfigError` with a hint, never a traceback."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from engine.errors import ConfigError
from engine.server.settings import ServerSettings

GUIDE_VARS = ("MSB_HOST", "MSB_PORT", "MSB_API_KEY", "MSB_STORAGE_PATH", "MSB_LOG_LEVEL", "MSB_DEV_MODE",
              "MSB_SERVER_KEY", "MSB_ALLOW_PUBLIC_PORTS", "MSB_TENANT_REGISTRY_CREDENTIALS")  # fmt: skip
STATIC = "operator-chosen-static-key-0123"


@pytest.fixture(autouse=True)
def clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for var in GUIDE_VARS:
        monkeypatch.delenv(var, raising=False)


def test_each_guide_variable_is_read(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    for var, value in (("MSB_HOST", "127.0.0.2"), ("MSB_PORT", "8080"), ("MSB_API_KEY", STATIC),
                       ("MSB_STORAGE_PATH", str(tmp_path)), ("MSB_LOG_LEVEL", "DEBUG"), ("MSB_DEV_MODE", "true")):
        monkeypatch.setenv(var, value)
    monkeypatch.delenv("MSB_API_KEY")  # --dev with a static key is refused at start, not here; keep it apart
    s = ServerSettings.from_env()
    assert (s.host, s.port, s.storage, s.log_level, s.dev) == ("127.0.0.2", 8080, tmp_path, "debug", True)
    monkeypatch.setenv("MSB_API_KEY", STATIC)
    monkeypatch.delenv("MSB_DEV_MODE")
    assert ServerSettings.from_env().api_key == STATIC


def test_flags_win_over_the_variables(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("MSB_PORT", "8080")
    monkeypatch.setenv("MSB_API_KEY", STATIC)
    monkeypatch.setenv("MSB_STORAGE_PATH", "/nonexistent/env")
    monkeypatch.setenv("MSB_LOG_LEVEL", "debug")
    s = ServerSettings.from_env(port=9000, api_key="flag-static-key-0123456", storage=tmp_path, log_level="error")
    assert (s.port, s.api_key, s.storage, s.log_level) == (9000, "flag-static-key-0123456", tmp_path, "error")


@pytest.mark.parametrize("value", ["1", "true", "TRUE", "yes", "on"])
def test_dev_mode_true(monkeypatch: pytest.MonkeyPatch, value: str) -> None:
    monkeypatch.setenv("MSB_DEV_MODE", value)
    assert ServerSettings.from_env().dev is True


@pytest.mark.parametrize("value", ["", "0", "false", "No", "off"])
def test_dev_mode_false(monkeypatch: pytest.MonkeyPatch, value: str) -> None:
    monkeypatch.setenv("MSB_DEV_MODE", value)
    assert ServerSettings.from_env().dev is False


def test_dev_mode_is_still_refused_off_loopback(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MSB_DEV_MODE", "1")
    monkeypatch.setenv("MSB_HOST", "0.0.0.0")
    with pytest.raises(ConfigError, match="dev"):
        ServerSettings.from_env()


@pytest.mark.parametrize(("var", "value", "fragment"), [
    ("MSB_DEV_MODE", "maybe", "MSB_DEV_MODE='maybe' is neither true nor false"),
    ("MSB_PORT", "http", "MSB_PORT='http' is not a whole number"),
    ("MSB_PORT", "70000", "bad server setting port"),
    ("MSB_LOG_LEVEL", "verbose", "log level 'verbose' is not one of debug, info, warning, error, critical"),
    ("MSB_ALLOW_PUBLIC_PORTS", "sure", "neither true nor false"),
])  # fmt: skip
def test_malformed_variables_are_config_errors(monkeypatch: pytest.MonkeyPatch, var: str, value: str,
                                               fragment: str) -> None:  # fmt: skip
    monkeypatch.setenv(var, value)
    with pytest.raises(ConfigError) as err:
        ServerSettings.from_env()
    assert fragment in err.value.message and err.value.hint


@pytest.mark.parametrize("var", ["MSB_ALLOW_PUBLIC_PORTS", "MSB_TENANT_REGISTRY_CREDENTIALS"])
def test_false_means_false_for_tenant_switches(monkeypatch: pytest.MonkeyPatch, var: str) -> None:
    """``=false`` used to turn these operator switches ON (anything but ``0`` did)."""
    monkeypatch.setenv(var, "false")
    s = ServerSettings.from_env()
    assert not s.allow_public_ports and not s.tenant_registry_credentials
    monkeypatch.setenv(var, "1")
    s = ServerSettings.from_env()
    assert s.allow_public_ports or s.tenant_registry_credentials


def test_a_client_msb_key_in_msb_api_key_is_not_a_static_key(monkeypatch: pytest.MonkeyPatch) -> None:
    """Shells export the CLIENT key as MSB_API_KEY (the README does); a signed msb_ key there
    must not become a static key of a server started from that shell."""
    monkeypatch.setenv("MSB_API_KEY", "msb_eyJhbGciOiJIUzI1NiJ9.e30.c2ln")
    assert ServerSettings.from_env().api_key is None
    assert ServerSettings.from_env(api_key="flag-static-key-0123456").api_key == "flag-static-key-0123456"


def test_keys_are_not_in_the_repr() -> None:
    s = ServerSettings(key="server-secret-0123456789", api_key=STATIC)
    assert "server-secret" not in repr(s) and STATIC not in repr(s) and STATIC not in str(s)
    assert os.environ.get("MSB_API_KEY") is None
