"""What ``sandbox.run`` and ``sandbox.command.run`` return, shaped like microsandbox's SDK 0.1.x
(``await exe.output()``, ``exe.has_error()``, ``cmd.exit_code`` …), plus the plain attributes
guides read from either (``.exit_code``, ``.stdout``, ``.stderr``).

The parsed wire result stays available as ``.result`` (a pydantic model).
"""

from __future__ import annotations

from collections.abc import Iterable

from engine.client.models import CommandResult, OutputLine, ReplResult, Stream

__all__ = ["CommandExecution", "Execution"]


def _join(lines: Iterable[OutputLine], stream: Stream) -> str:
    return "\n".join(line.text for line in lines if line.stream == stream)


class Execution:
    """The result of running code in the sandbox's REPL.

    Attributes:
        result: the parsed ``sandbox.repl.run`` result.
    """

    def __init__(self, result: ReplResult) -> None:
        self.result = result

    @property
    def status(self) -> str:
        """``"success"`` or ``"error"``."""
        return self.result.status

    @property
    def language(self) -> str:
        return self.result.language

    @property
    def lines(self) -> list[OutputLine]:
        """Every output line, stdout and stderr interleaved in arrival order."""
        return list(self.result.output)

    @property
    def exit_code(self) -> int:
        """``0`` when the code ran (status ``"success"``), else ``1``: a REPL has no exit status,
        but code that checks ``exit_code`` (as the command results have it) should work here too."""
        return 0 if self.result.status == "success" else 1

    @property
    def stdout(self) -> str:
        """The stdout lines joined with ``"\\n"``, as :meth:`output` returns them (no ``await``)."""
        return _join(self.result.output, "stdout")

    @property
    def stderr(self) -> str:
        """The stderr lines joined with ``"\\n"``, as :meth:`error` returns them (no ``await``)."""
        return _join(self.result.output, "stderr")

    async def output(self) -> str:
        """The stdout lines joined with ``"\\n"`` (no trailing newline).

        Returns:
            The standard output, ``""`` when there was none.
        """
        return _join(self.result.output, "stdout")

    async def error(self) -> str:
        """The stderr lines joined with ``"\\n"`` (tracebacks, the timeout notice …).

        Returns:
            The standard error, ``""`` when there was none.
        """
        return _join(self.result.output, "stderr")

    def has_error(self) -> bool:
        """Whether the code failed: status ``"error"``, or anything non-empty on stderr (as
        microsandbox's SDK decides it).

        Returns:
            True when the run failed or wrote to stderr.
        """
        if self.result.status in ("error", "exception"):
            return True
        return any(line.stream == "stderr" and line.text for line in self.result.output)

    def __repr__(self) -> str:
        return f"Execution(status={self.status!r}, language={self.language!r}, lines={len(self.result.output)})"


class CommandExecution:
    """The result of running a command in the sandbox.

    Attributes:
        result: the parsed ``sandbox.command.run`` result.
    """

    def __init__(self, result: CommandResult) -> None:
        self.result = result

    @property
    def command(self) -> str:
        return self.result.command

    @property
    def args(self) -> list[str]:
        return list(self.result.args)

    @property
    def exit_code(self) -> int:
        """The exit status; ``-1`` when the server did not report one."""
        return self.result.exit_code

    @property
    def success(self) -> bool:
        """Whether the command exited with status 0."""
        return self.result.success

    @property
    def stdout(self) -> str:
        """The whole standard output as the server sent it (newlines kept); from older servers
        without it, the stdout lines joined with ``"\\n"``."""
        out = self.result.stdout
        return out if out is not None else _join(self.result.output, "stdout")

    @property
    def stderr(self) -> str:
        """The whole standard error, like :attr:`stdout`."""
        err = self.result.stderr
        return err if err is not None else _join(self.result.output, "stderr")

    @property
    def lines(self) -> list[OutputLine]:
        """Every output line, stdout and stderr interleaved in arrival order."""
        return list(self.result.output)

    async def output(self) -> str:
        """The stdout lines joined with ``"\\n"`` (no trailing newline).

        Returns:
            The standard output, ``""`` when there was none.
        """
        return _join(self.result.output, "stdout")

    async def error(self) -> str:
        """The stderr lines joined with ``"\\n"``.

        Returns:
            The standard error, ``""`` when there was none.
        """
        return _join(self.result.output, "stderr")

    def __repr__(self) -> str:
        return f"CommandExecution(command={self.command!r}, exit_code={self.exit_code}, success={self.success})"
