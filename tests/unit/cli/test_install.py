"""``msb install / uninstall``: launchers in a temporary bin dir, image resolution faked."""

from __future__ import annotations

import os
import stat
import subprocess
from pathlib import Path

import click
import pytest
from click.testing import CliRunner, Result

from engine.cli import install as install_mod
from engine.cli.install import MARKER, default_alias, launcher_image, register
from engine.errors import ConfigError, ImageError


@click.group()
def cli() -> None:
    """A stand-in for the msb group."""


register(cli)


@pytest.fixture
def bin_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """An empty PATH holding only a fake `msb` dir and a dir with a `ls` command."""
    fetched: list[str] = []
    monkeypatch.setattr(install_mod, "fetch_image", lambda image: fetched.append(image) or image)
    fake_msb = tmp_path / "venv" / "msb"
    fake_msb.parent.mkdir()
    fake_msb.write_text('#!/bin/sh\necho "msb $*"\nexit 7\n')
    fake_msb.chmod(0o755)
    monkeypatch.setattr(install_mod, "msb_executable", lambda: fake_msb)
    system = tmp_path / "system"
    system.mkdir()
    (system / "ls").write_text("#!/bin/sh\n")
    (system / "ls").chmod(0o755)
    monkeypatch.setenv("PATH", str(system))
    d = tmp_path / "bin"
    return d


def msb(*args: str) -> Result:
    return CliRunner().invoke(cli, list(args))


@pytest.mark.parametrize(
    ("image", "alias"),
    [("microsandbox/python", "python"), ("python:3.11", "python"), ("localhost:5000/tools/jq:1.7", "jq"),
     ("ghcr.io/o/app@sha256:" + "a" * 64, "app"), ("./rootfs/", "rootfs"), ("busybox", "busybox")],
)  # fmt: skip
def test_default_alias(image: str, alias: str) -> None:
    assert default_alias(image) == alias


def test_install_writes_a_working_launcher(bin_dir: Path) -> None:
    r = msb("install", "microsandbox/python", "--bin-dir", str(bin_dir))
    assert r.exit_code == 0, r.output
    launcher = bin_dir / "python"
    assert stat.S_IMODE(launcher.stat().st_mode) == 0o755
    text = launcher.read_text()
    assert text.splitlines()[1] == f"{MARKER}microsandbox/python"
    assert "exe --quiet --with-entrypoint microsandbox/python -- \"$@\"" in text
    assert launcher_image(launcher) == "microsandbox/python"
    assert f"installed python → {launcher}" in r.stdout
    assert "is not on your PATH" in r.stderr
    # the launcher passes arguments (spaces kept) and the exit code through
    done = subprocess.run([str(launcher), "-c", "print(1 + 1)"], capture_output=True, text=True, check=False)
    assert done.returncode == 7
    assert done.stdout == "msb exe --quiet --with-entrypoint microsandbox/python -- -c print(1 + 1)\n"


def test_install_alias_and_path_note(bin_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}{os.environ['PATH']}")
    r = msb("install", "busybox", "bb", "--bin-dir", str(bin_dir))
    assert r.exit_code == 0 and (bin_dir / "bb").exists()
    assert "not on your PATH" not in r.stderr
    again = msb("install", "busybox", "bb", "--bin-dir", str(bin_dir))  # same image: fine
    assert again.exit_code == 0


def test_install_refuses_to_shadow_a_command(bin_dir: Path) -> None:
    r = msb("install", "someimage", "ls", "--bin-dir", str(bin_dir))
    assert r.exit_code == 1
    assert "'ls' is already a command on your PATH" in r.stderr and "--force" in r.stderr
    assert not (bin_dir / "ls").exists()
    forced = msb("install", "someimage", "ls", "--bin-dir", str(bin_dir), "--force")
    assert forced.exit_code == 0 and launcher_image(bin_dir / "ls") == "someimage"


def test_install_refuses_to_overwrite_a_file(bin_dir: Path) -> None:
    bin_dir.mkdir()
    (bin_dir / "tool").write_text("#!/bin/sh\necho mine\n")
    r = msb("install", "org/tool", "--bin-dir", str(bin_dir))
    assert r.exit_code == 1 and "a file msb did not make" in r.stderr
    assert (bin_dir / "tool").read_text() == "#!/bin/sh\necho mine\n"
    assert msb("install", "busybox", "tool2", "--bin-dir", str(bin_dir)).exit_code == 0
    other = msb("install", "alpine", "tool2", "--bin-dir", str(bin_dir))
    assert other.exit_code == 1 and "an msb launcher for busybox" in other.stderr
    assert msb("install", "alpine", "tool2", "--bin-dir", str(bin_dir), "--force").exit_code == 0
    assert launcher_image(bin_dir / "tool2") == "alpine"


def test_install_image_failures(bin_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def bad_ref(image: str) -> str:
        raise ConfigError(f"bad tag in {image!r}", hint="fix it")

    def no_image(image: str) -> str:
        raise ImageError(f"{image} not found in the registry", hint="check the name")

    monkeypatch.setattr(install_mod, "fetch_image", bad_ref)
    r = msb("install", "x:@@", "x", "--bin-dir", str(bin_dir))
    assert r.exit_code == 2 and "msb: hint: fix it" in r.stderr
    monkeypatch.setattr(install_mod, "fetch_image", no_image)
    r = msb("install", "nope/nope", "--bin-dir", str(bin_dir))
    assert r.exit_code == 125 and "not found in the registry" in r.stderr
    assert not (bin_dir / "nope").exists()
    r = msb("install", ".", "--bin-dir", str(bin_dir))
    assert r.exit_code == 2 and "not a usable command name" in r.stderr


def test_uninstall(bin_dir: Path) -> None:
    assert msb("install", "busybox", "--bin-dir", str(bin_dir)).exit_code == 0
    r = msb("uninstall", "busybox", "--bin-dir", str(bin_dir))
    assert r.exit_code == 0 and "removed busybox (busybox)" in r.stdout
    assert not (bin_dir / "busybox").exists()
    gone = msb("uninstall", "busybox", "--bin-dir", str(bin_dir))
    assert gone.exit_code == 1 and "no launcher 'busybox'" in gone.stderr


def test_uninstall_refuses_other_files(bin_dir: Path) -> None:
    bin_dir.mkdir()
    mine = bin_dir / "mine"
    mine.write_text("#!/bin/sh\n# not msb\n")
    r = msb("uninstall", "mine", "--bin-dir", str(bin_dir))
    assert r.exit_code == 1 and "is not an msb launcher" in r.stderr and mine.exists()
    (bin_dir / "link").symlink_to(mine)
    assert msb("uninstall", "link", "--bin-dir", str(bin_dir)).exit_code == 1
    assert msb("uninstall", "../bin/mine", "--bin-dir", str(bin_dir)).exit_code == 1
    assert mine.exists()


def test_msb_executable_is_absolute() -> None:
    assert install_mod.msb_executable().is_absolute()


def test_fetch_image_directory(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "rootfs").mkdir()
    monkeypatch.chdir(tmp_path)
    assert install_mod.fetch_image("./rootfs") == str(tmp_path / "rootfs")
    with pytest.raises(ConfigError, match="does not exist"):
        install_mod.fetch_image("./missing")
