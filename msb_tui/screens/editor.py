"""The Sandboxfile editor: the sandbox list, a form for the selected sandbox and the raw YAML.

State is two strings (see :mod:`msb_tui.sandboxfile_edit`): ``disk_text``, what the file
holds, and ``text``, the working copy that ctrl+s writes. The form and the YAML view both edit
``text`` through the CLI's round-trip code, so a save changes only the edited entries' lines.
Checks are debounced and run in workers; problems show inline, and a save is refused while
there are any. A watchfiles worker reloads the file when it changes on disk and asks
(:class:`~msb_tui.screens.editor_conflict.ConflictScreen`) when there are unsaved edits;
the events of our own saves are recognised by their content and ignored.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from contextlib import aclosing
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar, TypeVar, cast

from textual import events, on, work
from textual.app import ComposeResult
from textual.binding import Binding, BindingType
from textual.containers import Horizontal, Vertical
from textual.screen import Screen
from textual.widgets import Footer, Header, Label, OptionList, Static, TabbedContent, TabPane
from textual.worker import Worker, WorkerState

from engine.errors import ConfigError
from msb_tui import sandboxfile_edit as edits
from msb_tui.sandboxfile_edit import Outline, Problem, problem_text
from msb_tui.sandboxfile_watch import file_changes
from msb_tui.screens.editor_add import AddSandboxScreen
from msb_tui.screens.editor_conflict import Choice, ConflictScreen
from msb_tui.widgets.no_sandboxfile import NoSandboxfile
from msb_tui.widgets.sandbox_form import SandboxForm
from msb_tui.widgets.sandbox_list import SandboxList
from msb_tui.widgets.yaml_pane import YamlPane

if TYPE_CHECKING:
    from msb_tui.app import MsbApp

T = TypeVar("T")


class EditorScreen(Screen[None]):
    """See the module docstring."""

    HELP_TITLE = "Sandboxfile editor"
    BINDINGS: ClassVar[list[BindingType]] = [
        Binding("ctrl+s", "save", "Save", tooltip="Write the Sandboxfile (refused while it has problems)"),
        Binding("ctrl+n", "add_sandbox", "New", tooltip="Add a sandbox"),
        Binding("delete", "remove_sandbox", "Remove", tooltip="Remove the selected sandbox (undo: ctrl+r)"),
        Binding("f5", "toggle_view", "Form/YAML", tooltip="Switch between the form and the raw YAML"),
        Binding("ctrl+r", "reload", "Reload", tooltip="Discard unsaved edits and read the file again"),
    ]

    def __init__(self, *args: object, **kwargs: object) -> None:
        super().__init__()
        self.path: Path | None = None
        self.text = ""
        self.disk_text: str | None = None
        self.outline = Outline([])
        self.parse_problem: Problem | None = None
        """The working copy cannot be read at all (YAML syntax, shape)."""
        self.selected: str | None = None
        self.loaded = asyncio.Event()
        """Set once the file has been read (tests wait on this and the next two)."""
        self.watching = asyncio.Event()
        """Set once the file watcher runs: changes on disk from then on are seen."""
        self.changes_seen = 0
        """Batches of changes on disk handled (our own saves included, which are ignored)."""
        self._disk_seen: str | None = None
        self._asking = False
        self._lock = asyncio.Lock()
        """Held by every change of the working copy, so that edits apply in order, none lost."""

    @property
    def msb(self) -> MsbApp:
        return cast("MsbApp", self.app)

    def compose(self) -> ComposeResult:
        yield Header()
        self.path = self.msb.workbench.sandboxfile
        if self.path is None:
            yield NoSandboxfile(id="editor-remote")
        else:
            yield Static("Reading the Sandboxfile…", id="editor-status", markup=False)
            with Horizontal(id="editor-body"):
                with Vertical(id="sandbox-pane"):
                    yield Label("Sandboxes", id="sandbox-title")
                    yield SandboxList(id="sandbox-list")
                    yield Static("ctrl+n new\ndel remove", id="sandbox-keys")
                with TabbedContent(id="editor-tabs"):
                    with TabPane("Form", id="tab-form"):
                        yield Static("No sandboxes yet: ctrl+n adds one.", id="form-empty")
                        yield SandboxForm(id="form")
                    with TabPane("YAML", id="tab-yaml"):
                        yield YamlPane(id="yaml-pane")
        yield Footer()

    def on_mount(self) -> None:
        self.title = "Sandboxfile"
        self.set_class(self.path is None, "-remote")
        if self.path is not None:
            self.add_class("-loading")
            self._load()
            self._watch_file(self.path)

    def on_resize(self, event: events.Resize) -> None:
        self.set_class(event.size.height >= 40, "-roomy")  # room for a help line under each field

    def check_action(self, action: str, parameters: tuple[object, ...]) -> bool | None:
        editing = ("save", "add_sandbox", "remove_sandbox", "toggle_view")
        if self.path is None:
            return action not in (*editing, "reload")
        if (self.has_class("-loading") or self.has_class("-error")) and action in editing:
            return False
        if action == "remove_sandbox" and self.selected is None:
            return None
        return True

    def on_worker_state_changed(self, event: Worker.StateChanged) -> None:
        """The one place a worker's unexpected failure is shown (never a traceback)."""
        if event.state == WorkerState.ERROR and event.worker.error is not None:
            self.msb.report(event.worker.error, event.worker.name)

    async def _in_thread(self, fn: Callable[..., T], *args: Any) -> T:
        """``fn(*args)`` off the event loop (ruamel and the disk are slow on large files).

        Raises:
            CancelledError: the app closed this screen meanwhile (the worker just stops).
        """
        try:
            return await asyncio.to_thread(fn, *args)
        finally:
            if not self.query(YamlPane):  # the app is closing and has removed the widgets
                raise asyncio.CancelledError

    @property
    def unsaved(self) -> bool:
        """The working copy differs from the file, or the form holds edits not yet applied."""
        if self.path is None:
            return False
        return self.text != (self.disk_text or "") or self.query_one(SandboxForm).changed()

    def _update_title(self) -> None:
        self.title = "Sandboxfile ● unsaved" if self.unsaved else "Sandboxfile"

    # --- showing a working copy ---------------------------------------------------------------

    async def _show(self, text: str, *, form: bool = True, yaml: bool = True) -> None:
        """Make ``text`` the working copy and show it: the list, the problems and (if asked)
        the form and the YAML view. Callers hold the lock."""
        assert self.path is not None
        self.text = text
        try:
            self.outline = await self._in_thread(edits.outline, text, self.path)
            self.parse_problem = None
        except ConfigError as exc:
            self.parse_problem = Problem.of(exc)
        if yaml:
            self.query_one(YamlPane).show_text(text)
        names = self.outline.names
        if self.selected not in names:
            self.selected = names[0] if names else None
        place = self.outline.problem.place() if self.outline.problem else None
        self.query_one(SandboxList).show(names, self.selected, place[0] if place else None)
        self.set_class(not names and self.parse_problem is None, "-empty")
        self._show_problems(form=form)
        self._update_title()
        self.refresh_bindings()

    def _show_problems(self, *, form: bool) -> None:
        problem = self.parse_problem or self.outline.problem
        self.query_one(YamlPane).show_problem(problem)
        sandbox_form = self.query_one(SandboxForm)
        sandbox_form.disabled = self.parse_problem is not None
        if self.parse_problem is not None:
            sandbox_form.set_banner(Problem(self.parse_problem.message, "fix the YAML in the YAML tab (f5)"))
            return
        sandbox_form.set_banner(self.outline.problem)
        if form and self.selected is not None:
            sandbox_form.populate(self.selected, self.outline.raw.get(self.selected))
        sandbox_form.show_problems(sandbox_form.problems, self.outline.problem)

    # --- reading the file and watching it -----------------------------------------------------

    async def _read_disk(self) -> str | None:
        assert self.path is not None
        return await self._in_thread(edits.read_disk, self.path)

    @work(exclusive=True, group="editor-load", exit_on_error=False, name="Reading the Sandboxfile")
    async def _load(self) -> None:
        try:
            disk = await self._read_disk()
        except ConfigError as exc:
            text = problem_text(Problem.of(exc)) + "\n\nctrl+r reads it again."
            self.query_one("#editor-status", Static).update(text)
            self.remove_class("-loading").add_class("-error")
            self.refresh_bindings()
            return
        async with self._lock:
            await self._adopt(disk)
        if self.parse_problem is not None:
            self.query_one(TabbedContent).active = "tab-yaml"
        self.loaded.set()

    async def _adopt(self, disk: str | None) -> None:
        """Take the file's content (``None``: there is no file) as the working copy; edits
        not yet applied are dropped. Callers hold the lock."""
        self.disk_text = disk
        self.remove_class("-loading", "-error")
        self.query_one(SandboxForm).sandbox = None
        await self._show(disk or "")

    def action_reload(self) -> None:
        self._load()

    @work(exclusive=True, group="editor-watch", exit_on_error=False, name="Watching the Sandboxfile")
    async def _watch_file(self, path: Path) -> None:
        if not path.parent.is_dir():
            return
        async with aclosing(file_changes(path, self.watching)) as changes:
            async for _ in changes:
                async with self._lock:
                    await self._on_disk_change()
                self.changes_seen += 1

    async def _on_disk_change(self) -> None:
        assert self.path is not None
        try:
            disk = await self._read_disk()
        except ConfigError as exc:
            self.msb.report(exc, "Reading the changed Sandboxfile")
            return
        if disk == self.disk_text:  # our own save, or a touch
            return
        if not self.unsaved:
            await self._adopt(disk)
            self.notify("reloaded: the file changed on disk", title="Sandboxfile")
            return
        self._disk_seen = disk
        if not self._asking:  # one question, however many changes come while it is open
            self._asking = True
            self.app.push_screen(ConflictScreen(self.path.name), self._answered)

    def _answered(self, choice: Choice | None) -> None:
        self._resolve(choice)

    @work(group="editor-edit", exit_on_error=False, name="Reloading the Sandboxfile")
    async def _resolve(self, choice: Choice | None) -> None:
        async with self._lock:
            self._asking = False
            if choice == "reload":
                await self._adopt(self._disk_seen)
                self.notify("reloaded from disk; your edits were discarded", title="Sandboxfile")
            else:
                self.disk_text = self._disk_seen  # a save now overwrites what is on disk
                self._update_title()

    # --- editing ------------------------------------------------------------------------------

    @on(OptionList.OptionHighlighted, "#sandbox-list")
    def _select(self, event: OptionList.OptionHighlighted) -> None:
        name = event.option.id
        if name is None or name == self.selected:
            return
        form = self.query_one(SandboxForm)
        pending = form.flush()
        if pending is not None and form.sandbox is not None:
            values, problems = pending
            if problems:
                self.notify(f"{form.sandbox}: invalid edits were dropped", severity="warning")
            else:
                self._apply_form(form.sandbox, values)
        self.selected = name
        form.populate(name, self.outline.raw.get(name))
        form.show_problems(form.problems, self.outline.problem)

    @on(SandboxForm.Edited)
    def _form_edited(self, event: SandboxForm.Edited) -> None:
        self._update_title()
        if not event.problems:
            self._apply_form(event.name, event.values)

    @work(group="editor-edit", exit_on_error=False, name="Applying the form")
    async def _apply_form(self, name: str, values: dict[str, Any]) -> None:
        async with self._lock:
            await self._apply_to_text(name, values)

    async def _apply_to_text(self, name: str, values: dict[str, Any]) -> bool:
        """Set ``name`` to ``values`` in the working copy; False if refused. Callers hold the lock."""
        assert self.path is not None
        try:
            text = await self._in_thread(edits.apply_entry, self.text, self.path, name, values)
        except ConfigError as exc:
            self.query_one(SandboxForm).set_banner(Problem.of(exc))
            return False
        await self._show(text, form=False)
        return True

    @on(YamlPane.Edited)
    def _yaml_edited(self, event: YamlPane.Edited) -> None:
        self._apply_yaml(event.text)

    @work(group="editor-edit", exit_on_error=False, name="Checking the YAML")
    async def _apply_yaml(self, text: str) -> None:
        async with self._lock:
            await self._show(text, yaml=False)

    @on(TabbedContent.TabActivated)
    def _tab_switched(self, event: TabbedContent.TabActivated) -> None:
        """Apply what the view we leave still holds back, so that the other one shows it."""
        form = self.query_one(SandboxForm)
        if event.pane.id == "tab-yaml" and form.changed():
            form.check()
        elif event.pane.id == "tab-form" and (text := self.query_one(YamlPane).flush()) is not None:
            self._apply_yaml(text)

    def action_toggle_view(self) -> None:
        tabs = self.query_one(TabbedContent)
        tabs.active = "tab-yaml" if tabs.active == "tab-form" else "tab-form"

    def action_add_sandbox(self) -> None:
        self.app.push_screen(AddSandboxScreen(self.outline.names), self._add_answered)

    def _add_answered(self, answer: tuple[str, str] | None) -> None:
        if answer is not None:
            self._add(*answer)

    @work(group="editor-edit", exit_on_error=False, name="Adding a sandbox")
    async def _add(self, name: str, image: str) -> None:
        assert self.path is not None
        async with self._lock:
            text = await self._in_thread(edits.add_entry, self.text, self.path, name, image)
            self.selected = name
            await self._show(text)

    def action_remove_sandbox(self) -> None:
        if self.selected is not None:
            self._remove(self.selected)

    @work(group="editor-edit", exit_on_error=False, name="Removing a sandbox")
    async def _remove(self, name: str) -> None:
        assert self.path is not None
        async with self._lock:
            text = await self._in_thread(edits.remove_entry, self.text, self.path, name)
            self.query_one(SandboxForm).sandbox = None
            await self._show(text)
        self.notify(f"removed {name!r} (not saved yet: ctrl+s)", title="Sandboxfile")

    # --- saving -------------------------------------------------------------------------------

    def action_save(self) -> None:
        self._save()

    @work(group="editor-edit", exit_on_error=False, name="Saving the Sandboxfile")
    async def _save(self) -> None:
        assert self.path is not None
        async with self._lock:
            if not await self._flush():
                return
            problem = self.parse_problem or self.outline.problem
            if problem is not None:
                self.notify(problem_text(problem), title="Not saved: the Sandboxfile has a problem",
                            severity="error")  # fmt: skip
                return
            text, previous = self.text, self.disk_text
            self.disk_text = text  # before writing: the watcher then knows the change is ours
            try:
                await self._in_thread(edits.write_disk, self.path, text)
            except BaseException:
                self.disk_text = previous
                raise
            await self._show(text, yaml=False)
        self.notify(f"saved {self.path.name}", title="Sandboxfile")

    async def _flush(self) -> bool:
        """Apply edits still waiting for their debounce; False (and say why) if one is invalid."""
        yaml_text = self.query_one(YamlPane).flush()
        if yaml_text is not None:
            await self._show(yaml_text, yaml=False)
        form = self.query_one(SandboxForm)
        pending = form.flush()
        if pending is None or form.sandbox is None:
            return True
        values, problems = pending
        if problems:
            field, problem = next(iter(problems.items()))
            self.notify(f"{field}: {problem_text(problem)}", title="Not saved: fix the form first", severity="error")
            return False
        return await self._apply_to_text(form.sandbox, values)
