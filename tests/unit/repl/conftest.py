"""Fixtures of the REPL unit tests: the real driver scripts, run as host subprocesses."""

from __future__ import annotations

import shutil
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path

import pytest

from engine.repl import session as session_mod
from engine.repl.local_host import LocalHost
from engine.repl.models import Language
from engine.repl.session import ReplSession

NODE = shutil.which("node")
needs_node = pytest.mark.skipif(NODE is None, reason="node is not installed on this host (apt-get install nodejs)")

MakeSession = Callable[[Language], Awaitable[ReplSession]]


@pytest.fixture(autouse=True)
def short_grace(monkeypatch: pytest.MonkeyPatch) -> None:
    """An interrupted run gets 0.5 s to stop, not 2 s: the tests stay quick."""
    monkeypatch.setattr(session_mod, "GRACE_S", 0.5)


@pytest.fixture
async def host(tmp_path: Path) -> AsyncIterator[LocalHost]:
    host = LocalHost(tmp_path)
    yield host
    await host.kill_all()


@pytest.fixture
async def make_session(host: LocalHost) -> AsyncIterator[MakeSession]:
    made: list[ReplSession] = []

    async def make(language: Language) -> ReplSession:
        session = ReplSession(host, language)
        made.append(session)
        return session

    yield make
    for session in made:
        await session.close()


@pytest.fixture
async def py(make_session: MakeSession) -> ReplSession:
    return await make_session("python")


@pytest.fixture
async def node(make_session: MakeSession) -> ReplSession:
    if NODE is None:
        pytest.skip("node is not installed on this host (apt-get install nodejs)")
    return await make_session("node")
