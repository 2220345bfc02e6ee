"""Turns a run's output chunks into lines, bounded in bytes, in line count and overall.

One :class:`OutputCollector` per run (a REPL cell, a ``sandbox.command.run``). Every byte it
keeps is first reserved from an :class:`OutputBudget` shared by all runs of a server, so many
tenants flooding at once cannot grow the host's memory past the budget: a run that cannot
reserve gets its output cut with a note. Work is linear in the output's size, and once a run
is over its bounds further output is only counted, so the producer can be drained cheaply.
"""

from __future__ import annotations

import codecs

from engine.repl.models import OutputLine, Stream

MAX_OUTPUT_BYTES = 8 << 20
"""Output kept per run (UTF-8 bytes); the rest is dropped with a note."""
MAX_OUTPUT_LINES = 100_000
"""Lines kept per run: 8 MiB of bare newlines would otherwise be millions of objects."""
MAX_OUTPUT_BYTES_TOTAL = 256 << 20
"""Bytes of output all REPL runs of a process may hold at once (see :data:`SHARED_BUDGET`)."""
LINE_COST = 512
"""Bytes charged per kept line on top of its text: an :class:`OutputLine` costs about that."""
GRAIN = 64 << 10
"""Bytes a run reserves at a time, so a flood of tiny chunks does not ask the budget each time."""


class OutputBudget:
    """Bytes of output held by all runs at once; runs reserve before they keep.

    Single-threaded (one event loop), so plain integers suffice.
    """

    def __init__(self, total: int) -> None:
        """Args:
        total: bytes that may be reserved at once.
        """
        self.total = total
        self.used = 0

    def grant(self, wanted: int) -> int:
        """Reserve up to ``wanted`` bytes; return how many were reserved (maybe fewer, maybe 0)."""
        granted = max(0, min(wanted, self.total - self.used))
        self.used += granted
        return granted

    def release(self, n: int) -> None:
        """Give back ``n`` reserved bytes."""
        self.used = max(0, self.used - n)


SHARED_BUDGET = OutputBudget(MAX_OUTPUT_BYTES_TOTAL)
"""The budget of collectors made without one (REPL runs); the server's commands use their own,
sized by its limits."""


class OutputCollector:
    """Collects one run's output as :class:`OutputLine` s in arrival order.

    A line is emitted when its newline arrives; partial lines left at the end come last, in
    the order they started. Notes (ours, on stderr) always come after the user's output and
    are never truncated. With ``stream_bytes`` the raw bytes of each stream are kept too
    (``sandbox.command.run``'s ``stdout``/``stderr``), bounded per stream.

    Call :meth:`release` (or :meth:`finish`) when done: the reservation is held until then.
    """

    def __init__(self, max_bytes: int = MAX_OUTPUT_BYTES, max_lines: int = MAX_OUTPUT_LINES, *,
                 stream_bytes: int = 0, budget: OutputBudget | None = None) -> None:  # fmt: skip
        """Args:
        max_bytes: UTF-8 bytes of line text kept (all streams together).
        max_lines: lines kept.
        stream_bytes: raw bytes kept per stream by :meth:`add_bytes` (0: none).
        budget: where kept bytes are reserved (default :data:`SHARED_BUDGET`).
        """
        self._max_bytes = max_bytes
        self._max_lines = max_lines
        self._stream_bytes = stream_bytes
        self._budget = budget or SHARED_BUDGET
        self._held = 0
        self._credit = 0
        self._released = False
        self._bytes = 0
        self._lines: list[OutputLine] = []
        self._partial: dict[Stream, list[str]] = {}
        self._notes: list[str] = []
        self._streams: dict[Stream, bytearray] = {"stdout": bytearray(), "stderr": bytearray()}
        self._dropped: dict[Stream, int] = {"stdout": 0, "stderr": 0}
        self._decoders = {s: codecs.getincrementaldecoder("utf-8")("replace") for s in ("stdout", "stderr")}
        self.truncated = False
        """Lines were dropped (a bound or the budget)."""
        self.starved = False
        """The budget refused bytes this run was entitled to."""

    def _grant(self, wanted: int) -> int:
        if wanted > self._credit:
            extra = self._budget.grant(max(wanted - self._credit, GRAIN))
            self._held += extra
            self._credit += extra
        granted = min(wanted, self._credit)
        self._credit -= granted
        if granted < wanted:
            self.starved = True
        return granted

    def add(self, stream: Stream, text: str) -> None:
        """Add a chunk of ``stream`` output (any size, any split)."""
        if self.truncated or self._released or not text:
            return
        data = text.encode("utf-8", "replace")  # a hostile driver may send lone surrogates
        room = self._grant(min(len(data), self._max_bytes - self._bytes))
        if room < len(data):
            data = data[:room]
            self.truncated = True
        self._bytes += len(data)
        # maxsplit: a chunk of a million newlines must not become a million strings.
        *complete, rest = data.decode("utf-8", "ignore").split("\n", self._max_lines - len(self._lines))
        if "\n" in rest:
            self.truncated, rest = True, ""
        kept = self._grant(LINE_COST * len(complete)) // LINE_COST
        if kept < len(complete):
            self.truncated, complete, rest = True, complete[:kept], ""
        for piece in complete:
            head = self._partial.pop(stream, [])
            self._lines.append(OutputLine(stream=stream, text="".join([*head, piece]) if head else piece))
        if rest:
            self._partial.setdefault(stream, []).append(rest)

    def add_bytes(self, stream: Stream, data: bytes) -> None:
        """Add raw output bytes (UTF-8 decoded across chunk boundaries); keeps the stream's
        bytes too when the collector was made with ``stream_bytes``."""
        if self._released or not data:
            return
        if self._stream_bytes:
            self._keep(stream, data)
        if not self.truncated:
            self.add(stream, self._decoders[stream].decode(data))

    def _keep(self, stream: Stream, data: bytes) -> None:
        buf = self._streams[stream]
        room = min(len(data), self._stream_bytes - len(buf))
        room = self._grant(room) if room > 0 else 0
        if room:
            buf += memoryview(data)[:room]
        self._dropped[stream] += len(data) - room

    def note(self, text: str) -> None:
        """Add a message of ours as a stderr line after the output."""
        self._notes.append(text)

    @property
    def bytes(self) -> int:
        """Bytes of user output kept so far."""
        return self._bytes

    def stream_text(self, stream: Stream) -> str:
        """The kept bytes of one stream as text (empty without ``stream_bytes``)."""
        return self._streams[stream].decode("utf-8", "replace")

    def finish(self) -> list[OutputLine]:
        """All lines: output, trailing partial lines, a truncation note, then the notes.

        Also releases the reservation (the caller owns the lines now).
        """
        if not self.truncated:
            for stream, decoder in self._decoders.items():
                self.add(stream, decoder.decode(b"", final=True))  # type: ignore[arg-type]
        lines = list(self._lines)
        for stream, parts in self._partial.items():
            if len(lines) < self._max_lines:
                lines.append(OutputLine(stream=stream, text="".join(parts)))
            else:
                self.truncated = True
        if (notice := self._notice()) is not None:
            lines.append(OutputLine(stream="stderr", text=notice))
        lines.extend(OutputLine(stream="stderr", text=note) for note in self._notes)
        self.release()
        return lines

    def release(self) -> None:
        """Give the reservation back; later output is ignored. Safe to call twice."""
        self._released = True
        self._budget.release(self._held)
        self._held = self._credit = 0

    def _notice(self) -> str | None:
        dropped = ", ".join(f"{n} bytes of {s}" for s, n in self._dropped.items() if n and self._stream_bytes)
        if not (self.truncated or dropped):
            return None
        text = f"[output truncated: a run keeps at most {_size(self._max_bytes)} and {self._max_lines} lines of output"
        if self._stream_bytes:
            text += f", and {_size(self._stream_bytes)} per stream in stdout/stderr"
        if dropped:
            text += f"; dropped {dropped}"
        if self.starved:
            text += "; the server's output buffers were full"
        return text + "]"


def _size(n: int) -> str:
    return f"{n >> 20} MiB" if n >= 1 << 20 and n % (1 << 20) == 0 else f"{n} bytes"
