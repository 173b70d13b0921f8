"""``wkd teachers import`` on an archive laid out like mdistiller's ``cifar_teachers.tar``."""

from __future__ import annotations

import io
import json
import tarfile
from pathlib import Path

import pytest
import torch

from tests.cli.test_cli import SUBSET, wkd
from wkd_core.artifacts import load_student_weights
from wkd_core.models import create_model


def mdistiller_checkpoint(arch: str, num_classes: int, seed: int) -> tuple[bytes, dict]:
    """What mdistiller's teachers hold: {"model": state dict, "best_acc", "epoch"}."""
    torch.manual_seed(seed)
    state = create_model(arch, num_classes=num_classes).state_dict()
    buffer = io.BytesIO()
    torch.save({"model": state, "best_acc": torch.tensor(71.5), "epoch": 240}, buffer)
    return buffer.getvalue(), state


def build_archive(path: Path, num_classes: int) -> dict[str, dict]:
    """``cifar_teachers/<arch>_vanilla/ckpt_epoch_240.pth`` for two zoo nets and a stranger."""
    states = {}
    with tarfile.open(path, "w") as archive:
        for seed, arch in enumerate(("resnet8", "wrn_16_1", "densenet40")):
            blob, states[arch] = mdistiller_checkpoint(
                "resnet8" if arch == "densenet40" else arch, num_classes, seed
            )
            info = tarfile.TarInfo(f"cifar_teachers/{arch}_vanilla/ckpt_epoch_240.pth")
            info.size = len(blob)
            archive.addfile(info, io.BytesIO(blob))
    return states


@pytest.mark.parametrize("unpacked", [False, True])
def test_import_registers_every_teacher_with_its_architecture(tmp_path: Path, unpacked) -> None:
    tar = tmp_path / "cifar_teachers.tar"
    states = build_archive(tar, num_classes=100)
    source = tar
    if unpacked:
        with tarfile.open(tar) as archive:
            archive.extractall(tmp_path / "unpacked", filter="data")
        source = tmp_path / "unpacked"
    registry = tmp_path / "registry"
    done = wkd("teachers", "import", str(source), "--registry", str(registry), cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    assert "skipped cifar_teachers/densenet40_vanilla/ckpt_epoch_240.pth" in done.stdout
    index = json.loads((registry / "teachers.json").read_text())
    assert sorted(index) == ["cifar100/resnet8", "cifar100/wrn_16_1"]
    for arch in ("resnet8", "wrn_16_1"):
        record = index[f"cifar100/{arch}"]
        assert (record["arch"], record["num_classes"]) == (arch, 100)
        saved = load_student_weights(Path(record["path"]))
        assert saved.keys() == states[arch].keys()
        assert all(torch.equal(saved[k], states[arch][k]) for k in saved)
    listing = wkd("teachers", "list", "--registry", str(registry), cwd=tmp_path)
    assert "cifar100/wrn_16_1  wrn_16_1  100 classes" in listing.stdout


def test_a_registered_teacher_is_used_by_name(tmp_path: Path) -> None:
    tar = tmp_path / "cifar_teachers.tar"
    build_archive(tar, num_classes=10)
    registry = tmp_path / "registry"
    imported = wkd(
        "teachers", "import", str(tar), "--dataset", "mnist5k", "--registry", str(registry),
        cwd=tmp_path,
    )  # fmt: skip
    assert imported.returncode == 0, imported.stderr
    done = wkd(
        "distill", "--method", "kd", "--teacher", "mnist5k/resnet8", "--student", "resnet8",
        "--dataset", "mnist5k", "--set", "training.epochs=1", "--out", str(tmp_path / "kd"),
        "--no-progress", *SUBSET, cwd=tmp_path, env={"WKD_TEACHERS_DIR": str(registry)},
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    manifest = json.loads((tmp_path / "kd" / "manifest.json").read_text())
    record = json.loads((registry / "teachers.json").read_text())["mnist5k/resnet8"]
    assert manifest["teacher_sha256"] == record["sha256"]
    assert manifest["spec"]["teacher"]["arch"] == "resnet8"
