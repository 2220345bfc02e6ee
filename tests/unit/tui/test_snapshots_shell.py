"""Snapshots of the shell screen in each state — connecting, error, a coloured session, after
exit — at 80×24 and 160×48 (and the coloured session in the light theme)."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest
from textual.pilot import Pilot

from msb_tui.app import MsbApp
from msb_tui.fake import FakeWorkbench
from msb_tui.screens.shell import ShellScreen
from msb_tui.widgets.terminal import TerminalView
from tests.unit.helpers import eventually
from tests.unit.tui.conftest import SIZES
from tests.unit.tui.shell_fakes import COLOUR_BANNER, COLOUR_PROMPT, ScriptedProcess, ShellWorkbench, painted

SnapCompare = Callable[..., bool]

LS = (b"ls -l --color\r\n"
      b"total 12\r\n"
      b"drwxr-xr-x    2 root     root          4096 Nov 20 10:00 \x1b[1;34mdata\x1b[0m\r\n"
      b"-rwxr-xr-x    1 root     root           310 Nov 20 10:00 \x1b[1;32mrun.sh\x1b[0m\r\n"
      b"-rw-r--r--    1 root     root          1204 Nov 20 10:00 app.py\r\n"
      b"lrwxrwxrwx    1 root     root            10 Nov 20 10:00 \x1b[1;36mlogs\x1b[0m -> /var/log\r\n"
      b"\x1b[31merror:\x1b[0m \x1b[7m reversed \x1b[0m \x1b[1mbold\x1b[0m \x1b[4munderlined\x1b[0m "
      b"\x1b[38;5;208m256-colour\x1b[0m \x1b[38;2;120;200;80mtrue colour\x1b[0m\r\n")  # fmt: skip
SESSION = COLOUR_BANNER + LS + COLOUR_PROMPT


def opened(state: str, wait_text: str | None = None, name: str = "api") -> Callable[[Pilot[None]], Awaitable[None]]:
    """A ``run_before`` that opens the shell screen on ``name`` and waits for ``state``."""

    async def run_before(pilot: Pilot[None]) -> None:
        screen = ShellScreen(name)
        await pilot.app.push_screen(screen)
        await eventually(lambda: screen.state == state)
        if wait_text is not None:
            await painted(screen.query_one(TerminalView), wait_text)
        await pilot.pause()

    return run_before


@pytest.mark.parametrize("size", SIZES)
def test_connecting(snap_compare: SnapCompare, sandboxfile: Path, size: tuple[int, int]) -> None:
    app = MsbApp(FakeWorkbench(sandboxfile, delay=asyncio.Event()))  # the engine never answers
    assert snap_compare(app, terminal_size=size, run_before=opened("connecting"))


@pytest.mark.parametrize("size", SIZES)
def test_error(snap_compare: SnapCompare, sandboxfile: Path, size: tuple[int, int]) -> None:
    app = MsbApp(FakeWorkbench(sandboxfile))
    assert snap_compare(app, terminal_size=size, run_before=opened("error", name="db"))  # db is stopped


def session_app(sandboxfile: Path, theme: str = "msb-dark", **kwargs: Any) -> tuple[MsbApp, ScriptedProcess]:
    proc = ScriptedProcess(SESSION)
    return MsbApp(ShellWorkbench(sandboxfile, make_shell=lambda: proc, **kwargs), theme=theme), proc


@pytest.mark.parametrize("size", SIZES)
def test_coloured_session(snap_compare: SnapCompare, sandboxfile: Path, size: tuple[int, int]) -> None:
    app, _ = session_app(sandboxfile)
    assert snap_compare(app, terminal_size=size, run_before=opened("running", "true colour"))


def test_coloured_session_light(snap_compare: SnapCompare, sandboxfile: Path) -> None:
    app, _ = session_app(sandboxfile, theme="msb-light")
    assert snap_compare(app, terminal_size=SIZES[0], run_before=opened("running", "true colour"))


@pytest.mark.parametrize("size", SIZES)
def test_after_exit(snap_compare: SnapCompare, sandboxfile: Path, size: tuple[int, int]) -> None:
    app, proc = session_app(sandboxfile)
    proc.emit(b"exit\r\n")
    proc.exit(0)
    assert snap_compare(app, terminal_size=size, run_before=opened("exited", "[exited with 0]"))
