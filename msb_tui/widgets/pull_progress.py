"""The progress of an image pull: a title and one progress bar per layer.

:meth:`PullProgress.report` is the :data:`~msb_tui.workbench.ProgressCallback` handed to
``workbench.pull``; it only posts a message, so it may be called from any thread, at any rate
(consecutive updates of the same layer coalesce, as in Toolong). :meth:`PullProgress.finish`
and :meth:`PullProgress.fail` are posted the same way, so they land after every update the
pull reported before returning.
"""

from __future__ import annotations

from textual.app import ComposeResult
from textual.containers import Horizontal, Vertical
from textual.message import Message
from textual.widgets import Label, ProgressBar

from msb_tui.workbench import ImageRow, LayerProgress


def human_size(size: float) -> str:
    """Bytes in decimal units, as registries and ``docker images`` show them.

    Args:
        size: a number of bytes.

    Returns:
        ``"512 B"``, ``"5.0 kB"``, ``"48.5 MB"``, ``"1.20 GB"``.
    """
    if size < 1000:
        return f"{size:.0f} B"
    for unit in ("kB", "MB"):
        size /= 1000
        if size < 1000:
            return f"{size:.1f} {unit}"
    return f"{size / 1000:.2f} GB"


class LayerRow(Horizontal):
    """One layer: its short digest, a bar and ``done / total``."""

    def __init__(self, layer: str) -> None:
        super().__init__(classes="layer-row")
        self.digest = layer

    def compose(self) -> ComposeResult:
        yield Label(self.digest.removeprefix("sha256:")[:12], markup=False, classes="layer-name")
        yield ProgressBar(total=None, show_eta=False, classes="layer-bar")
        yield Label("", classes="layer-bytes")

    def show(self, progress: LayerProgress) -> None:
        """Update the bar and the byte count.

        Args:
            progress: the layer's newest progress.
        """
        total = progress.total_bytes
        if progress.finished and total is None:
            total = progress.done_bytes  # size unknown until the end: a finished layer is full
        self.query_one(ProgressBar).update(total=total, progress=progress.done_bytes)
        done = human_size(progress.done_bytes)
        self.query_one(".layer-bytes", Label).update(f"{done} / {human_size(total)}" if total is not None else done)
        self.set_class(progress.finished, "-finished")


class PullProgress(Vertical):
    """See the module docstring. Hidden until :meth:`start`."""

    class LayerUpdate(Message):
        """A layer moved on (internal; coalesces with the next update of the same layer)."""

        def __init__(self, progress: LayerProgress) -> None:
            super().__init__()
            self.progress = progress

        def can_replace(self, message: Message) -> bool:
            return isinstance(message, PullProgress.LayerUpdate) and message.progress.layer == self.progress.layer

    class Ended(Message):
        """The pull ended (``row`` set: it succeeded; else ``error`` says why). Bubbles up."""

        def __init__(self, reference: str, row: ImageRow | None, error: str | None) -> None:
            super().__init__()
            self.reference = reference
            self.row = row
            self.error = error

    def __init__(self, *, id: str | None = None) -> None:
        super().__init__(id=id)
        self.reference: str | None = None
        self.running = False

    def compose(self) -> ComposeResult:
        yield Label("", markup=False, classes="pull-title")

    async def start(self, reference: str) -> None:
        """Show an empty panel for a new pull of ``reference``.

        Args:
            reference: the image reference being pulled.
        """
        self.reference = reference
        self.running = True
        await self.query(LayerRow).remove()  # before any update of the new pull can arrive
        self.remove_class("-failed", "-done")
        self.query_one(".pull-title", Label).update(f"Pulling {reference} …")
        self.display = True

    def report(self, progress: LayerProgress) -> None:
        """The pull's progress callback (thread-safe: it only posts a message).

        Args:
            progress: one layer's progress.
        """
        self.post_message(self.LayerUpdate(progress))

    def finish(self, row: ImageRow) -> None:
        """Mark the pull done (thread-safe).

        Args:
            row: the image the pull stored.
        """
        self.post_message(self.Ended(self.reference or row.name, row, None))

    def fail(self, message: str) -> None:
        """Mark the pull failed (thread-safe).

        Args:
            message: why it failed.
        """
        self.post_message(self.Ended(self.reference or "", None, message))

    async def on_pull_progress_layer_update(self, event: PullProgress.LayerUpdate) -> None:
        event.stop()
        rows = {row.digest: row for row in self.query(LayerRow)}
        row = rows.get(event.progress.layer)
        if row is None:
            row = LayerRow(event.progress.layer)
            await self.mount(row)
        row.show(event.progress)

    def on_pull_progress_ended(self, event: PullProgress.Ended) -> None:
        # Not stopped: the screen hears it too (to refresh its table).
        self.running = False
        title = self.query_one(".pull-title", Label)
        if event.row is not None:
            self.add_class("-done")
            title.update(f"✓ Pulled {event.reference} ({human_size(event.row.size_bytes)})")
        else:
            self.add_class("-failed")
            title.update(f"✗ Pull of {event.reference} failed: {event.error}")
