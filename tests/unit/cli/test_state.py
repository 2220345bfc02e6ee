"""``msb status``: the backend column and JSON fields, from the supervisors' state.json."""

from __future__ import annotations

import json
from pathlib import Path

from click.testing import CliRunner

from engine.cli.state import status


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
    assert table[0].split()[:4] == ["NAME", "STATUS", "PID", "BACKEND"]
    assert table[1].split()[:4] == ["a", "stopped", "-", "gVisor"]
    assert table[2].split()[:4] == ["b", "stopped", "-", "QEMU/TCG"]
    assert table[3].split()[:4] == ["c", "stopped", "-", "-"]
