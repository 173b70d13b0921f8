"""``wkd train`` and ``wkd distill`` on the synthetic shapes set: a detector is trained, then
distils a smaller one (WKD-LF), then starts a run of its own (``--student-init``); the AP
curve and the exported student are checked."""

from __future__ import annotations

import csv
import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[2]
COMMON = ["--set", "params.warmup_iters=8", "--set", "training.weight_decay=0.0001",
          "--no-progress", "--device", "cpu"]  # fmt: skip
BATCH_8 = ["--set", "training.batch_size=8"]


def wkd(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    # One thread: small detectors on a shared 2-core machine run faster without contention.
    env = {"PYTHONPATH": str(ROOT), "PATH": "/usr/bin:/bin", "OMP_NUM_THREADS": "1"}
    return subprocess.run([sys.executable, "-m", "cli.main", *args], cwd=cwd,
                          capture_output=True, text=True, timeout=900, env=env)  # fmt: skip


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory) -> Path:
    base = tmp_path_factory.mktemp("cli-detection")
    teacher = wkd(
        "train", "--arch", "fasterrcnn_small_fpn", "--dataset", "shapes_mini", "--epochs", "3",
        "--lr", "0.01", "--data-root", str(base / "data"), "--out", str(base / "teacher"),
        # three epochs at the full rate (the default schedule scaled to 3 epochs would decay
        # after the second, service/schedule.py) in batches of 2: 96 steps, for the cost of
        # 24 steps of 8 images
        "--set", "training.lr_milestones=[]", "--set", "training.batch_size=2", *COMMON,
        cwd=base,
    )  # fmt: skip
    assert teacher.returncode == 0, teacher.stderr
    assert "best AP" in teacher.stdout and "AP50" in teacher.stdout
    student = wkd(
        "distill", "--method", "wkd_lf", "--teacher", str(base / "teacher" / "student.safetensors"),
        "--teacher-arch", "fasterrcnn_small_fpn", "--student", "fasterrcnn_tiny_fpn",
        "--dataset", "shapes_mini", "--set", "training.epochs=1", "--set", "training.lr=0.02",
        "--data-root", str(base / "data"), "--out", str(base / "student"), *BATCH_8, *COMMON,
        cwd=base,
    )  # fmt: skip
    assert student.returncode == 0, student.stderr
    return base


def test_teacher_run_learns_and_reports_ap(runs: Path) -> None:
    rows = list(csv.DictReader((runs / "teacher" / "metrics.csv").open()))
    assert [int(r["epoch"]) for r in rows] == [1, 2, 3]
    losses = [float(r["train_loss"]) for r in rows]
    assert losses[-1] < 0.8 * losses[0], losses
    for row in rows:
        assert 0 <= float(row["test_top1"]) <= float(row["test_top5"]) <= 100  # AP <= AP50
    # Three epochs on 64 images: a clearly non-zero AP50. Measured over seeds 0-9 of this
    # very run (docs/detection.md, "How fast it learns"): 6.0-11.1 % after epoch 3; 2 % leaves
    # a margin of 3x for another CPU's numerics.
    assert float(rows[-1]["test_top5"]) >= 2.0, [r["test_top5"] for r in rows]
    manifest = json.loads((runs / "teacher" / "manifest.json").read_text())
    assert manifest["task"] == "detection" and manifest["spec"]["task"] == "detection"
    assert [row["epoch"] for row in manifest["curve"]] == [1, 2, 3]
    assert manifest["student_init"] is None  # random, seeded initial weights


def test_student_init_starts_from_the_given_weights(runs: Path) -> None:
    """``--student-init``: the teacher's weights start a fine-tuning run of the same detector
    (at a learning rate of ~0 they come out unchanged); weights of another detector are
    refused before training with the keys that differ."""
    from safetensors.torch import load_file

    weights = runs / "teacher" / "student.safetensors"
    tuned = wkd(
        "train", "--arch", "fasterrcnn_small_fpn", "--dataset", "shapes_mini", "--epochs", "1",
        "--lr", "1e-9", "--student-init", str(weights), "--data-root", str(runs / "data"),
        "--out", str(runs / "tuned"), *BATCH_8, *COMMON, cwd=runs,
    )  # fmt: skip
    assert tuned.returncode == 0, tuned.stderr
    assert "student init (torchvision): " in tuned.stdout
    start, after = load_file(weights), load_file(runs / "tuned" / "student.safetensors")
    for key in ("backbone.body.layer2.0.0.weight", "roi_heads.box_predictor.cls_score.weight"):
        assert torch.allclose(after[key], start[key], atol=1e-6), key
    manifest = json.loads((runs / "tuned" / "manifest.json").read_text())
    init = {"path": str(weights), "backbone_only": False, "checkpoint_id": None, "job_id": None}
    assert manifest["spec"]["student"]["init"] == init
    assert manifest["student_init"]["loaded"] == len(start)
    wrong = wkd(
        "train", "--arch", "fasterrcnn_tiny_fpn", "--dataset", "shapes_mini", "--epochs", "1",
        "--student-init", str(weights), "--data-root", str(runs / "data"),
        "--out", str(runs / "wrong"), *BATCH_8, *COMMON, cwd=runs,
    )  # fmt: skip
    assert wrong.returncode != 0
    assert "shape mismatch" in wrong.stderr and "backbone_only" in wrong.stderr, wrong.stderr


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
