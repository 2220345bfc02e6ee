"""The dashboard: every sandbox of the project, live.

States (a ``ContentSwitcher``): ``loading`` until the first answer, ``empty`` (no sandboxes:
how to add one), ``error`` (the first fetch failed: message, hint, ``r`` to retry) and ``table``.

Metrics: a timer polls the workbench every ``app.metrics_interval`` seconds (1 by default;
``None`` switches polling off so tests drive :meth:`DashboardScreen.poll` themselves). A poll
runs in a worker and posts :class:`~msb_tui.messages.SandboxesFetched`, which Textual coalesces
(``can_replace``), so a slow frame never queues stale updates ahead of key presses. A poll is
skipped while the previous one is still out, so a slow engine is never asked twice at once.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, ClassVar, Literal, cast

from textual import on, work
from textual.app import App, ComposeResult
from textual.binding import Binding, BindingType
from textual.containers import Vertical
from textual.screen import Screen
from textual.widgets import ContentSwitcher, Footer, Header, Input, ListView, LoadingIndicator, Static
from textual.worker import Worker

from msb_tui.messages import SandboxesFailed, SandboxesFetched
from msb_tui.widgets.error_panel import ErrorPanel
from msb_tui.widgets.sandbox_table import SandboxRows, SandboxTable, format_ms
from msb_tui.workbench import SandboxRow, Workbench

if TYPE_CHECKING:
    from msb_tui.app import MsbApp

Verb = Literal["start", "stop", "restart"]
PENDING: dict[Verb, str] = {"start": "starting…", "stop": "stopping…", "restart": "restarting…"}
DONE: dict[Verb, str] = {"start": "started", "stop": "stopped", "restart": "restarted"}
SANDBOX_ACTIONS = frozenset({"start", "stop", "restart", "shell", "repl", "logs"})

EMPTY_HOWTO = "Add one in the Sandboxfile editor (F3), or from a shell:"
EMPTY_COMMAND = "msb add api --image python --start 'python3 -m http.server'"
TCG_WARNING = "⚠ QEMU does not treat TCG as a security boundary: prefer gVisor or KVM."


def describe(row: SandboxRow) -> str:
    """One line about a sandbox for the detail bar: how it started and its command, or why it
    stopped."""
    parts = [row.name, row.image or "no image"]
    started = started_line(row)
    if started:
        parts.append(started)
    if row.status == "running" and row.command:
        parts.append("$ " + " ".join(row.command))
    elif row.message:
        parts.append(f"{row.status}: {row.message}")
    elif not started:  # "started by …" already says it runs
        parts.append(row.status)
    if not row.defined:
        parts.append("not in the Sandboxfile")
    return " · ".join(parts)


def started_line(row: SandboxRow) -> str | None:
    """``"started by restore in 84 ms"`` for a running sandbox that says how it started (either
    part alone if the other is unknown); None otherwise."""
    if row.status != "running" or (row.started_by is None and row.start_ms is None):
        return None
    how = f" by {row.started_by}" if row.started_by else ""
    took = f" in {format_ms(row.start_ms, ' ')}" if row.start_ms is not None else ""
    return f"started{how}{took}"


def push_sandbox_screen(app: App[Any], what: Literal["shell", "repl", "logs"], name: str) -> None:
    """Open a shell, REPL or log screen on ``name`` (imported on first use: startup stays fast).

    Args:
        app: The app to push the screen on.
        what: Which screen.
        name: The sandbox.
    """
    if what == "shell":
        from msb_tui.screens.shell import ShellScreen

        app.push_screen(ShellScreen(name))
    elif what == "repl":
        from msb_tui.screens.repl import ReplScreen

        app.push_screen(ReplScreen(name))
    else:
        from msb_tui.screens.logs import LogsScreen

        app.push_screen(LogsScreen(name))


class DashboardScreen(Screen[None]):
    """Sandboxes of the project, live."""

    HELP_TITLE = "Dashboard"
    AUTO_FOCUS = "#sandbox-rows"
    HORIZONTAL_BREAKPOINTS = [(0, "-narrow"), (100, "-medium"), (150, "-wide")]  # noqa: RUF012 - declared so by Textual
    BINDINGS: ClassVar[list[BindingType]] = [
        Binding("s", "start", "Start", tooltip="Start the selected sandbox"),
        Binding("x", "stop", "Stop", tooltip="Stop the selected sandbox"),
        Binding("r", "restart", "Restart", tooltip="Stop, then start the selected sandbox"),
        Binding("r", "retry", "Retry", tooltip="Ask the engine again (after an error)"),
        Binding("o,enter", "shell", "Shell", tooltip="Open a shell in the selected sandbox"),
        Binding("p", "repl", "REPL", tooltip="Open a Python/Node REPL in the selected sandbox"),
        Binding("l", "logs", "Logs", tooltip="Follow the selected sandbox's log"),
        Binding("slash", "filter", "Filter", show=False, tooltip="Show only sandboxes whose name contains…"),
        Binding("escape", "clear_filter", "Clear filter", show=False, tooltip="Show every sandbox again"),
        Binding("f5", "refresh", "Refresh", show=False, tooltip="Ask the engine again (retry after an error)"),
    ]

    def __init__(self) -> None:
        super().__init__()
        self.rows: list[SandboxRow] | None = None
        """The last list from the workbench (``None``: not fetched yet)."""
        self.pending: dict[str, str] = {}
        """Sandbox name → status shown while a start/stop/restart runs (``"starting…"``)."""
        self._poll_worker: Worker[Any] | None = None
        self._failing = False

    @property
    def workbench(self) -> Workbench:
        return cast("MsbApp", self.app).workbench

    def compose(self) -> ComposeResult:
        yield Header()
        yield Input(placeholder="filter by name (esc clears)", id="filter", classes="hidden")
        with ContentSwitcher(initial="loading", id="states"):
            with Vertical(id="loading"):
                yield LoadingIndicator()
                yield Static("Asking the engine for sandboxes…", classes="state-text")
            with Vertical(id="empty"):
                yield Static("No sandboxes yet", classes="empty-title")
                yield Static(EMPTY_HOWTO, markup=False)
                yield Static(EMPTY_COMMAND, classes="empty-command", markup=False)
            with Vertical(id="error"):
                yield ErrorPanel("Could not list the sandboxes", "Press r to try again.")
            yield SandboxTable(id="table")
        yield Static(id="detail", markup=False)
        yield Static(TCG_WARNING, id="tcg-warning", classes="hidden", markup=False)
        yield Footer()

    def on_mount(self) -> None:
        self.poll()
        interval = getattr(self.app, "metrics_interval", 1.0)
        if interval:
            self.set_interval(interval, self.poll, name="metrics")

    # ------------------------------------------------------------------ polling

    def poll(self, *, force: bool = False) -> Worker[Any]:
        """Ask the workbench for its sandboxes (in a worker) unless a poll is still out.

        Args:
            force: Start a new poll even if one is out (the old one is cancelled).

        Returns:
            The worker of the poll (the one already out, if not forced).
        """
        if force or self._poll_worker is None or self._poll_worker.is_finished:
            self._poll_worker = self._fetch()
        return self._poll_worker

    @work(exclusive=True, group="dashboard-poll")
    async def _fetch(self) -> None:
        try:
            rows = await self.workbench.sandboxes()
        except Exception as exc:  # any failure is shown (error panel or notification), never raised
            self.post_message(SandboxesFailed(exc))
            return
        self.post_message(SandboxesFetched(rows))

    @on(SandboxesFetched)
    async def _fetched(self, message: SandboxesFetched) -> None:
        self.rows, self._failing = message.rows, False
        app = cast("MsbApp", self.app)
        app.last_sandboxes = message.rows
        app.refresh_header()
        self.query_one(SandboxTable).record(message.rows)
        if self.is_visible:
            await self._render_rows()

    @on(SandboxesFailed)
    def _failed(self, message: SandboxesFailed) -> None:
        exc = message.error
        if self.rows is None:
            self.query_one(ErrorPanel).show(exc)
            self._switch("error")
        elif not self._failing:  # say it once, not every second; the table keeps its last rows
            cast("MsbApp", self.app).report(exc, "refreshing the sandboxes")
        self._failing = True

    @property
    def is_visible(self) -> bool:
        """Whether the dashboard shows (it is on top, or only modal screens cover it). Polls
        that arrive while it is hidden only record history; :meth:`on_screen_resume` catches up."""
        stack = self.app.screen_stack
        return self in stack and all(s.is_modal for s in stack[stack.index(self) + 1 :])

    def on_screen_resume(self) -> None:
        if self.rows is not None:
            self.call_later(self._render_rows)

    # ------------------------------------------------------------------ rendering

    def _switch(self, state: str) -> None:
        self.query_one(ContentSwitcher).current = state
        self.refresh_bindings()

    def _visible_rows(self) -> list[SandboxRow]:
        needle = self.query_one("#filter", Input).value.strip().lower()
        return [r for r in self.rows or [] if needle in r.name.lower()]

    async def _render_rows(self) -> None:
        if self.rows is None:
            return
        if not self.rows:
            self._switch("empty")
        else:
            await self.query_one(SandboxTable).show(self._visible_rows(), self.pending)
            self._switch("table")
        tcg = any(r.status == "running" and r.accel == "tcg" for r in self.rows)
        self.query_one("#tcg-warning").set_class(not tcg, "hidden")
        self._update_detail()

    def _update_detail(self) -> None:
        row = self.selected
        self.query_one("#detail", Static).update(describe(row) if row else "")

    @on(ListView.Highlighted)
    def _highlighted(self) -> None:
        self._update_detail()
        self.refresh_bindings()

    @on(SandboxRows.OpenRequested)
    def _open_requested(self) -> None:
        self.action_shell()

    @property
    def selected(self) -> SandboxRow | None:
        """The highlighted sandbox (``None`` when the table is not shown or empty)."""
        if self.query_one(ContentSwitcher).current != "table":
            return None
        return self.query_one(SandboxTable).selected

    def check_action(self, action: str, parameters: tuple[object, ...]) -> bool | None:
        """Sandbox keys only when a sandbox is highlighted; start/stop greyed when moot;
        retry only on the error panel (where ``r`` means retry rather than restart)."""
        if action == "retry":
            return self.query_one(ContentSwitcher).current == "error"
        if action not in SANDBOX_ACTIONS:
            return True
        row = self.selected
        if row is None:
            return False
        busy = row.name in self.pending
        if action == "start":
            return None if busy or row.status == "running" else True
        if action in ("stop", "restart"):
            return None if busy or row.status != "running" else True
        return True

    # ------------------------------------------------------------------ actions

    def action_refresh(self) -> None:
        if self.rows is None:
            self._switch("loading")
        self.poll(force=True)

    def action_retry(self) -> None:
        self.action_refresh()

    def action_filter(self) -> None:
        field = self.query_one("#filter", Input)
        field.remove_class("hidden")
        field.focus()

    def action_clear_filter(self) -> None:
        field = self.query_one("#filter", Input)
        if field.has_class("hidden"):
            return
        field.value = ""
        field.add_class("hidden")
        self.query_one(SandboxTable).list_view.focus()

    @on(Input.Changed, "#filter")
    async def _filter_changed(self) -> None:
        await self._render_rows()

    @on(Input.Submitted, "#filter")
    def _filter_submitted(self) -> None:
        self.query_one(SandboxTable).list_view.focus()

    def action_start(self) -> None:
        self._lifecycle("start")

    def action_stop(self) -> None:
        self._lifecycle("stop")

    def action_restart(self) -> None:
        self._lifecycle("restart")

    def action_shell(self) -> None:
        if row := self.selected:
            push_sandbox_screen(self.app, "shell", row.name)

    def action_repl(self) -> None:
        if row := self.selected:
            push_sandbox_screen(self.app, "repl", row.name)

    def action_logs(self) -> None:
        if row := self.selected:
            push_sandbox_screen(self.app, "logs", row.name)

    # ------------------------------------------------------------------ lifecycle

    def _lifecycle(self, verb: Verb) -> None:
        if row := self.selected:
            self.run_lifecycle(row.name, verb)

    def run_lifecycle(self, name: str, verb: Verb) -> Worker[None] | None:
        """Start, stop or restart ``name`` in a worker; the row shows ``starting…`` meanwhile
        and a failure is reported as a notification.

        Args:
            name: The sandbox.
            verb: What to do.

        Returns:
            The worker (tests await it); ``None`` if an action on ``name`` is still running.
        """
        if name in self.pending:
            self.notify(f"{name} is busy ({self.pending[name]}); try again when it is done", severity="warning")
            return None
        self.pending[name] = PENDING[verb]
        self.call_later(self._render_rows)  # in the screen's queue: renders never overlap
        # One group per sandbox (hence run_worker, not @work): stopping ``db`` must not wait
        # for or cancel the start of ``api``.
        return self.run_worker(self._lifecycle_work(name, verb), group=f"lifecycle:{name}")

    async def _lifecycle_work(self, name: str, verb: Verb) -> None:
        try:
            if verb in ("stop", "restart"):
                await self.workbench.stop(name)
            if verb in ("start", "restart"):
                await self.workbench.start(name)
        except Exception as exc:  # shown, not raised: a worker error would end the app
            cast("MsbApp", self.app).report(exc, f"{verb} {name}")
        else:
            if not self.is_visible:  # started from the palette elsewhere: say it worked
                self.notify(f"{name}: {DONE[verb]}", title="Dashboard")
        finally:
            self.pending.pop(name, None)
        # A fresh poll (cancelling one that began before the action ended and would be
        # stale), so the row goes straight from "starting…" to the engine's answer.
        self.poll(force=True)
