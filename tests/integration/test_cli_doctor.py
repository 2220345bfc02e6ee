"""`msb doctor` on this host, for real: each backend probed (gVisor afresh), the default, the
isolation in words and the TCG statement.

This host (PVM nested virtualisation, no libkrun): QEMU works with TCG only, gVisor works,
libkrun does not — so the default is gVisor, and doctor recommends it for untrusted code.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

MSB = [sys.executable, "-m", "engine.cli.main"]
ENV = {k: v for k, v in os.environ.items() if k != "MSB_BACKEND"}


def doctor(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*MSB, "doctor", *args], capture_output=True, text=True, timeout=300, env=ENV)


def test_doctor_json_on_this_host() -> None:
    out = doctor("--json")
    assert out.returncode == 0, out.stdout + out.stderr  # some backend works
    report = json.loads(out.stdout)
    backends = {b["name"]: b for b in report["backends"]}
    assert list(backends) == ["krun", "qemu", "gvisor"]  # strongest first
    assert backends["gvisor"]["usable"] is True and backends["gvisor"]["version"]
    assert backends["gvisor"]["probe_ms"] and backends["gvisor"]["probe_ms"] > 0  # probed now, not from the cache
    assert backends["qemu"]["usable"] is True and backends["qemu"]["accel"] == "tcg"
    assert backends["qemu"]["label"] == "QEMU/TCG" and "KVM probe boot failed" in backends["qemu"]["reason"]
    assert backends["krun"]["usable"] is False and backends["krun"]["reason"]
    assert report["default"]["name"] == "gvisor" and report["default"]["requested"] == "auto"
    assert report["backend"] == "gvisor" and report["accelerator"] == "none"
    assert report["isolation"].startswith("gVisor: ")
    assert "not treat TCG (software emulation) as a security boundary" in report["tcg"]
    assert "gVisor" in report["recommendation"] and "untrusted code" in report["recommendation"]
    checks = {c["name"]: c for c in report["checks"]}
    assert {"qemu", "runsc", "slirp4netns", "mmdebstrap", "mkfs.ext4", "kernel (QEMU)", "agent",
            "network filter"} <= set(checks)  # fmt: skip
    assert checks["runsc"]["level"] == "ok" and checks["slirp4netns"]["level"] == "ok"
    assert "msb-agent" in (report["agent"] or "")


def test_doctor_text_says_it_in_words() -> None:
    out = doctor()
    assert out.returncode == 0, out.stderr
    text = out.stdout
    assert "✓ gVisor      usable: probe sandbox answered" in text
    assert "! QEMU/TCG    usable: KVM probe boot failed" in text
    assert "✗ libkrun/KVM NOT usable: " in text
    assert "default:      gVisor (gvisor) — auto: the strongest backend that works here" in text
    assert "QEMU does not treat TCG (software emulation) as a security boundary" in text
    assert "recommend:    for untrusted code use gVisor" in text


def test_a_forced_qemu_default_is_said_and_gvisor_recommended() -> None:
    out = subprocess.run([*MSB, "doctor", "--json"], capture_output=True, text=True, timeout=300,
                         env={**ENV, "MSB_BACKEND": "qemu"})  # fmt: skip
    report = json.loads(out.stdout)
    assert report["default"]["label"] == "QEMU/TCG" and report["default"]["why"] == "forced by MSB_BACKEND=qemu"
    assert "not treat TCG as a security boundary" in report["isolation"]
    assert "--backend gvisor" in report["recommendation"]
