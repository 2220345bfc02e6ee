"""msb-tui — the Textual workbench.

Thin on purpose: the app holds the :class:`~msb_tui.workbench.Workbench` (the seam to the
engine or a server), registers the themes and the screens, and owns the global bindings.
Screens live in ``msb_tui/screens/`` (one per module), widgets in ``msb_tui/widgets/``.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any, ClassVar

from textual import work
from textual.app import App
from textual.binding import Binding, BindingType
from textual.screen import Screen

from engine.errors import MsbError
from msb_tui.commands import WorkbenchCommands
from msb_tui.screens.dashboard import DashboardScreen
from msb_tui.themes import THEMES_DIR, load_themes
from msb_tui.workbench import SandboxRow, Workbench


def _editor_screen() -> Screen[Any]:
    # Imported when first shown: the editor's YAML round-trip and file watcher are not needed
    # for the first frame (startup budget: 1 s).
    from msb_tui.screens.editor import EditorScreen

    return EditorScreen()


def _images_screen() -> Screen[Any]:
    from msb_tui.screens.images import ImagesScreen

    return ImagesScreen()


class MsbApp(App[None]):
    """The workbench application."""

    TITLE = "msb"
    SUB_TITLE = "microVM sandboxes"
    CSS_PATH = [  # noqa: RUF012 - Textual's own type for it is a plain list
        THEMES_DIR / "base.tcss",
        THEMES_DIR / "dashboard.tcss",
        THEMES_DIR / "logs.tcss",
        THEMES_DIR / "help.tcss",
        THEMES_DIR / "images.tcss",
        THEMES_DIR / "repl.tcss",
        THEMES_DIR / "shell.tcss",
        THEMES_DIR / "editor.tcss",
    ]
    COMMANDS = App.COMMANDS | {WorkbenchCommands}
    MODES: ClassVar[dict[str, Callable[[], Screen[Any]]]] = {  # type: ignore[assignment]
        "dashboard": DashboardScreen,
        "editor": _editor_screen,
        "images": _images_screen,
    }
    DEFAULT_MODE = "dashboard"
    HELP_TITLE = "Everywhere"
    BINDINGS: ClassVar[list[BindingType]] = [
        Binding("f1,question_mark", "help", "Help", tooltip="Every key binding"),
        Binding("f2", "switch_mode('dashboard')", "Dashboard", tooltip="Sandboxes, live metrics"),
        Binding("f3", "switch_mode('editor')", "Sandboxfile", tooltip="Edit the project's Sandboxfile"),
        Binding("f4", "switch_mode('images')", "Images", tooltip="Pull, remove, build images"),
        Binding("ctrl+t", "toggle_theme", "Theme", tooltip="Switch between the dark and light theme"),
        Binding("ctrl+q", "quit", "Quit", priority=True),
    ]

    metrics_interval: float | None = 1.0
    """Seconds between the dashboard's metric polls; ``None``: no timer (tests poll by hand)."""

    def __init__(self, workbench: Workbench, *, theme: str = "msb-dark") -> None:
        super().__init__()
        self.workbench = workbench
        self.last_sandboxes: list[SandboxRow] = []
        """The dashboard's latest list (the command palette offers actions on these)."""
        for t in load_themes():
            self.register_theme(t)
        self.theme = theme

    @property
    def sandboxfile(self) -> Path | None:
        return self.workbench.sandboxfile

    def on_mount(self) -> None:
        self.refresh_header()
        self._find_backend()

    def refresh_header(self) -> None:
        """The header's subtitle: the workbench's line, with the backend in force once known
        (the dashboard calls this after each poll: running sandboxes say what they run on)."""
        self.sub_title = self.workbench.description

    @work(exclusive=True, group="backend")
    async def _find_backend(self) -> None:
        """Ask which backend is in force (a probe, the first time on a host: not on the first frame)."""
        try:
            await self.workbench.backend()
        except Exception as exc:  # shown, never raised: the sandboxes' own errors say the rest
            self.report(exc, "choosing the backend")
        self.refresh_header()

    def report(self, exc: BaseException, what: str) -> None:
        """The one place errors are shown: a notification with the message and its hint
        (never a traceback). Unexpected exceptions say so and point at the log."""
        if isinstance(exc, MsbError):
            text = exc.message + (f"\n{exc.hint}" if exc.hint else "")
        else:
            text = f"unexpected {type(exc).__name__}: {exc}\n(this is a bug in msb-tui; please report it)"
        self.notify(text, title=f"{what} failed", severity="error", timeout=8, markup=False)

    def check_action(self, action: str, parameters: tuple[object, ...]) -> bool | None:
        """While a widget that captures keys has focus (a shell's terminal: ``captures_keys``),
        the app's own bindings step aside — hidden, and their keys (ctrl+p, F1…) reach the
        guest. Quitting (ctrl+q) still works."""
        return action == "quit" or not getattr(self.focused, "captures_keys", False)

    def action_toggle_theme(self) -> None:
        self.theme = "msb-light" if self.theme == "msb-dark" else "msb-dark"

    def action_help(self) -> None:
        from msb_tui.screens.help import HelpScreen

        if not isinstance(self.screen, HelpScreen):
            self.push_screen(HelpScreen())

    async def on_unmount(self) -> None:
        await self.workbench.close()
