"""The shell screen: a real terminal in a running sandbox.

Pushed from the dashboard as ``ShellScreen("api")``. It opens the sandbox's shell (its
Sandboxfile ``shell``, ``/bin/sh`` by default) over the engine's pty session, in a worker, and
shows it in a :class:`~msb_tui.widgets.terminal.TerminalView`. States:

- **connecting** — a panel says so; the app stays responsive however long the engine takes;
- **running** — every key goes to the guest (escape too, and ctrl+c, F-keys, ctrl+p…);
  **ctrl+]** leaves, as in telnet: the session is closed and you are back on the dashboard.
  ctrl+q still quits msb-tui; shift+PgUp/PgDn and the mouse wheel scroll the history;
- **exited** — ``[exited with N]`` is printed in the terminal and the status line;
  ``r`` opens a new shell, ``q`` (or ctrl+]) closes the screen;
- **error** — the shell could not be opened (sandbox not running, remote server, lost
  connection): a panel with the message and what to do, a notification, ``r`` retries.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, ClassVar, Literal, cast

from rich.text import Text
from textual import work
from textual.app import ComposeResult
from textual.binding import Binding, BindingType
from textual.containers import Container
from textual.screen import Screen
from textual.widgets import Footer, Header, Static

from engine.errors import MsbError
from engine.vm.process import ExitStatus
from msb_tui.widgets.terminal import TerminalView

if TYPE_CHECKING:
    from msb_tui.app import MsbApp

ShellState = Literal["connecting", "running", "exited", "error"]
LEAVE_KEY = "ctrl+right_square_bracket"
"""ctrl+], the one key that leaves the terminal (Textual's name for it)."""


def exit_text(status: ExitStatus) -> str:
    """``[exited with N]`` (and the signal or time-out, if that is why).

    Args:
        status: how the shell ended.

    Returns:
        The text shown in the terminal and the status line.
    """
    if status.timed_out:
        return f"[timed out, exited with {status.exit_code}]"
    if status.signal:
        return f"[killed by signal {status.signal}, exited with {status.exit_code}]"
    return f"[exited with {status.exit_code}]"


class ShellScreen(Screen[None]):
    """See the module docstring.

    Args:
        name: the sandbox to open a shell in (it must be running).
    """

    HELP_TITLE = "Shell"
    BINDINGS: ClassVar[list[BindingType]] = [
        Binding(LEAVE_KEY, "leave", "Leave", key_display="^]", priority=True,
                tooltip="Close the shell and go back (every other key goes to the sandbox)"),
        Binding("r", "reopen", "Reopen", tooltip="Open a new shell in the sandbox"),
        Binding("q", "close", "Close", tooltip="Close this screen"),
    ]

    def __init__(self, name: str) -> None:
        super().__init__()
        self.sandbox = name
        self.state: ShellState = "connecting"
        self._title = ""
        self._outcome = ""

    @property
    def _app(self) -> MsbApp:
        return cast("MsbApp", self.app)

    def compose(self) -> ComposeResult:
        yield Header()
        with Container(id="shell-body"):
            yield TerminalView(id="terminal")
            yield Static(id="shell-panel", markup=False)
        yield Static(id="shell-status", markup=False)
        yield Footer()

    def on_mount(self) -> None:
        self.sub_title = f"shell · {self.sandbox}"
        self._set_state("connecting")
        self.call_after_refresh(self._open)  # after the first layout: the terminal knows its size

    @property
    def terminal(self) -> TerminalView:
        return self.query_one(TerminalView)

    # ------------------------------------------------------------------ states

    def _set_state(self, state: ShellState, detail: str = "") -> None:
        """Show ``state``: the panel (connecting/error), the status line and the footer keys."""
        self.state = state
        panel = self.query_one("#shell-panel", Static)
        panel.set_class(state == "error", "-error")
        panel.display = state in ("connecting", "error")
        if state == "connecting":
            panel.update(f"Opening a shell in {self.sandbox}…")
        elif state == "error":
            panel.update(Text.assemble((f"Could not open a shell in {self.sandbox}", "bold"), f"\n\n{detail}\n\n",
                                       ("r", "bold"), " retry · ", ("q", "bold"), " close"))  # fmt: skip
        self._outcome = detail if state == "exited" else ""
        self._update_status()
        self.refresh_bindings()

    def _update_status(self) -> None:
        cols, rows = self.terminal.emulator.size
        parts = [self.sandbox]
        if self.state == "connecting":
            parts.append("connecting…")
        elif self.state == "running":
            parts += [f"{cols}×{rows}", *([self._title] if self._title else []), "ctrl+] leaves"]
        elif self.state == "exited":
            parts += [self._outcome, "r reopen · q close"]
        else:
            parts += ["not connected", "r retry · q close"]
        status = self.query_one("#shell-status", Static)
        status.set_class(self.state in ("exited", "error"), "-ended")
        status.update(" · ".join(parts))

    def check_action(self, action: str, parameters: tuple[object, ...]) -> bool | None:
        """``r`` once the shell has ended; ``q`` whenever the keys are not the guest's."""
        if action == "reopen":
            return self.state in ("exited", "error")
        if action == "close":
            return self.state != "running"
        return True

    # ------------------------------------------------------------------ the session

    def _open(self) -> None:
        self._set_state("connecting")
        self._connect()

    @work(exclusive=True, group="shell-open")
    async def _connect(self) -> None:
        """Ask the workbench for a shell the terminal's size and attach it."""
        view = self.terminal
        cols, rows = view.emulator.size
        try:
            proc = await self._app.workbench.shell(self.sandbox, rows, cols)
        except Exception as exc:  # shown as a panel and a notification, never a traceback
            self._failed(exc, "opening a shell")
            return
        view.attach(proc, rows, cols)
        self._set_state("running")
        view.focus()

    def _failed(self, exc: BaseException, what: str) -> None:
        if isinstance(exc, MsbError):
            detail = exc.message + (f"\n{exc.hint}" if exc.hint else "")
        else:
            detail = f"unexpected {type(exc).__name__}: {exc}"
        self._app.report(exc, f"{what} in {self.sandbox}")
        self.set_focus(None)
        self._set_state("error", detail)

    def on_terminal_view_exited(self, message: TerminalView.Exited) -> None:
        if message.error is not None:
            self._failed(message.error, "the shell")
            return
        text = exit_text(message.status) if message.status is not None else "[exited]"
        message.view.note(text)
        self.set_focus(None)  # keys are ours again: r, q and the app's bindings
        self._set_state("exited", text)

    def on_terminal_view_title_changed(self, message: TerminalView.TitleChanged) -> None:
        self._title = message.title
        self._update_status()

    def on_resize(self) -> None:
        if self.is_mounted:
            self.call_after_refresh(self._update_status)

    def action_reopen(self) -> None:
        """Open a new shell (after the last one ended or failed)."""
        if self.state in ("exited", "error"):
            self.terminal.feed(b"\r\n")
            self._open()

    def action_leave(self) -> None:
        """Close the session (in the background: the engine may be slow to answer) and go back."""
        self.workers.cancel_group(self, "shell-open")
        self.app.run_worker(self.terminal.close_process(), group="shell-close")
        self.dismiss()

    def action_close(self) -> None:
        """``q`` once the shell has ended: the same as leaving."""
        self.action_leave()
