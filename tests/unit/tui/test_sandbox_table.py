"""The dashboard's table pieces: value formats, sparklines and the Start column (msb_tui/widgets/)."""

from __future__ import annotations

from collections.abc import Callable

import pytest
from textual.widgets import Label

from msb_tui.app import MsbApp
from msb_tui.screens.dashboard import DashboardScreen
from msb_tui.widgets.sandbox_table import (
    MetricHistory,
    SandboxItem,
    format_bytes,
    format_mib,
    format_ms,
    format_start,
    format_uptime,
)
from msb_tui.widgets.sparkline import bars
from msb_tui.workbench import SandboxRow
from tests.unit.helpers import eventually

MakeApp = Callable[..., MsbApp]


def test_formats() -> None:
    assert [format_uptime(s) for s in (None, 42, 754, 3 * 3600 + 300, 2 * 86400 + 3 * 3600)] == \
        ["—", "42s", "12m34s", "3h05m", "2d03h"]  # fmt: skip
    assert [format_mib(m) for m in (None, 88.0, 1536.0)] == ["—", "88M", "1.5G"]
    assert [format_bytes(n) for n in (None, 512, 3 << 20, 48 << 20, 5 << 30)] == ["—", "512B", "3.0M", "48M", "5.0G"]


def test_bars_are_right_aligned_on_a_fixed_scale() -> None:
    assert bars([], 4) == "    "
    assert bars([0, 50, 100], 4, ceiling=100) == " ▁▅█"
    assert bars([10, 10], 2, ceiling=100) == "▂▂"  # a steady 10 % is low, not a wall of full bars
    assert bars([1, 2, 3, 4, 5, 6], 3) == "▆▇█"  # only the newest that fit; scaled to the largest
    assert bars([150], 1, ceiling=100) == "█"
    assert bars([5], 0) == ""


def test_history_restarts_when_a_sandbox_stops() -> None:
    history = MetricHistory()
    running = SandboxRow(name="api", status="running", cpu_percent=5, memory_mib=64)
    history.record(running)
    history.record(running)
    assert list(history.cpu) == [5, 5] and list(history.memory) == [64, 64]
    history.record(SandboxRow(name="api", status="stopped"))
    assert not history.cpu and not history.memory


def test_start_formats() -> None:
    assert [format_ms(ms) for ms in (0.2, 3.0, 84.4, 999.4, 999.6, 1120.0, 9960.0, 42_000.0, 720_000.0)] == \
        ["<1ms", "3ms", "84ms", "999ms", "1.0s", "1.1s", "10s", "42s", "12m"]  # fmt: skip
    assert format_ms(84.0, " ") == "84 ms" and format_ms(1120.0, " ") == "1.1 s"
    assert [format_start(*p) for p in (("restore", 84.0), ("boot", 1120.0), ("pool", 3.0), (None, None))] == \
        ["restore 84ms", "boot 1.1s", "pool 3ms", "—"]  # fmt: skip
    assert format_start("boot", None) == "boot" and format_start(None, 84.0) == "84ms"


def start_cells(screen: DashboardScreen) -> dict[str, str]:
    return {i.sandbox: str(i.query_one(".col-start", Label).render()) for i in screen.query(SandboxItem)}


async def test_the_start_column_shows_the_fakes_values(make_app: MakeApp) -> None:
    """api was restored in 84 ms, db starts (a cold boot in the fake: 1120 ms), stopped rows say —."""
    app = make_app()
    app.metrics_interval = None
    async with app.run_test(size=(80, 24)) as pilot:
        screen = pilot.app.screen
        assert isinstance(screen, DashboardScreen)
        await eventually(lambda: len(screen.query(SandboxItem)) == 3)
        assert start_cells(screen) == {"api": "restore 84ms", "db": "—", "worker": "—"}
        heading = [str(label.render()) for label in screen.query(".table-heading Label") if label.display]
        assert heading == ["Name", "Status", "VM", "Start", "Uptime", "CPU", "Memory", "Disk"]  # 80 wide: no Image
        screen.run_lifecycle("db", "start")
        await eventually(lambda: start_cells(screen)["db"] == "boot 1.1s")
        screen.run_lifecycle("api", "stop")
        await eventually(lambda: start_cells(screen)["api"] == "—")


@pytest.mark.parametrize("width", [80, 99, 100, 120, 149, 150, 160])
async def test_every_column_fits(make_app: MakeApp, width: int) -> None:
    """The Start column is whole and the row ends inside the screen at every width."""
    app = make_app()
    app.metrics_interval = None
    async with app.run_test(size=(width, 24)) as pilot:
        screen = pilot.app.screen
        await eventually(lambda: len(screen.query(SandboxItem)) == 3)
        await pilot.pause()
        api = screen.query(SandboxItem).first()
        assert api.query_one(".col-start").content_region.width >= len("restore 84ms")
        assert api.query_one(".col-disk").region.right <= width - 1  # the item's right padding
