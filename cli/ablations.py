"""``wkd list presets``: the paper's ablation tables, each row with its preset and top-1."""

from __future__ import annotations


def format_ablations() -> str:
    """One block per ablation table: ``label  paper top-1  preset``, in the paper's order."""
    from wkd_core.presets_paper import ABLATIONS  # pure data, no torch

    blocks = []
    for title, rows in ABLATIONS.items():
        width = max(len(row.label) for row in rows)
        lines = [f"\nablation: {title}", f"  {'variant':<{width}}  paper  preset"]
        lines += [f"  {r.label:<{width}}  {r.paper_top1:5.2f}  {r.preset}" for r in rows]
        blocks.append("\n".join(lines))
    return "\n".join(blocks)
