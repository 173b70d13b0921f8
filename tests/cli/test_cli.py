"""The ``wkd`` command line end to end on the real mnist5k digits (one short epoch each)."""

from __future__ import annotations

import csv
import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from wkd_core.artifacts import load_student_weights
from wkd_core.data import build_loaders, create_dataset
from wkd_core.models import create_model
from wkd_core.train import evaluate

SUBSET = ["--set", "dataset.train_subset_per_class=30", "--set", "training.batch_size=50"]


def wkd(
    *args: str, cwd: Path, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    """Run the real ``wkd`` entry point in a subprocess, as a user would."""
    base = {"PYTHONPATH": str(Path(__file__).resolve().parents[2]), "PATH": "/usr/bin:/bin"}
    return subprocess.run(
        [sys.executable, "-m", "cli.main", *args],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=600,
        env=base | (env or {}),
    )


@pytest.fixture(scope="module")
def teacher_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("cli") / "teacher"
    done = wkd(
        "train", "--arch", "resnet8", "--dataset", "mnist5k", "--epochs", "1",
        "--lr", "0.05", "--out", str(out), "--no-progress", *SUBSET, cwd=out.parent,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert "best top-1" in done.stdout
    return out


def test_train_writes_weights_metrics_plot_and_manifest(teacher_run: Path) -> None:
    for name in ("student.safetensors", "metrics.csv", "metrics.jsonl", "curves.png"):
        assert (teacher_run / name).stat().st_size > 0, name
    rows = list(csv.DictReader((teacher_run / "metrics.csv").open()))
    assert [int(r["epoch"]) for r in rows] == [1]
    manifest = json.loads((teacher_run / "manifest.json").read_text())
    assert manifest["spec"]["method"] == "vanilla"
    assert manifest["versions"]["torch"] == torch.__version__
    assert float(rows[0]["test_top1"]) == pytest.approx(manifest["last_top1"])

    # The weights are the model that scored the reported accuracy.
    model = create_model("resnet8", num_classes=10)
    model.load_state_dict(load_student_weights(teacher_run / "student.safetensors"))
    test = create_dataset("mnist5k", split="test")
    _, loader = build_loaders(test, test, batch_size=250)
    from wkd_core.distillers import create_distiller

    metrics = evaluate(
        create_distiller("vanilla", student=model), loader, device=torch.device("cpu")
    )
    assert metrics["top1"] == pytest.approx(manifest["last_top1"], abs=1e-6)


def test_distill_wkd_l_from_trained_teacher(teacher_run: Path, tmp_path: Path) -> None:
    out = tmp_path / "wkd_l"
    done = wkd(
        "distill", "--method", "wkd_l", "--teacher", str(teacher_run / "student.safetensors"),
        "--teacher-arch", "resnet8", "--student", "resnet8", "--dataset", "mnist5k",
        "--set", "training.epochs=1", "--set", "params.temperature=4",
        "--out", str(out), "--no-progress", *SUBSET, cwd=tmp_path,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    distance = torch.load(out / "interrelations.pt", weights_only=True)
    assert distance.shape == (10, 10)
    assert torch.allclose(distance, distance.T) and torch.all(distance.diagonal() == 0)
    terms = json.loads((out / "metrics.jsonl").read_text().splitlines()[0])["loss_terms"]
    assert {"loss_ce", "loss_target", "loss_wd"} <= set(terms)


def test_ir_command_matches_distill_matrix(teacher_run: Path, tmp_path: Path) -> None:
    out = tmp_path / "ir.pt"
    done = wkd(
        "ir", "--teacher", str(teacher_run / "student.safetensors"), "--arch", "resnet8",
        "--dataset", "mnist5k", "--train-subset-per-class", "30", "--out", str(out),
        cwd=tmp_path,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert "off-diagonal IR mean" in done.stdout
    distance = torch.load(out, weights_only=True)
    assert distance.shape == (10, 10) and torch.isfinite(distance).all()
    assert distance.min() >= 0 and distance.max() <= 1 + 1e-6


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        (["train", "--arch", "resnet9000", "--dataset", "mnist5k"], "resnet9000"),
        (["train", "--arch", "resnet8", "--dataset", "nodata"], "nodata"),
        (
            ["distill", "--method", "kd", "--student", "resnet8", "--teacher-arch", "resnet8",
             "--dataset", "mnist5k"],
            "teacher",
        ),
        (
            ["distill", "--method", "kd", "--student", "resnet8", "--teacher-arch", "resnet8",
             "--dataset", "cifar100", "--teacher", "missing.pth", "--data-root", "nowhere"],
            "nowhere",
        ),
    ],
)  # fmt: skip
def test_user_errors_are_one_line(tmp_path: Path, args: list[str], expected: str) -> None:
    done = wkd(*args, cwd=tmp_path)
    assert done.returncode == 2, done.stderr
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("wkd: error:"), done.stderr
    assert expected in lines[0]


def test_mismatched_teacher_is_one_line(teacher_run: Path, tmp_path: Path) -> None:
    done = wkd(
        "distill", "--method", "kd", "--teacher", str(teacher_run / "student.safetensors"),
        "--teacher-arch", "resnet20", "--student", "resnet8", "--dataset", "mnist5k",
        "--set", "training.epochs=1", *SUBSET, cwd=tmp_path,
    )  # fmt: skip
    assert done.returncode == 2
    line = done.stderr.strip()
    assert line.startswith("wkd: error:") and "\n" not in line
    assert "layer" in line  # names the first differing keys


def test_list_models_and_presets(tmp_path: Path) -> None:
    models = wkd("list", "models", cwd=tmp_path)
    assert models.returncode == 0 and "resnet32x4" in models.stdout.split()
    presets = wkd("list", "presets", cwd=tmp_path)
    assert "cifar100/wkd_l/resnet32x4_resnet8x4" in presets.stdout.split()


def test_train_under_torchrun_two_processes(tmp_path: Path) -> None:
    """DDP from the command line (gloo on CPU): rank 0 alone reports and writes outputs."""
    out = tmp_path / "ddp"
    done = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2",
         "-m", "cli.main", "train", "--arch", "resnet8", "--dataset", "mnist5k",
         "--epochs", "1", "--out", str(out), "--no-progress", *SUBSET],
        cwd=tmp_path, capture_output=True, text=True, timeout=600,
        env={"PYTHONPATH": str(Path(__file__).resolve().parents[2]), "PATH": "/usr/bin:/bin"},
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.count("best top-1") == 1
    manifest = json.loads((out / "manifest.json").read_text())
    rows = list(csv.DictReader((out / "metrics.csv").open()))
    assert float(rows[0]["test_top1"]) == pytest.approx(manifest["last_top1"])


def test_distill_from_a_yaml_job_file_with_overrides(teacher_run: Path, tmp_path: Path) -> None:
    job = tmp_path / "job.yaml"
    job.write_text(
        "method: kd\n"
        f"teacher: {{arch: resnet8, path: {teacher_run / 'student.safetensors'}}}\n"
        "student: {arch: resnet8}\n"
        "dataset: {name: mnist5k, train_subset_per_class: 30}\n"
        "params: {temperature: 2.0}\n"
        "training: {epochs: 3, batch_size: 50, seed: 7}\n"
    )
    out = tmp_path / "kd"
    done = wkd(
        "distill", str(job), "--set", "training.epochs=1", "--out", str(out), "--no-progress",
        cwd=tmp_path,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    spec = json.loads((out / "manifest.json").read_text())["spec"]
    assert spec["training"]["epochs"] == 1  # the override wins over the file
    assert spec["training"]["seed"] == 7 and spec["params"]["temperature"] == 2.0
    assert spec["params"]["kd_weight"] == 0.9  # the method's default fills the rest
    terms = json.loads((out / "metrics.jsonl").read_text().splitlines()[0])["loss_terms"]
    assert set(terms) == {"loss_ce", "loss_kd"}


def test_distill_with_ofa_kds_recipe_into_a_tiny_vit(teacher_run: Path, tmp_path: Path) -> None:
    """CNN → Transformer with OFA-KD's Transformer-student options (AdamW, cosine after a
    warm-up, label smoothing, mixup / cutmix, clipping, drop path, no decay on norms)."""
    job = tmp_path / "job.yaml"
    job.write_text(
        "method: wkd_l\n"
        f"teacher: {{arch: resnet8, path: {teacher_run / 'student.safetensors'}}}\n"
        "student: {arch: vit_tiny_p4_32}\n"
        "dataset: {name: mnist5k, train_subset_per_class: 30}\n"
        "params: {temperature: 4.0, wkd_logit_weight: 10.0}\n"
        "interrelations: {feature: features}\n"
        "training: {epochs: 2, batch_size: 50, optimizer: adamw, lr: 0.001, betas: [0.9, 0.999],\n"
        "  weight_decay: 0.05, decay_bias_and_norm: false, lr_schedule: cosine, min_lr: 0.00001,\n"
        "  warmup_epochs: 1, warmup_lr: 0.0001, label_smoothing: 0.1, mixup_alpha: 0.8,\n"
        "  cutmix_alpha: 1.0, grad_clip_norm: 5.0, drop_path_rate: 0.1, num_workers: 0}\n"
    )
    out = tmp_path / "ofa"
    done = wkd("distill", str(job), "--out", str(out), "--no-progress", cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    spec = json.loads((out / "manifest.json").read_text())["spec"]
    assert spec["training"]["optimizer"] == "adamw" and spec["training"]["mixup_alpha"] == 0.8
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    # epoch 1: the warm-up's start; epoch 2: the cosine at t = 1 of 2 epochs
    assert [r["lr"] for r in rows] == pytest.approx([1e-4, 1e-5 + 0.5 * (1e-3 - 1e-5)])
    for row in rows:
        assert set(row["loss_terms"]) == {"loss_ce", "loss_target", "loss_wd"}
        assert all(0 <= v < 100 for v in row["loss_terms"].values())  # loss_wd decays to 0
        assert 0 <= row["test_top1"] <= 100
