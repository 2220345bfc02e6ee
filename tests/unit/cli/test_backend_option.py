"""``--backend`` on exe/run/shell/server start: its values, unknown and unusable backends as
``msb: error:``/``msb: hint:`` with the right exit code, the TCG note only on QEMU/TCG, and
the flag reaching the supervisor (over the Sandboxfile's ``backend:``). Fake backends only."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import click
import pytest
from click.testing import CliRunner, Result

from engine.cli import terminal
from engine.cli.common import BACKEND_CHOICES, EXIT_MSB_FAILED, EXIT_USAGE
from engine.cli.exe import exe
from engine.cli.run import register
from engine.cli.server import server
from engine.project import runtime, supervisor
from engine.project.runtime import Project, SandboxDir
from engine.project.sandboxfile import Sandboxfile
from engine.vm import select
from engine.vm.fake import FakeBackend
from engine.vm.select import BACKEND_NAMES, BackendVerdict


@click.group()
def cli() -> None:
    """A stand-in for the msb group."""


register(cli)


def named(name: str, accel: str) -> FakeBackend:
    backend = FakeBackend()
    backend.name = name  # type: ignore[misc]
    backend.fixed_accel = accel  # type: ignore[attr-defined]
    return backend


@pytest.fixture(autouse=True)
def fake_backends(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """qemu (TCG) and gvisor work, krun does not; nothing real is started."""

    async def krun(cache_dir: Path) -> tuple[BackendVerdict, Any]:
        return BackendVerdict(name="krun", usable=False, reason="libkrun not found", isolation="x",
                              hint="install libkrun"), None  # fmt: skip

    monkeypatch.setattr(select, "PROBES", {**select.PROBES, "krun": krun})
    monkeypatch.setattr(select, "FORCED", {"qemu": lambda source: named("qemu", "tcg"),
                                           "gvisor": lambda source: named("gvisor", "none")})  # fmt: skip
    monkeypatch.delenv("MSB_BACKEND", raising=False)
    monkeypatch.setenv("MSB_AGENT", str(tmp_path / "agent"))  # no agent version check
    monkeypatch.setenv("MSB_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.setenv("MSB_STORAGE_PATH", str(tmp_path / "state"))

    async def attach(proc: Any, **_: Any) -> int:
        return (await proc.wait()).exit_code

    monkeypatch.setattr(terminal, "attach", attach)
    monkeypatch.setattr(terminal, "terminal_size", lambda: (24, 80))


def invoke(command: click.Command, *args: str) -> Result:
    return CliRunner().invoke(command, list(args))


def test_the_choices_are_auto_and_the_selectors_names() -> None:
    assert ("auto", *BACKEND_NAMES) == BACKEND_CHOICES


@pytest.mark.parametrize(("backend", "noted"), [("qemu", True), ("gvisor", False)])
def test_exe_notes_tcg_only_on_qemu_tcg(tmp_path: Path, backend: str, noted: bool) -> None:
    r = invoke(exe, "--backend", backend, str(tmp_path), "--", "true")
    assert r.exit_code == 0, r.output
    assert ("not treat TCG as a security boundary" in r.stderr) is noted


def test_exe_with_an_unusable_backend_says_why(tmp_path: Path) -> None:
    r = invoke(exe, "--backend", "krun", str(tmp_path / "not-even-there"), "--", "true")
    assert r.exit_code == EXIT_MSB_FAILED
    assert r.stderr.splitlines() == [
        "msb: error: backend 'krun' was asked for (the request) but does not work here: libkrun not found",
        "msb: hint: install libkrun",
    ]  # before looking at the image: nothing was pulled or built


def test_exe_backend_from_the_environment(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MSB_BACKEND", "qemu")
    assert "not treat TCG" in invoke(exe, str(tmp_path), "--", "true").stderr
    monkeypatch.setenv("MSB_BACKEND", "docker")
    r = invoke(exe, str(tmp_path), "--", "true")
    assert r.exit_code == EXIT_USAGE
    assert "msb: error: unknown backend 'docker' (from MSB_BACKEND)" in r.stderr
    assert "msb: hint: use one of: auto, qemu, gvisor, krun" in r.stderr


@pytest.mark.parametrize(("command", "args"), [(exe, ["IMG"]), (cli, ["run", "box"]), (cli, ["shell", "box"])],
                         ids=["exe", "run", "shell"])
def test_an_unknown_flag_value_is_a_usage_error(command: click.Command, args: list[str]) -> None:
    verb, rest = (args[:1], args[1:]) if command is cli else ([], args)
    r = invoke(command, *verb, "--backend", "docker", *rest)
    assert r.exit_code == EXIT_USAGE and "'docker' is not one of" in r.output


@pytest.mark.parametrize("verb", ["run", "shell"])
def test_run_and_shell_refuse_a_bad_msb_backend_before_starting(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                                verb: str) -> None:  # fmt: skip
    (tmp_path / "Sandboxfile").write_text(f"sandboxes:\n  box:\n    image: {tmp_path}\n")
    monkeypatch.setenv("MSB_BACKEND", "docker")
    r = invoke(cli, verb, "-f", str(tmp_path), "box")
    assert r.exit_code == EXIT_USAGE and "unknown backend 'docker' (from MSB_BACKEND)" in r.stderr
    assert not (tmp_path / ".menv").exists()


def test_server_start_refuses_a_bad_backend(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MSB_BACKEND", "docker")
    r = invoke(server, "start", "--dev")
    assert r.exit_code == EXIT_USAGE and "msb: error: unknown backend 'docker'" in r.stderr
    r = invoke(server, "start", "--dev", "--backend", "krun", "--detach")
    assert r.exit_code == EXIT_MSB_FAILED and "msb: hint: install libkrun" in r.stderr


def test_the_flag_reaches_the_supervisor() -> None:
    project = Project.__new__(Project)
    project.path = Path("/p/Sandboxfile")
    argv = runtime._supervisor_argv(project, "box", None, wait_attach=False, keep_alive=False, backend="gvisor")
    assert argv[-2:] == ["--backend", "gvisor"]
    assert "--backend" not in runtime._supervisor_argv(project, "box", None, wait_attach=False, keep_alive=False)


@pytest.mark.parametrize(("flag", "key", "expected"), [(None, None, None), (None, "qemu", "qemu"),
                                                       ("gvisor", "qemu", "gvisor"), ("auto", "qemu", "auto")])
async def test_supervisor_backend_flag_over_the_sandboxfile(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                            flag: str | None, key: str | None,
                                                            expected: str | None) -> None:  # fmt: skip
    (tmp_path / "root").mkdir()
    line = f"    backend: {key}\n" if key else ""
    (tmp_path / "Sandboxfile").write_text(f"sandboxes:\n  box:\n    image: ./root\n{line}")
    asked: list[str | None] = []

    class Recorder:
        def __init__(self, backend: str | None = None, **_: Any) -> None:
            asked.append(backend)

        async def start(self, spec: Any) -> str:
            return "started"

    import engine.sandbox.engine

    monkeypatch.setattr(engine.sandbox.engine, "Engine", Recorder)
    sdir = SandboxDir(tmp_path / ".menv" / "sandboxes" / "box", "box")
    assert await supervisor._boot(tmp_path / "Sandboxfile", "box", sdir, flag) == "started"  # type: ignore[comparison-overlap]
    assert asked == [expected]
    assert Sandboxfile.load(tmp_path / "Sandboxfile").get("box") is not None
