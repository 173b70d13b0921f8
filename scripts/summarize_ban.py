"""Mean ± std over seeds of a Born-Again study (scripts/mnist5k_ban.sh): per method, each
generation's best and last test top-1 and BAN's ensembles of generations 0…k.

Reads ``<study>/gen0/seed*/manifest.json`` (generation 0, trained alone) and
``<study>/ban-<method>/seed*/manifest.json`` (written by a job with ``generations: N``) and
prints a Markdown table.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

from summarize_runs import fmt


def summarize(study: Path) -> str:
    gen0 = [json.loads(p.read_text()) for p in sorted(study.glob("gen0/seed*/manifest.json"))]
    lines = [
        "| run | seeds | best top-1 (%) | last top-1 (%) |",
        "|---|---|---|---|",
        f"| generation 0 (alone) | {len(gen0)} | {fmt([m['best_top1'] for m in gen0])} | "
        f"{fmt([m['last_top1'] for m in gen0])} |",
    ]
    for folder in sorted(study.glob("ban-*")):
        runs = [json.loads(p.read_text()) for p in sorted(folder.glob("seed*/manifest.json"))]
        if not runs:
            continue
        for index, generation in enumerate(runs[0]["generations"]):
            best = [r["generations"][index]["best_top1"] for r in runs]
            last = [r["generations"][index]["last_top1"] for r in runs]
            label = f"{folder.name}, generation {generation['generation']}"
            lines.append(f"| {label} | {len(runs)} | {fmt(best)} | {fmt(last)} |")
        for index, ensemble in enumerate(runs[0]["ensembles"]):
            top1 = [r["ensembles"][index]["top1"] for r in runs]
            members = f"{ensemble['generations'][0]}–{ensemble['generations'][-1]}"
            lines.append(f"| {folder.name}, ensemble of generations {members} | {len(runs)} | "
                         f"{fmt(top1)} | – |")  # fmt: skip
    return "\n".join(lines)


if __name__ == "__main__":
    print(summarize(Path(sys.argv[1] if len(sys.argv) > 1 else "runs/mnist5k-ban")))
