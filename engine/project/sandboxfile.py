"""The Sandboxfile (YAML), read and written with ruamel.yaml's round-trip mode so comments,
key order and unknown top-level keys survive every edit (CONTRACTS.md).

Unknown keys inside a sandbox entry are reported as warnings, never crashes.
"""

from __future__ import annotations

import io
import logging
import os
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError
from ruamel.yaml import YAML
from ruamel.yaml.comments import CommentedMap
from ruamel.yaml.error import YAMLError

from engine.errors import ConfigError

log = logging.getLogger(__name__)
FILENAME = "Sandboxfile"
MAX_BYTES = 1 << 20


class SandboxEntry(BaseModel):
    """One sandbox under ``sandboxes:``."""

    model_config = ConfigDict(extra="allow")

    image: str | None = None
    memory: int | None = Field(default=None, ge=64)
    cpus: int | None = Field(default=None, ge=1)
    volumes: list[str] = Field(default_factory=list)
    ports: list[str] = Field(default_factory=list)
    envs: list[str] = Field(default_factory=list)
    depends_on: list[str] = Field(default_factory=list)
    workdir: str | None = None
    shell: str | None = None
    scripts: dict[str, str] = Field(default_factory=dict)
    scope: str | None = None

    def unknown_keys(self) -> list[str]:
        return sorted((self.model_extra or {}).keys())


def _yaml() -> YAML:
    y = YAML(typ="rt")
    y.preserve_quotes = True
    y.indent(mapping=2, sequence=4, offset=2)
    return y


class Sandboxfile:
    """A loaded Sandboxfile; edit with :meth:`set_sandbox` / :meth:`remove`, then :meth:`save`."""

    def __init__(self, path: Path, doc: CommentedMap) -> None:
        self.path = path
        self.doc = doc

    @classmethod
    def load(cls, path: Path, *, create: bool = False) -> Sandboxfile:
        """Raises:
        ConfigError: unreadable, too large, not YAML, or not a mapping (line/column given).
        """
        if path.is_dir():
            path = path / FILENAME
        try:
            size = path.stat().st_size
        except FileNotFoundError:
            if create:
                return cls(path, CommentedMap({"sandboxes": CommentedMap()}))
            raise ConfigError(f"no Sandboxfile at {path}", hint="create one with `msb init`") from None
        if size > MAX_BYTES:
            raise ConfigError(f"{path} is {size} bytes; a Sandboxfile is at most {MAX_BYTES}")
        try:
            doc = _yaml().load(path.read_text())
        except YAMLError as exc:
            raise ConfigError(f"{path} is not valid YAML: {exc}".replace("\n", " "),
                              hint="fix the line named above") from exc  # fmt: skip
        if doc is None:
            doc = CommentedMap()
        if not isinstance(doc, CommentedMap):
            raise ConfigError(f"{path}: the top level must be a mapping with a `sandboxes:` key")
        sandboxes = doc.get("sandboxes")
        if sandboxes is None:
            doc["sandboxes"] = CommentedMap()
        elif not isinstance(sandboxes, CommentedMap):
            raise ConfigError(f"{path}: `sandboxes:` must be a mapping of name → settings")
        return cls(path, doc)

    @property
    def _sandboxes(self) -> CommentedMap:
        value = self.doc["sandboxes"]
        assert isinstance(value, CommentedMap)
        return value

    def names(self) -> list[str]:
        return [str(k) for k in self._sandboxes]

    def get(self, name: str) -> SandboxEntry | None:
        raw = self._sandboxes.get(name)
        if raw is None:
            return None
        if not isinstance(raw, dict):
            raise ConfigError(f"{self.path}: sandbox {name!r} must be a mapping of settings")
        try:
            entry = SandboxEntry.model_validate(dict(raw))
        except ValidationError as exc:
            err = exc.errors()[0]
            where = ".".join(str(p) for p in err["loc"])
            raise ConfigError(f"{self.path}: sandbox {name!r}: {where}: {err['msg']}") from exc
        for key in entry.unknown_keys():
            log.warning("%s: sandbox %r: unknown key %r ignored", self.path, name, key)
        return entry

    def set_sandbox(self, name: str, entry: SandboxEntry) -> None:
        """Create or update ``name``; keys already there keep their place and comments."""
        values = entry.model_dump(exclude_none=True, exclude_defaults=True)
        current = self._sandboxes.get(name)
        if not isinstance(current, CommentedMap):
            current = CommentedMap()
            self._sandboxes[name] = current
        for key in [k for k in current if k not in values and k in SandboxEntry.model_fields]:
            del current[key]
        for key, value in values.items():
            if current.get(key) != value:
                current[key] = value

    def remove(self, name: str) -> bool:
        if name in self._sandboxes:
            del self._sandboxes[name]
            return True
        return False

    def dumps(self) -> str:
        buf = io.StringIO()
        _yaml().dump(self.doc, buf)
        return buf.getvalue()

    def save(self) -> None:
        """Write atomically (temp file + rename) so a crash never leaves half a file."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.path.with_name(f".{self.path.name}.tmp")
        tmp.write_text(self.dumps())
        os.replace(tmp, self.path)


def entry_from_dict(data: dict[str, Any]) -> SandboxEntry:
    return SandboxEntry.model_validate(data)
