"""Progress bars on stderr for long image work (bytes and layers).

On a terminal: one line redrawn in place, e.g.
``pulling python:3.11  [#########.........]  48.2/103.0 MB  3/5 layers  21.4 MB/s``.
Elsewhere (logs, CI): one line when a phase starts and one when it ends.
"""

from __future__ import annotations

import sys
import threading
import time
from typing import TextIO

from engine.images.progress import Progress

WIDTH = 24


def human(n: float) -> str:
    for unit in ("B", "kB", "MB", "GB"):
        if abs(n) < 1000 or unit == "GB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1000
    return f"{n:.1f} GB"


class BarProgress(Progress):
    def __init__(self, stream: TextIO | None = None, *, quiet: bool = False) -> None:
        self.stream = stream or sys.stderr
        self.tty = self.stream.isatty()
        self.quiet = quiet
        self._lock = threading.Lock()
        self._title = ""
        self._total = self._done = 0
        self._items = self._items_done = 0
        self._t0 = 0.0
        self._last_draw = 0.0
        self._active = False

    def begin(self, title: str, *, total_bytes: int = 0, items: int = 0) -> None:
        with self._lock:
            self._title, self._total, self._items = title, total_bytes, items
            self._done = self._items_done = 0
            self._t0 = time.monotonic()
            self._active = True
            if self.quiet:
                return
            if self.tty:
                self._draw(force=True)
            else:
                size = f" ({human(total_bytes)}, {items} {'item' if items == 1 else 'items'})" if total_bytes else ""
                print(f"{title}{size} …", file=self.stream, flush=True)

    def advance(self, nbytes: int) -> None:
        with self._lock:
            self._done += nbytes
            self._draw()

    def item_done(self, label: str) -> None:
        with self._lock:
            self._items_done += 1
            self._draw(force=True)

    def note(self, message: str) -> None:
        with self._lock:
            if self.tty and self._active:
                self.stream.write("\r\033[K")
            print(f"msb: note: {message}", file=self.stream, flush=True)
            self._draw(force=True)

    def end(self) -> None:
        with self._lock:
            if not self._active:
                return
            self._active = False
            if self.quiet:
                return
            secs = time.monotonic() - self._t0
            if self.tty:
                self._draw(force=True)
                self.stream.write("\n")
                self.stream.flush()
            else:
                done = f"{human(self._done)} " if self._total else ""
                print(f"{self._title}: {done}done in {secs:.1f} s", file=self.stream, flush=True)

    def _draw(self, *, force: bool = False) -> None:
        if not (self.tty and self._active) or self.quiet:
            return
        now = time.monotonic()
        if not force and now - self._last_draw < 0.1:
            return
        self._last_draw = now
        parts = [self._title]
        if self._total:
            frac = min(max(self._done / self._total, 0.0), 1.0)
            fill = int(frac * WIDTH)
            parts.append(f"[{'#' * fill}{'.' * (WIDTH - fill)}]")
            parts.append(f"{human(self._done)}/{human(self._total)}")
            rate = self._done / max(now - self._t0, 1e-3)
            parts.append(f"{human(rate)}/s")
        if self._items:
            parts.append(f"{self._items_done}/{self._items} layers")
        self.stream.write("\r\033[K" + "  ".join(parts))
        self.stream.flush()
