"""Turns a run's output chunks into lines, bounded in bytes and in line count."""

from __future__ import annotations

from engine.repl.models import OutputLine, Stream

MAX_OUTPUT_BYTES = 8 << 20
"""Output kept per run (UTF-8 bytes); the rest is dropped with a note."""
MAX_OUTPUT_LINES = 100_000
"""Lines kept per run: 8 MiB of bare newlines would otherwise be millions of objects."""


class OutputCollector:
    """Collects one run's output as :class:`OutputLine` s in arrival order.

    A line is emitted when its newline arrives; partial lines left at the end come last, in
    the order they started. Notes (ours, on stderr) always come after the user's output and
    are never truncated.
    """

    def __init__(self, max_bytes: int = MAX_OUTPUT_BYTES, max_lines: int = MAX_OUTPUT_LINES) -> None:
        self._max_bytes = max_bytes
        self._max_lines = max_lines
        self._bytes = 0
        self._lines: list[OutputLine] = []
        self._partial: dict[Stream, list[str]] = {}
        self._notes: list[str] = []
        self.truncated = False

    def add(self, stream: Stream, text: str) -> None:
        """Add a chunk of ``stream`` output (any size, any split)."""
        if self.truncated or not text:
            return
        data = text.encode("utf-8", "replace")  # a hostile driver may send lone surrogates
        if self._bytes + len(data) > self._max_bytes:
            data = data[: self._max_bytes - self._bytes]
            self.truncated = True
        self._bytes += len(data)
        text = data.decode("utf-8", "ignore")
        *complete, rest = text.split("\n")
        for piece in complete:
            if len(self._lines) >= self._max_lines:
                self.truncated = True
                return
            head = self._partial.pop(stream, [])
            self._lines.append(OutputLine(stream=stream, text="".join([*head, piece])))
        if rest:
            self._partial.setdefault(stream, []).append(rest)

    def note(self, text: str) -> None:
        """Add a message of ours as a stderr line after the output."""
        self._notes.append(text)

    @property
    def bytes(self) -> int:
        """Bytes of user output kept so far."""
        return self._bytes

    def finish(self) -> list[OutputLine]:
        """All lines: output, trailing partial lines, a truncation note, then the notes."""
        lines = list(self._lines)
        for stream, parts in self._partial.items():
            if len(lines) < self._max_lines:
                lines.append(OutputLine(stream=stream, text="".join(parts)))
        if self.truncated:
            limit = f"{self._max_bytes >> 20} MiB" if self._max_bytes >= 1 << 20 else f"{self._max_bytes} bytes"
            text = f"[output truncated: a run keeps at most {limit} and {self._max_lines} lines of output]"
            lines.append(OutputLine(stream="stderr", text=text))
        lines.extend(OutputLine(stream="stderr", text=note) for note in self._notes)
        return lines
