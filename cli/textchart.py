"""Small text renderings for ``wkd watch`` and ``wkd status``: a bar chart of a curve and a
progress bar, in plain Unicode (no colours, so logs stay readable)."""

from __future__ import annotations

BLOCKS = " ▁▂▃▄▅▆▇█"


def bar_chart(values: list[float], *, height: int = 8, width: int = 60, label: str = "") -> str:
    """One column per value (the last of each group when there are more than ``width``),
    scaled between the smallest and largest value, with eighth-block resolution."""
    if not values:
        return f"{label}\n(no epochs yet)" if label else "(no epochs yet)"
    columns = _squeeze(values, width)
    low, high = min(columns), max(columns)
    span = (high - low) or 1.0
    # Leave the lowest value a sliver above the axis, so every column is visible.
    levels = [round((0.1 + 0.9 * (v - low) / span) * height * 8) for v in columns]
    rows = []
    for row in range(height - 1, -1, -1):
        cells = "".join(BLOCKS[max(0, min(8, level - row * 8))] for level in levels)
        tick = f"{high:7.2f}" if row == height - 1 else f"{low:7.2f}" if row == 0 else " " * 7
        rows.append(f"{tick} ┤{cells}")
    first, last = 1, len(values)
    axis = " " * 8 + "└" + "─" * len(columns)
    scale = " " * 9 + f"{first}".ljust(max(len(columns) - len(str(last)), 1)) + f"{last}"
    lines = [label] if label else []
    return "\n".join([*lines, *rows, axis, scale + "  (epoch)"])


def progress_bar(fraction: float, width: int = 24) -> str:
    """``[█████░░░░░]  42%``"""
    fraction = min(max(fraction, 0.0), 1.0)
    filled = round(fraction * width)
    return f"[{'█' * filled}{'░' * (width - filled)}] {fraction * 100:3.0f}%"


def _squeeze(values: list[float], width: int) -> list[float]:
    if len(values) <= width:
        return list(values)
    step = len(values) / width
    return [values[min(len(values) - 1, int((i + 1) * step) - 1)] for i in range(width)]
