"""The supervisor's control socket over the fake backend: attach to the main process, spawn
extra processes, status, stop, hostile clients, and the log bound."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from engine.project.control import ControlError, RemoteProcess, request
from engine.project.runtime import SandboxDir
from engine.project.session import BoundedLog
from engine.project.supervisor import Supervisor
from engine.sandbox.engine import Engine
from engine.sandbox.spec import SandboxSpec
from engine.vm.fake import FakeBackend
from engine.vm.kernel import Kernel
from tests.unit.helpers import STEP_TIMEOUT_S

KERNEL = Kernel(kind="custom", path=Path("/nonexistent/bzImage"), version="0.0-fake")


async def _supervise(tmp_path: Path, command: list[str] | None, *, wait_attach: bool = False
                     ) -> AsyncIterator[tuple[Supervisor, Path]]:  # fmt: skip
    engine = Engine(backend=FakeBackend(tmp_dir=tmp_path), kernel=KERNEL, accel="tcg", cache_dir=tmp_path / "cache")
    (tmp_path / "rootfs").mkdir()
    sandbox = await engine.start(SandboxSpec(name="sb", rootfs=tmp_path / "rootfs", network="none"))
    sdir = SandboxDir(tmp_path / "menv" / "sb", "sb")
    sdir.path.mkdir(parents=True)
    sup = Supervisor(sdir, sandbox, command, wait_attach)
    sock = tmp_path / "c.sock"
    server = await asyncio.start_unix_server(sup.handle, path=str(sock))
    runner = asyncio.create_task(sup.run())
    try:
        yield sup, sock
    finally:
        sup.done.set()
        await runner
        server.close()
        for task in list(sup.sessions):
            task.cancel()
        await sandbox.kill()
        if sup.main is not None:
            sup.main.close()


@pytest.fixture
async def idle(tmp_path: Path) -> AsyncIterator[tuple[Supervisor, Path]]:
    async for pair in _supervise(tmp_path, None):
        yield pair


@pytest.fixture
async def waiting(tmp_path: Path) -> AsyncIterator[tuple[Supervisor, Path]]:
    async for pair in _supervise(tmp_path, ["sh", "-c", "read line; echo got:$line; echo oops >&2; exit 5"],
                                 wait_attach=True):  # fmt: skip
        yield pair


async def _collect(proc: RemoteProcess) -> tuple[bytes, bytes]:
    out, err = b"", b""
    async for chunk in proc:
        if chunk.stream == "stderr":
            err += chunk.data
        else:
            out += chunk.data
    return out, err


async def test_attach_runs_the_main_process_with_stdin_and_logs_it(waiting: tuple[Supervisor, Path]) -> None:
    sup, sock = waiting
    async with asyncio.timeout(STEP_TIMEOUT_S):
        assert sup.main is None  # waits for its client
        proc = await RemoteProcess.open(sock, {"op": "attach"})
        await proc.write(b"hello\n")
        out, err = await _collect(proc)
        status = await proc.wait()
        await proc.close()
        await sup.done.wait()  # the main process ending ends the sandbox
    assert (out, err, status.exit_code) == (b"got:hello\n", b"oops\n", 5)
    assert sup.exit_code == 5 and "exited with 5" in sup.reason
    log = sup.sdir.output_log.read_bytes()
    assert b"got:hello" in log and b"main process exited with 5" in log


async def test_spawn_status_and_stop(idle: tuple[Supervisor, Path]) -> None:
    sup, sock = idle
    async with asyncio.timeout(STEP_TIMEOUT_S):
        proc = await RemoteProcess.open(sock, {"op": "spawn", "argv": ["sh", "-c", "echo $((6 * 7)); exit 3"]})
        assert await _collect(proc) == (b"42\n", b"")
        assert (await proc.wait()).exit_code == 3
        status = await request(sock, {"op": "status"})
        assert status["name"] == "sb" and status["main_running"] is False and status["command"] is None
        assert status["started_by"] == "boot" and status["start_ms"] == round(sup.sandbox.start_info.ms, 1)
        with pytest.raises(ControlError, match="no main process"):
            await RemoteProcess.open(sock, {"op": "attach"})
        assert (await request(sock, {"op": "stop"}))["t"] == "ok"
        await sup.done.wait()
    assert sup.reason == "stopped by request"


async def test_a_spawned_process_dies_with_its_client(idle: tuple[Supervisor, Path], tmp_path: Path) -> None:
    sup, sock = idle
    pidfile = tmp_path / "pid"
    async with asyncio.timeout(STEP_TIMEOUT_S):
        argv = ["sh", "-c", f"echo $$ > {pidfile}; echo up; exec sleep 30"]
        proc = await RemoteProcess.open(sock, {"op": "spawn", "argv": argv})
        assert (await proc.read()).data == b"up\n"  # type: ignore[union-attr]
        pid = int(pidfile.read_text())
        await proc.close()
        while sup.sessions:  # the connection's session ends once its process is gone
            await asyncio.sleep(0.01)
        while Path(f"/proc/{pid}").exists() and Path(f"/proc/{pid}/stat").read_text().split(") ")[1][0] != "Z":
            await asyncio.sleep(0.01)


@pytest.mark.parametrize(
    ("line", "message"),
    [
        (b"not json\n", "not JSON"),
        (b"[1]\n", "not an object"),
        (b'{"op": "spawn", "argv": []}\n', "non-empty list"),
        (b'{"op": "spawn", "argv": "sh"}\n', "non-empty list"),
        (b'{"op": "nope"}\n', "unknown control op"),
    ],
)
async def test_bad_requests_get_an_error_and_the_supervisor_keeps_serving(
    idle: tuple[Supervisor, Path], line: bytes, message: str
) -> None:
    _, sock = idle
    async with asyncio.timeout(STEP_TIMEOUT_S):
        reader, writer = await asyncio.open_unix_connection(str(sock))
        writer.write(line)
        answer = json.loads(await reader.readline())
        writer.close()
        assert answer["t"] == "error" and message in answer["message"]
        assert (await request(sock, {"op": "status"}))["name"] == "sb"


async def test_an_oversized_line_is_refused(idle: tuple[Supervisor, Path]) -> None:
    _, sock = idle
    async with asyncio.timeout(STEP_TIMEOUT_S):
        reader, writer = await asyncio.open_unix_connection(str(sock))
        writer.write(b"x" * (2 << 20))
        answer = await reader.readline()
        writer.close()
        assert b"too long" in answer
        assert (await request(sock, {"op": "status"}))["name"] == "sb"


def test_bounded_log_rotates_once(tmp_path: Path) -> None:
    log = BoundedLog(tmp_path / "output.log", max_bytes=100)
    for i in range(25):
        log.write(f"line {i:02d}\n".encode())  # 8 bytes each
    log.close()
    current = (tmp_path / "output.log").read_bytes()
    previous = (tmp_path / "output.log.1").read_bytes()
    assert len(current) <= 100 and len(previous) <= 100
    assert current.endswith(b"line 24\n") and (previous + current).count(b"\n") <= 25


def test_state_is_crashed_when_the_supervisor_is_gone(tmp_path: Path) -> None:
    from engine.project.runtime import SandboxState

    sdir = SandboxDir(tmp_path / "sb", "sb")
    assert sdir.state().status == "stopped"
    sdir.write_state(SandboxState(name="sb", status="running", socket="/nonexistent", supervisor_pid=1))
    st = sdir.state()
    assert st.status == "crashed" and st.socket is None and "gone" in (st.message or "")
    (sdir.path / "state.json").write_text("{garbage")
    assert sdir.state().status == "stopped"

