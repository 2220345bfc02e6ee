"""Progress reporting for long image work (pulls, pushes, imports, rootfs builds).

The engine reports through this small interface; the CLI draws bars, the TUI a widget, the
server nothing. Methods may be called from worker threads.
"""

from __future__ import annotations


class Progress:
    """No-op base: subclass and override what you show."""

    def begin(self, title: str, *, total_bytes: int = 0, items: int = 0) -> None:
        """A phase starts: ``items`` things (layers) adding up to ``total_bytes``."""

    def advance(self, nbytes: int) -> None:
        """``nbytes`` more done (negative when a download restarts)."""

    def layer(self, label: str, done_bytes: int, total_bytes: int) -> None:
        """Per-blob detail of a pull: ``label`` (short digest) has ``done_bytes`` of
        ``total_bytes`` (also called with ``done_bytes == total_bytes`` once it is stored)."""

    def item_done(self, label: str) -> None:
        """One of the phase's items finished."""

    def note(self, message: str) -> None:
        """Something the user should read (e.g. a blob failed verification and is re-fetched)."""

    def end(self) -> None:
        """The phase is over."""


NO_PROGRESS = Progress()
