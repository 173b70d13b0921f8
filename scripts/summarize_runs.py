"""Mean ± std of best and last top-1 per method over the seeds of a study folder.

Reads ``<study>/<method>/seed*/manifest.json`` (written by every ``wkd train`` / ``wkd
distill`` run) and prints a Markdown table.
"""

from __future__ import annotations

import json
import statistics
import sys
from pathlib import Path

ORDER = ["vanilla", "kd", "dkd", "wkd_l", "wkd_f", "wkd_lf"]


def summarize(study: Path) -> str:
    lines = [
        "| method | seeds | best top-1 (%) | last top-1 (%) |",
        "|---|---|---|---|",
    ]
    teacher = study / "teacher" / "manifest.json"
    if teacher.exists():
        manifest = json.loads(teacher.read_text())
        lines.append(
            f"| teacher ({manifest['spec']['student']['arch']}, full train set) | 1 | "
            f"{manifest['best_top1']:.2f} | {manifest['last_top1']:.2f} |"
        )
    for method in ORDER:
        runs = sorted((study / method).glob("seed*/manifest.json"))
        if not runs:
            continue
        manifests = [json.loads(p.read_text()) for p in runs]
        best = [m["best_top1"] for m in manifests]
        last = [m["last_top1"] for m in manifests]
        lines.append(f"| {method} | {len(runs)} | {fmt(best)} | {fmt(last)} |")
    return "\n".join(lines)


def fmt(values: list[float]) -> str:
    spread = statistics.stdev(values) if len(values) > 1 else 0.0
    return f"{statistics.mean(values):.2f} ± {spread:.2f}"


if __name__ == "__main__":
    print(summarize(Path(sys.argv[1] if len(sys.argv) > 1 else "runs/mnist5k-study")))
