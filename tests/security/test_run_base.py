"""The run base of a server (engine/server/reclaim.py) has a predictable name in a shared
directory, and the next start removes what is in it: a local user must not be able to plant a
link or a directory there that makes the server use, or delete, anything else."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from engine.errors import ConfigError
from engine.server.reclaim import lock_state, reclaim, run_base


@pytest.fixture
def runtime(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    d = tmp_path / "runtime"
    d.mkdir()
    monkeypatch.setenv("XDG_RUNTIME_DIR", str(d))
    return d


def _planted_name(state: Path, runtime: Path) -> Path:
    base = run_base(state)  # learn the name, as an attacker can (it is a hash of the state path)
    base.rmdir()
    return base


def test_a_link_at_the_run_base_is_refused(tmp_path: Path, runtime: Path) -> None:
    victim = tmp_path / "victim"
    victim.mkdir(mode=0o700)
    name = _planted_name(tmp_path / "state", runtime)
    name.symlink_to(victim)
    with pytest.raises(ConfigError, match="not a private directory"):
        run_base(tmp_path / "state")


def test_a_directory_open_to_others_is_refused(tmp_path: Path, runtime: Path) -> None:
    name = _planted_name(tmp_path / "state", runtime)
    name.mkdir()
    os.chmod(name, 0o777)
    with pytest.raises(ConfigError, match="not a private directory"):
        run_base(tmp_path / "state")


def test_reclaim_never_follows_a_link_in_the_run_base(tmp_path: Path, runtime: Path) -> None:
    victim = tmp_path / "victim"
    (victim / "sub").mkdir(parents=True)
    (victim / "sub" / "precious").write_text("x")
    base = run_base(tmp_path / "state")
    (base / "msb-x-link").symlink_to(victim)
    (base / "msb-y-dir").mkdir()
    (base / "msb-y-dir" / "sub").symlink_to(victim / "sub")
    done = reclaim(base)
    assert (victim / "sub" / "precious").read_text() == "x"
    assert done.run_dirs == [str(base / "msb-y-dir")] and not (base / "msb-y-dir").exists()


def test_a_second_server_of_the_same_state_is_refused(tmp_path: Path) -> None:
    fd = lock_state(tmp_path)
    try:
        with pytest.raises(ConfigError, match="another server runs"):
            lock_state(tmp_path)
    finally:
        os.close(fd)
    os.close(lock_state(tmp_path))  # free again once the first is gone
