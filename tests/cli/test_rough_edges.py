"""Rough edges a new user hit: preset listing, CIFAR hints, empty run folders, `wkd ir`'s output."""

from __future__ import annotations

from pathlib import Path

import torch

from tests.cli.test_cli import wkd
from wkd_core.artifacts import save_student
from wkd_core.models import create_model


def test_list_presets_shows_pair_method_epochs_and_published_top1(tmp_path: Path) -> None:
    done = wkd("list", "presets", cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    line = next(
        row for row in done.stdout.splitlines() if "cifar100/wkd_l/resnet32x4_resnet8x4" in row
    )
    assert line.split()[1:] == ["resnet32x4", "→", "resnet8x4", "wkd_l", "240", "76.53"]


def test_missing_cifar_names_download_and_leaves_no_empty_run_folder(tmp_path: Path) -> None:
    out = tmp_path / "runs" / "t"
    done = wkd(
        "train", "--arch", "resnet8", "--dataset", "cifar100", "--data-root",
        str(tmp_path / "data"), "--epochs", "1", "--out", str(out), "--no-progress",
        cwd=tmp_path,
    )  # fmt: skip
    assert done.returncode == 2
    assert "--download" in done.stderr and "WKD_DOWNLOAD_DATASETS" in done.stderr
    assert not out.exists()


def test_ir_writes_under_runs_by_default(tmp_path: Path) -> None:
    torch.manual_seed(0)
    save_student(create_model("resnet8", num_classes=10), tmp_path / "t.safetensors")
    done = wkd(
        "ir", "--teacher", "t.safetensors", "--arch", "resnet8", "--dataset", "mnist5k",
        "--train-subset-per-class", "4", cwd=tmp_path,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    written = tmp_path / "runs" / "ir" / "mnist5k-resnet8-cka_linear.pt"
    assert torch.load(written, weights_only=True).shape == (10, 10)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["runs", "t.safetensors"]
