"""Fixtures of the unit tests (no VMs: the fake backend stands in for QEMU)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest

from engine.vm.agent import AgentClient
from engine.vm.fake import FakeBackend, FakeVm
from tests.unit.helpers import STEP_TIMEOUT_S, FakeClock, vm_spec

Launch = Callable[..., Awaitable[tuple[FakeVm, AgentClient]]]


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
async def launch(tmp_path: Path) -> AsyncIterator[Launch]:
    """Launch fake VMs, each with an AgentClient; everything is killed at teardown.

    Call it as ``vm, client = await launch(misbehave=None, ready=True, **backend_kwargs)``.
    """
    made: list[tuple[FakeVm, AgentClient]] = []

    async def _launch(misbehave: str | None = None, *, ready: bool = True, **kw: Any) -> tuple[FakeVm, AgentClient]:
        backend = FakeBackend(misbehave=misbehave, tmp_dir=tmp_path, **kw)
        vm = await backend.launch(vm_spec(tmp_path))
        client = AgentClient(vm.channel)
        made.append((vm, client))
        if ready:
            await asyncio.wait_for(client.wait_ready(), STEP_TIMEOUT_S)
        return vm, client

    yield _launch
    for vm, client in made:
        await client.close()
        await vm.kill()
