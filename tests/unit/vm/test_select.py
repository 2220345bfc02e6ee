"""Backend selection: the auto order, forcing, and errors that carry the probe's reason."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from engine.errors import ConfigError, VmError
from engine.vm import select
from engine.vm.select import BackendVerdict, backend_label, choose_backend


class Marker:
    def __init__(self, name: str) -> None:
        self.name = name


def install(monkeypatch: pytest.MonkeyPatch, **verdicts: tuple[bool, str | None]) -> list[str]:
    """Replace the probes: name -> (usable, accel). Returns the order they were called in."""
    calls: list[str] = []

    def make(name: str, usable: bool, accel: str | None) -> Any:
        async def probe(cache_dir: Path) -> tuple[BackendVerdict, Any]:
            calls.append(name)
            v = BackendVerdict(name=name, usable=usable, reason=f"{name} probe said {'yes' if usable else 'no'}",  # type: ignore[arg-type]
                               accel=accel, isolation="x", hint=None if usable else f"fix {name}")  # fmt: skip
            return v, Marker(name) if usable else None

        return probe

    monkeypatch.setattr(select, "PROBES", {n: make(n, *v) for n, v in verdicts.items()})
    monkeypatch.delenv("MSB_BACKEND", raising=False)
    return calls


async def test_auto_prefers_krun_then_qemu_kvm(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    install(monkeypatch, krun=(True, "kvm"), qemu=(True, "kvm"), gvisor=(True, None))
    backend, verdict = await choose_backend(None, tmp_path)
    assert verdict.name == "krun" and backend.name == "krun"
    install(monkeypatch, krun=(False, None), qemu=(True, "kvm"), gvisor=(True, None))
    assert (await choose_backend(None, tmp_path))[1].name == "qemu"


async def test_auto_takes_gvisor_over_tcg_and_tcg_last(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    calls = install(monkeypatch, krun=(False, None), qemu=(True, "tcg"), gvisor=(True, None))
    _, verdict = await choose_backend("auto", tmp_path)
    assert verdict.name == "gvisor" and calls == ["krun", "qemu", "gvisor"]
    install(monkeypatch, krun=(False, None), qemu=(True, "tcg"), gvisor=(False, None))
    _, verdict = await choose_backend(None, tmp_path)
    assert verdict.name == "qemu" and verdict.accel == "tcg"


async def test_nothing_works_names_every_reason(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    install(monkeypatch, krun=(False, None), qemu=(False, None), gvisor=(False, None))
    with pytest.raises(VmError, match=r"krun probe said no.*qemu probe said no.*gvisor probe said no"):
        await choose_backend(None, tmp_path)


async def test_forced_backend_that_fails_carries_the_reason(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """A forced krun is probed (its start cannot be undone); qemu and gVisor are built directly."""
    calls = install(monkeypatch, krun=(False, None), qemu=(True, "tcg"), gvisor=(True, None))
    with pytest.raises(VmError, match=r"'krun' was asked for .*krun probe said no") as err:
        await choose_backend("krun", tmp_path)
    assert err.value.hint == "fix krun"
    monkeypatch.setattr(select, "FORCED", {"qemu": lambda source: Marker("qemu")})
    backend, verdict = await choose_backend("QEMU", tmp_path)
    assert verdict.name == "qemu" and backend.name == "qemu" and "asked for by the request" in verdict.reason
    assert calls == ["krun"]  # qemu is not probed when forced: its first start is the probe


async def test_env_and_unknown_names(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    install(monkeypatch, krun=(False, None), qemu=(True, "tcg"), gvisor=(True, None))
    forced = {"qemu": lambda source: Marker("qemu"), "gvisor": lambda source: Marker("gvisor")}
    monkeypatch.setattr(select, "FORCED", forced)
    monkeypatch.setenv("MSB_BACKEND", "qemu")
    assert (await choose_backend(None, tmp_path))[1].name == "qemu"
    assert (await choose_backend("gvisor", tmp_path))[1].name == "gvisor"  # the request beats the env
    monkeypatch.setenv("MSB_BACKEND", "docker")
    with pytest.raises(ConfigError, match="unknown backend 'docker' \\(from MSB_BACKEND\\)"):
        await choose_backend(None, tmp_path)


def test_labels_and_isolation_words() -> None:
    assert backend_label("gvisor", None) == "gVisor"
    assert backend_label("qemu", "tcg") == "QEMU/TCG"
    assert backend_label("krun", "kvm") == "libkrun/KVM"
    assert "not treat TCG as a security boundary" in select.isolation_of("qemu", "tcg")
    assert "user-space kernel" in select.isolation_of("gvisor", None)
