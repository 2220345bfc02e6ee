"""Messages shared between workers and screens.

High-rate messages (a metrics poll every second, a log tail) say so with ``can_replace``: when
the screen is busy and several are queued, Textual keeps only the newest, so a slow frame never
builds a backlog that makes typing stutter (the pattern of Toolong's ``messages.py``).
"""

from __future__ import annotations

from dataclasses import dataclass

from textual.message import Message

from msb_tui.workbench import SandboxRow


@dataclass
class SandboxesFetched(Message, bubble=False):
    """A fresh list of sandboxes (with metrics) arrived from the workbench."""

    rows: list[SandboxRow]

    def can_replace(self, message: Message) -> bool:
        """Whether ``message``, queued after this one, makes this one moot.

        Textual asks this of the message it is about to handle, about the next one in the
        queue: a newer result supersedes this list.
        """
        return isinstance(message, SandboxesFetched | SandboxesFailed)


@dataclass
class SandboxesFailed(Message, bubble=False):
    """Asking the workbench for its sandboxes failed."""

    error: BaseException

    def can_replace(self, message: Message) -> bool:
        """A newer result (list or failure), queued after this one, supersedes it."""
        return isinstance(message, SandboxesFailed | SandboxesFetched)
