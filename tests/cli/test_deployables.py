"""A CLI run's deployable students: best/last safetensors, ONNX checked here with onnxruntime
against PyTorch on the whole test split, the model card and the TensorBoard events."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest
import torch
from safetensors import safe_open

from tests.cli.test_cli import SUBSET, wkd
from wkd_core.artifacts import load_student_weights
from wkd_core.data import create_dataset
from wkd_core.models import create_model


@pytest.fixture(scope="module")
def run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("deploy") / "vanilla-resnet8"
    done = wkd(
        "train", "--arch", "resnet8", "--dataset", "mnist5k", "--epochs", "3",
        "--lr", "0.05", "--out", str(out), "--no-progress", *SUBSET, cwd=out.parent,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    return out


def student_from(path: Path) -> torch.nn.Module:
    model = create_model("resnet8", num_classes=10)
    model.load_state_dict(load_student_weights(path), strict=True)
    return model.eval()


def test_best_and_last_weights_are_the_reported_epochs(run: Path) -> None:
    manifest = json.loads((run / "manifest.json").read_text())
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    for name, epoch in (("student_best", manifest["best_epoch"]), ("student_last", 3)):
        with safe_open(str(run / f"{name}.safetensors"), "pt") as handle:
            meta = handle.metadata()
        assert int(meta["epoch"]) == epoch
        assert float(meta["test_top1"]) == pytest.approx(rows[epoch - 1]["test_top1"], abs=1e-3)
        assert manifest["files"][f"{name}.safetensors"]
    legacy = (run / "student.safetensors").read_bytes()
    assert legacy == (run / "student_last.safetensors").read_bytes()


def test_onnx_matches_pytorch_on_the_test_split(run: Path) -> None:
    test = create_dataset("mnist5k", split="test")
    images = torch.stack([test[i][0] for i in range(len(test))]).float()
    report = json.loads((run / "onnx_verification.json").read_text())
    for which in ("best", "last"):
        model = student_from(run / f"student_{which}.safetensors")
        session = ort.InferenceSession(
            str(run / f"student_{which}.onnx"), providers=["CPUExecutionProvider"]
        )
        onnx_logits = session.run(None, {"input": images.numpy()})[0]
        with torch.no_grad():
            torch_logits = model(images).numpy()
        assert (onnx_logits.argmax(1) == torch_logits.argmax(1)).all()
        assert np.abs(onnx_logits - torch_logits).max() < 1e-4
        entry = report[f"student_{which}.onnx"]
        assert entry["passed"] and entry["samples"] == len(test) and entry["opset"] >= 17


def test_model_card_and_tensorboard(run: Path) -> None:
    manifest = json.loads((run / "manifest.json").read_text())
    card = (run / "model_card.md").read_text()
    assert "`resnet8` (78,042 parameters)" in card
    assert f"**{manifest['best_top1']:.2f}** at epoch {manifest['best_epoch']}" in card
    assert manifest["files"]["student_best.onnx"] in card
    assert f"torch {torch.__version__}" in card and "![training curves](curves.png)" in card

    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(run)).Reload()
    top1 = [(e.step, e.value) for e in events.Scalars("test/top1")]
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert top1 == [(r["epoch"], pytest.approx(r["test_top1"])) for r in rows]
    assert {"train/loss", "lr", "loss/loss_ce"} <= set(events.Tags()["scalars"])
