"""Server-rendered SVG bar charts for the usage page (no JavaScript).

The functions return plain geometry (numbers and labels); the template draws
the ``<rect>`` and ``<text>`` elements, so the HTML is escaped as usual.
"""

from __future__ import annotations

from dataclasses import dataclass
from decimal import Decimal


@dataclass(frozen=True)
class Bar:
    x: float
    y: float
    width: float
    height: float
    label: str
    value: str
    show_label: bool


@dataclass(frozen=True)
class Chart:
    width: int
    height: int
    plot_top: int
    plot_bottom: int
    bars: list[Bar]
    max_label: str


def column_chart(
    rows: list[tuple[str, Decimal]],
    *,
    width: int = 720,
    height: int = 180,
    label_every: int = 1,
) -> Chart:
    """Vertical bars, one per ``(label, usd)`` row, scaled to the largest value."""
    top, bottom, left = 16, height - 22, 4
    peak = max((v for _, v in rows), default=Decimal(0))
    n = max(len(rows), 1)
    slot = (width - left) / n
    bars = []
    for i, (label, value) in enumerate(rows):
        h = float(value / peak) * (bottom - top) if peak > 0 else 0.0
        if value > 0:
            h = max(h, 1.0)
        bars.append(
            Bar(
                x=round(left + i * slot + slot * 0.1, 2),
                y=round(bottom - h, 2),
                width=round(slot * 0.8, 2),
                height=round(h, 2),
                label=label,
                value=f"${value:,.4f}",
                show_label=(i % label_every == 0),
            )
        )
    return Chart(width, height, top, bottom, bars, f"${peak:,.4f}")


def bar_chart(rows: list[tuple[str, Decimal]], *, width: int = 720, row_height: int = 24) -> Chart:
    """Horizontal bars, one per ``(label, usd)`` row (label on the left)."""
    label_w = 220
    peak = max((v for _, v in rows), default=Decimal(0))
    bars = []
    for i, (label, value) in enumerate(rows):
        w = float(value / peak) * (width - label_w - 110) if peak > 0 else 0.0
        if value > 0:
            w = max(w, 1.0)
        bars.append(
            Bar(
                x=label_w,
                y=i * row_height + 4,
                width=round(w, 2),
                height=row_height - 8,
                label=label,
                value=f"${value:,.4f}",
                show_label=True,
            )
        )
    height = max(len(rows), 1) * row_height + 8
    return Chart(width, height, 0, height, bars, f"${peak:,.4f}")
