"""``wkd list presets``: one line per released configuration, with what it is."""

from __future__ import annotations


def preset_table() -> str:
    """Name, teacher → student, method, epochs and the published top-1 of every preset."""
    from wkd_core import presets

    rows = [("preset", "teacher → student", "method", "epochs", "published top-1")]
    for name in presets.list_presets():
        preset = presets.get_preset(name)
        top1 = f"{preset.published_top1:.2f}" if preset.published_top1 is not None else "-"
        pair = f"{preset.teacher} → {preset.student}"
        rows.append((name, pair, preset.method, str(preset.training.epochs), top1))
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    lines = [
        "  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True)).rstrip()
        for row in rows
    ]
    return "\n".join(lines)
