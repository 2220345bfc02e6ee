"""``msb exe``: the image as the IMAGE argument (``msb exe IMAGE -- cmd``) or as the guide types it,
``msb exe --image IMAGE [-- cmd]``; both at once is a usage error. Nothing boots here."""

from __future__ import annotations

from typing import Any

import pytest
from click.testing import CliRunner

from engine.cli import exe as exe_cli
from engine.cli.common import EXIT_USAGE


@pytest.fixture
def ran(monkeypatch: pytest.MonkeyPatch) -> list[tuple[str, list[str]]]:
    """(image, argv) of each sandbox ``msb exe`` would boot."""
    got: list[tuple[str, list[str]]] = []

    async def fake_exe(image: str, argv: list[str], *_: Any) -> int:
        got.append((image, argv))
        return 0

    monkeypatch.setattr(exe_cli, "_exe", fake_exe)
    monkeypatch.setattr(exe_cli, "check_backend", lambda backend: None)
    return got


@pytest.mark.parametrize(("args", "image", "argv"), [
    (["--image", "microsandbox/python"], "microsandbox/python", []),
    (["--image", "microsandbox/python", "--", "python", "-c", "print(1+1)"], "microsandbox/python",
     ["python", "-c", "print(1+1)"]),
    (["--cpus", "2", "--image=busybox", "--", "ls", "-la"], "busybox", ["ls", "-la"]),
    (["busybox", "--", "ls", "-la"], "busybox", ["ls", "-la"]),
    (["busybox", "ls", "-la"], "busybox", ["ls", "-la"]),
    (["busybox", "--", "--", "x"], "busybox", ["x"]),
    (["busybox"], "busybox", []),
])  # fmt: skip
def test_image_as_argument_or_option(ran: list[tuple[str, list[str]]], args: list[str], image: str,
                                     argv: list[str]) -> None:  # fmt: skip
    r = CliRunner().invoke(exe_cli.exe, args)
    assert r.exit_code == 0, r.output
    assert ran == [(image, argv)]


@pytest.mark.parametrize("args", [["--image", "busybox", "alpine"], ["--image", "busybox", "alpine", "--", "ls"],
                                  ["--image", "busybox", "ls", "-la"]])  # fmt: skip
def test_both_image_forms_are_a_usage_error(ran: list[tuple[str, list[str]]], args: list[str]) -> None:
    r = CliRunner().invoke(exe_cli.exe, args)
    assert r.exit_code == EXIT_USAGE and not ran
    assert "the image is given twice: --image busybox" in r.output
    assert "msb exe --image busybox -- " in r.output  # the fix, spelled out


def test_no_image_is_a_usage_error(ran: list[tuple[str, list[str]]]) -> None:
    r = CliRunner().invoke(exe_cli.exe, [])
    assert r.exit_code == EXIT_USAGE and not ran
    assert "Missing argument 'IMAGE' (or --image IMAGE)" in r.output


def test_image_option_needs_a_value(ran: list[tuple[str, list[str]]]) -> None:
    r = CliRunner().invoke(exe_cli.exe, ["--image"])
    assert r.exit_code == EXIT_USAGE and not ran
    assert "'--image' requires an argument" in r.output
