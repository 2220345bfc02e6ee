"""msb-tui — the Textual workbench.

This first version shows the engine's readiness (kernel, agent, accelerator) so that
``make run`` proves the stack is set up; the full workbench (Sandboxfile editor, images,
metrics, shells, REPLs) is tracked in its own issue.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import ClassVar

from textual import work
from textual.app import App, ComposeResult
from textual.binding import Binding, BindingType
from textual.widgets import Footer, Header, Static

THEMES = Path(__file__).resolve().parent.parent / "themes"


class MsbApp(App[None]):
    """The workbench application."""

    TITLE = "msb"
    SUB_TITLE = "microVM sandboxes"
    CSS_PATH = str(THEMES / "base.tcss") if (THEMES / "base.tcss").exists() else None
    BINDINGS: ClassVar[list[BindingType]] = [Binding("q", "quit", "Quit", show=True)]

    def compose(self) -> ComposeResult:
        yield Header()
        yield Static("Checking the engine…", id="status")
        yield Footer()

    def on_mount(self) -> None:
        self.check_engine()

    @work(exclusive=True, group="engine")
    async def check_engine(self) -> None:
        from engine.errors import MsbError
        from engine.sandbox.engine import Engine

        status = self.query_one("#status", Static)
        try:
            assets = await Engine().prepare()
        except MsbError as exc:
            status.update(f"The engine is not ready:\n\n{exc}")
            status.add_class("error")
            return
        lines = [
            f"kernel       {assets.kernel.kind} {assets.kernel.version}",
            f"accelerator  {assets.accel.accel}  ({assets.accel.reason})",
        ]
        if assets.accel.warning:
            lines.append(f"\n⚠ {assets.accel.warning}")
        lines.append("\nTry:  msb exe ~/.cache/msb/rootfs-dirs/busybox -- uname -a")
        status.update("\n".join(lines))


def main() -> None:
    """Entry point of the ``msb-tui`` console script."""
    parser = argparse.ArgumentParser(prog="msb-tui", description="msb terminal workbench")
    parser.add_argument("--headless", action="store_true",
                        help="run the engine as a server (same as `msb server start`), no UI")
    parser.add_argument("--host", default=None)
    parser.add_argument("--port", type=int, default=None)
    parser.add_argument("--dev", action="store_true", default=None, help="server without authentication")
    parser.add_argument("--key", default=None, help="server secret (env MSB_SERVER_KEY)")
    args = parser.parse_args()
    if args.headless:
        from engine.errors import MsbError
        from engine.server.main import serve
        from engine.server.settings import ServerSettings

        try:
            serve(ServerSettings.from_env(host=args.host, port=args.port, dev=args.dev, key=args.key))
        except MsbError as exc:
            raise SystemExit(f"msb-tui: error: {exc}") from None
        return
    MsbApp().run()


if __name__ == "__main__":
    main()
