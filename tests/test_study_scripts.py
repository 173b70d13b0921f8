"""The results scripts of docs/results.md read what the runs write: the Born-Again summary
over fake manifests of the shapes ``wkd train`` and a ``generations`` job write."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _write(path: Path, manifest: dict) -> None:
    path.mkdir(parents=True)
    (path / "manifest.json").write_text(json.dumps(manifest))


def test_ban_summary_gives_each_generation_and_ensemble_over_seeds(tmp_path):
    for seed, (gen0, gen1, gen2, ens) in enumerate([(95.0, 95.5, 96.0, 95.8),
                                                    (96.0, 96.5, 97.0, 96.2)]):  # fmt: skip
        _write(tmp_path / f"gen0/seed{seed}", {"best_top1": gen0, "last_top1": gen0 - 1})
        generations = [{"generation": g, "best_top1": v, "last_top1": v - 1}
                       for g, v in ((1, gen1), (2, gen2))]  # fmt: skip
        ensembles = [{"generations": [0, 1], "top1": ens}, {"generations": [0, 1, 2], "top1": ens}]
        _write(tmp_path / f"ban-wkd_l/seed{seed}",
               {"generations": generations, "ensembles": ensembles})  # fmt: skip
    out = subprocess.run([sys.executable, str(ROOT / "scripts/summarize_ban.py"), str(tmp_path)],
                         capture_output=True, text=True, check=True).stdout  # fmt: skip
    assert "| generation 0 (alone) | 2 | 95.50 ± 0.71 | 94.50 ± 0.71 |" in out
    assert "| ban-wkd_l, generation 2 | 2 | 96.50 ± 0.71 | 95.50 ± 0.71 |" in out
    assert "| ban-wkd_l, ensemble of generations 0–2 | 2 | 96.00 ± 0.28 | – |" in out
    assert subprocess.run(["bash", "-n", str(ROOT / "scripts/mnist5k_ban.sh")]).returncode == 0
