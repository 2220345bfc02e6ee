"""The Images screen (mode ``images``, F4): the image store, pulls, removals, base builds.

States, as classes on the screen (``themes/images.tcss`` shows and hides the parts):
``-loading`` (first load), ``-empty`` (says how to pull), ``-error`` (message, hint, ``r``
retries) and ``-populated`` (the table). A pull shows :class:`PullProgress` (a bar per layer)
under the table; a build streams its log lines under it.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, ClassVar, cast

from textual import work
from textual.app import ComposeResult
from textual.binding import Binding, BindingType
from textual.coordinate import Coordinate
from textual.message import Message
from textual.screen import Screen
from textual.widgets import DataTable, Footer, Header, Log, Static

from engine.errors import MsbError
from msb_tui.screens.image_dialogs import BuildDialog, ConfirmDialog, PullDialog
from msb_tui.widgets.pull_progress import PullProgress, human_size
from msb_tui.workbench import ImageRow

if TYPE_CHECKING:
    from msb_tui.app import MsbApp

_STATES = ("-loading", "-empty", "-error", "-populated")
EMPTY_TEXT = (
    "No images in the store yet.\n\n"
    "Press p to pull one (for example docker.io/library/python:3.12-slim),\n"
    "or b to build an offline base image (microsandbox/python, microsandbox/node, busybox)."
)


def image_reference(row: ImageRow) -> str:
    """How to name ``row`` to the workbench: ``name:tag``, or ``name@digest`` if untagged.

    Args:
        row: an image in the store.

    Returns:
        The reference.
    """
    return f"{row.name}:{row.tag}" if row.tag else f"{row.name}@{row.digest}"


def short_digest(digest: str) -> str:
    """The first 12 hex digits, as ``docker images`` shows them.

    Args:
        digest: ``"sha256:<hex>"``.

    Returns:
        ``"<12 hex>"``.
    """
    return digest.partition(":")[2][:12] or digest[:12]


def short_created(created: str | None) -> str:
    """``"2026-11-20T10:00:00Z"`` → ``"2026-11-20 10:00"``; unknown → ``"—"``.

    Args:
        created: ISO 8601 from the image config, or ``None``.

    Returns:
        The date and minute, or a dash.
    """
    if not created:
        return "—"
    return created.replace("T", " ")[:16]


class ImagesScreen(Screen[None]):
    """See the module docstring."""

    HELP_TITLE = "Images"
    BINDINGS: ClassVar[list[BindingType]] = [
        Binding("p", "pull", "Pull", tooltip="Pull an image from a registry"),
        Binding("d,delete", "remove", "Remove", tooltip="Remove the selected image"),
        Binding("b", "build", "Build base", tooltip="Build an offline base image from the host's packages"),
        Binding("r", "refresh", "Refresh", tooltip="List the images again"),
    ]

    class BuildLine(Message):
        """A line of a base image build's log (posted, so the log callback is thread-safe)."""

        def __init__(self, line: str) -> None:
            super().__init__()
            self.line = line

    def __init__(self) -> None:
        super().__init__(classes="-loading")
        self._refs: list[str] = []
        """The references of the table's rows, in order."""
        self._building = False

    @property
    def _app(self) -> MsbApp:
        return cast("MsbApp", self.app)

    def compose(self) -> ComposeResult:
        yield Header()
        yield Static("Loading images…", id="images-status", markup=False)
        yield DataTable(id="images-table", cursor_type="row", zebra_stripes=True)
        yield PullProgress(id="images-pull")
        yield Log(id="images-build", max_lines=500)
        yield Footer()

    def on_mount(self) -> None:
        self.query_one(DataTable).add_columns("Name", "Tag", "Digest", "Size", "Created")
        self.query_one(PullProgress).display = False
        self.query_one("#images-build", Log).display = False
        self._load()

    def _set_state(self, state: str, text: str = "") -> None:
        self.remove_class(*_STATES)
        self.add_class(f"-{state}")
        self.query_one("#images-status", Static).update(text)
        self.refresh_bindings()

    # ------------------------------------------------------------------ listing

    def action_refresh(self) -> None:
        """List the images again (the table stays while it loads) and put away the panels of
        finished pulls and builds."""
        pull = self.query_one(PullProgress)
        pull.display = pull.display and pull.running
        build = self.query_one("#images-build", Log)
        build.display = build.display and self._building
        if not self.has_class("-populated"):
            self._set_state("loading", "Loading images…")
        self._load()

    @work(exclusive=True, group="images-load")
    async def _load(self) -> None:
        try:
            rows = await self._app.workbench.images()
        except Exception as exc:  # shown in the error panel, never a traceback
            self._set_state("error", _error_text(exc))
            return
        self._populate(rows)

    def _populate(self, rows: list[ImageRow]) -> None:
        table = self.query_one(DataTable)
        selected = self._selected()
        table.clear()
        self._refs = [image_reference(row) for row in rows]
        for row in rows:  # keyed by position: a store may list one reference twice (mid-rebuild)
            table.add_row(row.name, row.tag or "—", short_digest(row.digest), human_size(row.size_bytes),
                          short_created(row.created))  # fmt: skip
        if selected in self._refs:
            table.move_cursor(row=self._refs.index(selected))
        self._set_state("populated" if rows else "empty", "" if rows else EMPTY_TEXT)
        if rows:
            table.focus()

    def _selected(self) -> str | None:
        """The reference of the row under the cursor, if any."""
        table = self.query_one(DataTable)
        if not self._refs or not table.is_valid_coordinate(Coordinate(table.cursor_row, 0)):
            return None
        return self._refs[table.cursor_row]

    def check_action(self, action: str, parameters: tuple[object, ...]) -> bool | None:
        """Remove needs a selected image (``None``: shown greyed out)."""
        if action == "remove" and not (self.has_class("-populated") and self._refs):
            return None
        return True

    # ------------------------------------------------------------------ pull

    def action_pull(self) -> None:
        """Ask for a reference, then pull it with a progress bar per layer."""
        if self.query_one(PullProgress).running:
            self.notify("a pull is already running; wait for it to finish", severity="warning")
            return
        self.app.push_screen(PullDialog(), self._start_pull)

    async def _start_pull(self, reference: str | None) -> None:
        if reference:
            await self.query_one(PullProgress).start(reference)
            self._pull(reference)

    @work(exclusive=True, group="images-pull")
    async def _pull(self, reference: str) -> None:
        panel = self.query_one(PullProgress)
        try:
            row = await self._app.workbench.pull(reference, panel.report)
        except Exception as exc:
            panel.fail(exc.message if isinstance(exc, MsbError) else str(exc))
            self._app.report(exc, f"pulling {reference}")
            return
        panel.finish(row)

    def on_pull_progress_ended(self, event: PullProgress.Ended) -> None:
        if event.row is not None:
            self.notify(f"pulled {event.reference}", title="Images")
            self._load()

    # ------------------------------------------------------------------ remove

    def action_remove(self) -> None:
        """Remove the selected image, after a confirmation."""
        reference = self._selected()
        if reference is None:
            return

        def answered(yes: bool | None) -> None:
            if yes:
                self._remove(reference)

        self.app.push_screen(ConfirmDialog(f"Remove {reference} from the image store?"), answered)

    @work(exclusive=True, group="images-remove")
    async def _remove(self, reference: str) -> None:
        try:
            await self._app.workbench.remove_image(reference)
        except Exception as exc:
            self._app.report(exc, f"removing {reference}")
            return
        self.notify(f"removed {reference}", title="Images")
        self._load()

    # ------------------------------------------------------------------ build

    def action_build(self) -> None:
        """Pick an offline base image and build it, streaming its log."""
        if self._building:
            self.notify("a build is already running; wait for it to finish", severity="warning")
            return
        self.app.push_screen(BuildDialog(), self._start_build)

    def _start_build(self, name: str | None) -> None:
        if name:
            log = self.query_one("#images-build", Log)
            log.clear()
            log.display = True
            log.write_line(f"Building {name} …")
            self._building = True
            self._build(name)

    @work(exclusive=True, group="images-build")
    async def _build(self, name: str) -> None:
        def log(line: str) -> None:  # may be called from another thread: only post
            self.post_message(self.BuildLine(line))

        try:
            row = await self._app.workbench.build_base_image(name, log)
        except Exception as exc:
            self.post_message(self.BuildLine(f"✗ build of {name} failed"))
            self._app.report(exc, f"building {name}")
            return
        finally:
            self._building = False
        self.post_message(self.BuildLine(f"✓ built {image_reference(row)} ({human_size(row.size_bytes)})"))
        self._load()

    def on_images_screen_build_line(self, event: ImagesScreen.BuildLine) -> None:
        self.query_one("#images-build", Log).write_line(event.line)


def _error_text(exc: BaseException) -> str:
    if isinstance(exc, MsbError):
        text = f"Could not list the images: {exc.message}"
        text += f"\n{exc.hint}" if exc.hint else ""
    else:
        text = f"Could not list the images: unexpected {type(exc).__name__}: {exc}"
    return text + "\n\nPress r to retry."
