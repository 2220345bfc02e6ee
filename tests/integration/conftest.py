"""Fixtures for tests that boot real VMs (marked ``vm``)."""

from __future__ import annotations

import os
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from engine import paths
from engine.sandbox.engine import Engine
from engine.sandbox.sandbox import Sandbox
from engine.sandbox.spec import SandboxSpec

BUSYBOX = paths.cache_dir() / "rootfs-dirs" / "busybox"


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if "integration" in str(item.fspath):
            item.add_marker(pytest.mark.vm)


@pytest.fixture(scope="session")
def busybox_rootfs() -> Path:
    if not (BUSYBOX / ".complete").exists():
        pytest.fail(f"{BUSYBOX} is missing: run `make setup` (scripts/build-test-rootfs.sh)")
    return BUSYBOX


BACKENDS = tuple(b for b in os.environ.get("MSB_TEST_BACKENDS", "qemu,gvisor").split(",") if b)
"""The backends the shared engine suite runs on (every test that takes ``engine`` or ``sandbox``)."""


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    """Run each test that uses ``backend_name`` once per backend, or on QEMU alone when it is
    marked ``qemu_only`` (it is about QEMU's kernel, console or devices)."""
    if "backend_name" in metafunc.fixturenames:
        only_qemu = metafunc.definition.get_closest_marker("qemu_only") is not None
        metafunc.parametrize("backend_name", ["qemu"] if only_qemu else list(BACKENDS))


@pytest.fixture
def engine(backend_name: str) -> Engine:
    return Engine(backend=backend_name)


@pytest.fixture
async def sandbox(engine: Engine, busybox_rootfs: Path) -> AsyncIterator[Sandbox]:
    sb = await engine.start(SandboxSpec(name="t-" + os.urandom(3).hex(), rootfs=busybox_rootfs, memory_mib=256))
    try:
        yield sb
    finally:
        await sb.kill()


def pid_alive(pid: int | None) -> bool:
    if pid is None:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    try:  # a zombie is not alive
        with open(f"/proc/{pid}/stat") as f:
            return f.read().split(") ", 1)[1][0] != "Z"
    except OSError:
        return False


BASE_IMAGES = ("microsandbox/python", "microsandbox/node")


@pytest.fixture(scope="session")
def base_images() -> None:
    """The SDK's default images in the default store, built offline only when missing
    (~35 s / ~60 s the first time; cached in $MSB_CACHE_DIR/images afterwards)."""
    import shutil
    import time

    from engine.images.resolve import build_offline
    from engine.images.store import ImageStore

    store = ImageStore.default()
    for name in BASE_IMAGES:
        if store.find(name) is not None:
            continue
        if shutil.which("mmdebstrap") is None:
            pytest.fail(f"{name} is not in the store and mmdebstrap is missing to build it (run `make setup`)")
        started = time.monotonic()
        build_offline(name, store)
        print(f"built {name} in {time.monotonic() - started:.1f} s")
