"""Pilot tests of the shell screen (msb_tui/screens/shell.py) over fake workbenches."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from pathlib import Path

from textual.pilot import Pilot
from textual.widgets import Static

from engine.errors import MsbError
from msb_tui.app import MsbApp
from msb_tui.fake import FakeShell
from msb_tui.screens.shell import ShellScreen, exit_text
from msb_tui.widgets.terminal import TerminalView
from tests.unit.helpers import eventually
from tests.unit.tui.shell_fakes import ScriptedProcess, ShellWorkbench, painted

MakeApp = Callable[..., MsbApp]


async def open_shell(pilot: Pilot[None], name: str = "api", state: str = "running") -> ShellScreen:
    screen = ShellScreen(name)
    await pilot.app.push_screen(screen)
    await eventually(lambda: screen.state == state)
    return screen


def text_of(screen: ShellScreen, selector: str) -> str:
    return str(screen.query_one(selector, Static).render())


async def test_opens_a_shell_the_size_of_the_terminal(make_app: MakeApp) -> None:
    app = make_app()
    async with app.run_test(size=(100, 30)) as pilot:
        screen = await open_shell(pilot)
        view = screen.query_one(TerminalView)
        shell = app.workbench.shells[0]  # type: ignore[attr-defined]
        assert shell.size == (view.size.height, view.size.width) == (view.emulator.size[1], view.emulator.size[0])
        assert view.has_focus and not screen.query_one("#shell-panel").display
        await pilot.press(*"echo hi", "enter")
        await eventually(lambda: view.emulator.text().count("echo hi") == 2)
        assert shell.written == b"echo hi\r"
        assert view.emulator.text().splitlines()[-2:] == ["echo hi", "$"]
        assert f"{view.size.width}×{view.size.height}" in text_of(screen, "#shell-status")


async def test_connecting_state_until_the_engine_answers(make_app: MakeApp) -> None:
    gate = asyncio.Event()
    app = make_app(delay=gate)
    async with app.run_test() as pilot:
        screen = await open_shell(pilot, state="connecting")
        await pilot.pause()
        assert screen.query_one("#shell-panel").display
        assert "Opening a shell in api" in text_of(screen, "#shell-panel")
        assert "connecting" in text_of(screen, "#shell-status")
        gate.set()
        await eventually(lambda: screen.state == "running")
        assert not screen.query_one("#shell-panel").display


async def test_a_stopped_sandbox_shows_the_error_and_retry_works(make_app: MakeApp) -> None:
    app = make_app()
    async with app.run_test() as pilot:
        screen = await open_shell(pilot, "db", state="error")
        panel = text_of(screen, "#shell-panel")
        assert "sandbox 'db' is not running" in panel and "start it first" in panel
        await eventually(lambda: any("not running" in n.message for n in app._notifications))
        assert "r" in screen.active_bindings and screen.active_bindings["r"].enabled
        app.workbench.rows["db"].status = "running"  # type: ignore[attr-defined]
        await pilot.press("r")
        await eventually(lambda: screen.state == "running")
        assert [c for c in app.workbench.calls if c[0] == "shell"] == [("shell", "db"), ("shell", "db")]  # type: ignore[attr-defined]


async def test_exit_shows_the_status_and_r_reopens(make_app: MakeApp) -> None:
    app = make_app()
    async with app.run_test() as pilot:
        screen = await open_shell(pilot)
        view = screen.query_one(TerminalView)
        await pilot.press(*"exit", "enter")
        await eventually(lambda: screen.state == "exited")
        assert "[exited with 0]" in view.emulator.text()
        assert "[exited with 0]" in text_of(screen, "#shell-status")
        assert not view.has_focus and not view.captures_keys
        assert {"r", "q", "f2"} <= set(screen.active_bindings)
        await pilot.press("r")
        await eventually(lambda: screen.state == "running")
        assert len(app.workbench.shells) == 2  # type: ignore[attr-defined]
        await painted(view, "fake shell")
        assert "[exited with 0]" in view.emulator.text()  # the old session stays above the new one


async def test_q_closes_after_exit(make_app: MakeApp) -> None:
    app = make_app()
    async with app.run_test() as pilot:
        screen = await open_shell(pilot)
        await pilot.press(*"exit", "enter")
        await eventually(lambda: screen.state == "exited")
        await pilot.press("q")
        await eventually(lambda: not isinstance(app.screen, ShellScreen))


async def test_ctrl_bracket_leaves_and_ends_the_session(make_app: MakeApp) -> None:
    app = make_app()
    async with app.run_test() as pilot:
        await open_shell(pilot)
        shell: FakeShell = app.workbench.shells[0]  # type: ignore[attr-defined]
        await pilot.press("ctrl+right_square_bracket")
        await eventually(lambda: not isinstance(app.screen, ShellScreen))
        await eventually(lambda: shell.status is not None)  # stdin closed: the shell ended
        assert shell.written == b"exit\n"


async def test_every_other_key_goes_to_the_guest(make_app: MakeApp) -> None:
    app = make_app()
    async with app.run_test() as pilot:
        screen = await open_shell(pilot)
        shown = {key for key, active in screen.active_bindings.items() if active.binding.show}
        assert shown == {"ctrl+right_square_bracket", "ctrl+q"}  # the footer: leave, quit
        shell: FakeShell = app.workbench.shells[0]  # type: ignore[attr-defined]
        theme = app.theme
        await pilot.press("escape", "ctrl+p", "f1", "f2", "question_mark", "ctrl+t", "ctrl+c", "tab")
        await eventually(lambda: shell.written.endswith(b"\t"))
        assert shell.written == b"\x1b\x10\x1bOP\x1bOQ?\x14\x03\t"
        assert app.screen is screen and app.theme == theme


async def test_window_resize_resizes_the_guest(make_app: MakeApp) -> None:
    app = make_app()
    async with app.run_test(size=(80, 24)) as pilot:
        screen = await open_shell(pilot)
        shell: FakeShell = app.workbench.shells[0]  # type: ignore[attr-defined]
        await pilot.resize_terminal(132, 40)
        view = screen.query_one(TerminalView)
        await eventually(lambda: shell.size == (view.size.height, view.size.width) and view.size.width == 132)
        await eventually(lambda: "132×" in text_of(screen, "#shell-status"))


async def test_a_lost_connection_is_an_error_not_a_crash(sandboxfile: Path) -> None:
    proc = ScriptedProcess(b"$ ")
    app = MsbApp(ShellWorkbench(sandboxfile, make_shell=lambda: proc))
    async with app.run_test() as pilot:
        screen = await open_shell(pilot)
        proc.fail(MsbError("lost the connection to the sandbox's supervisor", hint="see `msb status`"))
        await eventually(lambda: screen.state == "error")
        assert "lost the connection" in text_of(screen, "#shell-panel")
        assert app.is_running


async def test_signal_exit_text() -> None:
    from engine.vm.process import ExitStatus

    assert exit_text(ExitStatus(exit_code=130, signal=2)) == "[killed by signal 2, exited with 130]"
    assert exit_text(ExitStatus(exit_code=137, timed_out=True)) == "[timed out, exited with 137]"


async def test_title_from_the_guest_shows_in_the_status_line(sandboxfile: Path) -> None:
    proc = ScriptedProcess(b"\x1b]0;root@api:/app\x07$ ")
    app = MsbApp(ShellWorkbench(sandboxfile, make_shell=lambda: proc))
    async with app.run_test() as pilot:
        screen = await open_shell(pilot)
        await eventually(lambda: "root@api:/app" in text_of(screen, "#shell-status"))
