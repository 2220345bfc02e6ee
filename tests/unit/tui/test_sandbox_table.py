"""The dashboard's table pieces: value formats and sparklines (msb_tui/widgets/)."""

from __future__ import annotations

from msb_tui.widgets.sandbox_table import MetricHistory, format_bytes, format_mib, format_uptime
from msb_tui.widgets.sparkline import bars
from msb_tui.workbench import SandboxRow


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
