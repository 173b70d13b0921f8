"""The mixed-precision path of every GPU job, run on a CPU (CPU autocast has fp16 and bf16).

``fit`` with ``amp=True``: autocast in training and evaluation, the GradScaler for float16
(its state saved in the checkpoint and restored on resume), no scaler for bfloat16; the
results are compared with float32 within a stated tolerance, and a resumed fp16 run equals
an uninterrupted one. The same path runs on CUDA with ``amp="auto"``.
"""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import TensorDataset

from wkd_core.data import build_loaders
from wkd_core.distillers.base import Distiller, DistillOutput
from wkd_core.train import CHECKPOINT_NAME, Callback, StopTraining, TrainConfig, fit
from wkd_core.train import load_checkpoint as read_checkpoint

C = 5


class Net(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 8, 3, padding=1)
        self.bn = nn.BatchNorm2d(8)
        self.fc = nn.Linear(8, C)

    def forward(self, x):
        return self.fc(F.relu(self.bn(self.conv(x))).mean(dim=(2, 3)))


class CE(Distiller):
    def forward(self, images, targets, *, epoch=1, total_epochs=1):
        logits = self.student(images)
        seen = logits.dtype  # the dtype autocast gave the forward
        losses = {"loss_ce": F.cross_entropy(logits.float(), targets)}
        self.dtypes.add(seen)
        return DistillOutput(logits, losses)

    def __init__(self, student):
        super().__init__(student)
        self.dtypes: set[torch.dtype] = set()


def data(n: int, seed: int) -> TensorDataset:
    gen = torch.Generator().manual_seed(seed)
    y = torch.arange(n) % C
    centers = torch.randn(C, 3, 1, 1, generator=torch.Generator().manual_seed(9))
    return TensorDataset(centers[y] + 0.7 * torch.randn(n, 3, 8, 8, generator=gen), y)


def run(tmp_path, *, amp, amp_dtype="float16", epochs=3, callbacks=(), name="run", resume=False):
    torch.manual_seed(0)
    distiller = CE(Net())
    train, val = build_loaders(data(96, 1), data(40, 2), batch_size=16, seed=3)
    config = TrainConfig(
        epochs=epochs, lr=0.1, lr_milestones=(), amp=amp, amp_dtype=amp_dtype, fast=False,
        checkpoint_dir=tmp_path / name, resume=resume,
    )  # fmt: skip
    return distiller, fit(distiller, train, val, config=config, callbacks=list(callbacks))


class ScaleSeen(Callback):
    """Records the loss scale; after epoch 1 sets it to 1024 (as an overflow streak would),
    so that a restored scale can be told from a fresh GradScaler's 65536."""

    def __init__(self, stop_after: int | None = None) -> None:
        self.scale: list[float] = []
        self.stop_after = stop_after

    def on_fit_start(self, state) -> None:
        self.scale.append(state.scaler.get_scale())

    def on_epoch_end(self, state, metrics) -> None:
        if state.epoch == 1:
            state.scaler.update(new_scale=1024.0)
        self.scale.append(state.scaler.get_scale())
        if self.stop_after == state.epoch:
            raise StopTraining


@pytest.mark.parametrize("amp_dtype", ["float16", "bfloat16"])
def test_amp_fit_close_to_float32(tmp_path, amp_dtype):
    # Tolerance: 16-bit matmuls/convolutions keep 8 (bf16) or 11 (fp16) mantissa bits; over
    # three epochs the train loss stays within 5e-2 relative of float32's and the test
    # accuracy within one sample in 40.
    ref_model, ref = run(tmp_path, amp=False, name="fp32")
    model, got = run(tmp_path, amp=True, amp_dtype=amp_dtype, name=amp_dtype)
    assert model.dtypes == {getattr(torch, amp_dtype)}  # the forward did run in 16 bits
    assert ref_model.dtypes == {torch.float32}
    for a, b in zip(got.history, ref.history, strict=True):
        assert a.train_loss == pytest.approx(b.train_loss, rel=5e-2)
        assert abs(a.test_top1 - b.test_top1) <= 100 / 40 + 1e-9
        assert a.test_loss == pytest.approx(b.test_loss, rel=5e-2)
    ckpt = read_checkpoint(tmp_path / amp_dtype / CHECKPOINT_NAME)
    if amp_dtype == "float16":  # the GradScaler runs, and its state is in the checkpoint
        assert ckpt["scaler"]["scale"] > 0
    else:  # bf16 needs no scaler
        assert not ckpt["scaler"]


def test_fp16_resume_restores_the_scaler_and_equals_uninterrupted(tmp_path):
    straight, full = run(tmp_path, amp=True, name="a", callbacks=[ScaleSeen()])
    first = ScaleSeen(stop_after=2)
    run(tmp_path, amp=True, name="b", resume=True, callbacks=[first])
    saved = read_checkpoint(tmp_path / "b" / CHECKPOINT_NAME)["scaler"]["scale"]
    second = ScaleSeen()
    resumed, rest = run(tmp_path, amp=True, name="b", resume=True, callbacks=[second])
    assert first.scale[0] == 65536.0
    assert second.scale[0] == saved == first.scale[-1] == 1024.0  # restored, not fresh
    assert [m.train_loss for m in rest.history] == [m.train_loss for m in full.history]
    for (k, v), w in zip(
        straight.trainable_state_dict().items(), resumed.trainable_state_dict().values(),
        strict=True,
    ):  # fmt: skip
        assert torch.equal(v, w), k


def test_autocast_evaluation_matches_float32(tmp_path):
    from wkd_core.train import evaluate

    model, _ = run(tmp_path, amp=False, epochs=1)
    _, val = build_loaders(data(96, 1), data(40, 2), batch_size=16, seed=3)
    ref = evaluate(model, val, device=torch.device("cpu"))
    for dtype in (torch.float16, torch.bfloat16):
        got = evaluate(copy.deepcopy(model), val, device=torch.device("cpu"), amp=True,
                       amp_dtype=dtype)  # fmt: skip
        assert abs(got["top1"] - ref["top1"]) <= 100 / 40 + 1e-9
        assert got["loss"] == pytest.approx(ref["loss"], rel=2e-2)
