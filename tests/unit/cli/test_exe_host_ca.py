"""``msb exe --host-ca[=PATH]``: a bare flag never takes the IMAGE as its value; ``=PATH`` names the
bundle; after ``--`` it is the command's word. Nothing boots here."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner

from engine.cli import exe as exe_cli
from engine.cli.host_ca import bare_host_ca, host_ca_path


@pytest.fixture
def ran(monkeypatch: pytest.MonkeyPatch) -> list[tuple[str, list[str], Any]]:
    """(image, argv, host CA bundle) of each sandbox ``msb exe`` would boot."""
    got: list[tuple[str, list[str], Any]] = []

    async def fake_exe(image: str, argv: list[str], *rest: Any) -> int:
        got.append((image, argv, rest[-1]))
        return 0

    monkeypatch.setattr(exe_cli, "_exe", fake_exe)
    monkeypatch.setattr(exe_cli, "check_backend", lambda backend: None)
    monkeypatch.delenv("MSB_HOST_CA", raising=False)
    return got


DEBIAN = Path("/etc/ssl/certs/ca-certificates.crt")


@pytest.mark.parametrize(("args", "want"), [
    (["--host-ca", "busybox", "--", "ls"], ("busybox", ["ls"], DEBIAN)),
    (["--host-ca", "--image", "busybox"], ("busybox", [], DEBIAN)),
    (["--host-ca=/opt/corp.pem", "busybox", "ls"], ("busybox", ["ls"], Path("/opt/corp.pem"))),
    (["busybox", "--", "sh", "--host-ca"], ("busybox", ["sh", "--host-ca"], None)),
    (["busybox", "ls"], ("busybox", ["ls"], None)),
])  # fmt: skip
def test_host_ca_option(ran: list[tuple[str, list[str], Any]], args: list[str], want: tuple[Any, ...]) -> None:
    result = CliRunner().invoke(exe_cli.exe, args)
    assert result.exit_code == 0, result.output
    assert ran == [want]


def test_bare_flag_means_msb_host_ca_when_set(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MSB_HOST_CA", "/srv/ca.pem")
    assert host_ca_path("") == Path("/srv/ca.pem") and host_ca_path(None) is None
    assert host_ca_path("~/ca.pem") == Path.home() / "ca.pem"


def test_bare_host_ca_leaves_words_after_dashdash() -> None:
    assert bare_host_ca(["--host-ca", "img", "--", "--host-ca"]) == ["--host-ca=", "img", "--", "--host-ca"]
    assert bare_host_ca(["--host-ca=/x", "img"]) == ["--host-ca=/x", "img"]
