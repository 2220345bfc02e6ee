"""The form for one sandbox of the Sandboxfile editor.

A label, a field and an error line per setting (:data:`~msb_tui.sandboxfile_edit.FIELDS`).
Typing is checked debounced (:attr:`SandboxForm.DEBOUNCE`): each field's problem appears under
it, from the engine's own validation, and :class:`SandboxForm.Edited` goes up to the screen,
which applies the edit to the working text. A field the user did not touch keeps its value as
written in the file, so an edit elsewhere never rewrites it.
"""

from __future__ import annotations

from typing import Any

from textual.app import ComposeResult
from textual.containers import Horizontal, VerticalScroll
from textual.message import Message
from textual.timer import Timer
from textual.widget import Widget
from textual.widgets import Input, Label, Select, Static, TextArea

from engine.errors import ConfigError
from engine.project.schema import SCOPES
from msb_tui.sandboxfile_edit import FIELDS, Problem, field_problem, field_text, field_value, problem_text

LABELS = {"depends_on": "depends on"}
PLACEHOLDERS = {
    "image": "e.g. busybox, python:3.11, ./rootfs",
    "memory": "default 512 (MiB)",
    "cpus": "default 1",
    "volumes": "e.g. ./src:/app/src, ./data:/data:ro",
    "ports": "e.g. 8000:8000, 0.0.0.0:8080:80",
    "envs": "e.g. DEBUG=false, LEVEL=info",
    "workdir": "default: the image's WorkingDir",
    "shell": "default /bin/sh",
    "scripts": "e.g. start: python3 app.py",
    "depends_on": "e.g. db, cache",
}
HELP = {
    "image": "OCI image reference, or a root filesystem directory relative to the Sandboxfile (required)",
    "memory": "guest RAM in MiB, 64–1048576 (default 512)",
    "cpus": "virtual CPUs, 1–64 (default 1)",
    "volumes": "host directories shared into the guest: host:guest[:ro|:rw], comma-separated",
    "ports": "guest ports published on the host: [ip:]host:guest[/tcp|/udp] (ip defaults to 127.0.0.1)",
    "envs": "environment on top of the image's: NAME=value, comma-separated",
    "workdir": "absolute working directory in the guest (default: the image's WorkingDir, else /)",
    "shell": "the shell that runs scripts (default /bin/sh)",
    "scripts": "named shell snippets, one `name: command` per line; start is what `msb run NAME` runs",
    "scope": "network: none, group (published ports only), public (internet, not the host's LAN), any",
    "depends_on": "sandboxes `msb run` starts first, defined in this file",
}
"""One line per setting, shown under it when the screen has room (docs/sandboxfile.md)."""


class SandboxForm(VerticalScroll):
    """Edits one sandbox entry; see the module docstring."""

    DEBOUNCE = 0.3
    """Seconds of quiet typing before a check (and an :class:`Edited`)."""

    class Edited(Message):
        """The user changed the form; ``problems`` is empty when every field is valid."""

        def __init__(self, name: str, values: dict[str, Any], problems: dict[str, Problem]) -> None:
            super().__init__()
            self.name = name
            self.values = values
            self.problems = problems

    def __init__(self, *, id: str | None = None) -> None:
        super().__init__(id=id)
        self.sandbox: str | None = None
        self._raw: dict[str, Any] = {}
        self._shown: dict[str, str] = {}
        self._timer: Timer | None = None
        self.problems: dict[str, Problem] = {}

    def compose(self) -> ComposeResult:
        yield Static(id="form-banner", markup=False)
        for name in FIELDS:
            with Horizontal(classes="field-row", id=f"row-{name}"):
                yield Label(LABELS.get(name, name), classes="field-label")
                yield self._field(name)
            yield Static(HELP[name], classes="field-help", markup=False)
            yield Static(classes="field-error", id=f"error-{name}", markup=False)
        yield Static(id="form-notes", markup=False)

    @staticmethod
    def _field(name: str) -> Widget:
        fid = f"field-{name}"
        if name == "scope":
            return Select([(s, s) for s in SCOPES], prompt="default (public)", compact=True, id=fid)
        if name == "scripts":
            return TextArea(placeholder=PLACEHOLDERS[name], compact=True, soft_wrap=True, id=fid)
        return Input(placeholder=PLACEHOLDERS[name], compact=True, id=fid)

    # --- reading and writing the fields -------------------------------------------------------

    def _text_of(self, name: str) -> str:
        widget = self.query_one(f"#field-{name}")
        if isinstance(widget, Select):
            return "" if widget.is_blank() else str(widget.value)
        if isinstance(widget, TextArea):
            return widget.text
        assert isinstance(widget, Input)
        return widget.value

    def _set_text(self, name: str, text: str) -> None:
        widget = self.query_one(f"#field-{name}")
        if isinstance(widget, Select):
            options = list(SCOPES) + ([text] if text and text not in SCOPES else [])
            widget.set_options([(s, s) for s in options])
            if text:
                widget.value = text
            else:
                widget.clear()
        elif isinstance(widget, TextArea):
            if widget.text != text:
                widget.load_text(text)
        elif isinstance(widget, Input) and widget.value != text:
            widget.value = text

    def populate(self, sandbox: str, raw: Any) -> None:
        """Show ``sandbox``'s settings (``raw``: its plain value in the file) and their problems."""
        self._cancel_timer()
        self.sandbox = sandbox
        usable = isinstance(raw, dict)
        self._raw = dict(raw) if isinstance(raw, dict) else {}
        for name in FIELDS:
            self._shown[name] = field_text(name, self._raw.get(name))
            self._set_text(name, self._shown[name])
            self.query_one(f"#field-{name}").disabled = not usable
        scripts = self._raw.get("scripts")
        multiline = isinstance(scripts, dict) and any("\n" in str(v) for v in scripts.values())
        self.query_one("#field-scripts", TextArea).read_only = multiline
        unknown = sorted(str(k) for k in self._raw if k not in FIELDS)
        notes = []
        if multiline:
            notes.append("multi-line scripts: edit them in the YAML tab")
        if unknown:
            notes.append(f"also in the file (kept as written): {', '.join(unknown)}")
        self.query_one("#form-notes", Static).update("\n".join(notes))
        if not usable:
            self.set_banner(Problem(f"sandboxes.{sandbox} is not a mapping of settings", "fix it in the YAML tab"))
        self.show_problems(self.read()[1])

    def changed(self) -> bool:
        """Whether a field differs from what :meth:`populate` showed."""
        return self.sandbox is not None and any(self._text_of(n) != self._shown.get(n, "") for n in FIELDS)

    def read(self) -> tuple[dict[str, Any], dict[str, Problem]]:
        """The settings the fields hold, and each field's problem.

        Returns:
            ``(values, problems)``: untouched fields keep their value as written in the file.
        """
        values: dict[str, Any] = {}
        problems: dict[str, Problem] = {}
        for name in FIELDS:
            text = self._text_of(name)
            if text == self._shown.get(name, ""):
                values[name] = self._raw.get(name)
            else:
                try:
                    values[name] = field_value(name, text)
                except ConfigError as exc:
                    problems[name] = Problem.of(exc)
                    continue
            problem = field_problem(name, values[name])
            if problem is not None:
                problems[name] = problem
        return values, problems

    # --- problems -----------------------------------------------------------------------------

    def show_problems(self, problems: dict[str, Problem], file_problem: Problem | None = None) -> None:
        """Put each problem under its field; a file-level problem that names one of this
        sandbox's fields goes under that field too (when it has none of its own)."""
        shown = dict(problems)
        place = file_problem.place() if file_problem is not None else None
        if file_problem and place and place[0] == self.sandbox and place[1] is not None and place[1] not in shown:
            shown[place[1]] = file_problem
        self.problems = problems
        for name in FIELDS:
            problem = shown.get(name)
            error = self.query_one(f"#error-{name}", Static)
            error.update(problem_text(problem) if problem else "")
            error.set_class(problem is not None, "-shown")
            self.query_one(f"#row-{name}").set_class(problem is not None, "-invalid")

    def set_banner(self, problem: Problem | None) -> None:
        """Show a problem of the whole file above the fields (``None`` hides it)."""
        banner = self.query_one("#form-banner", Static)
        banner.update(problem_text(problem) if problem else "")
        banner.set_class(problem is not None, "-shown")

    # --- debounced checks ---------------------------------------------------------------------

    def _cancel_timer(self) -> None:
        if self._timer is not None:
            self._timer.stop()
            self._timer = None

    def _schedule(self) -> None:
        if self.sandbox is None:
            return
        self._cancel_timer()
        self._timer = self.set_timer(self.DEBOUNCE, self.check)

    def check(self) -> None:
        """Check the fields now; post :class:`Edited` if the user changed any."""
        self._cancel_timer()
        values, problems = self.read()
        self.show_problems(problems)
        if self.sandbox is not None and self.changed():
            self.post_message(self.Edited(self.sandbox, values, problems))

    def flush(self) -> tuple[dict[str, Any], dict[str, Problem]] | None:
        """Cancel a pending check and return :meth:`read` if the user changed anything."""
        self._cancel_timer()
        if not self.changed():
            return None
        values, problems = self.read()
        self.show_problems(problems)
        return values, problems

    def on_input_changed(self, event: Input.Changed) -> None:
        event.stop()
        self._schedule()

    def on_text_area_changed(self, event: TextArea.Changed) -> None:
        event.stop()
        self._schedule()

    def on_select_changed(self, event: Select.Changed) -> None:
        event.stop()
        self._schedule()

