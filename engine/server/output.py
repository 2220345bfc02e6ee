"""``sandbox.command.run``'s output: a command's chunks collected into lines, bounded."""

from __future__ import annotations

from engine.repl.models import CommandResult, OutputLine
from engine.sandbox.sandbox import Sandbox


async def collect_command(sandbox: Sandbox, command: str, args: list[str], timeout: float | None,
                          max_bytes: int) -> CommandResult:  # fmt: skip
    """Run a command (no shell) and keep its output as lines in arrival order, bounded."""
    proc = await sandbox.spawn([command, *args], timeout=timeout)
    lines: list[OutputLine] = []
    partial = {"stdout": b"", "stderr": b""}
    whole = {"stdout": bytearray(), "stderr": bytearray()}
    truncated = False
    async for chunk in proc:
        stream = "stderr" if chunk.stream == "stderr" else "stdout"
        room = max_bytes - len(whole[stream])
        data = chunk.data[: max(room, 0)]
        truncated |= len(data) < len(chunk.data)
        whole[stream] += data
        buf = partial[stream] + data
        *done, partial[stream] = buf.split(b"\n")
        lines.extend(OutputLine(stream=stream, text=ln.decode("utf-8", "replace")) for ln in done)  # type: ignore[arg-type]
    for stream, rest in partial.items():
        if rest:
            lines.append(OutputLine(stream=stream, text=rest.decode("utf-8", "replace")))  # type: ignore[arg-type]
    status = await proc.wait()
    exit_code = status.exit_code
    if status.timed_out:
        lines.append(OutputLine(stream="stderr", text=f"msb: command timed out after {timeout} s and was killed"))
    if truncated:
        lines.append(OutputLine(stream="stderr", text=f"msb: output truncated at {max_bytes} bytes per stream"))
    return CommandResult(
        command=command, args=args, exit_code=exit_code, success=exit_code == 0 and not status.timed_out,
        output=lines, stdout=whole["stdout"].decode("utf-8", "replace"),
        stderr=whole["stderr"].decode("utf-8", "replace"),
    )  # fmt: skip
