"""Choosing the accelerator: forced choices, the cached probe verdict, no /dev/kvm."""

from __future__ import annotations

from pathlib import Path

import pytest

from engine.errors import AccelError, BootError
from engine.vm import accel
from engine.vm.accel import TCG_WARNING, choose_accel


class Probe:
    """A fake probe boot that records its calls and fails when told to."""

    def __init__(self, error: Exception | None = None) -> None:
        self.error = error
        self.calls: list[float] = []

    async def __call__(self, deadline: float) -> None:
        self.calls.append(deadline)
        if self.error is not None:
            raise self.error


@pytest.fixture(autouse=True)
def _env(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("MSB_ACCEL", raising=False)
    monkeypatch.setattr(accel, "kvm_usable", lambda: None)  # /dev/kvm opens, unless a test says not


async def choose(tmp_path: Path, probe: Probe, forced: str | None = None) -> accel.AccelVerdict:
    return await choose_accel(qemu="/usr/bin/qemu", kernel=tmp_path / "bzImage", cache_file=tmp_path / "accel.json",
                              probe=probe, forced=forced)  # fmt: skip


async def test_forced_tcg_never_probes(tmp_path: Path) -> None:
    probe = Probe()
    verdict = await choose(tmp_path, probe, "tcg")
    assert (verdict.accel, verdict.source) == ("tcg", "forced") and probe.calls == []
    assert verdict.warning == TCG_WARNING


async def test_msb_accel_environment_forces_too(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MSB_ACCEL", "TCG")
    probe = Probe()
    assert (await choose(tmp_path, probe)).source == "forced" and probe.calls == []


async def test_forced_kvm_failing_its_probe_is_an_accel_error_with_the_reason(tmp_path: Path) -> None:
    probe = Probe(BootError("the guest hung after 'Booting from ROM'"))
    with pytest.raises(AccelError, match="Booting from ROM"):
        await choose(tmp_path, probe, "kvm")
    assert len(probe.calls) == 1


async def test_forced_kvm_without_a_device_is_an_accel_error(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(accel, "kvm_usable", lambda: "/dev/kvm: No such file or directory")
    with pytest.raises(AccelError, match="No such file"):
        await choose(tmp_path, Probe(), "kvm")


async def test_forced_kvm_that_works(tmp_path: Path) -> None:
    verdict = await choose(tmp_path, Probe(), "kvm")
    assert (verdict.accel, verdict.source) == ("kvm", "probe") and verdict.warning is None


async def test_auto_probes_once_then_uses_the_cache(tmp_path: Path) -> None:
    probe = Probe()
    first = await choose(tmp_path, probe)
    assert (first.accel, first.source) == ("kvm", "probe") and first.probe_ms is not None
    second = await choose(tmp_path, probe, "auto")
    assert (second.accel, second.source) == ("kvm", "cache")
    assert len(probe.calls) == 1 and probe.calls[0] == accel.PROBE_DEADLINE_S


async def test_auto_falls_back_to_tcg_and_caches_that(tmp_path: Path) -> None:
    probe = Probe(TimeoutError())
    first = await choose(tmp_path, probe)
    assert (first.accel, first.source) == ("tcg", "probe") and "KVM probe boot failed" in first.reason
    second = await choose(tmp_path, probe)
    assert (second.accel, second.source) == ("tcg", "cache") and len(probe.calls) == 1


async def test_missing_dev_kvm_means_tcg_without_probing(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(accel, "kvm_usable", lambda: "/dev/kvm: No such file or directory")
    probe = Probe()
    verdict = await choose(tmp_path, probe)
    assert (verdict.accel, verdict.source) == ("tcg", "no-device") and probe.calls == []
    assert not (tmp_path / "accel.json").exists()


async def test_a_corrupt_cache_is_ignored(tmp_path: Path) -> None:
    (tmp_path / "accel.json").write_text("{not json")
    probe = Probe()
    assert (await choose(tmp_path, probe)).source == "probe" and len(probe.calls) == 1


async def test_unknown_accelerator_is_refused(tmp_path: Path) -> None:
    with pytest.raises(AccelError, match="unknown accelerator"):
        await choose(tmp_path, Probe(), "hvf")
