"""``msb init / add / remove / list`` through click's CliRunner (no VMs)."""

from __future__ import annotations

import json
from pathlib import Path

import click
import pytest
from click.testing import CliRunner, Result

from engine.cli.project import STARTER, register
from engine.project.sandboxfile import Sandboxfile


@click.group()
def cli() -> None:
    """A stand-in for the msb group."""


register(cli)


@pytest.fixture
def project(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.chdir(tmp_path)
    return tmp_path


def msb(*args: str) -> Result:
    return CliRunner().invoke(cli, list(args))


def test_init_writes_starter_and_gitignore(project: Path) -> None:
    r = msb("init")
    assert r.exit_code == 0, r.output
    assert (project / "Sandboxfile").read_text() == STARTER
    assert (project / ".gitignore").read_text() == ".menv/\n"
    assert Sandboxfile.load(project / "Sandboxfile").names() == []
    again = msb("init")
    assert again.exit_code == 1 and "already exists" in again.stderr and "msb: hint:" in again.stderr
    assert (project / "Sandboxfile").read_text() == STARTER


def test_init_appends_to_gitignore_once(project: Path) -> None:
    (project / "sub").mkdir()
    (project / "sub" / ".gitignore").write_text("*.pyc")
    assert msb("init", "sub").exit_code == 0
    assert (project / "sub" / ".gitignore").read_text() == "*.pyc\n.menv/\n"
    (project / "sub" / "Sandboxfile").unlink()
    assert msb("init", "-f", "sub/Sandboxfile").exit_code == 0
    assert (project / "sub" / ".gitignore").read_text() == "*.pyc\n.menv/\n"


def test_add_then_list(project: Path) -> None:
    msb("init")
    (project / "src").mkdir()
    r = msb("add", "api", "--image", "microsandbox/python", "--memory", "1024", "-p", "8000:8000",
            "-v", "./src:/app", "--env", "DEBUG=1", "--start", "python3 -m http.server",
            "--script", "test=pytest -q", "--scope", "none")  # fmt: skip
    assert r.exit_code == 0, r.output
    assert "added sandbox 'api'" in r.stdout
    assert msb("add", "db", "--image", "busybox").exit_code == 0
    assert msb("add", "web", "--image", "busybox", "--depends-on", "api", "--depends-on", "db").exit_code == 0
    out = msb("list")
    assert out.exit_code == 0
    header = ["NAME", "IMAGE", "MEMORY", "CPUS", "PORTS", "SCRIPTS", "DEPENDS", "ON"]
    assert out.stdout.splitlines()[0].split() == header
    assert "api   microsandbox/python  1024    1     8000:8000  test,start  -\n" in out.stdout
    data = json.loads(msb("list", "--json").stdout)
    assert data["file"] == str(project / "Sandboxfile")
    api = data["sandboxes"][0]
    assert api["name"] == "api" and api["memory"] == 1024 and api["scope"] == "none"
    assert api["volumes"] == ["./src:/app"]
    assert [s["name"] for s in data["sandboxes"]] == ["api", "db", "web"]
    assert data["sandboxes"][2]["depends_on"] == ["api", "db"]


def test_add_updates_keeping_comments(project: Path) -> None:
    original = ("# top\nsandboxes:\n  api:\n    image: busybox   # the image\n    memory: 256  # small\n"
                "    x-owner: me\n    scripts:\n      start: echo hi   # greet\n\n"
                "  # other\n  db:\n    image: y\n")  # fmt: skip
    (project / "Sandboxfile").write_text(original)
    r = msb("add", "api", "--memory", "512", "--script", "test=true")
    assert r.exit_code == 0, r.output
    assert "updated sandbox 'api'" in r.stdout
    text = (project / "Sandboxfile").read_text()
    assert text == original.replace("memory: 256", "memory: 512").replace(
        "start: echo hi   # greet\n", "start: echo hi   # greet\n      test: 'true'\n")
    r = msb("add", "api", "--script", "test=")  # deletes the script again
    assert r.exit_code == 0
    assert (project / "Sandboxfile").read_text() == original.replace("memory: 256", "memory: 512")


def test_add_errors_exit_2(project: Path) -> None:
    msb("init")
    before = (project / "Sandboxfile").read_text()
    cases = [
        (["add", "api"], "needs an image"),
        (["add", "api", "--image", "x", "-p", "99999:1"], "ports[0]"),
        (["add", "api", "--image", "x", "--env", "NOEQ"], "envs[0]"),
        (["add", "api", "--image", "x", "--depends-on", "ghost"], "'ghost', which this file does not define"),
        (["add", "api", "--image", "x", "--depends-on", "api"], "dependency cycle: api → api"),
        (["add", "a/b", "--image", "x"], "not valid"),
        (["add", "api", "--image", "x", "--script", "noequals"], "NAME=COMMAND"),
        (["add", "api", "--image", "x", "--memory", "lots"], "not a valid integer"),
        (["add", "api", "--image", "x", "--scope", "galaxy"], "galaxy"),
    ]
    for args, message in cases:
        r = msb(*args)
        assert r.exit_code == 2, (args, r.output)
        assert message in r.stderr, (args, r.stderr)
    assert (project / "Sandboxfile").read_text() == before


def test_add_cycle_between_two(project: Path) -> None:
    msb("init")
    assert msb("add", "a", "--image", "x").exit_code == 0
    assert msb("add", "b", "--image", "x", "--depends-on", "a").exit_code == 0
    r = msb("add", "a", "--depends-on", "b")
    assert r.exit_code == 2 and "dependency cycle: a → b → a" in r.stderr


def test_remove(project: Path) -> None:
    original = "# keep\nsandboxes:\n  a:\n    image: x\n  b:\n    image: y\n    depends_on: [a]\nmeta: 1  # m\n"
    (project / "Sandboxfile").write_text(original)
    r = msb("remove", "a")
    assert r.exit_code == 1 and "b depends on 'a'" in r.stderr
    r = msb("remove", "ghost")
    assert r.exit_code == 2 and "defines no sandbox 'ghost' (defined: a, b)" in r.stderr
    assert msb("remove", "b").exit_code == 0
    assert (project / "Sandboxfile").read_text() == "# keep\nsandboxes:\n  a:\n    image: x\nmeta: 1  # m\n"


def test_remove_works_on_a_file_with_another_bad_entry(project: Path) -> None:
    (project / "Sandboxfile").write_text("sandboxes:\n  bad:\n    image: x\n    memory: lots\n  ok:\n    image: y\n")
    assert msb("list").exit_code == 2
    assert msb("remove", "bad").exit_code == 0
    assert msb("list").exit_code == 0


def test_bad_sandboxfile_message(project: Path) -> None:
    (project / "Sandboxfile").write_text('sandboxes:\n  api:\n    image: x\n\n    memory: "lots"\n')
    r = msb("list")
    assert r.exit_code == 2
    assert r.stderr.splitlines()[0] == (
        "msb: error: Sandboxfile:5:13: sandboxes.api.memory must be an integer number of MiB (got 'lots')"
    )
    assert r.stderr.splitlines()[1].startswith("msb: hint: ")


def test_file_found_upwards_and_with_f(project: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    msb("init")
    msb("add", "a", "--image", "x")
    (project / "deep" / "er").mkdir(parents=True)
    monkeypatch.chdir(project / "deep" / "er")
    assert "a" in msb("list").stdout
    monkeypatch.chdir(project.parent)
    assert msb("list").exit_code == 2
    assert "a" in msb("list", "-f", str(project / "Sandboxfile")).stdout
    assert "a" in msb("list", "-f", str(project)).stdout  # a directory holding one


def test_no_sandboxfile(project: Path) -> None:
    r = msb("add", "a", "--image", "x")
    assert r.exit_code == 2 and "no Sandboxfile" in r.stderr and "msb init" in r.stderr


def test_list_empty(project: Path) -> None:
    msb("init")
    assert "no sandboxes in Sandboxfile" in msb("list").stdout
    assert json.loads(msb("list", "--json").stdout)["sandboxes"] == []


def test_help_on_every_verb() -> None:
    for verb in ("init", "add", "remove", "list"):
        r = msb(verb, "--help")
        assert r.exit_code == 0 and "-f, --file PATH" in r.stdout


def test_add_backend(project: Path) -> None:
    msb("init")
    assert msb("add", "api", "--image", "busybox", "--backend", "gvisor").exit_code == 0
    assert "    backend: gvisor\n" in (project / "Sandboxfile").read_text()
    assert msb("add", "api", "--memory", "256").exit_code == 0  # other options keep it
    entry = Sandboxfile.load(project / "Sandboxfile").get("api")
    assert entry is not None and entry.backend == "gvisor" and entry.memory == 256
    bad = msb("add", "api", "--backend", "docker")
    assert bad.exit_code == 2 and "'docker' is not one of" in bad.output
    listed = json.loads(msb("list", "--json").output)["sandboxes"]
    assert listed[0]["backend"] == "gvisor"
