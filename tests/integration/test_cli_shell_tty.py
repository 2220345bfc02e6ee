"""`msb shell` in a real terminal (tmux): a pty in the guest, window resizes forwarded, and
the user's terminal back in cooked mode after the shell exits."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest

pytestmark = pytest.mark.skipif(shutil.which("tmux") is None, reason="tmux is installed by make setup")


def _pane(session: str) -> str:
    return subprocess.run(["tmux", "capture-pane", "-p", "-t", session], capture_output=True, text=True).stdout


def _wait_for(session: str, text: str, timeout: float = 60) -> str:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        screen = _pane(session)
        if text in screen:
            return screen
        time.sleep(0.1)
    raise AssertionError(f"{text!r} did not appear; the pane shows:\n{_pane(session)}")


def test_shell_resize_and_terminal_restored(tmp_path: Path, busybox_rootfs: Path) -> None:
    (tmp_path / "Sandboxfile").write_text(f"sandboxes:\n  box:\n    image: {busybox_rootfs}\n    scope: none\n")
    session = f"msb-test-{uuid.uuid4().hex[:8]}"
    env_path = f"{Path(sys.executable).parent}:{os.environ['PATH']}"
    # exported COLUMNS/LINES (a shell's stale snapshot) must not hide the real size from msb
    shell = f"env PATH={env_path} MSB_QUIET=1 PS1='host$ ' COLUMNS=100 LINES=30 bash --norc"
    subprocess.run(["tmux", "new-session", "-d", "-s", session, "-x", "100", "-y", "30", "-c", str(tmp_path), shell],
                   check=True)  # fmt: skip
    try:
        _wait_for(session, "host$")
        subprocess.run(["tmux", "send-keys", "-t", session, f"{sys.executable} -m engine.cli.main shell box", "Enter"])
        _wait_for(session, "/ #")
        subprocess.run(["tmux", "send-keys", "-t", session, "echo size=$(stty size)", "Enter"])
        _wait_for(session, "size=30 100")
        subprocess.run(["tmux", "resize-window", "-t", session, "-x", "120", "-y", "40"], check=True)
        # the resize reaches msb as SIGWINCH and the guest pty a moment later: ask until it shows
        deadline = time.monotonic() + 30
        while "size=40 120" not in _pane(session) and time.monotonic() < deadline:
            subprocess.run(["tmux", "send-keys", "-t", session, "clear; echo size=$(stty size)", "Enter"])
            time.sleep(0.5)
        _wait_for(session, "size=40 120", timeout=1)
        subprocess.run(["tmux", "send-keys", "-t", session, "exit 4", "Enter"])
        _wait_for(session, "host$")
        subprocess.run(["tmux", "send-keys", "-t", session, "echo rc=$? && stty -a | grep -o -- '-\\?icanon'",
                        "Enter"])  # fmt: skip
        screen = _wait_for(session, "rc=4")
        assert "-icanon" not in screen and "icanon" in screen  # cooked mode again
    finally:
        subprocess.run(["tmux", "kill-session", "-t", session], capture_output=True)
        subprocess.run([sys.executable, "-m", "engine.cli.main", "stop", "box"], cwd=tmp_path, capture_output=True)
