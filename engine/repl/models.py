"""Wire shapes of REPL and command results (CONTRACTS.md: ``sandbox.repl.run``,
``sandbox.command.run``)."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel

Stream = Literal["stdout", "stderr"]
Language = Literal["python", "node"]
LANGUAGE_ALIASES: dict[str, Language] = {"python": "python", "node": "node", "nodejs": "node", "javascript": "node"}


class OutputLine(BaseModel):
    stream: Stream
    text: str
    """One line, without its newline."""


class ReplResult(BaseModel):
    status: Literal["success", "error"]
    language: str
    """As the caller gave it (``"nodejs"`` stays ``"nodejs"``)."""
    output: list[OutputLine]


class CommandResult(BaseModel):
    command: str
    args: list[str]
    exit_code: int
    success: bool
    output: list[OutputLine]
    stdout: str
    stderr: str
