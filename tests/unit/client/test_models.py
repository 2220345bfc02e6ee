"""engine.client.models: the SDK's own wire models read everything the server's models write,
and stay lenient for servers (stock microsandbox) that send less."""

from __future__ import annotations

from engine.client.models import CommandResult, MetricsResult, ReplResult, RpcResponse, StartConfig
from engine.repl import models as server_models
from engine.server.service import SandboxConfig as ServerConfig
from engine.server.service import SandboxMetrics as ServerMetrics


def test_reads_the_servers_repl_result() -> None:
    sent = server_models.ReplResult(
        status="error",
        language="nodejs",
        output=[
            server_models.OutputLine(stream="stdout", text="1"),
            server_models.OutputLine(stream="stderr", text="x"),
        ],
    )
    got = ReplResult.model_validate(sent.model_dump(mode="json"))
    assert got.model_dump() == sent.model_dump()


def test_reads_the_servers_command_result() -> None:
    sent = server_models.CommandResult(
        command="ls",
        args=["-l"],
        exit_code=0,
        success=True,
        output=[server_models.OutputLine(stream="stdout", text="a")],
        stdout="a\n",
        stderr="",
    )
    got = CommandResult.model_validate(sent.model_dump(mode="json"))
    assert got.model_dump() == sent.model_dump()


def test_unknown_fields_are_ignored_and_metrics_extras_kept() -> None:
    assert ReplResult.model_validate({"status": "success", "output": [], "future": 1}).language == "unknown"
    metrics = MetricsResult.model_validate({"sandboxes": [{"name": "a", "host_rss_mib": 3.5}]})
    assert metrics.sandboxes[0].model_dump()["host_rss_mib"] == 3.5 and not metrics.sandboxes[0].running


def test_start_config_dump_is_what_the_server_expects() -> None:
    config = StartConfig(image="microsandbox/python", memory=512, cpus=1)
    assert config.wire() == {"image": "microsandbox/python", "memory": 512, "cpus": 1}
    ephemeral = StartConfig(image="microsandbox/python", memory=512, cpus=1, ephemeral=True)
    assert ephemeral.wire() == {"image": "microsandbox/python", "memory": 512, "cpus": 1, "ephemeral": True}
    ServerConfig.model_validate(ephemeral.wire())  # the server's model takes it


def test_reads_the_servers_metrics_additions() -> None:
    sent = ServerMetrics(namespace="n", name="a", running=True, cpu_usage=1.0, memory_usage=2.0, disk_usage=3,
                         started_by="restore", start_ms=95.5)  # fmt: skip
    [got] = MetricsResult.model_validate({"sandboxes": [sent.model_dump(mode="json")]}).sandboxes
    assert (got.started_by, got.start_ms, got.name) == ("restore", 95.5, "a")
    stopped = ServerMetrics(namespace="n", name="a", running=False, cpu_usage=None, memory_usage=None, disk_usage=None)
    [got] = MetricsResult.model_validate({"sandboxes": [stopped.model_dump(mode="json")]}).sandboxes
    assert (got.started_by, got.start_ms) == (None, None)


def test_response_envelope_tells_a_null_result_from_none() -> None:
    assert "result" in RpcResponse.model_validate({"jsonrpc": "2.0", "id": 1, "result": None}).model_fields_set
    assert "result" not in RpcResponse.model_validate({"jsonrpc": "2.0", "id": 1}).model_fields_set
