"""engine.client.creation: ``create()`` is awaitable *and* an async context manager (the guide's
two patterns), and the execution attributes guides read (``exit_code``, ``stdout``, ``stderr``)."""

from __future__ import annotations

import httpx
import pytest

from engine.client import CommandExecution, NodeSandbox, PythonSandbox, SandboxError
from engine.client.creation import SandboxCreation
from tests.unit.client.conftest import SERVER_URL
from tests.unit.client.fake_server import FakeMsbServer, RpcFault


async def test_await_create_then_start_run_stop(fake: FakeMsbServer, http: httpx.AsyncClient) -> None:
    """The guide's long-lived pattern, as typed."""
    sb = await PythonSandbox.create(name="long-lived-agent-env", server_url=SERVER_URL, client=http)
    try:
        await sb.start()  # already started by create(): nothing is sent
        execution = await sb.run("6 * 7")
        assert await execution.output() == "42"
        assert (execution.exit_code, execution.stdout, execution.stderr) == (0, "42", "")
    finally:
        await sb.stop()
    assert fake.methods() == ["sandbox.start", "sandbox.repl.run", "sandbox.stop"]
    assert fake.sandboxes == {} and not sb.is_started


@pytest.mark.parametrize("cls", [PythonSandbox, NodeSandbox])
async def test_await_create_passes_the_start_settings(cls: type[PythonSandbox], fake: FakeMsbServer,
                                                      http: httpx.AsyncClient) -> None:  # fmt: skip
    sb = await cls.create(name="n", server_url=SERVER_URL, client=http, memory=256, cpus=2, ephemeral=True)
    assert sb.is_started and isinstance(sb, cls)
    config = fake.calls[0].params["config"]
    assert (config["image"], config["memory"], config["cpus"], config["ephemeral"]) == (
        cls.default_image, 256, 2, True)  # fmt: skip
    await sb.stop()


async def test_async_with_create_still_starts_and_stops(fake: FakeMsbServer, http: httpx.AsyncClient) -> None:
    async with PythonSandbox.create(name="t", server_url=SERVER_URL, client=http) as sb:
        assert sb.is_started
    assert fake.methods() == ["sandbox.start", "sandbox.stop"]


async def test_an_unused_create_sends_nothing(fake: FakeMsbServer, http: httpx.AsyncClient) -> None:
    creation = PythonSandbox.create(name="never", server_url=SERVER_URL, client=http)
    assert isinstance(creation, SandboxCreation) and not creation.sandbox.is_started
    assert fake.calls == [] and "never" in repr(creation)


async def test_a_failed_awaited_create_raises_and_leaves_it_stopped(fake: FakeMsbServer,
                                                                    http: httpx.AsyncClient) -> None:  # fmt: skip
    fake.faults["sandbox.start"] = RpcFault(-32603, "no room")
    with pytest.raises(SandboxError, match="no room"):
        await PythonSandbox.create(server_url=SERVER_URL, client=http)
    assert fake.sandboxes == {}


async def test_repl_errors_have_exit_code_1_and_stderr(http: httpx.AsyncClient) -> None:
    async with PythonSandbox.create(server_url=SERVER_URL, client=http) as sb:
        execution = await sb.run("1 / 0")
    assert execution.exit_code == 1 and "ZeroDivisionError" in execution.stderr
    assert execution.stderr == await execution.error() and execution.stdout == ""


async def test_command_results_have_whole_stdout_and_stderr(http: httpx.AsyncClient) -> None:
    async with PythonSandbox.create(server_url=SERVER_URL, client=http) as sb:
        ok = await sb.command.run("ls")
        bad = await sb.command.run("fail")
    assert (ok.exit_code, ok.stdout, ok.stderr) == (0, "bin\netc\nusr\n", "")
    assert (bad.exit_code, bad.stdout, bad.stderr) == (2, "partial\n", "boom\nbang\n")
    older = CommandExecution(bad.result.model_copy(update={"stdout": None, "stderr": None}))
    assert (older.stdout, older.stderr) == ("partial", "boom\nbang")  # a server without the whole streams
