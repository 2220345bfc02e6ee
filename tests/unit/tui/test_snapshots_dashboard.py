"""Snapshots of the dashboard (loading, empty, error, populated in both themes, each way a
sandbox starts, an action in progress), the log screen, the help screen and the command
palette — at 80×24 and 160×48.

Deterministic: the dashboard's timer is off (``metrics_interval = None``); metrics advance only
when a test calls ``FakeWorkbench.tick()`` and polls; the loading indicator is drawn without
animation.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any

import pytest
from textual.command import CommandList, CommandPalette
from textual.pilot import Pilot
from textual.widgets import Input, Log

from msb_tui.app import MsbApp
from msb_tui.fake import FakeWorkbench
from msb_tui.screens.dashboard import DashboardScreen
from msb_tui.screens.help import HelpScreen
from msb_tui.screens.logs import LogsScreen
from msb_tui.workbench import SandboxRow
from tests.unit.helpers import eventually
from tests.unit.tui.conftest import SIZES

MakeApp = Callable[..., MsbApp]
SnapCompare = Callable[..., bool]
RunBefore = Callable[[Pilot[Any]], Awaitable[None]]
GATHERING = "--textual-command-palette-gather-commands"
"""The worker group in which Textual's palette asks the providers."""
size_ids = pytest.mark.parametrize("size", SIZES, ids=lambda s: f"{s[0]}x{s[1]}")


def still(app: MsbApp) -> MsbApp:
    """No metrics timer, no animation: the same picture every run."""
    app.metrics_interval = None
    app.animation_level = "none"
    return app


def dashboard(pilot: Pilot[Any]) -> DashboardScreen:
    screen = pilot.app.get_screen_stack("dashboard")[0]
    assert isinstance(screen, DashboardScreen)
    return screen


def in_state(state: str, then: RunBefore | None = None) -> RunBefore:
    """A ``run_before`` that waits for the dashboard to show ``state``."""

    async def run_before(pilot: Pilot[Any]) -> None:
        await eventually(lambda: dashboard(pilot).query_one("#states").current == state)  # type: ignore[attr-defined]
        if then is not None:
            await then(pilot)

    return run_before


async def twelve_polls(pilot: Pilot[Any]) -> None:
    """Twelve seconds of metrics, so the sparklines have a shape."""
    workbench = pilot.app.workbench
    assert isinstance(workbench, FakeWorkbench)
    for _ in range(12):
        workbench.tick()
        await dashboard(pilot).poll().wait()
        await pilot.pause()


@size_ids
def test_dashboard_loading(snap_compare: SnapCompare, make_app: MakeApp, size: tuple[int, int]) -> None:
    app = still(make_app(delay=asyncio.Event()))  # never set: the list never arrives
    assert snap_compare(app, terminal_size=size, run_before=in_state("loading"))


@size_ids
def test_dashboard_empty(snap_compare: SnapCompare, make_app: MakeApp, size: tuple[int, int]) -> None:
    assert snap_compare(still(make_app(sandboxes=[])), terminal_size=size, run_before=in_state("empty"))


@size_ids
def test_dashboard_error(snap_compare: SnapCompare, make_app: MakeApp, size: tuple[int, int]) -> None:
    app = still(make_app(fail={"sandboxes": "cannot reach the engine's state directory ~/.local/share/msb"}))
    assert snap_compare(app, terminal_size=size, run_before=in_state("error"))


@size_ids
@pytest.mark.parametrize("theme", ["msb-dark", "msb-light"])
def test_dashboard_populated(snap_compare: SnapCompare, make_app: MakeApp, size: tuple[int, int], theme: str) -> None:
    app = still(make_app(theme=theme))
    assert snap_compare(app, terminal_size=size, run_before=in_state("table", twelve_polls))


@size_ids
def test_dashboard_start_kinds(snap_compare: SnapCompare, make_app: MakeApp, size: tuple[int, int]) -> None:
    """The Start column with each way a sandbox starts: a warm pool, a template restore, a boot."""
    rows = [
        SandboxRow(name="api", image="microsandbox/python", status="running", backend="qemu", accel="kvm",
                   uptime_s=754.0, cpu_percent=12.5, memory_mib=88.0, disk_bytes=3 << 20,
                   command=["python3", "-m", "http.server"], started_by="restore", start_ms=84.0),
        SandboxRow(name="jobs", image="microsandbox/python", status="running", backend="qemu", accel="kvm",
                   uptime_s=9.0, cpu_percent=3.0, memory_mib=61.0, started_by="pool", start_ms=2.6),
        SandboxRow(name="web", image="microsandbox/node", status="running", backend="gvisor", accel="none",
                   uptime_s=11_100.0, cpu_percent=41.0, memory_mib=140.0, started_by="boot", start_ms=1120.0),
        SandboxRow(name="db", image="busybox", status="stopped", message="stopped by request"),
    ]  # fmt: skip
    app = still(make_app(sandboxes=rows, backend="QEMU/KVM"))
    assert snap_compare(app, terminal_size=size, run_before=in_state("table"))


@size_ids
def test_dashboard_stopping(snap_compare: SnapCompare, make_app: MakeApp, size: tuple[int, int]) -> None:
    """``x`` on a sandbox whose stop is still running: the row says ``stopping…``."""

    async def stop_api(pilot: Pilot[Any]) -> None:
        workbench = pilot.app.workbench
        assert isinstance(workbench, FakeWorkbench)
        workbench.delay = asyncio.Event()  # the stop never returns
        await pilot.press("x")
        await eventually(lambda: "stopping…" in str(dashboard(pilot).query_one("SandboxItem .col-status").render()))

    assert snap_compare(still(make_app()), terminal_size=size, run_before=in_state("table", stop_api))


@size_ids
def test_logs(snap_compare: SnapCompare, make_app: MakeApp, size: tuple[int, int]) -> None:
    app = still(make_app())
    workbench = app.workbench
    assert isinstance(workbench, FakeWorkbench)
    workbench.log_lines["api"] = [
        b"\x1b[32m[init]\x1b[0m mounting /app\n",
        b"Serving HTTP on 0.0.0.0 port 8000 (http://0.0.0.0:8000/) ...\n",
        b'127.0.0.1 - - [20/Nov/2026 10:00:01] "GET / HTTP/1.1" 200 -\n',
        b'127.0.0.1 - - [20/Nov/2026 10:00:02] "GET /health HTTP/1.1" 200 -\n',
    ]

    async def open_logs(pilot: Pilot[Any]) -> None:
        await pilot.press("l")
        await eventually(lambda: isinstance(pilot.app.screen, LogsScreen))
        await eventually(lambda: pilot.app.screen.query_one(Log).line_count == 4)
        await eventually(lambda: "end of log" in str(pilot.app.screen.query_one("#logs-status").render()))

    assert snap_compare(app, terminal_size=size, run_before=in_state("table", open_logs))


@size_ids
def test_logs_error(snap_compare: SnapCompare, make_app: MakeApp, size: tuple[int, int]) -> None:
    app = still(make_app(fail={"logs": "the log of api was rotated away"}))

    async def open_logs(pilot: Pilot[Any]) -> None:
        await pilot.press("l")
        await eventually(lambda: isinstance(pilot.app.screen, LogsScreen))
        await eventually(lambda: not pilot.app.screen.query_one("#logs-error").has_class("hidden"))

    assert snap_compare(app, terminal_size=size, run_before=in_state("table", open_logs))


@size_ids
def test_help(snap_compare: SnapCompare, make_app: MakeApp, size: tuple[int, int]) -> None:
    async def open_help(pilot: Pilot[Any]) -> None:
        await pilot.press("f1")
        await eventually(lambda: isinstance(pilot.app.screen, HelpScreen))
        await eventually(lambda: bool(pilot.app.screen.query(".help-row")))

    assert snap_compare(still(make_app()), terminal_size=size, run_before=in_state("table", open_help))


@size_ids
def test_palette_stop_api(snap_compare: SnapCompare, make_app: MakeApp, size: tuple[int, int]) -> None:
    async def search(pilot: Pilot[Any]) -> None:
        await pilot.press("ctrl+p")
        await eventually(lambda: isinstance(pilot.app.screen, CommandPalette))
        pilot.app.screen.query_one(Input).cursor_blink = False
        await pilot.press(*"stop api")
        await eventually(lambda: pilot.app.screen.query_one(CommandList).option_count > 0)
        # Wait for every provider to answer, so the list is complete (and the same every run).
        await eventually(lambda: all(w.is_finished for w in pilot.app.workers if w.group == GATHERING))

    assert snap_compare(still(make_app()), terminal_size=size, run_before=in_state("table", search))
