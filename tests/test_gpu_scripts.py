"""The GPU check's summary reads what the benchmarks write, and the shell script parses its
modes: both checked on the CPU, so that a run on a lent GPU cannot fail for a silly reason."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _kernels_report() -> dict:
    variant = lambda eager, graph: {"eager_ms": eager, "graph_ms": graph}  # noqa: E731
    parity = {"loss_rel_vs_plain": 1e-7, "grad_rel_vs_plain": 2e-6,
              "loss_rel_vs_float64": 1e-8, "grad_rel_vs_float64": 1e-7}  # fmt: skip
    close = {**parity, "grad_rel_vs_plain": 4e-7}
    case = {
        "batch": 256, "num_classes": 1000, "target_ms": 0.6, "failed": {},
        "fast_step_solver": "adjoint",
        "variants": {"plain": variant(4.4, 1.2), "kd": variant(0.5, 0.05),
                     "adjoint": variant(0.9, 0.5), "fused": variant(2.9, 2.5),
                     "tiled": variant(2.9, 2.5)},
        "parity": {"adjoint": close, "fused": parity, "tiled": parity,
                   "plain": {"loss_rel_vs_float64": 1e-8, "grad_rel_vs_float64": 2e-7}},
        "tile_sweep": [{"tiles": [32, 64, 32, 4, "ieee"], "graph_ms": 0.5, **parity},
                       {"tiles": [64, 64, 32, 4, "tf32x3"], "error": "CompilationError"}],
    }  # fmt: skip
    return {"environment": {"device": "cuda"}, "cases": [case]}


def _fast_step_report() -> dict:
    methods = {
        m: {"eager_ms": None, "fast_ms": ms, "speedup": None, "fast_ratio_to_kd": ms / 2.4}
        for m, ms in (("kd", 2.4), ("wkd_l", 2.5), ("wkd_f", 2.7), ("wkd_lf", 2.6))
    }
    return {"pairs": [{"pair": "resnet32x4->resnet8x4", "batch": 64, "methods": methods}],
            "parity": {}}  # fmt: skip


def test_summary_of_a_targets_run(tmp_path):
    (tmp_path / "wkd_l_kernels.json").write_text(json.dumps(_kernels_report()))
    (tmp_path / "fast_step.json").write_text(json.dumps(_fast_step_report()))
    proc = subprocess.run([sys.executable, str(ROOT / "scripts/gpu_summary.py"), str(tmp_path)],
                          capture_output=True, text=True, check=True)  # fmt: skip
    rows = {line.split(" | ")[0].strip("| "): line for line in proc.stdout.splitlines()}
    loss = rows["WKD-L loss fwd+bwd fp32 (256, 1000), ms"]
    assert "| met in a graph |" in loss  # the fast step's adjoint: eager 0.9 > 0.6 ≥ graph 0.5
    assert "fast step's adjoint 0.900 eager / 0.500 graph" in loss and "fused 2.900" in loss
    assert rows["adjoint vs plain solver (256, 1000), same device"].endswith("| met |")
    assert "tiles 32x64x32x4 ieee: 0.500 graph" in loss and "tf32x3: FAILED" in loss
    assert rows["fused vs plain solver (256, 1000), same device"].endswith("| missed |")  # 2e-6
    assert rows["KD step, resnet32x4→resnet8x4, b64"].endswith("| met |")  # no eager figure
    assert "1.04× (2.50 ms) | met |" in rows["WKD-L / KD, resnet32x4->resnet8x4"]
    assert rows["WKD-F / KD, resnet32x4->resnet8x4"].endswith("| missed |")  # 1.125×
    assert rows["WKD-L / KD, tv_resnet34->tv_resnet18"].endswith("| not measured |")


def test_gpu_check_refuses_an_unknown_mode(tmp_path):
    proc = subprocess.run(["bash", str(ROOT / "scripts/gpu_check.sh"), "--fast", str(tmp_path)],
                          capture_output=True, text=True)  # fmt: skip
    assert proc.returncode == 2 and "unknown option --fast" in proc.stderr
    assert subprocess.run(["bash", "-n", str(ROOT / "scripts/gpu_check.sh")]).returncode == 0


def test_summary_of_the_latency_table(tmp_path):
    summary = [sys.executable, str(ROOT / "scripts/gpu_summary.py"), str(tmp_path)]
    before = subprocess.run(summary, capture_output=True, text=True, check=True).stdout
    assert "| latency table, ImageNet R34→R18 | measured | - | not measured |" in before
    methods = {m: {"median_s": s} for m, s in (("kd", 0.100), ("wkd_l", 0.131), ("wkd_f", 0.097))}
    report = {"batch": 256, "image_size": 224, "methods": methods}
    (tmp_path / "latency.json").write_text(json.dumps(report))
    after = subprocess.run(summary, capture_output=True, text=True, check=True).stdout
    rows = {line.split(" | ")[0].strip("| "): line for line in after.splitlines()}
    assert rows["latency WKD-L, R34→R18 b256, 224²"].endswith(
        "| ≈ 1.3× (paper) | 131.0 ms, 1.31× KD | measured |"
    )
    assert "97.0 ms, 0.97× KD" in rows["latency WKD-F, R34→R18 b256, 224²"]
