"""Editing a Sandboxfile's text: the headless half of the editor screen (no Textual here).

The editor's whole state is two strings, the text on disk and the working text. Every edit is
a function from one working text to the next through the CLI's own round-trip code
(:class:`engine.project.sandboxfile.Sandboxfile`): the text is loaded, one entry is set or
removed, and :meth:`~engine.project.sandboxfile.Sandboxfile.dumps` splices just that entry
back. So each step changes only the lines of the entry it touches, and comments, unknown keys
and every other byte survive. Validation is the engine's too: per field with
:func:`~engine.project.sandboxfile.entry_from_dict`, for the whole file with
:meth:`~engine.project.sandboxfile.Sandboxfile.validate` (messages with file:line:col).

The form's fields are text; :func:`field_text` and :func:`field_value` convert a setting to
the text shown and back, so that what the user types means what it would mean in the file
(``memory: lots`` is refused, not ignored).
"""

from __future__ import annotations

import csv
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from engine.errors import ConfigError, MsbError
from engine.project.sandboxfile import MAX_BYTES, Sandboxfile, display_path, entry_from_dict
from engine.project.yamltext import plain

FIELDS: tuple[str, ...] = ("image", "memory", "cpus", "volumes", "ports", "envs", "workdir", "shell",
                           "scripts", "scope", "depends_on")  # fmt: skip
"""The settings the form edits, in the file's usual order (docs/sandboxfile.md)."""
INT_FIELDS = frozenset({"memory", "cpus"})
LIST_FIELDS = frozenset({"volumes", "ports", "envs", "depends_on"})
_INT_RE = re.compile(r"[+-]?[0-9]+")
_PLACE_RE = re.compile(r"\bsandboxes\.(?P<name>[A-Za-z0-9_-]+)(?:\.(?P<field>[a-z_]+))?")


@dataclass(frozen=True)
class Problem:
    """One validation problem as the editor shows it: the engine's message and hint."""

    message: str
    hint: str | None = None

    @classmethod
    def of(cls, exc: MsbError) -> Problem:
        return cls(exc.message, exc.hint)

    def place(self) -> tuple[str, str | None] | None:
        """``(sandbox, setting)`` when the message names a sandbox (``sandboxes.api.memory …``);
        the setting is ``None`` unless it is one the form has."""
        match = _PLACE_RE.search(self.message)
        if match is None:
            return None
        return match["name"], match["field"] if match["field"] in FIELDS else None


@dataclass(frozen=True)
class Outline:
    """What a working text holds."""

    names: list[str]
    """Sandbox names, in file order."""
    raw: dict[str, Any] = field(default_factory=dict)
    """Each sandbox's settings as plain data, as written (possibly invalid, possibly not a mapping)."""
    problem: Problem | None = None
    """The first problem :meth:`Sandboxfile.validate` finds; ``None`` when the file is valid."""


def problem_text(problem: Problem) -> str:
    """A problem as the editor shows it: the message, then ``hint: …`` on its own line."""
    return problem.message + (f"\nhint: {problem.hint}" if problem.hint else "")


def outline(text: str, path: Path) -> Outline:
    """Read a working text.

    Args:
        text: the YAML.
        path: the file it belongs to (named in messages).

    Returns:
        Its sandboxes and the first validation problem, if any.

    Raises:
        ConfigError: the text is not YAML, or its shape is unusable (file:line:col).
    """
    sbf = Sandboxfile.loads(text, path, validate=False)
    sandboxes = sbf.doc.get("sandboxes") or {}
    raw = {str(name): plain(value) for name, value in sandboxes.items()}
    try:
        sbf.validate()
    except ConfigError as exc:
        return Outline(list(raw), raw, Problem.of(exc))
    return Outline(list(raw), raw)


def field_text(name: str, raw: Any) -> str:
    """How the form shows setting ``name`` whose value in the file is ``raw``.

    Lists are comma-separated (items with a comma or quote are double-quoted); scripts are one
    ``name: command`` per line; unset is empty.
    """
    if raw is None:
        return ""
    if name in LIST_FIELDS and isinstance(raw, list):
        return ", ".join(_quoted(str(item)) for item in raw)
    if name == "scripts" and isinstance(raw, dict):
        return "\n".join(f"{key}: {body}" for key, body in raw.items())
    return str(raw)


def _quoted(item: str) -> str:
    if any(c in item for c in ',"') or item != item.strip():
        return '"' + item.replace('"', '""') + '"'
    return item


def field_value(name: str, text: str) -> Any:
    """The setting the form's ``text`` means (the inverse of :func:`field_text`).

    Returns:
        ``None`` for empty text; an ``int`` for a whole number in ``memory``/``cpus`` (anything
        else stays a string, which validation then refuses); a list or a mapping for those keys.

    Raises:
        ConfigError: a scripts line is not ``name: command``.
    """
    text = text.strip()
    if name in LIST_FIELDS:
        if not text:
            return []
        return [item.strip() for item in next(csv.reader([text], skipinitialspace=True)) if item.strip()]
    if name == "scripts":
        return _scripts(text)
    if not text:
        return None
    if name in INT_FIELDS and _INT_RE.fullmatch(text):
        return int(text)
    return text


def _scripts(text: str) -> dict[str, str]:
    scripts: dict[str, str] = {}
    for number, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        key, colon, body = line.partition(":")
        if not colon or not key.strip():
            raise ConfigError(f"scripts line {number} must be `name: command` (got {line!r})",
                              hint="one script per line, e.g. start: python3 app.py")  # fmt: skip
        scripts[key.strip()] = body.strip()
    return scripts


def field_problem(name: str, value: Any) -> Problem | None:
    """The engine's verdict on one setting alone (``None``: fine). ``image`` is required."""
    if name == "image" and value is None:
        return Problem("image is required", "an OCI image such as busybox, or a ./dir root filesystem")
    try:
        entry_from_dict({name: value})
    except ConfigError as exc:
        return Problem.of(exc)
    return None


def apply_entry(text: str, path: Path, name: str, values: dict[str, Any]) -> str:
    """``text`` with sandbox ``name`` set to ``values`` (only that entry's changed lines differ).

    Raises:
        ConfigError: ``text`` cannot be read, or ``values`` or ``name`` is invalid.
    """
    sbf = Sandboxfile.loads(text, path, validate=False)
    sbf.set_sandbox(name, entry_from_dict(values))
    return sbf.dumps()


def add_entry(text: str, path: Path, name: str, image: str) -> str:
    """``text`` with a new sandbox ``name`` running ``image`` appended.

    Raises:
        ConfigError: the name is taken or not valid, or the image is empty.
    """
    sbf = Sandboxfile.loads(text, path, validate=False)
    if name in sbf.names():
        raise ConfigError(f"{display_path(path)} already defines {name!r}", hint="pick another name")
    problem = field_problem("image", field_value("image", image))
    if problem is not None:
        raise ConfigError(problem.message, hint=problem.hint)
    sbf.set_sandbox(name, entry_from_dict({"image": image.strip()}))
    return sbf.dumps()


def remove_entry(text: str, path: Path, name: str) -> str:
    """``text`` without sandbox ``name`` (and the comment lines directly above it).

    Raises:
        ConfigError: other sandboxes depend on it (as ``msb remove`` refuses), or it is not there.
    """
    sbf = Sandboxfile.loads(text, path, validate=False)
    dependents = sbf.dependents(name)
    if dependents:
        raise ConfigError(f"{', '.join(dependents)} depend{'s' if len(dependents) == 1 else ''} on {name!r}",
                          hint=f"remove {name!r} from their depends_on first")  # fmt: skip
    if not sbf.remove(name):
        raise sbf.unknown(name)
    return sbf.dumps()


def read_disk(path: Path) -> str | None:
    """The file's text, or ``None`` when there is no file.

    Raises:
        ConfigError: too large, unreadable, or not UTF-8.
    """
    try:
        if path.stat().st_size > MAX_BYTES:
            raise ConfigError(f"{display_path(path)} is larger than {MAX_BYTES} bytes",
                              hint="keep large data out of the Sandboxfile")  # fmt: skip
        return path.read_text(encoding="utf-8")
    except FileNotFoundError:
        return None
    except UnicodeDecodeError as exc:
        raise ConfigError(f"cannot read {display_path(path)}: it is not UTF-8 text ({exc.reason} at byte {exc.start})",
                          hint="save the file as UTF-8") from exc
    except OSError as exc:
        raise ConfigError(f"cannot read {display_path(path)}: {exc.strerror or exc}",
                          hint="check the file's permissions") from exc


def write_disk(path: Path, text: str) -> None:
    """Write ``text`` atomically, as the CLI does (:meth:`Sandboxfile.save`).

    Raises:
        ConfigError: ``text`` is not a readable Sandboxfile, or the file cannot be written.
    """
    sbf = Sandboxfile.loads(text, path, validate=False)
    try:
        sbf.save()
    except OSError as exc:
        raise ConfigError(f"cannot write {display_path(path)}: {exc.strerror or exc}",
                          hint="check the free disk space and the directory's permissions") from exc
