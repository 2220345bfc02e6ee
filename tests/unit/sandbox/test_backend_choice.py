"""The engine's backend choice: auto picks by the probes, and a sandbox the chosen backend
cannot honour runs on the next one instead (auto only); a forced backend refuses it."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from engine.errors import ConfigError
from engine.sandbox.engine import Engine
from engine.sandbox.spec import SandboxSpec
from engine.vm import select
from engine.vm.backend import VmSpec
from engine.vm.fake import FakeBackend
from engine.vm.select import BackendVerdict


class PickyBackend(FakeBackend):
    """Stands in for libkrun: refuses every network scope but ``none``."""

    name = "krun"

    def check_spec(self, spec: VmSpec) -> None:
        if spec.network != "none":
            raise ConfigError(f"scope {spec.network!r} is not supported by krun")


@pytest.fixture
def backends(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> dict[str, FakeBackend]:
    made: dict[str, FakeBackend] = {"krun": PickyBackend(tmp_dir=tmp_path), "gvisor": FakeBackend(tmp_dir=tmp_path)}

    def probe(name: str) -> Any:
        async def run(cache_dir: Path) -> tuple[BackendVerdict, Any]:
            usable = name in made
            v = BackendVerdict(name=name, usable=usable, reason=f"{name} probe", isolation="x")  # type: ignore[arg-type]
            return v, made.get(name)

        return run

    monkeypatch.setattr(select, "PROBES", {n: probe(n) for n in ("krun", "qemu", "gvisor")})
    monkeypatch.setattr(select, "FORCED", {"gvisor": lambda source: made["gvisor"]})
    monkeypatch.delenv("MSB_BACKEND", raising=False)
    return made


def spec(tmp_path: Path, name: str, network: str) -> SandboxSpec:
    rootfs = tmp_path / "rootfs"
    rootfs.mkdir(exist_ok=True)
    return SandboxSpec(name=name, rootfs=rootfs, network=network)  # type: ignore[arg-type]


async def test_auto_falls_back_for_a_spec_the_first_choice_refuses(
    backends: dict[str, FakeBackend], tmp_path: Path
) -> None:
    engine = Engine(cache_dir=tmp_path / "cache")
    offline = await engine.start(spec(tmp_path, "offline", "none"))
    online = await engine.start(spec(tmp_path, "online", "public"))
    try:
        assert offline.backend == "krun" and len(backends["krun"].vms) == 1
        assert online.backend == "fake" and len(backends["gvisor"].vms) == 1  # the gvisor slot's fake
        assert engine.backend_verdict is not None and engine.backend_verdict.name == "krun"
    finally:
        await offline.kill()
        await online.kill()


async def test_a_forced_backend_refuses_instead_of_falling_back(
    backends: dict[str, FakeBackend], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(select, "FORCED", {})
    engine = Engine(backend="krun", cache_dir=tmp_path / "cache")
    with pytest.raises(ConfigError, match="not supported by krun"):
        await engine.start(spec(tmp_path, "online", "public"))
    assert backends["gvisor"].vms == []
