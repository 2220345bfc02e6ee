"""`msb install`: the launcher runs the image as a command, passing arguments, stdin and the
exit code through; `msb uninstall` removes it."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

MSB = [sys.executable, "-m", "engine.cli.main"]


def test_installed_alias_runs_and_returns_the_guest_exit_code(busybox_rootfs: Path, tmp_path: Path) -> None:
    bin_dir = tmp_path / "bin"
    env = {**os.environ, "PATH": f"{bin_dir}:{os.environ['PATH']}"}
    out = subprocess.run([*MSB, "install", "--bin-dir", str(bin_dir), str(busybox_rootfs), "bbx"], env=env,
                         capture_output=True, text=True, timeout=120)  # fmt: skip
    assert out.returncode == 0, out.stderr
    launcher = bin_dir / "bbx"
    assert os.access(launcher, os.X_OK)
    run = subprocess.run(["bbx", "sh", "-c", 'read x; echo "got $x and $1"; exit 5', "sh", "arg one"], env=env,
                         input="piped", capture_output=True, text=True, timeout=120)  # fmt: skip
    assert run.returncode == 5, run.stderr
    assert run.stdout == "got piped and arg one\n"
    again = subprocess.run([*MSB, "install", "--bin-dir", str(bin_dir), str(busybox_rootfs), "ls"], env=env,
                           capture_output=True, text=True, timeout=120)  # fmt: skip
    assert again.returncode != 0 and "ls" in again.stderr  # would shadow /bin/ls
    out = subprocess.run([*MSB, "uninstall", "--bin-dir", str(bin_dir), "bbx"], env=env, capture_output=True,
                         text=True, timeout=60)  # fmt: skip
    assert out.returncode == 0, out.stderr
    assert not launcher.exists()
