"""``msb doctor`` over faked probes (``engine.vm.select.PROBES``): the verdicts, the default
choice and its words, the TCG statement, the recommendation, ``--json`` and the exit code."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner

from engine.cli import doctor_report
from engine.cli.doctor import doctor
from engine.cli.doctor_report import Check
from engine.vm import select
from engine.vm.fake import FakeBackend
from engine.vm.select import BackendVerdict

Verdicts = dict[str, tuple[bool, str | None]]
HOST_LIKE_THIS = {"krun": (False, None), "qemu": (True, "tcg"), "gvisor": (True, None)}


def named(name: str, accel: str) -> FakeBackend:
    """A fake backend that calls itself ``name`` and always runs ``accel`` (no boot assets)."""
    backend = FakeBackend()
    backend.name = name  # type: ignore[misc]
    backend.fixed_accel = accel  # type: ignore[attr-defined]
    return backend


def install(monkeypatch: pytest.MonkeyPatch, verdicts: Verdicts, calls: list[tuple[str, dict[str, Any]]]) -> None:
    """Fake every probe (name -> (usable, accel)); ``calls`` records each call's keywords."""

    def make(name: str, usable: bool, accel: str | None) -> Any:
        async def probe(cache_dir: Path, **kw: Any) -> tuple[BackendVerdict, Any]:
            calls.append((name, kw))
            verdict = BackendVerdict(name=name, usable=usable, reason=f"{name} probe said {'yes' if usable else 'no'}",  # type: ignore[arg-type]
                                     accel=accel, probe_ms=12.0 if usable else None,
                                     isolation=select.isolation_of(name, accel),
                                     hint=None if usable else f"fix {name}")  # fmt: skip
            return verdict, named(name, accel or "none") if usable else None

        return probe

    monkeypatch.setattr(select, "PROBES", {n: make(n, *v) for n, v in verdicts.items()})
    monkeypatch.delenv("MSB_BACKEND", raising=False)
    monkeypatch.setenv("MSB_AGENT", "/nonexistent/msb-agent")  # no agent version check in the engine
    host = [Check(name="runsc", level="ok", detail="/usr/bin/runsc (gVisor test)")]
    monkeypatch.setattr(doctor_report, "tool_checks", lambda cache_dir: host)
    monkeypatch.setattr(doctor_report, "kernel_checks", lambda cache_dir: ([], "minimal 6.1-test"))


def run(*args: str) -> tuple[int, str]:
    result = CliRunner().invoke(doctor, list(args))
    assert result.exception is None or isinstance(result.exception, SystemExit), result.exception
    return result.exit_code, result.output


def test_a_host_like_this_one(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("MSB_CACHE_DIR", str(tmp_path))
    calls: list[tuple[str, dict[str, Any]]] = []
    install(monkeypatch, HOST_LIKE_THIS, calls)
    code, out = run("--json")
    assert code == 0
    report = json.loads(out)
    by_name = {b["name"]: b for b in report["backends"]}
    assert [b["name"] for b in report["backends"]] == ["krun", "qemu", "gvisor"]
    assert by_name["krun"]["usable"] is False and by_name["krun"]["reason"] == "krun probe said no"
    assert by_name["krun"]["hint"] == "fix krun"
    assert by_name["qemu"]["label"] == "QEMU/TCG" and by_name["gvisor"]["label"] == "gVisor"
    assert report["default"]["name"] == "gvisor" and report["default"]["label"] == "gVisor"
    assert report["default"]["hardware_virtualised"] is False
    assert "QEMU has only TCG" in report["default"]["why"] and "libkrun/KVM does not work" in report["default"]["why"]
    assert report["isolation"] == select.ISOLATION["gvisor"] and report["accelerator"] == "none"
    assert "not treat TCG (software emulation) as a security boundary" in report["tcg"]
    assert "compatibility mode" in report["tcg"]
    assert "gVisor" in report["recommendation"] and "untrusted code" in report["recommendation"]
    assert report["kernel_in_use"].startswith("gVisor's Sentry")
    assert [c[0] for c in calls[:3]] == ["krun", "qemu", "gvisor"]  # every backend probed, strongest first


def test_the_gvisor_probe_is_asked_for_a_fresh_verdict(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    calls: list[tuple[str, dict[str, Any]]] = []
    install(monkeypatch, HOST_LIKE_THIS, calls)
    seen: list[bool] = []
    real = select.PROBES["gvisor"]

    async def gvisor(cache_dir: Path, *, use_cache: bool = True) -> Any:
        seen.append(use_cache)
        return await real(cache_dir)

    monkeypatch.setitem(select.PROBES, "gvisor", gvisor)
    run()
    assert seen[0] is False  # doctor's own probe; the default choice may use the cache after it


def test_text_says_each_verdict_and_the_isolation(monkeypatch: pytest.MonkeyPatch) -> None:
    install(monkeypatch, HOST_LIKE_THIS, [])
    code, out = run()
    assert code == 0
    assert "✗ libkrun/KVM NOT usable: krun probe said no" in out and "→ fix krun" in out
    assert "! QEMU/TCG    usable: qemu probe said yes" in out  # TCG works, but is marked
    assert "✓ gVisor      usable: gvisor probe said yes" in out
    assert "default:      gVisor (gvisor)" in out
    assert "\nTCG:          QEMU does not treat TCG" in out
    assert "recommend:    for untrusted code use gVisor" in out


def test_forced_qemu_default_recommends_gvisor(monkeypatch: pytest.MonkeyPatch) -> None:
    install(monkeypatch, HOST_LIKE_THIS, [])
    monkeypatch.setattr(select, "FORCED", {"qemu": lambda source: named("qemu", "tcg")})
    monkeypatch.setenv("MSB_BACKEND", "qemu")
    report = json.loads(run("--json")[1])
    assert report["default"] | {"why": ""} == {"requested": "qemu", "source": "MSB_BACKEND", "name": "qemu",
                                               "label": "QEMU/TCG", "accel": "tcg", "why": "",
                                               "hardware_virtualised": False}  # fmt: skip
    assert report["default"]["why"] == "forced by MSB_BACKEND=qemu"
    assert "not treat TCG as a security boundary" in report["isolation"]
    assert report["recommendation"] == "for untrusted code use gVisor: `--backend gvisor` (or MSB_BACKEND=gvisor)"


def test_a_kvm_host_needs_no_recommendation(monkeypatch: pytest.MonkeyPatch) -> None:
    install(monkeypatch, {"krun": (False, None), "qemu": (True, "kvm"), "gvisor": (True, None)}, [])
    report = json.loads(run("--json")[1])
    assert report["default"]["name"] == "qemu" and report["default"]["hardware_virtualised"] is True
    assert report["default"]["why"] == "auto: the strongest backend that works here (libkrun/KVM does not work)"
    assert report["recommendation"] is None
    assert "not treat TCG" in report["tcg"]  # said on every host


def test_exit_1_only_when_no_backend_works(monkeypatch: pytest.MonkeyPatch) -> None:
    install(monkeypatch, {"krun": (False, None), "qemu": (False, None), "gvisor": (False, None)}, [])
    code, out = run("--json")
    assert code == 1
    report = json.loads(out)
    assert report["default"]["name"] is None and "no isolation backend works" in report["default"]["why"]
    assert report["isolation"].startswith("none")
    install(monkeypatch, {"krun": (False, None), "qemu": (False, None), "gvisor": (True, None)}, [])
    monkeypatch.setattr(doctor_report, "netfilter_check", lambda: Check(name="network filter", level="fail",
                                                                         detail="missing"))  # fmt: skip
    assert run()[0] == 0  # a failed host check alone is not a failure of the host


def test_a_crashing_probe_is_reported_not_raised(monkeypatch: pytest.MonkeyPatch) -> None:
    install(monkeypatch, HOST_LIKE_THIS, [])

    async def broken(cache_dir: Path) -> Any:
        raise AttributeError("no probe_krun here")

    monkeypatch.setitem(select.PROBES, "krun", broken)
    code, out = run("--json")
    report = json.loads(out)
    assert code == 0  # gVisor still works
    assert report["backends"][0]["usable"] is False and "no probe_krun here" in report["backends"][0]["reason"]
    assert report["default"]["name"] is None and "choosing the backend failed" in report["default"]["why"]
