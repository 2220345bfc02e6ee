"""Helpers of the REPL unit tests."""

from __future__ import annotations

import asyncio

from engine.repl.models import OutputLine
from engine.repl.session import ReplSession
from tests.unit.helpers import STEP_TIMEOUT_S

RESTARTS = "it will restart on the next call (its state is lost)"


async def run(session: ReplSession, code: str, timeout: float | None = None) -> tuple[str, list[OutputLine]]:
    """``session.run`` bounded by the unit tests' step timeout."""
    async with asyncio.timeout(STEP_TIMEOUT_S):
        return await session.run(code, timeout)


def text(lines: list[OutputLine], stream: str | None = None) -> list[str]:
    return [line.text for line in lines if stream is None or line.stream == stream]


def stdout(lines: list[OutputLine]) -> list[str]:
    return text(lines, "stdout")


def stderr(lines: list[OutputLine]) -> str:
    return "\n".join(text(lines, "stderr"))
