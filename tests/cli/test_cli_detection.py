"""``wkd train`` and ``wkd distill`` on the synthetic shapes set: a detector is trained, then
distils a smaller one (WKD-LF); the AP curve and the exported student are checked."""

from __future__ import annotations

import csv
import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[2]
COMMON = ["--set", "training.batch_size=8", "--set", "params.warmup_iters=8",
          "--set", "training.weight_decay=0.0001", "--no-progress", "--device", "cpu"]  # fmt: skip


def wkd(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    # One thread: small detectors on a shared 2-core machine run faster without contention.
    env = {"PYTHONPATH": str(ROOT), "PATH": "/usr/bin:/bin", "OMP_NUM_THREADS": "1"}
    return subprocess.run([sys.executable, "-m", "cli.main", *args], cwd=cwd,
                          capture_output=True, text=True, timeout=900, env=env)  # fmt: skip


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory) -> Path:
    base = tmp_path_factory.mktemp("cli-detection")
    teacher = wkd(
        "train", "--arch", "fasterrcnn_small_fpn", "--dataset", "shapes_mini", "--epochs", "2",
        "--lr", "0.02", "--data-root", str(base / "data"), "--out", str(base / "teacher"),
        # two epochs at the full rate: the default schedule scaled to 2 epochs would decay
        # after the first (service/schedule.py), too little training for a non-zero AP
        "--set", "training.lr_milestones=[]", *COMMON, cwd=base,
    )  # fmt: skip
    assert teacher.returncode == 0, teacher.stderr
    assert "best AP" in teacher.stdout and "AP50" in teacher.stdout
    student = wkd(
        "distill", "--method", "wkd_lf", "--teacher", str(base / "teacher" / "student.safetensors"),
        "--teacher-arch", "fasterrcnn_small_fpn", "--student", "fasterrcnn_tiny_fpn",
        "--dataset", "shapes_mini", "--set", "training.epochs=1", "--set", "training.lr=0.02",
        "--data-root", str(base / "data"), "--out", str(base / "student"), *COMMON, cwd=base,
    )  # fmt: skip
    assert student.returncode == 0, student.stderr
    return base


def test_teacher_run_learns_and_reports_ap(runs: Path) -> None:
    rows = list(csv.DictReader((runs / "teacher" / "metrics.csv").open()))
    assert [int(r["epoch"]) for r in rows] == [1, 2]
    # Two epochs on 64 images: the loss falls clearly, but AP50 is still a fraction of a
    # percent and may be exactly 0 on another CPU (CI saw it), so it is only range-checked
    # here; the student test below recomputes a reported AP from the saved weights.
    losses = [float(r["train_loss"]) for r in rows]
    assert losses[1] < 0.8 * losses[0], losses
    for row in rows:
        assert 0 <= float(row["test_top1"]) <= float(row["test_top5"]) <= 100  # AP <= AP50
    manifest = json.loads((runs / "teacher" / "manifest.json").read_text())
    assert manifest["task"] == "detection" and manifest["spec"]["task"] == "detection"
    assert [row["epoch"] for row in manifest["curve"]] == [1, 2]


def test_distilled_student_outputs_and_reported_ap(runs: Path) -> None:
    from safetensors.torch import load_file

    from wkd_core.detection import (
        coco_evaluate,
        create_detection_dataset,
        create_detector,
        detection_loaders,
    )

    out = runs / "student"
    for name in ("student.safetensors", "student.onnx", "interrelations.pt", "curves.png"):
        assert (out / name).stat().st_size > 0, name
    assert torch.load(out / "interrelations.pt", weights_only=True).shape == (5, 5)  # C + 1
    row = json.loads((out / "metrics.jsonl").read_text().splitlines()[-1])
    assert {"loss_wkd_target", "loss_wkd_logit", "loss_wkd_feat", "coco_AP75"} <= set(
        row["loss_terms"]
    )
    student = create_detector("fasterrcnn_tiny_fpn", num_classes=4)
    student.load_state_dict(load_file(out / "student.safetensors"), strict=True)
    test_set = create_detection_dataset("shapes_mini", split="test", root=runs / "data")
    _, loader = detection_loaders(test_set, test_set, batch_size=8)
    metrics = coco_evaluate(student, loader)
    assert row["test_top1"] == pytest.approx(100 * metrics["AP"], abs=1e-6)
