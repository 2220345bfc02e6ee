"""A one-line sparkline of the newest samples on a fixed scale.

Textual's own ``Sparkline`` scales between the smallest and largest sample, so a steady 12 %
CPU would look like a wall of full bars; a metric reads better against a fixed floor (0) and a
ceiling (100 % for CPU, the largest sample for memory). One sample per cell, newest on the
right, so the line scrolls left as the dashboard polls.
"""

from __future__ import annotations

from collections.abc import Sequence

from textual.app import RenderResult
from textual.content import Content
from textual.reactive import reactive
from textual.widget import Widget

BARS = "▁▂▃▄▅▆▇█"


def bars(values: Sequence[float], width: int, ceiling: float | None = None) -> str:
    """The sparkline text for the last ``width`` values.

    Args:
        values: Samples, oldest first (negative values count as 0).
        width: Cells available; older samples that do not fit are left out.
        ceiling: The value drawn as a full bar; ``None``: the largest sample shown.

    Returns:
        Exactly ``width`` characters, right-aligned, padded with spaces on the left.
    """
    if width <= 0:
        return ""
    shown = [max(0.0, v) for v in values[-width:]]
    top = max(ceiling or 0.0, max(shown, default=0.0)) or 1.0
    last = len(BARS) - 1
    text = "".join(BARS[min(last, round(v / top * last))] for v in shown)
    return text.rjust(width)


class MetricSpark(Widget):
    """A metric's recent history as bars; ``-hot`` is set when the newest sample is at or
    above ``hot_at`` (the stylesheet colours it)."""

    values: reactive[tuple[float, ...]] = reactive((), layout=False)
    """Samples, oldest first."""

    def __init__(self, *, ceiling: float | None = None, hot_at: float | None = None,
                 id: str | None = None, classes: str | None = None) -> None:  # fmt: skip
        """Args:
        ceiling: The value of a full bar (``None``: scale to the largest sample shown).
        hot_at: Newest value from which the widget gets the ``-hot`` class (``None``: never).
        id: The widget's id.
        classes: CSS classes.
        """
        super().__init__(id=id, classes=classes)
        self.ceiling = ceiling
        self.hot_at = hot_at

    def watch_values(self, values: tuple[float, ...]) -> None:
        self.set_class(self.hot_at is not None and bool(values) and values[-1] >= self.hot_at, "-hot")

    def render(self) -> RenderResult:
        return Content(bars(self.values, self.size.width, self.ceiling))
