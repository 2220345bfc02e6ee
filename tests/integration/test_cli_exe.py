"""`msb exe ROOTFS -- CMD` end to end, as a user runs it."""

from __future__ import annotations

import glob
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

MSB = [sys.executable, "-m", "engine.cli.main"]


def _run_dirs() -> set[str]:
    base = os.environ.get("XDG_RUNTIME_DIR") or tempfile.gettempdir()
    return set(glob.glob(os.path.join(base, "msb-exe-*")))


def _qemu_children() -> list[int]:
    out = subprocess.run(["pgrep", "-f", "qemu-system-x86_64.*/msb-exe-"], capture_output=True, text=True)
    return [int(p) for p in out.stdout.split()]


def test_exit_code_streams_and_stdin_pass_through(busybox_rootfs: Path) -> None:
    before = _run_dirs()
    proc = subprocess.run(
        [*MSB, "exe", "-q", str(busybox_rootfs), "--", "sh", "-c", "cat; echo to-err >&2; exit 3"],
        input=b"piped-in\n", capture_output=True, timeout=120,
    )  # fmt: skip
    assert proc.returncode == 3, proc.stderr
    assert proc.stdout == b"piped-in\n"
    assert proc.stderr == b"to-err\n"
    assert _run_dirs() == before  # nothing left behind


def test_not_found_exits_127_with_a_message(busybox_rootfs: Path) -> None:
    proc = subprocess.run([*MSB, "exe", "-q", str(busybox_rootfs), "--", "nope"], capture_output=True, timeout=120)
    assert proc.returncode == 127
    assert b"command not found in the sandbox: nope" in proc.stderr


def test_missing_rootfs_is_a_usage_error_with_a_hint(tmp_path: Path) -> None:
    proc = subprocess.run([*MSB, "exe", "-q", str(tmp_path / "none"), "--", "true"], capture_output=True, timeout=60)
    assert proc.returncode == 2
    assert b"does not exist" in proc.stderr and b"hint:" in proc.stderr


def test_tcg_note_only_on_qemu_tcg_and_unless_quiet(busybox_rootfs: Path) -> None:
    env = {**os.environ, "MSB_ACCEL": "tcg"}
    proc = subprocess.run([*MSB, "exe", "--backend", "qemu", str(busybox_rootfs), "--", "true"], capture_output=True,
                          timeout=120, env=env)  # fmt: skip
    assert proc.returncode == 0
    assert b"not treat TCG as a security boundary" in proc.stderr
    quiet = subprocess.run([*MSB, "exe", "-q", "--backend", "qemu", str(busybox_rootfs), "--", "true"],
                           capture_output=True, timeout=120, env=env)  # fmt: skip
    assert quiet.returncode == 0 and quiet.stderr == b""
    env.pop("MSB_BACKEND", None)
    default = subprocess.run([*MSB, "exe", str(busybox_rootfs), "--", "dmesg"], capture_output=True, timeout=120,
                             env=env)  # fmt: skip
    assert default.returncode == 0 and b"Starting gVisor" in default.stdout  # auto picks gVisor on this host…
    assert default.stderr == b""  # …and there is no TCG to warn about


def test_a_forced_backend_that_does_not_work_says_why(busybox_rootfs: Path) -> None:
    proc = subprocess.run([*MSB, "exe", "--backend", "krun", str(busybox_rootfs), "--", "true"], capture_output=True,
                          text=True, timeout=120)  # fmt: skip
    assert proc.returncode == 125
    lines = proc.stderr.splitlines()
    assert lines[0].startswith("msb: error: backend 'krun' was asked for (the request) but does not work here: ")
    assert lines[1].startswith("msb: hint: ")


def test_ctrl_c_leaves_no_vm_and_no_files(busybox_rootfs: Path) -> None:
    before = _run_dirs()
    proc = subprocess.Popen([*MSB, "exe", "-q", "--backend", "qemu", str(busybox_rootfs), "--", "sh", "-c",
                             "echo started; sleep 300"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, stdin=subprocess.DEVNULL)  # fmt: skip
    assert proc.stdout is not None
    assert proc.stdout.readline() == b"started\n"  # the VM runs the command now
    assert _qemu_children(), "expected a running VM"
    proc.send_signal(signal.SIGINT)
    assert proc.wait(timeout=30) == 130
    deadline = time.monotonic() + 10
    while _qemu_children() and time.monotonic() < deadline:
        time.sleep(0.05)  # polling the process table; bounded by the deadline
    assert not _qemu_children()
    assert _run_dirs() == before


def _tree(root: Path) -> set[str]:
    return {str(p.relative_to(root)) for p in root.rglob("*")} if root.exists() else set()


def _trace(cwd: Path, state: Path, tmp: Path) -> tuple[set[str], set[str], set[str]]:
    return _tree(tmp), _tree(state), _tree(cwd)


@pytest.mark.parametrize("backend", ["qemu", "gvisor"])
def test_exe_leaves_no_trace_in_tmp_state_or_project_even_after_ctrl_c(busybox_rootfs: Path, tmp_path: Path,
                                                                        backend: str) -> None:  # fmt: skip
    """Ephemeral means nothing in /tmp, the state dir or the current directory (no .menv)."""
    cwd, state, tmp = tmp_path / "project", tmp_path / "state", tmp_path / "tmp"
    cwd.mkdir()
    tmp.mkdir()
    (cwd / "Sandboxfile").write_text("sandboxes: {}\n")
    # a private temporary directory, so other processes on the machine cannot disturb the listing
    env = {k: v for k, v in os.environ.items() if k != "XDG_RUNTIME_DIR"}
    env.update(MSB_STORAGE_PATH=str(state), TMPDIR=str(tmp), MSB_BACKEND=backend)
    before = _trace(cwd, state, tmp)
    done = subprocess.run([*MSB, "exe", "-q", "--scope", "none", str(busybox_rootfs), "--", "sh", "-c",
                           "echo data > /root/file; cat /root/file"], cwd=cwd, env=env, capture_output=True,
                          timeout=120)  # fmt: skip
    assert done.returncode == 0 and done.stdout == b"data\n", done.stderr
    assert _trace(cwd, state, tmp) == before
    proc = subprocess.Popen([*MSB, "exe", "-q", "--scope", "none", str(busybox_rootfs), "--", "sh", "-c",
                             "echo started; sleep 300"], cwd=cwd, env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, stdin=subprocess.DEVNULL)  # fmt: skip
    assert proc.stdout is not None and proc.stdout.readline() == b"started\n"
    proc.send_signal(signal.SIGINT)
    assert proc.wait(timeout=30) == 130
    deadline = time.monotonic() + 10
    while _trace(cwd, state, tmp) != before and time.monotonic() < deadline:
        time.sleep(0.05)
    assert _trace(cwd, state, tmp) == before
