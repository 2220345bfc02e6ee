"""A hostile or broken driver cannot hurt the host (engine/repl/driver_process.py, via the session)."""

from __future__ import annotations

import textwrap
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import pytest

from engine.errors import ConfigError, ExecError
from engine.repl import session as session_mod
from engine.repl.local_host import LocalHost
from engine.repl.session import ReplSession
from tests.unit.repl.helpers import run, stderr, stdout

# A stand-in driver: answers "ready", then handles each request with BEHAVIOUR (python code
# that may use `rid`, `send` and `out`).
TEMPLATE = """
import json, os, sys
out = os.fdopen(os.dup(1), "wb", buffering=0)
def send(obj):
    out.write((json.dumps(obj) + "\\n").encode())
{startup}
for raw in sys.stdin:
    rid = json.loads(raw)["id"]
{behaviour}
"""


class ScriptedHost(LocalHost):
    """Runs a given script instead of the real driver."""

    def __init__(self, root: Path, behaviour: str, startup: str = "send({'type': 'ready'})") -> None:
        super().__init__(root)
        self.script = TEMPLATE.format(startup=startup, behaviour=textwrap.indent(textwrap.dedent(behaviour), "    "))

    async def write_file(self, path: str, data: bytes, *, mode: int = 0o644) -> None:
        await super().write_file(path, self.script.encode(), mode=mode)


Scripted = Callable[..., ReplSession]


@pytest.fixture
async def scripted(tmp_path: Path) -> AsyncIterator[Scripted]:
    hosts: list[ScriptedHost] = []
    sessions: list[ReplSession] = []

    def make(behaviour: str, **kw: str) -> ReplSession:
        host = ScriptedHost(tmp_path, behaviour, **kw)
        hosts.append(host)
        sessions.append(ReplSession(host, "python"))
        return sessions[-1]

    yield make
    for session in sessions:
        await session.close()
    for host in hosts:
        await host.kill_all()


async def test_stale_and_foreign_messages_are_dropped(scripted: Scripted) -> None:
    session = scripted("""
        send({"type": "out", "id": rid - 1, "stream": "stdout", "data": "stale\\n"})
        send({"type": "done", "id": rid + 1, "status": "error"})
        send({"type": "ready"})
        send({"type": "out", "id": rid, "stream": "stdout", "data": "mine\\n"})
        send({"type": "done", "id": rid, "status": "success"})
        send({"type": "out", "id": rid, "stream": "stdout", "data": "after done\\n"})
    """)
    for _ in range(2):
        status, out = await run(session, "z")
        assert (status, stdout(out)) == ("success", ["mine"])


@pytest.mark.parametrize(
    "behaviour",
    [
        'out.write(b"this is not json\\n")',
        'out.write(b"{" + b"x" * (2 << 20))',
        'send({"type": "done", "id": rid, "status": "pwned"})',
    ],
)
async def test_protocol_violation_stops_and_restarts_the_driver(scripted: Scripted, behaviour: str) -> None:
    session = scripted(behaviour + '\nsend({"type": "done", "id": rid, "status": "success"})')
    status, out = await run(session, "1")
    assert status == "error"
    assert "broke the REPL protocol" in out[-1].text and "restart on the next call" in out[-1].text
    status, out = await run(session, "1")
    assert status == "error" and "broke the REPL protocol" in out[-1].text  # a fresh driver, same bug


async def test_driver_dying_at_start_up_is_an_exec_error_with_its_stderr(scripted: Scripted) -> None:
    session = scripted("pass", startup="sys.stderr.write('driver needs Python 3.8\\n'); sys.exit(9)")
    with pytest.raises(ExecError, match=r"exited at start-up \(status 9\)\ndriver needs Python 3.8"):
        await run(session, "1")


async def test_driver_that_never_gets_ready(scripted: Scripted, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(session_mod, "START_TIMEOUT_S", 0.3)
    session = scripted("pass", startup="import time; time.sleep(30)")
    with pytest.raises(ExecError, match=r"did not start within 0\.3 s"):
        await run(session, "1")


async def test_missing_interpreter_is_a_config_error(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    spec = session_mod.DRIVERS["python"]
    monkeypatch.setitem(session_mod.DRIVERS, "python", spec.__class__(
        spec.resource, spec.guest_path, (("no-such-python3",),), "python3", "microsandbox/python"))  # fmt: skip
    session = ReplSession(LocalHost(tmp_path), "python")
    with pytest.raises(ConfigError) as err:
        await run(session, "1")
    assert err.value.message == "this image has no python3; use microsandbox/python or an image with python3"
    assert err.value.hint and "microsandbox/python" in err.value.hint


async def test_output_of_a_run_is_complete_before_done(scripted: Scripted) -> None:
    session = scripted("""
        for i in range(200):
            send({"type": "out", "id": rid, "stream": "stderr" if i % 2 else "stdout", "data": f"{i}\\n"})
        send({"type": "done", "id": rid, "status": "success"})
    """)
    status, out = await run(session, "1")
    assert status == "success" and len(out) == 200 and stderr(out).startswith("1\n3\n")
