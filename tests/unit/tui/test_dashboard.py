"""Pilot tests of the dashboard (msb_tui/screens/dashboard.py), the command palette
(msb_tui/commands.py) and the help screen (msb_tui/screens/help.py), over the FakeWorkbench."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from typing import Any

from textual import events
from textual.command import CommandPalette
from textual.pilot import Pilot
from textual.widgets import Input, Label, Log

from msb_tui.app import MsbApp
from msb_tui.fake import FakeWorkbench
from msb_tui.screens.dashboard import DashboardScreen, describe
from msb_tui.screens.help import HelpScreen
from msb_tui.screens.logs import LogsScreen
from msb_tui.widgets.sandbox_table import SandboxItem, SandboxTable
from msb_tui.workbench import SandboxRow
from tests.unit.helpers import eventually

MakeApp = Callable[..., MsbApp]


def quiet_app(make_app: MakeApp, **kwargs: Any) -> MsbApp:
    """An app whose dashboard does not poll on a timer (the test polls)."""
    app = make_app(**kwargs)
    app.metrics_interval = None
    return app


def fake(app: MsbApp) -> FakeWorkbench:
    assert isinstance(app.workbench, FakeWorkbench)
    return app.workbench


async def populated(pilot: Pilot[None]) -> DashboardScreen:
    screen = pilot.app.screen
    assert isinstance(screen, DashboardScreen)
    await eventually(lambda: screen.query_one("#states").current == "table")  # type: ignore[attr-defined]
    return screen


def status_of(screen: DashboardScreen, name: str) -> str:
    for item in screen.query(SandboxItem):
        if item.sandbox == name:
            return str(item.query_one(".col-status", Label).render())
    raise AssertionError(f"no row for {name}")


def notifications(app: MsbApp) -> list[str]:
    return [f"{n.title}: {n.message}" for n in app._notifications]


async def select(pilot: Pilot[None], screen: DashboardScreen, name: str) -> None:
    table = screen.query_one(SandboxTable)
    names = [i.sandbox for i in screen.query(SandboxItem)]
    table.list_view.index = names.index(name)
    await pilot.pause()
    assert screen.selected is not None and screen.selected.name == name


async def test_populated_shows_every_sandbox(make_app: MakeApp) -> None:
    app = quiet_app(make_app)
    async with app.run_test() as pilot:
        screen = await populated(pilot)
        assert [i.sandbox for i in screen.query(SandboxItem)] == ["api", "db", "worker"]
        assert "running" in status_of(screen, "api") and "crashed" in status_of(screen, "worker")
        # api runs under TCG: the warning says so, once.
        assert not screen.query_one("#tcg-warning").has_class("hidden")
        assert "security boundary" in str(screen.query_one("#tcg-warning").render())
        detail = str(screen.query_one("#detail").render())
        assert "started by restore in 84 ms" in detail and "python3 -m http.server" in detail
        assert [r.name for r in app.last_sandboxes] == ["api", "db", "worker"]


def test_the_detail_line_says_how_it_started() -> None:
    running = SandboxRow(name="api", image="python", status="running", started_by="restore", start_ms=84.0,
                         command=["python3", "app.py"])  # fmt: skip
    assert describe(running) == "api · python · started by restore in 84 ms · $ python3 app.py"
    booted = running.model_copy(update={"started_by": "boot", "start_ms": 1120.0, "command": None})
    assert describe(booted) == "api · python · started by boot in 1.1 s"
    assert describe(running.model_copy(update={"started_by": None, "start_ms": None, "command": None})) == \
        "api · python · running"  # fmt: skip
    assert (
        describe(SandboxRow(name="db", status="stopped", started_by="pool", start_ms=3.0)) == "db · no image · stopped"
    )


async def test_stop_then_start_changes_the_status(make_app: MakeApp) -> None:
    app = quiet_app(make_app)
    async with app.run_test() as pilot:
        screen = await populated(pilot)
        gate = fake(app).delay = asyncio.Event()
        await pilot.press("x")
        await eventually(lambda: "stopping…" in status_of(screen, "api"))
        assert screen.check_action("stop", ()) is None  # no second stop while one runs
        gate.set()
        await eventually(lambda: "stopped" in status_of(screen, "api") and "…" not in status_of(screen, "api"))
        assert ("stop", "api") in fake(app).calls
        assert screen.query_one("#tcg-warning").has_class("hidden")  # nothing runs under TCG any more
        await pilot.press("s")
        await eventually(lambda: status_of(screen, "api") == "● running")
        assert ("start", "api") in fake(app).calls


async def test_restart_stops_then_starts(make_app: MakeApp) -> None:
    app = quiet_app(make_app)
    async with app.run_test() as pilot:
        screen = await populated(pilot)
        await pilot.press("r")
        await eventually(lambda: ("start", "api") in fake(app).calls)
        calls = [c for c in fake(app).calls if c[0] in ("stop", "start")]
        assert calls == [("stop", "api"), ("start", "api")]
        await eventually(lambda: status_of(screen, "api") == "● running")


async def test_start_failure_is_a_notification(make_app: MakeApp) -> None:
    app = quiet_app(make_app, fail={"start": "no kernel for this machine"})
    async with app.run_test() as pilot:
        screen = await populated(pilot)
        await select(pilot, screen, "db")
        await pilot.press("s")
        await eventually(lambda: any("no kernel" in n for n in notifications(app)))
        (note,) = [n for n in notifications(app) if "no kernel" in n]
        assert note.startswith("start db failed") and "the fake was told to fail start" in note
        await eventually(lambda: status_of(screen, "db") == "○ stopped")
        assert "Traceback" not in note


async def test_sandbox_keys_follow_the_selection(make_app: MakeApp) -> None:
    app = quiet_app(make_app)
    async with app.run_test() as pilot:
        screen = await populated(pilot)
        assert screen.check_action("start", ()) is None and screen.check_action("stop", ()) is True
        await select(pilot, screen, "db")
        assert screen.check_action("start", ()) is True and screen.check_action("stop", ()) is None
        assert screen.check_action("retry", ()) is False


async def test_empty_says_how_to_add_one(make_app: MakeApp) -> None:
    app = quiet_app(make_app, sandboxes=[])
    async with app.run_test() as pilot:
        screen = pilot.app.screen
        assert isinstance(screen, DashboardScreen)
        await eventually(lambda: screen.query_one("#states").current == "empty")  # type: ignore[attr-defined]
        text = " ".join(str(s.render()) for s in screen.query("#empty Static"))
        assert "F3" in text and "msb add" in text
        assert screen.check_action("start", ()) is False  # no sandbox keys in the footer


async def test_fetch_error_panel_then_retry(make_app: MakeApp) -> None:
    app = quiet_app(make_app, fail={"sandboxes": "the engine is not running"})
    async with app.run_test() as pilot:
        screen = pilot.app.screen
        assert isinstance(screen, DashboardScreen)
        await eventually(lambda: screen.query_one("#states").current == "error")  # type: ignore[attr-defined]
        assert "the engine is not running" in str(screen.query_one("#error .error-message").render())
        assert "the fake was told to fail sandboxes" in str(screen.query_one("#error .error-hint").render())
        fake(app).fail.clear()
        await pilot.press("r")
        await populated(pilot)


async def test_a_failing_poll_after_success_notifies_once(make_app: MakeApp) -> None:
    app = quiet_app(make_app)
    async with app.run_test() as pilot:
        screen = await populated(pilot)
        fake(app).fail["sandboxes"] = "connection lost"
        for _ in range(3):
            await screen.poll().wait()
            await pilot.pause()
        assert sum("connection lost" in n for n in notifications(app)) == 1
        assert screen.query_one("#states").current == "table"  # type: ignore[attr-defined]  # last rows stay


async def test_filter_shows_matching_rows(make_app: MakeApp) -> None:
    app = quiet_app(make_app)
    async with app.run_test() as pilot:
        screen = await populated(pilot)
        await pilot.press("slash", "w", "o")
        await eventually(lambda: [i.sandbox for i in screen.query(SandboxItem)] == ["worker"])
        await pilot.press("escape")
        await eventually(lambda: len(screen.query(SandboxItem)) == 3)
        assert screen.query_one("#filter").has_class("hidden")


async def test_metrics_history_grows_with_polls(make_app: MakeApp) -> None:
    app = quiet_app(make_app)
    async with app.run_test() as pilot:
        screen = await populated(pilot)
        for _ in range(5):
            fake(app).tick()
            await screen.poll().wait()
            await pilot.pause()
        history = screen.query_one(SandboxTable).histories["api"]
        assert list(history.cpu) == [12.5, 20.0, 27.5, 35.0, 42.5, 50.0]
        assert len(history.memory) == 6 and not screen.query_one(SandboxTable).histories["db"].cpu


async def test_palette_finds_stop_api_and_runs_it(make_app: MakeApp) -> None:
    app = quiet_app(make_app)
    async with app.run_test() as pilot:
        screen = await populated(pilot)
        await pilot.press("ctrl+p")
        await eventually(lambda: isinstance(app.screen, CommandPalette))
        await pilot.press(*"stop api")
        palette = app.screen
        assert isinstance(palette, CommandPalette)
        from textual.command import CommandList

        options = palette.query_one(CommandList)
        await eventually(lambda: options.option_count > 0)
        assert "stop api" in str(options.get_option_at_index(0).prompt)
        await pilot.press("enter")  # the best hit is highlighted: run it
        await eventually(lambda: ("stop", "api") in fake(app).calls)
        await eventually(lambda: status_of(screen, "api").endswith("stopped"))


async def test_palette_start_elsewhere_runs_on_the_dashboard(make_app: MakeApp) -> None:
    app = quiet_app(make_app)
    async with app.run_test() as pilot:
        screen = await populated(pilot)
        await pilot.press("f4")
        await eventually(lambda: app.current_mode == "images")
        await pilot.press("ctrl+p")
        await eventually(lambda: isinstance(app.screen, CommandPalette))
        await pilot.press(*"start db")
        from textual.command import CommandList

        options = app.screen.query_one(CommandList)
        await eventually(lambda: options.option_count > 0)
        assert str(options.get_option_at_index(0).prompt).startswith("start db")
        await pilot.press("enter")  # the best hit is highlighted
        await eventually(lambda: ("start", "db") in fake(app).calls)
        await eventually(lambda: "Dashboard: db: started" in notifications(app))
        assert app.current_mode == "images"
        assert screen.run_lifecycle("db", "stop") is not None
        assert screen.run_lifecycle("db", "stop") is None  # busy: refused, not doubled
        await eventually(lambda: any("db is busy" in n for n in notifications(app)))


async def test_palette_commands_cover_every_action(make_app: MakeApp) -> None:
    from msb_tui.commands import WorkbenchCommands

    app = quiet_app(make_app)
    async with app.run_test() as pilot:
        await populated(pilot)
        texts = [c.text for c in WorkbenchCommands(app.screen).commands()]
        for verb in ("start", "stop", "restart", "shell", "REPL", "logs"):
            assert f"{verb} api" in texts and f"{verb} worker" in texts
        joined = " | ".join(texts)
        assert "Dashboard" in joined and "Sandboxfile editor" in joined and "Images" in joined
        assert "Toggle theme" in joined and "Help" in joined


async def test_help_lists_the_bindings(make_app: MakeApp) -> None:
    app = quiet_app(make_app)
    async with app.run_test(size=(120, 60)) as pilot:
        await populated(pilot)
        await pilot.press("f1")
        await eventually(lambda: isinstance(app.screen, HelpScreen))
        help_screen = app.screen
        await eventually(lambda: bool(help_screen.query(".help-description")))
        descriptions = {str(label.render()) for label in help_screen.query(".help-description")}
        for binding in [*DashboardScreen.BINDINGS, *MsbApp.BINDINGS]:
            assert not isinstance(binding, tuple)
            if binding.action != "retry":  # only offered on the error panel
                assert binding.description in descriptions, binding
        groups = [str(label.render()) for label in help_screen.query(".help-group")]
        assert groups[0] == "Dashboard" and groups[-1] == "Everywhere" and "Sandbox list" in groups
        keys = {str(label.render()) for label in help_screen.query(".help-key")}
        assert "f1 / ?" in keys
        await pilot.press("escape")
        await eventually(lambda: isinstance(app.screen, DashboardScreen))


async def test_logs_show_the_fake_lines(make_app: MakeApp) -> None:
    app = quiet_app(make_app)
    async with app.run_test() as pilot:
        await populated(pilot)
        await pilot.press("l")
        await eventually(lambda: isinstance(app.screen, LogsScreen))
        log = app.screen.query_one(Log)
        await eventually(lambda: "Serving HTTP on 0.0.0.0 port 8000" in log.lines)
        await pilot.press("escape")
        await eventually(lambda: isinstance(app.screen, DashboardScreen))


async def test_shell_and_repl_keys_open_their_screens(make_app: MakeApp) -> None:
    from msb_tui.screens.repl import ReplScreen
    from msb_tui.screens.shell import ShellScreen

    app = quiet_app(make_app)
    async with app.run_test() as pilot:
        await populated(pilot)
        await pilot.press("p")
        await eventually(lambda: isinstance(app.screen, ReplScreen))
        app.pop_screen()
        await eventually(lambda: isinstance(app.screen, DashboardScreen))
        await pilot.press("o")
        await eventually(lambda: isinstance(app.screen, ShellScreen))
        app.pop_screen()
        await eventually(lambda: isinstance(app.screen, DashboardScreen))
        await pilot.press("enter")
        await eventually(lambda: isinstance(app.screen, ShellScreen))


async def test_a_click_only_highlights(make_app: MakeApp) -> None:
    app = quiet_app(make_app)
    async with app.run_test() as pilot:
        screen = await populated(pilot)
        rows = list(screen.query(SandboxItem))
        await pilot.click(rows[1])
        await eventually(lambda: screen.selected is not None and screen.selected.name == "db")
        await pilot.pause()
        assert isinstance(app.screen, DashboardScreen)


class TickingWorkbench(FakeWorkbench):
    """Metrics move on every poll, as a real engine's do."""

    async def sandboxes(self) -> list[SandboxRow]:
        self.tick()
        return await super().sandboxes()


async def test_typing_stays_responsive_while_four_sandboxes_stream(sandboxfile: Any) -> None:
    prefix = "streaming-sandbox-number-"
    rows = [SandboxRow(name=f"{prefix}{i}", image="busybox", status="running", accel="kvm", uptime_s=1.0,
                       cpu_percent=10.0 * i, memory_mib=64.0) for i in range(4)]  # fmt: skip
    workbench = TickingWorkbench(sandboxfile, sandboxes=rows)
    app = MsbApp(workbench)
    app.metrics_interval = 0.01  # 100 polls a second: far harsher than the real 1 Hz
    async with app.run_test() as pilot:
        screen = await populated(pilot)
        await pilot.press("slash")
        field = screen.query_one("#filter", Input)
        await eventually(lambda: field.has_focus)
        polls_before = sum(c[0] == "sandboxes" for c in workbench.calls)
        latencies = []
        # Type a prefix of every name: all four rows stay shown (and streaming) throughout.
        for n, key in enumerate(prefix, start=1):
            # Post the key as the terminal driver would; pilot.press would wait for the
            # process to go idle, which it never does with metrics streaming.
            start = time.perf_counter()
            app.post_message(events.Key("minus" if key == "-" else key, key))
            await eventually(lambda n=n: len(field.value) == n, timeout=2.0)  # type: ignore[misc]
            latencies.append(time.perf_counter() - start)
        assert len(screen.query(SandboxItem)) == 4
        polls = sum(c[0] == "sandboxes" for c in workbench.calls) - polls_before
        assert polls >= 5, "metrics must have kept streaming while typing"
        latencies.sort()
        assert latencies[len(latencies) // 2] < 0.1, latencies
        assert latencies[-1] < 0.5, latencies


def test_metric_messages_coalesce() -> None:
    """A queued newer result makes an older one moot (Textual then skips the older)."""
    from msb_tui.messages import SandboxesFailed, SandboxesFetched

    older = SandboxesFetched([])
    assert older.can_replace(SandboxesFetched([])) and older.can_replace(SandboxesFailed(RuntimeError("x")))
    assert SandboxesFailed(RuntimeError("x")).can_replace(SandboxesFetched([]))
    assert not older.can_replace(events.Key("a", "a"))
