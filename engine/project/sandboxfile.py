"""The Sandboxfile (YAML): a project's sandboxes, like a compose file (docs/sandboxfile.md).

Read with ruamel.yaml's round-trip loader and validated into :class:`SandboxEntry` models;
written back by splicing only the edited entries into the original text
(:mod:`engine.project.yamltext`), so comments, key order, quoting and unknown keys — top-level
``meta``/``modules``/``builds``/``groups`` and unknown keys inside entries — survive every
edit byte for byte. Every problem is a ``ConfigError`` that names ``file:line:col``, the key
and the bad value, with a hint; unknown keys are warnings, never crashes.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from pydantic import ValidationError
from ruamel.yaml.comments import CommentedMap
from ruamel.yaml.error import MarkedYAMLError, YAMLError

from engine.errors import ConfigError
from engine.project.schema import KNOWN_TOP_KEYS, NAME_RE, SandboxEntry
from engine.project.yamltext import data_of, dump, merge, plain, splice, yaml_rt

__all__ = ["FILENAME", "MAX_BYTES", "STATE_DIR", "SandboxEntry", "Sandboxfile", "display_path", "entry_from_dict"]

log = logging.getLogger(__name__)
FILENAME = "Sandboxfile"
MAX_BYTES = 1 << 20
STATE_DIR = ".menv"
_NAME_HINT = "names are 1–63 of [A-Za-z0-9_-], starting with a letter or digit"


def display_path(path: Path) -> str:
    """``path`` relative to the working directory when it is below it (shorter messages)."""
    try:
        return str(path.absolute().relative_to(Path.cwd()))
    except (ValueError, OSError):  # elsewhere, or the working directory is gone
        return str(path)


def _parse(text: str, path: Path) -> CommentedMap:
    try:
        doc = yaml_rt().load(text)
    except MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        where = f"{display_path(path)}:{mark.line + 1}:{mark.column + 1}" if mark else display_path(path)
        what = " ".join(p for p in (exc.context, exc.problem) if p)
        hint = "fix the YAML there: indent with spaces, quote values that contain ': ' or '#'"
        raise ConfigError(f"{where}: not valid YAML: {what}", hint=hint) from None
    except YAMLError as exc:
        raise ConfigError(f"{display_path(path)}: not valid YAML: {exc}".replace("\n", " "),
                          hint="fix the YAML syntax") from None  # fmt: skip
    if doc is None:
        doc = CommentedMap()
    if not isinstance(doc, CommentedMap):
        raise ConfigError(f"{display_path(path)}:1:1: the top level must be a mapping with a `sandboxes:` key",
                          hint="start the file with `sandboxes:` (see `msb init`)")  # fmt: skip
    return doc


class Sandboxfile:
    """A loaded Sandboxfile; edit with :meth:`set_sandbox` / :meth:`remove`, then :meth:`save`."""

    def __init__(self, path: Path, doc: CommentedMap, text: str = "") -> None:
        self.path = path
        self.doc = doc
        self._text = text
        self._warned: set[str] = set()
        sandboxes = doc.get("sandboxes")
        if sandboxes is not None and not isinstance(sandboxes, CommentedMap):
            raise self._error(("sandboxes",), "sandboxes must be a mapping of sandbox name → settings",
                              "write `sandboxes:` and indent each sandbox under it")  # fmt: skip

    # --- finding and loading ---------------------------------------------------------------

    @staticmethod
    def find(start: Path | None = None) -> Path:
        """The Sandboxfile in ``start`` (default: the working directory) or the nearest
        directory above it.

        Raises:
            ConfigError: there is none.
        """
        here = (start or Path.cwd()).absolute()
        for directory in (here, *here.parents):
            if (directory / FILENAME).is_file():
                return directory / FILENAME
        raise ConfigError(f"no {FILENAME} in {here} or any directory above it",
                          hint="create one with `msb init`, or name one with -f PATH")  # fmt: skip

    @classmethod
    def load(cls, path: Path, *, create: bool = False, validate: bool = True) -> Sandboxfile:
        """Read ``path`` (a file, or a directory holding one).

        Args:
            create: a missing file is an empty Sandboxfile (written on :meth:`save`).
            validate: check every entry now (see :meth:`validate`); otherwise entries are
                checked when read with :meth:`get`.

        Raises:
            ConfigError: missing, unreadable, too large, not YAML or not valid (file:line:col).
        """
        if path.is_dir():
            path = path / FILENAME
        try:
            size = path.stat().st_size
        except FileNotFoundError:
            if create:
                return cls(path, CommentedMap())
            raise ConfigError(f"no Sandboxfile at {display_path(path)}", hint="create one with `msb init`") from None
        if size > MAX_BYTES:
            raise ConfigError(f"{display_path(path)} is {size} bytes; a Sandboxfile is at most {MAX_BYTES}",
                              hint="keep large data out of the Sandboxfile")  # fmt: skip
        try:
            text = path.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as exc:
            raise ConfigError(f"cannot read {display_path(path)}: {exc}", hint="check the file's permissions") from exc
        return cls.loads(text, path, validate=validate)

    @classmethod
    def loads(cls, text: str, path: Path, *, validate: bool = True) -> Sandboxfile:
        """A Sandboxfile from ``text`` (e.g. an editor's buffer) that :meth:`save` writes to
        ``path``; messages name ``path``. Nothing is read from disk.

        Args:
            validate: check every entry now (see :meth:`validate`).

        Raises:
            ConfigError: not YAML or not valid (file:line:col).
        """
        sbf = cls(path, _parse(text, path), text)
        if validate:
            sbf.validate()
        return sbf

    # --- positions and errors --------------------------------------------------------------

    def _position(self, loc: Iterable[Any], *, key: bool = False) -> tuple[int, int] | None:
        """1-based line/column of the value at ``loc`` (or of its key), if it came from the file."""
        node: Any = self.doc
        parts = list(loc)
        try:
            for i, part in enumerate(parts):
                last = i == len(parts) - 1
                lc: Any = node.lc
                if isinstance(part, int) and isinstance(node, list):
                    pos = lc.item(part)
                else:
                    pos = lc.key(part) if (key and last) else lc.value(part)
                if last:
                    return pos[0] + 1, pos[1] + 1
                node = node[part]
        except (AttributeError, KeyError, IndexError, TypeError):
            return None
        return None

    def _where(self, loc: Iterable[Any], *, key: bool = False) -> str:
        pos = self._position(loc, key=key)
        name = display_path(self.path)
        return f"{name}:{pos[0]}:{pos[1]}" if pos else name

    def _error(self, loc: tuple[Any, ...], message: str, hint: str, *, key: bool = False) -> ConfigError:
        return ConfigError(f"{self._where(loc, key=key)}: {message}", hint=hint)

    @staticmethod
    def _dotted(loc: Iterable[Any]) -> str:
        out = ""
        for part in loc:
            out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
        return out

    # --- reading -----------------------------------------------------------------------------

    @property
    def _sandboxes(self) -> CommentedMap:
        value = self.doc.get("sandboxes")
        if value is None:
            value = self.doc["sandboxes"] = CommentedMap()
        assert isinstance(value, CommentedMap)
        return value

    @property
    def state_dir(self) -> Path:
        """The project's ``.menv/`` (persistent layers, logs) beside the file."""
        return self.path.parent / STATE_DIR

    def names(self) -> list[str]:
        return [str(k) for k in self.doc.get("sandboxes") or {}]

    def get(self, name: str) -> SandboxEntry | None:
        """The validated entry ``name``, or ``None`` if the file does not define it.

        Raises:
            ConfigError: the entry is invalid (file:line:col, key, value, hint).
        """
        sandboxes = self.doc.get("sandboxes") or {}
        if name not in sandboxes:
            return None
        return self._entry(name, sandboxes[name])

    def entries(self) -> dict[str, SandboxEntry]:
        """Every entry, validated, in file order."""
        return {n: e for n in self.names() if (e := self.get(n)) is not None}

    def _entry(self, name: str, raw: Any) -> SandboxEntry:
        base = ("sandboxes", name)
        if not NAME_RE.match(name):
            raise self._error(base, f"sandbox name {name!r} is not valid", _NAME_HINT, key=True)
        if not isinstance(raw, dict):
            raise self._error(base, f"sandboxes.{name} must be a mapping of settings (got {plain(raw)!r})",
                              "indent the settings under the name, at least `image: IMAGE`")  # fmt: skip
        try:
            entry = SandboxEntry.model_validate(plain(raw))
        except ValidationError as exc:
            raise self._validation_error(base, exc) from None
        if not entry.image:
            raise self._error(base, f"sandboxes.{name} has no image",
                              "add `image: microsandbox/python` (an OCI image) or a ./dir root filesystem",
                              key=True)  # fmt: skip
        for extra in entry.unknown_keys():
            self._warn((*base, extra), f"sandboxes.{name}.{extra} is not a known key; ignored (kept in the file)")
        return entry

    def _validation_error(self, base: tuple[Any, ...], exc: ValidationError) -> ConfigError:
        err = exc.errors()[0]
        loc: tuple[Any, ...] = (*base, *err["loc"])
        ctx = err.get("ctx") or {}
        on_key = False
        if "index" in ctx:
            loc = (*loc, ctx["index"])
        elif "key" in ctx:
            loc, on_key = (*loc, ctx["key"]), bool(ctx.get("on_key"))
        hint = ctx.get("hint") or "see docs/sandboxfile.md for the keys and their values"
        return self._error(loc, f"{self._dotted(loc)} {err['msg']}", hint, key=on_key)

    def _warn(self, loc: tuple[Any, ...], message: str) -> None:
        text = f"{self._where(loc, key=True)}: {message}"
        if text not in self._warned:
            self._warned.add(text)
            log.warning("%s", text)

    def validate(self) -> None:
        """Check the whole file: names, every entry, ``depends_on`` targets, no cycles.
        Unknown keys are logged as warnings.

        Raises:
            ConfigError: the first problem found, with file:line:col and a hint.
        """
        for key in self.doc:
            if key not in KNOWN_TOP_KEYS:
                self._warn((key,), f"unknown top-level key {key!r}; ignored (kept in the file)")
        entries = self.entries()
        for name, entry in entries.items():
            self._check_depends(name, entry, entries)
        self.start_order(list(entries))

    def check_entry(self, name: str) -> SandboxEntry:
        """Validate one entry, including that its ``depends_on`` names exist.

        Raises:
            ConfigError: it is missing or invalid.
        """
        entry = self.get(name)
        if entry is None:
            raise self.unknown(name)
        self._check_depends(name, entry, None)
        return entry

    def _check_depends(self, name: str, entry: SandboxEntry, entries: dict[str, SandboxEntry] | None) -> None:
        defined = set(entries) if entries is not None else set(self.names())
        for i, dep in enumerate(entry.depends_on):
            if dep not in defined:
                raise self._error(("sandboxes", name, "depends_on", i),
                                  f"sandboxes.{name}.depends_on[{i}] names {dep!r}, which this file does not define",
                                  f"define {dep!r} under `sandboxes:` or remove it from depends_on")  # fmt: skip

    def unknown(self, name: str) -> ConfigError:
        """The error for a sandbox name this file does not define."""
        defined = ", ".join(self.names()) or "none yet"
        return ConfigError(f"{display_path(self.path)} defines no sandbox {name!r} (defined: {defined})",
                           hint=f"add it with `msb add {name} --image IMAGE`, or check the spelling (`msb list`)")

    def dependents(self, name: str) -> list[str]:
        """Sandboxes whose ``depends_on`` names ``name``."""
        out = []
        for other, raw in (self.doc.get("sandboxes") or {}).items():
            deps = raw.get("depends_on") if isinstance(raw, dict) else None
            if isinstance(deps, list) and name in deps and other != name:
                out.append(str(other))
        return out

    def start_order(self, names: Iterable[str]) -> list[str]:
        """``names`` and everything they depend on, dependencies first, each once.

        Raises:
            ConfigError: an unknown name, an invalid entry, or a dependency cycle
                (e.g. ``dependency cycle: a → b → a``).
        """
        order: list[str] = []
        done: set[str] = set()
        for root in names:
            if root in done:
                continue
            path: list[str] = []
            stack: list[tuple[str, list[str]]] = []
            node: str | None = root
            while node is not None or stack:
                if node is not None:
                    if node in path:
                        cycle = [*path[path.index(node):], node]
                        raise self._error(("sandboxes", path[-1], "depends_on"),
                                          f"dependency cycle: {' → '.join(cycle)}",
                                          "remove one of these depends_on entries")  # fmt: skip
                    entry = self.get(node)
                    if entry is None:
                        raise self.unknown(node)
                    path.append(node)
                    stack.append((node, [d for d in entry.depends_on if d not in done]))
                    node = None
                    continue
                current, pending = stack[-1]
                if pending:
                    node = pending.pop(0)
                    if node in done:
                        node = None
                    continue
                stack.pop()
                path.pop()
                done.add(current)
                order.append(current)
        return order

    # --- editing -----------------------------------------------------------------------------

    def set_sandbox(self, name: str, entry: SandboxEntry) -> None:
        """Create or update ``name``. Keys already there keep their place, quoting and comments;
        keys msb does not know are left alone.

        Raises:
            ConfigError: ``name`` is not a valid sandbox name.
        """
        if not NAME_RE.match(name):
            raise ConfigError(f"sandbox name {name!r} is not valid", hint=_NAME_HINT)
        values = entry.model_dump(exclude_none=True, exclude_defaults=True)
        current = self._sandboxes.get(name)
        if not isinstance(current, CommentedMap):
            current = CommentedMap()
            self._sandboxes[name] = current
        merge(current, values, owned=set(SandboxEntry.model_fields))

    def remove(self, name: str) -> bool:
        """Delete ``name``; False if it was not there."""
        sandboxes = self.doc.get("sandboxes")
        if isinstance(sandboxes, CommentedMap) and name in sandboxes:
            del sandboxes[name]
            return True
        return False

    def dumps(self) -> str:
        """The file's new text: the original with only the edited entries rewritten."""
        try:
            unchanged = data_of(yaml_rt().load(self._text)) == data_of(self.doc)
        except YAMLError:
            unchanged = False
        if unchanged:
            return self._text
        spliced = splice(self._text, self.doc)
        return spliced if spliced is not None else dump(self.doc)

    def save(self) -> None:
        """Write atomically (temp file + rename, same mode) so a crash never leaves half a file."""
        text = self.dumps()
        self.path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.path.with_name(f".{self.path.name}.tmp")
        tmp.write_text(text, encoding="utf-8")
        try:
            os.chmod(tmp, self.path.stat().st_mode & 0o7777)
        except FileNotFoundError:
            pass
        os.replace(tmp, self.path)
        self._text = text
        self.doc = _parse(text, self.path)


def entry_from_dict(data: dict[str, Any]) -> SandboxEntry:
    """Validate plain data (e.g. from an API client) into an entry.

    Raises:
        ConfigError: a bad value; the message names the key (no file position).
    """
    try:
        return SandboxEntry.model_validate(data)
    except ValidationError as exc:
        err = exc.errors()[0]
        ctx = err.get("ctx") or {}
        loc = [*err["loc"], *([ctx["index"]] if "index" in ctx else [])]
        raise ConfigError(f"{Sandboxfile._dotted(loc)} {err['msg']}", hint=ctx.get("hint")) from None
