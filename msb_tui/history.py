"""REPL history: the cells a user ran, persisted per project, sandbox and language.

One JSON-lines file per ``(sandbox, language)``: ``<project>/.menv/tui/history-<sandbox>-<language>.jsonl``
next to the project's Sandboxfile, or ``~/.cache/msb/tui/`` (``$XDG_CACHE_HOME`` is honoured)
when the workbench has no Sandboxfile (a remote server). Each line is ``{"code": "..."}``; the
file keeps the newest :data:`HISTORY_LIMIT` entries.

Navigation works like a shell's: :meth:`History.previous` walks back from the newest entry,
:meth:`History.next` walks forward and, past the newest, gives back the draft that was being
typed when the walk began.
"""

from __future__ import annotations

import json
import os
import re
from pathlib import Path

HISTORY_LIMIT = 1000
"""Entries kept per file; older ones are dropped when the file is rewritten."""


def history_path(sandboxfile: Path | None, sandbox: str, language: str, *, cache_dir: Path | None = None) -> Path:
    """Where the history of ``sandbox``'s ``language`` interpreter lives.

    Args:
        sandboxfile: the project's Sandboxfile, or ``None`` (no project: use the user cache).
        sandbox: the sandbox name (characters unsafe in a file name become ``_``).
        language: ``"python"`` or ``"node"``.
        cache_dir: the user cache directory (default ``$XDG_CACHE_HOME`` or ``~/.cache``).

    Returns:
        The path of the JSON-lines file (it may not exist yet).
    """
    safe = re.sub(r"[^A-Za-z0-9_.-]", "_", f"{sandbox}-{language}")
    if sandboxfile is not None:
        folder = sandboxfile.parent / ".menv" / "tui"
    else:
        base = cache_dir or Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
        folder = base / "msb" / "tui"
    return folder / f"history-{safe}.jsonl"


class History:
    """The bounded, persisted history of one interpreter (see the module docstring)."""

    def __init__(self, path: Path, limit: int = HISTORY_LIMIT, *, load: bool = True) -> None:
        """Args:
        path: the JSON-lines file (see :func:`history_path`).
        limit: entries kept.
        load: read the file now (``False``: start empty, e.g. after the file could not be read).

        Raises:
            OSError: the file exists but cannot be read.
        """
        self.path = path
        self.limit = limit
        self._on_disk = 0
        """Lines in the file; it is rewritten (trimmed) once it holds a tenth more than ``limit``."""
        self.entries: list[str] = self._load() if load else []
        self._cursor: int | None = None
        """Index into :attr:`entries` while walking; ``None`` when not walking."""
        self._draft = ""

    def _load(self) -> list[str]:
        """The entries on disk, oldest first; unreadable lines are skipped (a history file
        half-written by a crash must not stop the REPL from opening)."""
        try:
            lines = self.path.read_text(encoding="utf-8").splitlines()
        except FileNotFoundError:
            return []
        self._on_disk = len(lines)
        entries = []
        for line in lines:
            try:
                code = json.loads(line).get("code")
            except (ValueError, AttributeError):
                continue
            if isinstance(code, str):
                entries.append(code)
        return entries[-self.limit :]

    def add(self, code: str) -> None:
        """Append ``code`` (unless blank or equal to the newest entry) and save it.

        Args:
            code: the cell's source as it was run.

        Raises:
            OSError: the history file could not be written (the entry stays in memory).
        """
        self._cursor = None
        if not code.strip() or (self.entries and self.entries[-1] == code):
            return
        self.entries.append(code)
        del self.entries[: max(0, len(self.entries) - self.limit)]
        self.path.parent.mkdir(parents=True, exist_ok=True)
        if self._on_disk + 1 > self.limit + self.limit // 10:
            # Rewriting the whole file on every add would be quadratic; trim in batches instead.
            text = "".join(json.dumps({"code": c}) + "\n" for c in self.entries)
            self.path.write_text(text, encoding="utf-8")
            self._on_disk = len(self.entries)
            return
        with self.path.open("a", encoding="utf-8") as out:
            out.write(json.dumps({"code": code}) + "\n")
        self._on_disk += 1

    def previous(self, draft: str) -> str | None:
        """One step back in time.

        Args:
            draft: what is in the input now (kept, to come back to with :meth:`next`).

        Returns:
            The older entry, or ``None`` at the oldest one (or with no history).
        """
        if not self.entries or self._cursor == 0:
            return None
        if self._cursor is None:
            self._draft = draft
            self._cursor = len(self.entries)
        self._cursor -= 1
        return self.entries[self._cursor]

    def next(self) -> str | None:
        """One step forward in time.

        Returns:
            The newer entry, the draft once past the newest entry, or ``None`` when not walking.
        """
        if self._cursor is None:
            return None
        self._cursor += 1
        if self._cursor >= len(self.entries):
            self._cursor = None
            return self._draft
        return self.entries[self._cursor]
