"""engine.client.execution: Execution and CommandExecution read like microsandbox's SDK."""

from __future__ import annotations

from engine.client.execution import CommandExecution, Execution
from engine.client.models import CommandResult, ReplResult


def _repl(status: str, *lines: tuple[str, str]) -> Execution:
    output = [{"stream": s, "text": t} for s, t in lines]
    return Execution(ReplResult.model_validate({"status": status, "language": "python", "output": output}))


async def test_output_and_error_join_lines_per_stream() -> None:
    exe = _repl("success", ("stdout", "a"), ("stderr", "w1"), ("stdout", ""), ("stdout", "b"), ("stderr", "w2"))
    assert await exe.output() == "a\n\nb"
    assert await exe.error() == "w1\nw2"
    assert [line.text for line in exe.lines] == ["a", "w1", "", "b", "w2"]
    assert exe.status == "success" and exe.language == "python"


async def test_empty_streams_are_empty_strings() -> None:
    exe = _repl("success")
    assert await exe.output() == "" and await exe.error() == "" and not exe.has_error()


def test_has_error_follows_status_or_stderr() -> None:
    assert _repl("error").has_error()
    assert _repl("success", ("stderr", "DeprecationWarning: x")).has_error()
    assert not _repl("success", ("stderr", "")).has_error()
    assert not _repl("success", ("stdout", "ok")).has_error()


def test_repr() -> None:
    assert repr(_repl("error", ("stderr", "x"))) == "Execution(status='error', language='python', lines=1)"


async def test_command_execution() -> None:
    result = CommandResult.model_validate(
        {
            "command": "fail",
            "args": ["-x"],
            "exit_code": 2,
            "success": False,
            "output": [{"stream": "stdout", "text": "partial"}, {"stream": "stderr", "text": "boom"}],
        }
    )
    cmd = CommandExecution(result)
    assert (cmd.command, cmd.args, cmd.exit_code, cmd.success) == ("fail", ["-x"], 2, False)
    assert await cmd.output() == "partial" and await cmd.error() == "boom"
    assert len(cmd.lines) == 2 and result.stdout is None  # a server without msb's additions
    assert "exit_code=2" in repr(cmd)


def test_missing_fields_get_microsandbox_defaults() -> None:
    cmd = CommandExecution(CommandResult.model_validate({}))
    assert cmd.exit_code == -1 and not cmd.success and cmd.args == []
    assert _repl("unknown").status == "unknown"
