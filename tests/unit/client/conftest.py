"""Fixtures of the SDK tests: an in-memory fake server and an httpx client wired to it."""

from __future__ import annotations

from collections.abc import AsyncIterator

import httpx
import pytest

from tests.unit.client.fake_server import FakeMsbServer

SERVER_URL = "http://msb.test:5555"


@pytest.fixture(autouse=True)
def _clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    # The developer's own MSB_* settings must not leak into the defaults under test.
    monkeypatch.delenv("MSB_SERVER_URL", raising=False)
    monkeypatch.delenv("MSB_API_KEY", raising=False)


@pytest.fixture
def fake() -> FakeMsbServer:
    return FakeMsbServer()


@pytest.fixture
async def http(fake: FakeMsbServer) -> AsyncIterator[httpx.AsyncClient]:
    async with fake.client() as client:
        yield client
