"""`msb doctor` on this host: real probes, a verdict per check, and the isolation in words."""

from __future__ import annotations

import json
import subprocess
import sys

MSB = [sys.executable, "-m", "engine.cli.main"]


def test_doctor_json_reports_the_accelerator_and_isolation() -> None:
    out = subprocess.run([*MSB, "doctor", "--json"], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stdout + out.stderr  # make setup provides every required piece
    report = json.loads(out.stdout)
    checks = {c["name"]: c for c in report["checks"]}
    assert {"qemu", "kernel", "accelerator", "network filter", "volumes (9p)"} <= set(checks)
    assert report["accelerator"] in ("kvm", "tcg")
    if report["accelerator"] == "tcg":  # say it plainly wherever TCG is in force
        assert "not treat TCG as a security boundary" in report["isolation"]
        assert checks["accelerator"]["level"] == "warn" and checks["accelerator"]["hint"]
    text = subprocess.run([*MSB, "doctor"], capture_output=True, text=True, timeout=300).stdout
    assert "isolation:" in text and "accelerator" in text
