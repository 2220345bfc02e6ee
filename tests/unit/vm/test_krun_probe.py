"""The libkrun probe: each step's failure is the verdict's reason, and only a probe boot that
answers makes it usable (the boot runs against the C stand-in's guest emulation here)."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

from engine import paths
from engine.vm import krun_probe
from engine.vm.krun_probe import aprobe_krun
from tests.unit.vm import krun_standin

needs_root = pytest.mark.skipif(os.geteuid() != 0, reason="the probe boot mounts the sandbox's root: needs root")
needs_agent = pytest.mark.skipif(not paths.agent_path().is_file(), reason="guest agent not built: run `make agent`")


@pytest.fixture(scope="module")
def standin(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return krun_standin.build(tmp_path_factory.mktemp("krun"))


@pytest.fixture
def calls_log(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, standin: Path) -> Path:
    log = tmp_path / "calls.jsonl"
    krun_standin.use(monkeypatch, standin, log)
    monkeypatch.setattr(krun_probe, "_kvm_error", lambda: None)  # not every test host has /dev/kvm
    return log


async def test_no_library_is_not_usable_with_the_install_hint(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("MSB_LIBKRUN", str(tmp_path / "libkrun.so.1"))
    v = await aprobe_krun()
    assert v["name"] == "krun" and not v["usable"] and v["accel"] is None
    assert "libkrun.so.1 does not exist" in v["reason"]
    assert v["hint"] is not None and "install libkrun" in v["hint"]
    assert "KVM" in v["isolation"]


async def test_an_unusable_dev_kvm_is_the_reason(calls_log: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(krun_probe, "_kvm_error", lambda: "/dev/kvm: Permission denied")
    v = await aprobe_krun()
    assert not v["usable"] and v["reason"] == "/dev/kvm: Permission denied"
    assert krun_standin.recorded(calls_log) == []  # no boot was tried


@needs_root
@needs_agent
async def test_a_failing_vm_start_is_the_reason(calls_log: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("KRUN_STANDIN_FAIL", "krun_start_enter")  # as libkrun does without working KVM
    v = await aprobe_krun()
    assert not v["usable"]
    assert v["reason"].startswith("probe boot failed: libkrun exited with status 70")
    assert "libkrun krun_start_enter failed: Invalid argument" in v["reason"]


@needs_root
@needs_agent
async def test_a_silent_guest_times_out(calls_log: Path, monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    sleeper = tmp_path / "sleeper"  # static: the probe's root is empty
    src = tmp_path / "sleeper.c"
    src.write_text("#include <unistd.h>\nint main(void) { for (;;) pause(); }\n")
    subprocess.run(["gcc", "-static", "-O1", "-o", str(sleeper), str(src)], check=True)
    monkeypatch.setenv("KRUN_STANDIN_BOOT", "1")
    monkeypatch.setenv("MSB_AGENT", str(sleeper))  # "boots" but never connects an agent
    v = await aprobe_krun(deadline_s=1.0)
    assert not v["usable"] and "did not answer within 1 s" in v["reason"]


@needs_root
@needs_agent
async def test_a_probe_boot_that_answers_is_usable(calls_log: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("KRUN_STANDIN_BOOT", "1")
    v = await aprobe_krun()
    assert v["usable"] and v["accel"] == "kvm", v["reason"]
    assert v["probe_ms"] is not None and v["probe_ms"] > 0
    assert v["reason"].startswith("probe boot answered in")
    calls = [name for name, _ in krun_standin.recorded(calls_log)]
    assert calls[-1] == "krun_start_enter" and "krun_add_virtiofs" not in calls
    assert dict(krun_standin.recorded(calls_log))["krun_add_vsock"][1] == 0  # probe VM: scope none
