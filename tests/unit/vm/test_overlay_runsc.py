"""Host overlay helpers and runsc lookup."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from engine.errors import ConfigError, VmError
from engine.vm import overlay, runsc

MOUNTINFO = """\
22 1 0:21 / / rw,relatime shared:1 - ext4 /dev/sda1 rw
101 22 0:50 / /tmp/msb-a/root rw,relatime - overlay overlay rw,lowerdir=/c/tree,upperdir=/s/a/upper,workdir=/s/a/w
102 22 0:51 / /tmp/msb\\040b/root rw,relatime - overlay overlay rw,lowerdir=/c/tree,upperdir=/s/b/upper,workdir=/s/b/w
103 22 0:52 / /mnt rw - tmpfs tmpfs rw,upperdir=/s/a/upper
"""


def test_overlay_mounts_of_matches_only_overlays_with_that_upper() -> None:
    assert overlay.overlay_mounts_of(Path("/s/a/upper"), MOUNTINFO) == [Path("/tmp/msb-a/root")]
    assert overlay.overlay_mounts_of(Path("/s/b/upper"), MOUNTINFO) == [Path("/tmp/msb b/root")]
    assert overlay.overlay_mounts_of(Path("/s/c/upper"), MOUNTINFO) == []


def test_overlay_refuses_option_separators(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="overlayfs"):
        overlay.mount_overlay(tmp_path / "a,b", tmp_path / "u", tmp_path / "w", tmp_path / "m")


def test_find_runsc_order(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PATH", str(tmp_path / "empty"))
    monkeypatch.delenv("MSB_RUNSC", raising=False)
    with pytest.raises(VmError, match="not installed") as err:
        runsc.find_runsc(tmp_path)
    assert "make setup" in (err.value.hint or "")
    cached = runsc.cached_runsc(tmp_path)
    cached.parent.mkdir(parents=True, exist_ok=True)
    cached.write_text("#!/bin/sh\necho 'runsc version 1.2.3'\n")
    cached.chmod(0o755)
    assert runsc.find_runsc(tmp_path) == str(cached)
    assert runsc.runsc_version(str(cached)) == "1.2.3"
    on_path = tmp_path / "path-bin" / "runsc"
    on_path.parent.mkdir()
    on_path.write_text("#!/bin/sh\n")
    on_path.chmod(0o755)
    monkeypatch.setenv("PATH", str(on_path.parent))
    assert runsc.find_runsc(tmp_path) == str(on_path)
    monkeypatch.setenv("MSB_RUNSC", str(tmp_path / "nope"))
    with pytest.raises(VmError, match="MSB_RUNSC"):
        runsc.find_runsc(tmp_path)


def test_apt_options_are_private_and_signed(tmp_path: Path) -> None:
    opts = runsc._apt_options(tmp_path)
    src = (tmp_path / "sources.list").read_text()
    assert src.startswith(f"deb [signed-by={runsc.KEYRING}] ") and "bookworm-backports main" in src
    assert f"-oDir::State::Lists={tmp_path / 'lists'}" in opts
    assert f"-oDir::Cache::archives={tmp_path / 'archives'}" in opts
    assert all(not o.startswith("-oAcquire::AllowInsecure") for o in opts)
    assert os.path.isdir(tmp_path / "lists" / "partial")
