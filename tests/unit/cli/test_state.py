"""``msb status``: the backend column and JSON fields, from the supervisors' state.json."""

from __future__ import annotations

import fcntl
import json
import os
from pathlib import Path

import pytest
from click.testing import CliRunner

from engine.cli.state import _fmt_start, status
from engine.project.runtime import SandboxDir, SandboxState


def test_status_shows_the_backend_each_ran_on(tmp_path: Path) -> None:
    (tmp_path / "Sandboxfile").write_text("sandboxes:\n  a:\n    image: busybox\n  b:\n    image: busybox\n"
                                          "  c:\n    image: busybox\n")  # fmt: skip
    for name, backend, accel in (("a", "gvisor", "none"), ("b", "qemu", "tcg")):
        d = tmp_path / ".menv" / "sandboxes" / name
        d.mkdir(parents=True)
        (d / "state.json").write_text(json.dumps({"name": name, "status": "stopped", "backend": backend,
                                                  "accel": accel, "message": "stopped by request"}))  # fmt: skip
    out = CliRunner().invoke(status, ["-f", str(tmp_path), "--json"])
    assert out.exit_code == 0, out.output
    rows = {r["name"]: r for r in json.loads(out.output)["sandboxes"]}
    assert (rows["a"]["backend"], rows["a"]["backend_label"], rows["a"]["accel"]) == ("gvisor", "gVisor", "none")
    assert (rows["b"]["backend"], rows["b"]["backend_label"]) == ("qemu", "QEMU/TCG")
    assert rows["c"]["backend"] is None and rows["c"]["backend_label"] is None  # never started
    table = CliRunner().invoke(status, ["-f", str(tmp_path)]).output.splitlines()
    assert table[0].split()[:5] == ["NAME", "STATUS", "PID", "BACKEND", "START"]
    assert table[1].split()[:5] == ["a", "stopped", "-", "gVisor", "-"]
    assert table[2].split()[:5] == ["b", "stopped", "-", "QEMU/TCG", "-"]
    assert table[3].split()[:5] == ["c", "stopped", "-", "-", "-"]


@pytest.mark.parametrize(("started_by", "start_ms", "shown"), [
    ("restore", 95.4, "restore 95ms"), ("boot", 1100.0, "boot 1.1s"), ("pool", 3.2, "pool 3ms"),
    ("boot", 999.4, "boot 999ms"), ("boot", 999.6, "boot 1.0s"), ("boot", None, "boot"), (None, None, "-"),
])  # fmt: skip
def test_the_start_column(started_by: str | None, start_ms: float | None, shown: str) -> None:
    assert _fmt_start(started_by, start_ms) == shown


def test_a_running_sandbox_shows_how_it_started(tmp_path: Path) -> None:
    """From state.json while its supervisor holds the lock (the socket, when there is one,
    answers the same fields live)."""
    (tmp_path / "Sandboxfile").write_text("sandboxes:\n  a:\n    image: busybox\n")
    sdir = SandboxDir(tmp_path / ".menv" / "sandboxes" / "a", "a")
    sdir.write_state(SandboxState(name="a", status="running", supervisor_pid=os.getpid(), backend="qemu",
                                  accel="kvm", started_by="restore", start_ms=95.4))  # fmt: skip
    fd = os.open(sdir.lock_file, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        out = CliRunner().invoke(status, ["-f", str(tmp_path), "--json"])
        [row] = json.loads(out.output)["sandboxes"]
        assert (row["status"], row["started_by"], row["start_ms"]) == ("running", "restore", 95.4)
        table = CliRunner().invoke(status, ["-f", str(tmp_path)]).output.splitlines()
    finally:
        os.close(fd)
    assert table[1].split()[:6] == ["a", "running", str(os.getpid()), "QEMU/KVM", "restore", "95ms"]
    stopped = CliRunner().invoke(status, ["-f", str(tmp_path), "--json"])
    [row] = json.loads(stopped.output)["sandboxes"]  # the lock is gone: crashed, nothing running
    assert (row["status"], row["started_by"], row["start_ms"]) == ("crashed", None, None)
