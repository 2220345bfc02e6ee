"""A CLI project's `.menv/` holds what msb trusts (persistent layers, run state, control
sockets): no sandbox may write it, and no symlink there sends host files anywhere else."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from engine.errors import ConfigError, MsbError
from engine.project.runtime import make_private_dirs
from engine.project.schema import SandboxEntry
from engine.project.specs import spec_overrides


@pytest.mark.parametrize("volume", [".:/app", "./:/app:rw", "..:/up"])
def test_a_writable_volume_over_menv_is_refused(tmp_path: Path, volume: str) -> None:
    project = tmp_path / "p"
    (project / ".menv").mkdir(parents=True)
    with pytest.raises(ConfigError, match=r"\.menv"):
        spec_overrides(SandboxEntry(image="x", volumes=[volume]), project)


def test_the_same_directory_by_its_absolute_path_is_refused_too(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"\.menv"):
        spec_overrides(SandboxEntry(image="x", volumes=[f"{tmp_path}:/app"]), tmp_path)


def test_a_guest_made_symlink_in_the_project_is_never_a_volume(tmp_path: Path) -> None:
    """A sandbox with ./work mounted read-write plants work/etc -> /etc; another sandbox's
    volume ./work/etc must not become the host's /etc."""
    (tmp_path / "work").mkdir()
    (tmp_path / "work" / "etc").symlink_to("/etc")
    with pytest.raises(ConfigError, match="symlink"):
        spec_overrides(SandboxEntry(image="x", volumes=["./work/etc:/e"]), tmp_path)


def test_a_symlink_in_menv_is_never_followed(tmp_path: Path) -> None:
    """The issue's attack on the project layout: .menv/sandboxes/b -> a host directory."""
    target = tmp_path / "host-dir"
    target.mkdir()
    (tmp_path / ".menv" / "sandboxes").mkdir(parents=True)
    (tmp_path / ".menv" / "sandboxes" / "b").symlink_to(target)
    with pytest.raises(MsbError, match="symlink"):
        make_private_dirs(tmp_path, ".menv/sandboxes/b")
    assert list(target.iterdir()) == []
    made = make_private_dirs(tmp_path, ".menv/sandboxes/c")
    assert made.is_dir() and not made.is_symlink() and (os.stat(made).st_mode & 0o777) == 0o700


def test_msb_exe_in_a_project_cannot_hand_its_menv_to_a_guest(tmp_path: Path) -> None:
    from engine.project.specs import parse_volume, refuse_writable_state

    (tmp_path / ".menv").mkdir()
    mount = parse_volume(".:/work", tmp_path)
    with pytest.raises(ConfigError, match=r"\.menv"):
        refuse_writable_state([mount], [".:/work"])
    refuse_writable_state([parse_volume(".:/work:ro", tmp_path)], [".:/work:ro"])
