"""DDP: two gloo processes under torchrun equal one process at the same global batch.

This file is also the torchrun worker: ``python -m torch.distributed.run --nproc_per_node=2
tests/wkd_core/test_ddp.py OUT`` trains the tiny run on each rank and rank 0 saves the result.
"""

import json
import os
import subprocess
import sys
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import Dataset

from wkd_core.data import build_loaders
from wkd_core.distillers.base import Distiller, DistillOutput
from wkd_core.train import (
    CHECKPOINT_NAME,
    Callback,
    MetricsLogger,
    StopTraining,
    TrainConfig,
    fit,
    load_checkpoint,
)
from wkd_core.train import distributed as ddp

C = 5


class TinyNet(nn.Module):
    """BN-free (batch statistics would differ between 8- and 16-sample batches)."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3, padding=1)
        self.fc = nn.Linear(4, C)

    def forward_features(self, x):
        f = F.relu(self.conv(x))
        pooled = f.mean(dim=(2, 3))
        return self.fc(pooled), {"feats": [f], "pooled_feat": pooled}

    def forward(self, x):
        return self.forward_features(x)[0]


class KDish(Distiller):
    """CE plus MSE to a frozen teacher's logits: the teacher runs inside the DDP forward."""

    def forward(self, images, targets, *, epoch=1, total_epochs=1):
        logits = self.student(images)
        t_logits, _ = self.teacher_forward(images)
        losses = {
            "loss_ce": F.cross_entropy(logits, targets),
            "loss_kd": F.mse_loss(logits, t_logits),
        }
        return DistillOutput(logits, losses)


class Blobs(Dataset):
    def __init__(self, n: int, seed: int) -> None:
        g = torch.Generator().manual_seed(seed)
        self.y = torch.arange(n) % C
        centers = torch.randn(C, 3, 1, 1, generator=torch.Generator().manual_seed(99))
        self.x = centers[self.y] + torch.randn(n, 3, 8, 8, generator=g)

    def __len__(self):
        return len(self.y)

    def __getitem__(self, i):
        return self.x[i], int(self.y[i])


class RankMarker(Callback):
    """Writes a file named after the rank it runs on (callbacks must run on rank 0 only)."""

    def __init__(self, folder: Path, stop_at_batch: int | None = None) -> None:
        self.folder, self.stop_at_batch = folder, stop_at_batch

    def on_fit_start(self, state):
        (self.folder / f"callback_rank{state.rank}").write_text("x")

    def on_batch_end(self, state, batch_index, num_batches, loss_terms):
        if batch_index == self.stop_at_batch:
            raise StopTraining


def tiny_run(out_dir: Path, *, callbacks=(), epochs: int = 2):
    """Build and train the tiny run; the same code on 1 process or under torchrun."""
    torch.manual_seed(0)
    teacher, student = TinyNet(), TinyNet()
    distiller = KDish(student, teacher)
    train, val = build_loaders(
        Blobs(64, seed=1), Blobs(35, seed=2), batch_size=16, seed=0
    )  # sharded by torchrun's RANK / WORLD_SIZE; fit then joins the gloo group
    config = TrainConfig(
        epochs=epochs, lr=0.2, lr_milestones=(1,), weight_decay=1e-3, log_every=2,
        checkpoint_dir=out_dir,
    )  # fmt: skip
    return fit(distiller, train, val, config=config, callbacks=callbacks), distiller


def worker(out: Path) -> None:
    torch.set_num_threads(1)
    out.mkdir(parents=True, exist_ok=True)
    result, distiller = tiny_run(out / "run", callbacks=[RankMarker(out), MetricsLogger(out)])
    stop_dir = out / "stop"
    stop_dir.mkdir(exist_ok=True)
    # rank 0 stops at batch 1 of epoch 1 (a log point); rank 1 must follow, not hang
    stopped, _ = tiny_run(stop_dir / "run", callbacks=[RankMarker(stop_dir, stop_at_batch=1)])
    if ddp.setup("cpu").is_main:
        torch.save(distiller.trainable_state_dict(), out / "weights.pt")
        summary = {
            "history": [m.to_dict() for m in result.history],
            "stop": [stopped.stopped, len(stopped.history)],
            "world_size": ddp.setup("cpu").world_size,
        }
        (out / "summary.json").write_text(json.dumps(summary))
    ddp.teardown()


def test_ddp_two_gloo_processes_equal_one_process(tmp_path):
    out = tmp_path / "ddp"
    env = {k: v for k, v in os.environ.items() if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK")}
    root = str(Path(__file__).resolve().parents[2])
    env.update(OMP_NUM_THREADS="1", PYTHONPATH=os.pathsep.join([root, env.get("PYTHONPATH", "")]))
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
           __file__, str(out)]  # fmt: skip
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-4000:]
    summary = json.loads((out / "summary.json").read_text())
    assert summary["world_size"] == 2

    single, distiller = tiny_run(tmp_path / "single")
    weights = torch.load(out / "weights.pt", weights_only=True)
    assert weights.keys() == distiller.trainable_state_dict().keys()
    for k, v in distiller.trainable_state_dict().items():
        torch.testing.assert_close(weights[k], v, rtol=1e-5, atol=1e-6)
    for got, want in zip(summary["history"], single.history, strict=True):
        want = want.to_dict()
        assert got["epoch"] == want["epoch"] and got["lr"] == want["lr"]
        for key in ("train_loss", "train_top1", "test_top1", "test_top5", "test_loss"):
            assert abs(got[key] - want[key]) < 1e-4, key
        for term, value in want["loss_terms"].items():
            assert abs(got["loss_terms"][term] - value) < 1e-4, term

    # only rank 0 ran callbacks and wrote files; its checkpoint holds both ranks' RNG streams
    assert [p.name for p in out.glob("callback_rank*")] == ["callback_rank0"]
    assert len((out / "metrics.csv").read_text().splitlines()) == 3
    assert len(load_checkpoint(out / "run" / CHECKPOINT_NAME)["rng"]) == 2
    # a stop raised on rank 0 mid-epoch ended both processes at the agreed point
    assert summary["stop"] == [True, 0]


if __name__ == "__main__":
    worker(Path(sys.argv[1]))
