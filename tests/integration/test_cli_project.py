"""Sandboxfile projects end to end with the real CLI and real VMs: run, run -d, status,
log, shell, stop, persistence across stop/start and kill -9 of the VM, depends_on, and bad
Sandboxfiles refused with exit code 2 before anything starts."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

MSB = [sys.executable, "-m", "engine.cli.main"]

SANDBOXFILE = """\
# a project for the tests; this comment must survive
sandboxes:
  box:
    image: {rootfs}
    memory: 256
    scope: none
    envs: ["GREETING=hello"]
    scripts:
      start: echo "start says $GREETING"; cat /data/note 2>/dev/null || echo no-note
      write: mkdir -p /data && echo "$1" > /data/note && echo written
      serve: echo serving; exec sleep 300
  dep:
    image: {rootfs}
    memory: 256
    scope: none
    scripts:
      start: exec sleep 300
  app:
    image: {rootfs}
    memory: 256
    scope: none
    depends_on: [dep]
    scripts:
      start: echo app-ran
"""


def msb(project: Path, *args: str, input: bytes | None = None, timeout: float = 120
        ) -> subprocess.CompletedProcess[str]:  # fmt: skip
    text = None if input is None else input.decode()
    env = {**os.environ, "MSB_QUIET": "1"}
    return subprocess.run([*MSB, *args], cwd=project, capture_output=True, text=True, input=text, timeout=timeout,
                          env=env)  # fmt: skip


@pytest.fixture
def project(tmp_path: Path, busybox_rootfs: Path) -> Path:
    (tmp_path / "Sandboxfile").write_text(SANDBOXFILE.format(rootfs=busybox_rootfs))
    yield tmp_path
    for name in ("box", "dep", "app"):
        subprocess.run([*MSB, "stop", name], cwd=tmp_path, capture_output=True, timeout=60)


def _status(project: Path) -> dict[str, dict[str, object]]:
    out = msb(project, "status", "--json")
    assert out.returncode == 0, out.stderr
    return {r["name"]: r for r in json.loads(out.stdout)["sandboxes"]}


def test_run_start_script_then_named_script_then_args_with_exit_code(project: Path) -> None:
    out = msb(project, "run", "box")
    assert out.returncode == 0, out.stderr
    assert out.stdout.splitlines() == ["start says hello", "no-note"]
    out = msb(project, "run", "box~write", "--", "ignored-by-script")
    assert out.returncode == 0, out.stderr
    out = msb(project, "run", "box", "--", "sh", "-c", "echo args-ran; exit 7")
    assert out.returncode == 7 and out.stdout == "args-ran\n", out.stderr
    assert _status(project)["box"]["status"] == "stopped"


def test_files_persist_across_stop_start_and_kill_9_of_the_vm(project: Path) -> None:
    out = msb(project, "run", "box", "--", "sh", "-c", "mkdir -p /data && echo first > /data/note")
    assert out.returncode == 0, out.stderr
    assert msb(project, "run", "box").stdout.splitlines()[-1] == "first"
    # detached, then the VM process is killed from the host
    out = msb(project, "run", "-d", "box~serve")
    assert out.returncode == 0, out.stderr
    shell = msb(project, "shell", "-T", "box", input=b"echo second > /data/note; echo $((6 * 7)); exit 3\n")
    assert shell.returncode == 3 and "42" in shell.stdout, shell.stderr
    row = _status(project)["box"]
    assert row["status"] == "running" and row["cpu_percent"] is not None and row["disk_bytes"] is not None
    os.kill(int(row["vm_pid"]), signal.SIGKILL)  # type: ignore[arg-type]
    deadline = time.monotonic() + 30
    while _status(project)["box"]["status"] == "running" and time.monotonic() < deadline:
        time.sleep(0.2)
    assert _status(project)["box"]["status"] == "crashed"
    assert msb(project, "run", "box").stdout.splitlines()[-1] == "second"


def test_kill_9_of_the_supervisor_leaves_no_vm_and_keeps_the_files(project: Path) -> None:
    """QEMU that dropped to msb-vmm (``-runas``) has lost its parent-death signal; it must go
    with its supervisor all the same, so the next run gets the layer to itself."""
    out = msb(project, "run", "--backend", "qemu", "box~write", "--", "kept")
    assert out.returncode == 0, out.stderr
    out = msb(project, "run", "-d", "--backend", "qemu", "box~serve")
    assert out.returncode == 0, out.stderr
    row = _status(project)["box"]
    supervisor, vm = int(row["pid"]), int(row["vm_pid"])  # type: ignore[call-overload]
    os.kill(supervisor, signal.SIGKILL)
    deadline = time.monotonic() + 30
    while (_status(project)["box"]["status"] == "running" or Path(f"/proc/{vm}").exists()) and (
        time.monotonic() < deadline
    ):
        time.sleep(0.2)
    assert not Path(f"/proc/{vm}").exists(), "the VM outlived its supervisor"
    assert _status(project)["box"]["status"] == "crashed"
    out = msb(project, "run", "--backend", "qemu", "box")
    assert out.returncode == 0 and out.stdout.splitlines()[-1] == "kept", out.stderr


def test_detached_log_status_and_stop(project: Path) -> None:
    out = msb(project, "run", "-d", "box~serve")
    assert out.returncode == 0, out.stderr
    assert "msb log box -f" in out.stderr
    deadline = time.monotonic() + 20
    while "serving" not in msb(project, "log", "box").stdout and time.monotonic() < deadline:
        time.sleep(0.2)
    assert "serving" in msb(project, "log", "box").stdout
    again = msb(project, "run", "box")
    assert again.returncode == 1 and "already running" in again.stderr
    table = msb(project, "status")
    assert table.returncode == 0
    assert any(line.startswith("box") and "running" in line for line in table.stdout.splitlines())
    out = msb(project, "stop", "box")
    assert out.returncode == 0 and "Sandbox box stopped" in out.stdout
    assert _status(project)["box"]["status"] == "stopped"
    assert msb(project, "stop", "box").returncode == 1  # not running any more
    follow = msb(project, "log", "-f", "box", timeout=10)  # returns: nobody runs it any more
    assert follow.returncode == 0 and "main process exited" in follow.stdout


def test_depends_on_starts_the_dependency_first_and_leaves_it_running(project: Path) -> None:
    out = msb(project, "run", "app")
    assert out.returncode == 0, out.stderr
    assert out.stdout == "app-ran\n"
    assert "started dependency 'dep'" in out.stderr
    rows = _status(project)
    assert rows["dep"]["status"] == "running" and rows["app"]["status"] == "stopped"


def test_shell_on_a_stopped_sandbox_starts_and_stops_it(project: Path) -> None:
    out = msb(project, "shell", "-T", "box", input=b"echo in-shell $GREETING\n")
    assert out.returncode == 0 and out.stdout == "in-shell hello\n", out.stderr
    assert _status(project)["box"]["status"] == "stopped"


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("sandboxes:\n  box:\n    image: x\n   memory: 1\n", "Sandboxfile:"),
        ("sandboxes:\n  box:\n    image: busybox\n    memory: lots\n", "memory"),
        ("sandboxes:\n  a:\n    image: busybox\n    depends_on: [b]\n  b:\n    image: busybox\n    depends_on: [a]\n",
         "cycle"),
        ("sandboxes:\n  box:\n    image: busybox\n    backend: docker\n",
         "Sandboxfile:4:14: sandboxes.box.backend must be one of auto, qemu, gvisor, krun (got 'docker')"),
    ],
    ids=["syntax", "wrong-type", "cycle", "backend"],
)
def test_bad_sandboxfiles_exit_2_and_start_nothing(tmp_path: Path, text: str, expected: str) -> None:
    (tmp_path / "Sandboxfile").write_text(text)
    name = "a" if "cycle" in expected else "box"
    out = msb(tmp_path, "run", name)
    assert out.returncode == 2, (out.returncode, out.stderr)
    assert expected in out.stderr
    assert not (tmp_path / ".menv").exists()


def test_backend_flag_status_and_the_layer_stays_with_its_backend(project: Path) -> None:
    out = msb(project, "run", "-d", "--backend", "qemu", "box~serve")
    assert out.returncode == 0, out.stderr
    row = _status(project)["box"]
    assert (row["backend"], row["backend_label"], row["accel"]) == ("qemu", "QEMU/TCG", "tcg")
    [line] = [ln for ln in msb(project, "status").stdout.splitlines() if ln.startswith("box ")]
    assert line.split()[1:2] == ["running"] and "QEMU/TCG" in line.split()
    loud = {k: v for k, v in os.environ.items() if k != "MSB_QUIET"}
    shell = subprocess.run([*MSB, "shell", "-T", "--backend", "gvisor", "box"], cwd=project, input="true\n",
                           capture_output=True, text=True, timeout=120, env=loud)  # fmt: skip
    assert shell.returncode == 0, shell.stderr
    assert "msb: note: sandbox 'box' already runs on QEMU/TCG; --backend gvisor applies when it starts" in shell.stderr
    assert msb(project, "stop", "box").returncode == 0
    # auto keeps the sandbox on the backend its files are in (QEMU's disk image) ...
    out = msb(project, "run", "box~write", "--", "kept")
    assert out.returncode == 0 and "written" in out.stdout, out.stderr
    assert _status(project)["box"]["backend"] == "qemu"
    # ... and gVisor, forced, refuses that disk image rather than show an empty disk
    out = msb(project, "run", "--backend", "gvisor", "box")
    assert out.returncode == 2, out.stderr
    assert "msb: error: this sandbox's files are in a QEMU disk image" in out.stderr
    assert "msb: hint: start it with --backend qemu" in out.stderr
    assert _status(project)["box"]["backend"] == "qemu"  # still the one it last ran on
    out = msb(project, "run", "box")
    assert out.returncode == 0 and "kept" in out.stdout, out.stderr


def test_sandboxfile_backend_and_the_flag_over_it(tmp_path: Path, busybox_rootfs: Path) -> None:
    (tmp_path / "Sandboxfile").write_text(f"sandboxes:\n  q:\n    image: {busybox_rootfs}\n    memory: 256\n"
                                          "    scope: none\n    backend: qemu\n    scripts:\n"
                                          "      start: exec sleep 300\n")  # fmt: skip
    try:
        out = msb(tmp_path, "run", "-d", "q")
        assert out.returncode == 0, out.stderr
        assert _status(tmp_path)["q"]["backend_label"] == "QEMU/TCG"
        assert msb(tmp_path, "stop", "q").returncode == 0
        forced = msb(tmp_path, "run", "--backend", "krun", "q")  # the flag wins over backend: qemu
        assert forced.returncode == 125, forced.stderr
        assert "msb: error: backend 'krun' was asked for (the request) but does not work here: " in forced.stderr
        assert "msb: hint: " in forced.stderr
    finally:
        msb(tmp_path, "stop", "q")


def test_unknown_sandbox_exits_2(project: Path) -> None:
    out = msb(project, "run", "nope")
    assert out.returncode == 2 and "no sandbox named 'nope'" in out.stderr
    assert not (project / ".menv" / "sandboxes" / "nope").exists()


def test_volumes_relative_to_the_sandboxfile_and_a_published_port(tmp_path: Path, base_images: None) -> None:
    import socket
    import urllib.request

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    (tmp_path / "site").mkdir()
    (tmp_path / "site" / "index.html").write_text("hello through a volume\n")
    (tmp_path / "out").mkdir()
    (tmp_path / "Sandboxfile").write_text(f"""\
sandboxes:
  web:
    image: microsandbox/python
    volumes: ["./site:/srv/site:ro", "out:/out"]
    ports: ["{port}:8000"]
    workdir: /srv/site
    scripts:
      start: echo written-by-guest > /out/note; exec python3 -m http.server 8000
""")
    try:
        out = msb(tmp_path, "run", "-d", "web")
        assert out.returncode == 0, out.stderr
        deadline, body = time.monotonic() + 30, ""
        while time.monotonic() < deadline and not body:
            try:
                body = urllib.request.urlopen(f"http://127.0.0.1:{port}/index.html", timeout=2).read().decode()
            except OSError:
                time.sleep(0.2)
        assert body == "hello through a volume\n"
        assert (tmp_path / "out" / "note").read_text() == "written-by-guest\n"
        refused = msb(tmp_path, "shell", "-T", "web", input=b"echo x > /srv/site/index.html\n")
        assert refused.returncode != 0 and "Read-only file system" in refused.stderr + refused.stdout
    finally:
        msb(tmp_path, "stop", "web")
    assert (tmp_path / "site" / "index.html").read_text() == "hello through a volume\n"


def test_shell_killed_by_hangup_stops_the_sandbox_it_started(project: Path) -> None:
    env = {**os.environ, "MSB_QUIET": "1"}
    proc = subprocess.Popen([*MSB, "shell", "-T", "box"], cwd=project, stdin=subprocess.PIPE,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env)  # fmt: skip
    assert proc.stdin is not None and proc.stdout is not None
    proc.stdin.write(b"echo ready\n")
    proc.stdin.flush()
    assert proc.stdout.readline() == b"ready\n"
    assert _status(project)["box"]["status"] == "running"
    proc.send_signal(signal.SIGHUP)  # the terminal went away
    assert proc.wait(timeout=60) == 130
    assert _status(project)["box"]["status"] == "stopped"
