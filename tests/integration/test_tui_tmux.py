"""msb-tui end to end, as a person uses it: in tmux, with the embedded engine and a real VM.

The dashboard of a one-sandbox project → ``s`` starts the sandbox → ``enter`` opens a shell →
``echo hello-from-vm`` typed into the terminal → the output is on tmux's screen. Every wait
polls ``tmux capture-pane`` against a deadline. The tmux server is private (``-L``) so the
app gets this process's environment (MSB_CACHE_DIR and friends), and it is killed, and the
sandbox stopped, whatever happens.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
MSB = [sys.executable, "-m", "engine.cli.main"]
COLS, ROWS = 120, 36
BOOT_S = 240.0
"""Starting the sandbox under TCG on a busy CI machine; the UI must stay live meanwhile."""
STEP_S = 60.0

SANDBOXFILE = """\
sandboxes:
  box:
    image: {rootfs}
    memory: 256
    scope: none
"""


class Tmux:
    """One private tmux server with one session running msb-tui."""

    def __init__(self, project: Path) -> None:
        self.socket = f"msb-e2e-{os.getpid()}-{os.urandom(3).hex()}"
        self.socket_path: Path | None = None
        self.project = project

    def run(self, *args: str) -> str:
        out = subprocess.run(["tmux", "-L", self.socket, *args], capture_output=True, text=True, timeout=30)
        assert out.returncode == 0, f"tmux {' '.join(args)}: {out.stderr}"
        return out.stdout

    def start(self) -> None:
        env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")]))}
        # A fresh server started by this call inherits ``env``; remain-on-exit keeps a crash on screen.
        subprocess.run(["tmux", "-L", self.socket, "-f", "/dev/null", "new-session", "-d", "-s", "tui",
                        "-x", str(COLS), "-y", str(ROWS), "-c", str(self.project),
                        f"{sys.executable} -m msb_tui.main"],
                       check=True, env=env, timeout=30)  # fmt: skip
        self.socket_path = Path(self.run("display-message", "-p", "#{socket_path}").strip())
        self.run("set-option", "-t", "tui", "remain-on-exit", "on")

    def screen(self) -> str:
        return self.run("capture-pane", "-p", "-t", "tui")

    def keys(self, *keys: str, literal: bool = False) -> None:
        self.run("send-keys", "-t", "tui", *(["-l"] if literal else []), *keys)

    def wait_for(self, what: str, cond: Callable[[str], bool], timeout: float = STEP_S) -> str:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            text = self.screen()
            if cond(text):
                return text
            time.sleep(0.2)
        pytest.fail(f"timed out after {timeout:.0f} s waiting for {what}; the screen:\n{self.screen()}")

    def kill(self) -> None:
        subprocess.run(["tmux", "-L", self.socket, "kill-server"], capture_output=True, timeout=30)
        if self.socket_path is not None:
            self.socket_path.unlink(missing_ok=True)  # kill-server leaves the socket file behind


@pytest.fixture
def tui(tmp_path: Path, busybox_rootfs: Path) -> Iterator[Tmux]:
    if shutil.which("tmux") is None:
        pytest.fail("tmux is missing: run `make setup`")
    (tmp_path / "Sandboxfile").write_text(SANDBOXFILE.format(rootfs=busybox_rootfs))
    tmux = Tmux(tmp_path)
    try:
        tmux.start()
        yield tmux
    finally:
        tmux.kill()
        subprocess.run([*MSB, "stop", "box"], cwd=tmp_path, capture_output=True, timeout=120)


def test_shell_in_a_real_sandbox_from_the_dashboard(tui: Tmux) -> None:
    tui.wait_for("the dashboard to list the sandbox", lambda s: "box" in s and "stopped" in s)
    tui.wait_for("the header to name the backend", lambda s: "embedded engine · gVisor ·" in s)  # auto, here
    tui.keys("s")
    screen = tui.wait_for("the sandbox to run", lambda s: "running" in s, timeout=BOOT_S)
    [row] = [line for line in screen.splitlines() if line.split()[:3] == ["box", "●", "running"]]
    assert "gVisor" in row and "⚠" not in row  # the VM column: what isolates it; no TCG here
    tui.keys("Enter")
    tui.wait_for("the shell to connect", lambda s: "ctrl+] leaves" in s)
    tui.keys("echo hello-from-vm", literal=True)
    tui.keys("Enter")
    screen = tui.wait_for("the guest's output", lambda s: "hello-from-vm" in (line.strip() for line in s.splitlines()))
    assert "echo hello-from-vm" in screen  # the line as typed, echoed by the guest's pty
    tui.keys("C-]")  # leaves the terminal: back on the dashboard, the sandbox still running
    tui.wait_for("the dashboard", lambda s: "ctrl+] leaves" not in s and "box" in s and "running" in s)
