"""engine.client.sandbox: lifecycle, defaults, request shapes, ``async with`` semantics."""

from __future__ import annotations

import asyncio
import logging
import re

import httpx
import pytest

from engine.client import NodeSandbox, PythonSandbox, SandboxError, SandboxNotStartedError
from engine.client.rpc import CALL_MARGIN_S, CONNECT_TIMEOUT_S, DEFAULT_CALL_TIMEOUT_S, RpcClient
from tests.unit.client.conftest import SERVER_URL
from tests.unit.client.fake_server import FakeMsbServer, RpcFault


async def test_create_runs_code_with_persistent_state_and_stops(fake: FakeMsbServer, http: httpx.AsyncClient) -> None:
    async with PythonSandbox.create(name="demo", server_url=SERVER_URL, client=http) as sb:
        assert sb.is_started and ("default", "demo") in fake.sandboxes
        first = await sb.run("x = 41")
        exe = await sb.run("x + 1")
        assert await first.output() == "" and first.status == "success"
        assert await exe.output() == "42"
        assert exe.status == "success" and not exe.has_error() and await exe.error() == ""
    assert fake.methods() == ["sandbox.start", "sandbox.repl.run", "sandbox.repl.run", "sandbox.stop"]
    assert fake.sandboxes == {} and not sb.is_started
    assert not http.is_closed  # a client passed in belongs to the caller


async def test_start_request_shape_and_defaults(fake: FakeMsbServer, http: httpx.AsyncClient) -> None:
    async with PythonSandbox.create(server_url=SERVER_URL, client=http) as sb:
        assert re.fullmatch(r"sandbox-[0-9a-f]{8}", sb.name) and sb.namespace == "default"
    start = fake.calls[0]
    assert start.url == f"{SERVER_URL}/api/v1/rpc"
    assert start.params == {
        "sandbox": sb.name,
        "namespace": "default",
        "config": {"image": "microsandbox/python", "memory": 512, "cpus": 1},
    }
    # The HTTP wait covers a first-time image build: the start timeout plus a margin.
    assert start.timeout["read"] == pytest.approx(180.0 + CALL_MARGIN_S)
    assert start.timeout["connect"] == CONNECT_TIMEOUT_S
    assert fake.calls[1].params == {"sandbox": sb.name, "namespace": "default"}


async def test_start_with_explicit_settings(fake: FakeMsbServer, http: httpx.AsyncClient) -> None:
    async with PythonSandbox.create(
        name="big",
        namespace="team-a",
        server_url=SERVER_URL,
        client=http,
        image="python:3.12-slim",
        memory=2048,
        cpus=4,
        timeout=900,
    ):
        pass
    assert fake.calls[0].params == {
        "sandbox": "big",
        "namespace": "team-a",
        "config": {"image": "python:3.12-slim", "memory": 2048, "cpus": 4},
    }
    assert fake.calls[0].timeout["read"] == pytest.approx(900 + CALL_MARGIN_S)
    assert fake.calls[1].params == {"sandbox": "big", "namespace": "team-a"}


async def test_repl_request_shape_and_timeout(fake: FakeMsbServer, http: httpx.AsyncClient) -> None:
    async with PythonSandbox.create(name="r", server_url=SERVER_URL, client=http) as sb:
        await sb.run("1 + 1")
        await sb.run("2 + 2", timeout=5)
    plain, timed = fake.calls[1], fake.calls[2]
    assert plain.params == {"sandbox": "r", "namespace": "default", "language": "python", "code": "1 + 1"}
    assert plain.timeout["read"] == DEFAULT_CALL_TIMEOUT_S
    assert timed.params["timeout"] == 5 and timed.timeout["read"] == pytest.approx(5 + CALL_MARGIN_S)


async def test_node_sandbox_defaults(fake: FakeMsbServer, http: httpx.AsyncClient) -> None:
    async with NodeSandbox.create(name="js", server_url=SERVER_URL, client=http) as sb:
        assert await sb.get_default_image() == "microsandbox/node"
        exe = await sb.run("1 + 2")
        assert await exe.output() == "3" and exe.language == "node"
    assert fake.calls[0].params["config"]["image"] == "microsandbox/node"
    assert fake.calls[1].params["language"] == "node"


async def test_code_errors_are_results_not_exceptions(http: httpx.AsyncClient) -> None:
    async with PythonSandbox.create(server_url=SERVER_URL, client=http) as sb:
        exe = await sb.run("print('before'); 1 / 0")
    assert exe.status == "error" and exe.has_error()
    assert await exe.output() == "before"
    assert "ZeroDivisionError" in await exe.error()


async def test_env_vars_give_server_url_and_api_key(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MSB_SERVER_URL", "http://env-host:7777/")
    monkeypatch.setenv("MSB_API_KEY", "msb_env")
    fake = FakeMsbServer(api_key="msb_env")
    async with fake.client() as http, PythonSandbox.create(client=http) as sb:
        assert sb.server_url == "http://env-host:7777"
    assert fake.calls[0].url == "http://env-host:7777/api/v1/rpc"
    assert {c.headers["authorization"] for c in fake.calls} == {"Bearer msb_env"}


async def test_explicit_arguments_beat_env_vars(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MSB_SERVER_URL", "http://env-host:7777")
    monkeypatch.setenv("MSB_API_KEY", "msb_env")
    fake = FakeMsbServer(api_key="msb_arg")
    async with fake.client() as http, PythonSandbox.create(server_url=SERVER_URL, api_key="msb_arg", client=http):
        pass
    assert fake.calls[0].url == f"{SERVER_URL}/api/v1/rpc"
    assert fake.calls[0].headers["authorization"] == "Bearer msb_arg"


def test_defaults_without_env() -> None:
    sb = PythonSandbox()
    assert sb.server_url == "http://127.0.0.1:5555" and sb._rpc.api_key is None
    assert sb.namespace == "default" and not sb.is_started
    assert PythonSandbox().name != sb.name  # random names


async def test_no_api_key_sends_no_authorization_header(fake: FakeMsbServer, http: httpx.AsyncClient) -> None:
    async with PythonSandbox.create(server_url=SERVER_URL, client=http):
        pass
    assert all("authorization" not in c.headers for c in fake.calls)


async def test_manual_lifecycle(fake: FakeMsbServer, http: httpx.AsyncClient) -> None:
    sb = PythonSandbox(name="x", server_url=SERVER_URL, client=http)
    await sb.start(memory=256)
    await sb.start()  # already started: nothing is sent
    exe = await sb.run("6 * 7")
    assert await exe.output() == "42"
    await sb.stop()
    await sb.stop()  # already stopped: nothing is sent
    assert fake.methods() == ["sandbox.start", "sandbox.repl.run", "sandbox.stop"]
    assert fake.calls[0].params["config"]["memory"] == 256


async def test_instance_is_an_async_context_manager(fake: FakeMsbServer, http: httpx.AsyncClient) -> None:
    async with PythonSandbox(name="ctx", server_url=SERVER_URL, client=http) as sb:
        assert sb.is_started
    assert fake.methods() == ["sandbox.start", "sandbox.stop"]


@pytest.mark.parametrize("use", ["run", "command", "metrics"])
async def test_using_before_start_says_how_to_start(use: str, fake: FakeMsbServer, http: httpx.AsyncClient) -> None:
    sb = PythonSandbox(server_url=SERVER_URL, client=http)
    with pytest.raises(SandboxNotStartedError) as info:
        if use == "run":
            await sb.run("1")
        elif use == "command":
            await sb.command.run("ls")
        else:
            await sb.metrics.cpu()
    assert str(info.value) == "sandbox not started; use `async with PythonSandbox.create(...)` or `await sb.start()`"
    assert isinstance(info.value, SandboxError) and fake.calls == []


async def test_using_after_stop_is_refused(http: httpx.AsyncClient) -> None:
    sb = PythonSandbox(server_url=SERVER_URL, client=http)
    await sb.start()
    await sb.stop()
    with pytest.raises(SandboxNotStartedError):
        await sb.run("1")


async def test_async_with_stops_when_body_raises(fake: FakeMsbServer, http: httpx.AsyncClient) -> None:
    with pytest.raises(ValueError, match="body failed"):
        async with PythonSandbox.create(name="b", server_url=SERVER_URL, client=http):
            raise ValueError("body failed")
    assert fake.methods() == ["sandbox.start", "sandbox.stop"] and fake.sandboxes == {}


async def test_async_with_stops_when_the_task_is_cancelled(fake: FakeMsbServer, http: httpx.AsyncClient) -> None:
    entered = asyncio.Event()

    async def body() -> None:
        async with PythonSandbox.create(name="c", server_url=SERVER_URL, client=http):
            entered.set()
            await asyncio.Event().wait()  # parked until cancelled

    task = asyncio.create_task(body())
    await asyncio.wait_for(entered.wait(), 5)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await asyncio.wait_for(task, 5)
    assert fake.methods() == ["sandbox.start", "sandbox.stop"] and fake.sandboxes == {}


async def test_stop_error_is_logged_not_raised_over_body_error(
    fake: FakeMsbServer, http: httpx.AsyncClient, caplog: pytest.LogCaptureFixture
) -> None:
    fake.faults["sandbox.stop"] = RpcFault(-32603, "Internal error")
    with caplog.at_level(logging.WARNING, logger="engine.client"), pytest.raises(KeyError):
        async with PythonSandbox.create(name="b", server_url=SERVER_URL, client=http):
            raise KeyError("body")
    assert "could not stop sandbox default/b" in caplog.text and "Internal error" in caplog.text


async def test_stop_error_after_clean_body_is_raised(fake: FakeMsbServer, http: httpx.AsyncClient) -> None:
    fake.faults["sandbox.stop"] = RpcFault(-32603, "Internal error")
    with pytest.raises(SandboxError) as info:
        async with PythonSandbox.create(name="b", server_url=SERVER_URL, client=http):
            pass
    assert info.value.code == -32603 and "sandbox.stop failed: Internal error" in str(info.value)


async def test_server_error_carries_code_and_message(fake: FakeMsbServer, http: httpx.AsyncClient) -> None:
    sb = PythonSandbox(name="gone", server_url=SERVER_URL, client=http)
    await sb.start()
    fake.sandboxes.clear()  # e.g. the server was restarted
    with pytest.raises(SandboxError) as info:
        await sb.run("1")
    assert info.value.code == -32602
    assert "sandbox.repl.run failed: Invalid params: Sandbox 'gone' not found" in str(info.value)


async def test_bad_start_arguments_are_refused_locally(fake: FakeMsbServer, http: httpx.AsyncClient) -> None:
    sb = PythonSandbox(server_url=SERVER_URL, client=http)
    with pytest.raises(SandboxError) as info:
        await sb.start(memory=0)
    assert info.value.code == -32602 and fake.calls == [] and not sb.is_started


async def test_failed_start_leaves_the_sandbox_stopped(fake: FakeMsbServer, http: httpx.AsyncClient) -> None:
    fake.faults["sandbox.start"] = RpcFault(-32011, "image microsandbox/python could not be pulled", {"hint": "retry"})
    with pytest.raises(SandboxError) as info:
        async with PythonSandbox.create(server_url=SERVER_URL, client=http):
            pytest.fail("the body must not run")
    assert info.value.code == -32011 and "hint: retry" in str(info.value)
    assert fake.methods() == ["sandbox.start"]


async def test_owned_client_is_closed_on_exit_and_on_failed_start(
    fake: FakeMsbServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    made: list[httpx.AsyncClient] = []

    def new_client(self: RpcClient) -> httpx.AsyncClient:
        made.append(fake.client())
        return made[-1]

    monkeypatch.setattr(RpcClient, "_new_client", new_client)
    async with PythonSandbox.create(server_url=SERVER_URL) as sb:
        await sb.run("1")
    assert len(made) == 1 and made[0].is_closed  # one client per sandbox object, closed on exit
    fake.faults["sandbox.start"] = RpcFault(-32003, "VMM failed")
    with pytest.raises(SandboxError):
        async with PythonSandbox.create(server_url=SERVER_URL):
            pass
    assert len(made) == 2 and made[1].is_closed


def test_repr_names_the_sandbox_but_not_the_key() -> None:
    text = repr(PythonSandbox(name="n", api_key="msb_secret"))
    assert "name='n'" in text and "secret" not in text


async def test_an_ephemeral_start_sends_config_ephemeral(fake: FakeMsbServer, http: httpx.AsyncClient) -> None:
    async with PythonSandbox.create(name="e", server_url=SERVER_URL, client=http, ephemeral=True):
        pass
    sb = PythonSandbox(name="f", server_url=SERVER_URL, client=http)
    await sb.start(ephemeral=True)
    await sb.stop()
    starts = [c.params["config"] for c in fake.calls if c.method == "sandbox.start"]
    assert starts == [{"image": "microsandbox/python", "memory": 512, "cpus": 1, "ephemeral": True}] * 2
