"""The dashboard's table of sandboxes: one row per sandbox, with live CPU/memory sparklines.

The "VM" column shows what isolates a running sandbox (``gVisor``, ``QEMU/KVM``, ``QEMU/TCG ⚠``:
TCG is marked, it is no security boundary); "Start" how it started and how long that took
(``restore 84ms``, ``boot 1.1s``, ``pool 3ms``). A ``ListView`` of rows (not a ``DataTable``) so
that each cell is a real widget: the status is coloured by a CSS class (``status-running`` …,
see ``themes/dashboard.tcss``) and the metrics are :class:`~msb_tui.widgets.sparkline.MetricSpark`
widgets that repaint only themselves on a poll. The table keeps each sandbox's metric history,
so filtering rows away and back keeps it.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Iterable
from typing import ClassVar

from textual.app import ComposeResult
from textual.binding import Binding, BindingType
from textual.containers import Horizontal, Vertical
from textual.content import Content
from textual.message import Message
from textual.widgets import Label, ListItem, ListView

from msb_tui.widgets.sparkline import MetricSpark
from msb_tui.workbench import SandboxRow

HISTORY = 120
"""Samples kept per metric (two minutes at the default 1 Hz poll)."""

COLUMNS = (("name", "Name"), ("status", "Status"), ("image", "Image"), ("accel", "VM"), ("start", "Start"),
           ("uptime", "Uptime"), ("cpu", "CPU"), ("memory", "Memory"), ("disk", "Disk"))  # fmt: skip
"""(key, heading) of every column, left to right."""

STATUS_ICONS = {"running": "●", "starting": "◐", "stopping": "◑", "stopped": "○", "crashed": "✖"}
NO_VALUE = "—"


def format_uptime(seconds: float | None) -> str:
    """``"42s"``, ``"12m34s"``, ``"3h05m"``, ``"2d03h"``; ``"—"`` when unknown."""
    if seconds is None:
        return NO_VALUE
    s = int(seconds)
    if s < 60:
        return f"{s}s"
    if s < 3600:
        return f"{s // 60}m{s % 60:02d}s"
    if s < 86400:
        return f"{s // 3600}h{s % 3600 // 60:02d}m"
    return f"{s // 86400}d{s % 86400 // 3600:02d}h"


def format_mib(mib: float | None) -> str:
    """Memory in MiB as ``"88M"`` or ``"1.5G"``; ``"—"`` when unknown."""
    if mib is None:
        return NO_VALUE
    return f"{mib:.0f}M" if mib < 1024 else f"{mib / 1024:.1f}G"


def format_bytes(n: int | None) -> str:
    """Binary sizes in at most five characters: ``"512B"``, ``"3.0M"``, ``"48M"``, ``"1.2G"``;
    ``"—"`` when unknown."""
    if n is None:
        return NO_VALUE
    value, unit = float(n), "B"
    for unit in ("B", "K", "M", "G"):  # the unit the loop stops at is the answer
        if value < 1024 or unit == "G":
            break
        value /= 1024
    return f"{value:.1f}{unit}" if unit != "B" and value < 10 else f"{value:.0f}{unit}"


def format_ms(ms: float, sep: str = "") -> str:
    """A start time in at most five characters (plus ``sep`` before the unit): ``"<1ms"``,
    ``"84ms"``, ``"1.1s"``, ``"42s"``, ``"12m"``."""
    if ms < 0.5:
        return f"<1{sep}ms"
    if round(ms) < 1000:
        return f"{round(ms)}{sep}ms"
    s = ms / 1000
    if s < 9.95:
        return f"{s:.1f}{sep}s"
    return f"{s:.0f}{sep}s" if s < 599.5 else f"{s / 60:.0f}{sep}m"


def format_start(started_by: str | None, start_ms: float | None) -> str:
    """The Start column: ``"restore 84ms"``, ``"boot 1.1s"``, ``"pool 3ms"`` (either part alone
    if the other is unknown); ``"—"`` when both are."""
    parts = [p for p in (started_by, None if start_ms is None else format_ms(start_ms)) if p]
    return " ".join(parts) or NO_VALUE


class MetricHistory:
    """The recent CPU % and memory MiB samples of one sandbox."""

    def __init__(self) -> None:
        self.cpu: deque[float] = deque(maxlen=HISTORY)
        self.memory: deque[float] = deque(maxlen=HISTORY)

    def record(self, row: SandboxRow) -> None:
        """Add the row's sample if it is running; forget the history when it is not, so a
        restarted sandbox starts a fresh line."""
        if row.status != "running":
            self.cpu.clear()
            self.memory.clear()
            return
        self.cpu.append(row.cpu_percent or 0.0)
        self.memory.append(row.memory_mib or 0.0)


def _cells(row: SandboxRow, pending: str | None) -> dict[str, str]:
    """The text columns of a row (``pending``: a status such as ``"starting…"`` that
    overrides the workbench's while an action runs)."""
    status = pending or row.status
    icon = STATUS_ICONS.get(status.rstrip("…"), "◌")
    running = row.status == "running" and pending is None
    label = row.backend_label if running else None
    return {
        "name": row.name if row.defined else f"{row.name}*",
        "status": f"{icon} {status}",
        "image": row.image or NO_VALUE,
        "accel": (f"{label} ⚠" if row.accel == "tcg" else label) if label else NO_VALUE,
        "start": format_start(row.started_by, row.start_ms) if running else NO_VALUE,
        "uptime": format_uptime(row.uptime_s) if running else NO_VALUE,
        "cpu": f"{row.cpu_percent:.0f}%" if running and row.cpu_percent is not None else NO_VALUE,
        "memory": format_mib(row.memory_mib) if running else NO_VALUE,
        "disk": format_bytes(row.disk_bytes),
    }


class SandboxItem(ListItem):
    """One sandbox's row."""

    def __init__(self, row: SandboxRow, history: MetricHistory, pending: str | None = None) -> None:
        super().__init__(classes="sandbox-item")
        self.row, self.history, self.pending = row, history, pending
        self._labels: dict[str, Label] = {}
        self._shown: dict[str, str] = {}
        self._cpu = MetricSpark(ceiling=100.0, hot_at=80.0, classes="spark spark-cpu")
        self._memory = MetricSpark(classes="spark spark-memory")

    @property
    def sandbox(self) -> str:
        """The sandbox's name."""
        return self.row.name

    def compose(self) -> ComposeResult:
        cells = _cells(self.row, self.pending)
        with Horizontal(classes="sandbox-row"):
            for key, _ in COLUMNS:
                label = Label(Content(cells[key]), classes=f"col col-{key}", markup=False)
                self._labels[key] = label
                if key in ("cpu", "memory"):
                    with Horizontal(classes=f"col col-{key} metric"):
                        yield self._cpu if key == "cpu" else self._memory
                        yield label.set_classes("value")
                else:
                    yield label

    def on_mount(self) -> None:
        self._paint()

    def show(self, row: SandboxRow, pending: str | None) -> None:
        """Repaint with a newer ``row`` (``pending``: an in-progress status to show instead)."""
        self.row, self.pending = row, pending
        if self.is_mounted:
            self._paint()

    def _paint(self) -> None:
        # Only what changed: an unchanged label is not re-laid out on every poll.
        for key, text in _cells(self.row, self.pending).items():
            if self._shown.get(key) != text:
                self._labels[key].update(Content(text))
                self._shown[key] = text
        status_class = f"status-{'busy' if self.pending else self.row.status}"
        if not self._labels["status"].has_class(status_class):
            self._labels["status"].set_classes(f"col col-status {status_class}")
        tcg = self.row.accel == "tcg" and self.row.status == "running" and not self.pending
        self._labels["accel"].set_class(tcg, "accel-tcg")
        self._labels["name"].set_class(not self.row.defined, "undefined")
        self._cpu.values = tuple(self.history.cpu)
        self._memory.values = tuple(self.history.memory)


class SandboxRows(ListView):
    """The rows. Enter asks to open the highlighted sandbox (:class:`OpenRequested`); a
    mouse click only highlights (a ``ListView`` would "select" on click too)."""

    HELP_TITLE = "Sandbox list"
    BINDINGS: ClassVar[list[BindingType]] = [
        Binding("enter", "select_cursor", "Open shell", show=False, tooltip="Open a shell in the sandbox"),
    ]

    class OpenRequested(Message):
        """Enter was pressed on a row."""

    def action_select_cursor(self) -> None:
        if self.highlighted_child is not None:
            self.post_message(self.OpenRequested())


class SandboxTable(Vertical):
    """A heading and the rows; posts ``ListView.Highlighted``/``Selected`` like a ListView."""

    def __init__(self, *, id: str | None = None) -> None:
        super().__init__(id=id)
        self.histories: dict[str, MetricHistory] = {}

    def compose(self) -> ComposeResult:
        with Horizontal(classes="sandbox-row table-heading"):
            for key, heading in COLUMNS:
                yield Label(heading, classes=f"col col-{key}")
        yield SandboxRows(id="sandbox-rows")

    @property
    def list_view(self) -> ListView:
        return self.query_one("#sandbox-rows", ListView)

    @property
    def selected(self) -> SandboxRow | None:
        """The highlighted sandbox's last known row."""
        item = self.list_view.highlighted_child
        return item.row if isinstance(item, SandboxItem) else None

    def record(self, rows: Iterable[SandboxRow]) -> None:
        """Add a poll's samples to the histories (also of rows that are filtered out)."""
        for row in rows:
            self.histories.setdefault(row.name, MetricHistory()).record(row)

    async def show(self, rows: list[SandboxRow], pending: dict[str, str]) -> None:
        """Show exactly ``rows`` in this order: update rows in place when the names are the
        same as shown (the common case: a metrics poll), rebuild the list otherwise."""
        view = self.list_view
        items = [c for c in view.children if isinstance(c, SandboxItem)]
        if [i.sandbox for i in items] == [r.name for r in rows]:
            for item, row in zip(items, rows, strict=True):
                item.show(row, pending.get(row.name))
            return
        keep = self.selected.name if self.selected else None
        await view.clear()
        history = self.histories.setdefault
        await view.extend(SandboxItem(r, history(r.name, MetricHistory()), pending.get(r.name)) for r in rows)
        names = [r.name for r in rows]
        view.index = names.index(keep) if keep in names else (0 if names else None)
