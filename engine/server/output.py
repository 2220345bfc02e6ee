"""``sandbox.command.run``'s output: a command's chunks collected into lines, bounded.

Per execution: at most ``Limits.max_output_lines`` lines and ``Limits.max_output_bytes`` of
line text in ``output``, and ``max_output_bytes`` per stream in ``stdout``/``stderr``. Across
the server: every kept byte is reserved from one budget of ``Limits.max_output_bytes_total``.
What was dropped is said in a final stderr line; the process is drained to its exit either way.
"""

from __future__ import annotations

import contextlib
import weakref

from engine.errors import MsbError
from engine.repl.models import CommandResult
from engine.repl.output import OutputBudget, OutputCollector
from engine.sandbox.sandbox import Sandbox
from engine.server.settings import Limits

_budgets: dict[int, OutputBudget] = {}


def output_budget(limits: Limits) -> OutputBudget:
    """The output budget shared by every command of the server that owns ``limits``.

    Keyed by the limits object (one per server), so servers in one process (tests) do not share.
    """
    key = id(limits)
    budget = _budgets.get(key)
    if budget is None:
        budget = _budgets[key] = OutputBudget(limits.max_output_bytes_total)
        weakref.finalize(limits, _budgets.pop, key, None)
    return budget


async def collect_command(sandbox: Sandbox, command: str, args: list[str], timeout: float | None,
                          limits: Limits) -> CommandResult:  # fmt: skip
    """Run a command (no shell) and keep its output as lines in arrival order, bounded.

    Args:
        sandbox: where to run it.
        command: the program; ``args`` its arguments.
        timeout: seconds after which the guest kills it (None: no limit).
        limits: the server's limits (per-execution bounds and the server-wide budget).

    Returns:
        The exit status, the lines, and each stream's kept text.

    Raises:
        ExecError, VmCrashedError: as for :meth:`Sandbox.spawn`.
    """
    out = OutputCollector(max_bytes=limits.max_output_bytes, max_lines=limits.max_output_lines,
                          stream_bytes=limits.max_output_bytes, budget=output_budget(limits))  # fmt: skip
    try:
        proc = await sandbox.spawn([command, *args], timeout=timeout)
        try:
            async for chunk in proc:
                out.add_bytes("stderr" if chunk.stream == "stderr" else "stdout", chunk.data)
            status = await proc.wait()
        except BaseException:
            # Cancelled (the client went away) or the VM died: never leave a flooding process behind.
            with contextlib.suppress(MsbError):
                await proc.close()
            raise
        if status.timed_out:
            out.note(f"msb: command timed out after {timeout} s and was killed")
        stdout, stderr = out.stream_text("stdout"), out.stream_text("stderr")
        return CommandResult(
            command=command, args=args, exit_code=status.exit_code,
            success=status.exit_code == 0 and not status.timed_out,
            output=out.finish(), stdout=stdout, stderr=stderr,
        )  # fmt: skip
    finally:
        out.release()
