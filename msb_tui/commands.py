"""The command palette's provider (ctrl+p): every workbench action, fuzzy-matched.

Screen and theme commands are always there; per-sandbox commands (``start api``,
``stop api``, ``shell api``, ``REPL api``, ``logs api``, ``restart api``) are made from the
dashboard's latest list (``app.last_sandboxes``), so opening the palette never waits on the
engine. Start/stop/restart run on the dashboard (its workers show ``starting…`` and report
errors) even when the palette was opened on another screen.
"""

from __future__ import annotations

from collections.abc import Callable
from functools import partial
from typing import TYPE_CHECKING, Any, Literal, NamedTuple, cast

from textual.command import DiscoveryHit, Hit, Hits, Provider

if TYPE_CHECKING:
    from msb_tui.app import MsbApp


class Command(NamedTuple):
    """One palette entry."""

    text: str
    run: Callable[[], Any]
    help: str
    discover: bool = True
    """Listed when the palette opens with an empty query (sandbox commands only on search)."""


class WorkbenchCommands(Provider):
    """Actions on screens, the theme and every known sandbox."""

    @property
    def msb(self) -> MsbApp:
        return cast("MsbApp", self.app)

    def commands(self) -> list[Command]:
        """Every command, in the order they are discovered."""
        app = self.msb
        found = [
            Command("Dashboard: sandboxes and live metrics", partial(app.switch_mode, "dashboard"), "F2"),
            Command("Sandboxfile editor", partial(app.switch_mode, "editor"), "F3"),
            Command("Images: pull, remove, build", partial(app.switch_mode, "images"), "F4"),
            Command("Toggle theme (dark / light)", app.action_toggle_theme, "ctrl+t"),
            Command("Help: key bindings", app.action_help, "F1 or ?"),
        ]
        for row in app.last_sandboxes:
            name = row.name
            found += [
                Command(f"start {name}", partial(self._lifecycle, name, "start"), f"Start {name} (now {row.status})",
                        False),
                Command(f"stop {name}", partial(self._lifecycle, name, "stop"), f"Stop {name} (now {row.status})",
                        False),
                Command(f"restart {name}", partial(self._lifecycle, name, "restart"), f"Stop, then start {name}",
                        False),
                Command(f"shell {name}", partial(self._open, "shell", name), f"A terminal in {name}", False),
                Command(f"REPL {name}", partial(self._open, "repl", name), f"Python/Node REPL in {name}", False),
                Command(f"logs {name}", partial(self._open, "logs", name), f"Follow {name}'s log", False),
            ]  # fmt: skip
        return found

    async def discover(self) -> Hits:
        """The screen and theme commands, for an empty query."""
        for command in self.commands():
            if command.discover:
                yield DiscoveryHit(command.text, command.run, help=command.help)

    async def search(self, query: str) -> Hits:
        """Every command whose text fuzzy-matches ``query``, best first.

        Args:
            query: What the user typed.

        Yields:
            Hits, highlighted where they match.
        """
        matcher = self.matcher(query)
        for command in self.commands():
            if (score := matcher.match(command.text)) > 0:
                yield Hit(score, matcher.highlight(command.text), command.run, text=command.text, help=command.help)

    def _lifecycle(self, name: str, verb: Literal["start", "stop", "restart"]) -> None:
        from msb_tui.screens.dashboard import DashboardScreen

        dashboard = self.app.get_screen_stack("dashboard")[0]
        if isinstance(dashboard, DashboardScreen):
            dashboard.run_lifecycle(name, verb)

    def _open(self, what: Literal["shell", "repl", "logs"], name: str) -> None:
        from msb_tui.screens.dashboard import push_sandbox_screen

        push_sandbox_screen(self.app, what, name)
