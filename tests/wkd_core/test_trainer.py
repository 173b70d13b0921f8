"""fit / train_one_epoch / evaluate on tiny models and tensor data (CPU, a few seconds)."""

import copy
import io
import json
import re

import numpy as np
import pytest
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
    ProgressBar,
    StopTraining,
    TrainConfig,
    evaluate,
    fit,
    load_checkpoint,
    topk_correct,
)
from wkd_core.train.trainer import amp_enabled

C = 7  # classes: more than 5, so top-5 differs from top-1 and from 100 %


class TinyNet(nn.Module):
    """conv-BN-ReLU-dropout-pool-linear: BN buffers and dropout exercise the RNG/state paths."""

    def __init__(self, num_classes: int = C, width: int = 6) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, width, 3, padding=1)
        self.bn = nn.BatchNorm2d(width)
        self.drop = nn.Dropout(0.2)
        self.fc = nn.Linear(width, num_classes)

    def forward_features(self, x):
        f = F.relu(self.bn(self.conv(x)))
        pooled = self.drop(f.mean(dim=(2, 3)))
        return self.fc(pooled), {"feats": [f], "pooled_feat": pooled}

    def forward(self, x):
        return self.forward_features(x)[0]


class CEDistiller(Distiller):
    """Vanilla cross-entropy, plus an optional second term to test per-term logging."""

    def __init__(self, student, teacher=None, aux_weight: float = 0.0) -> None:
        super().__init__(student, teacher)
        self.aux_weight = aux_weight

    def forward(self, images, targets, *, epoch=1, total_epochs=1):
        logits = self.student(images)
        losses = {"loss_ce": F.cross_entropy(logits, targets)}
        if self.aux_weight:
            losses["loss_aux"] = self.aux_weight * losses["loss_ce"]
        if self.teacher is not None:
            t_logits, _ = self.teacher_forward(images)
            losses["loss_kd"] = F.mse_loss(logits, t_logits)
        return DistillOutput(logits=logits, losses=losses)


class Blobs(Dataset):
    """Learnable 3×8×8 images (class-dependent mean) with an optional random flip."""

    def __init__(self, n: int, seed: int, flip: bool = False) -> None:
        g = torch.Generator().manual_seed(seed)
        self.y = torch.arange(n) % C
        centers = torch.randn(C, 3, 1, 1, generator=torch.Generator().manual_seed(99))
        self.x = centers[self.y] + 0.8 * torch.randn(n, 3, 8, 8, generator=g)
        self.flip = flip

    def __len__(self):
        return len(self.y)

    def __getitem__(self, i):
        x = self.x[i]
        if self.flip and torch.rand(()) < 0.5:  # global RNG: the checkpoint must restore it
            x = x.flip(-1)
        return x, int(self.y[i])


def make_run(seed=0, aux_weight=0.0, flip=True, num_workers=0, teacher=None):
    torch.manual_seed(seed)
    distiller = CEDistiller(TinyNet(), teacher=teacher, aux_weight=aux_weight)
    train, val = build_loaders(
        Blobs(64, seed=1, flip=flip), Blobs(35, seed=2), batch_size=16,
        num_workers=num_workers, seed=seed, eval_batch_size=10,
    )  # fmt: skip
    return distiller, train, val


def config(**kw):
    base = {"epochs": 2, "lr": 0.1, "lr_milestones": (), "weight_decay": 5e-4, "log_every": 2}
    return TrainConfig(**{**base, **kw})


def manual_metrics(model, dataset):
    """top-1 / top-5 / CE by an independent route: numpy ranks over the whole set."""
    model.eval()
    with torch.no_grad():
        x = torch.stack([dataset[i][0] for i in range(len(dataset))])
        y = torch.tensor([dataset[i][1] for i in range(len(dataset))])
        logits = model(x).double()
    order = np.argsort(-logits.numpy(), axis=1, kind="stable")
    rank = np.array([np.where(order[b] == y[b].item())[0][0] for b in range(len(y))])
    ce = F.cross_entropy(logits, y).item()
    return 100 * np.mean(rank < 1), 100 * np.mean(rank < 5), ce


def test_fit_two_epochs_learns_and_reports_correct_metrics():
    distiller, train, val = make_run()
    result = fit(distiller, train, val, config=config(epochs=3))
    h = result.history
    assert [m.epoch for m in h] == [1, 2, 3]
    assert h[-1].train_loss < h[0].train_loss
    assert result.last_top1 == h[-1].test_top1
    assert result.best_top1 == max(m.test_top1 for m in h)
    assert h[result.best_epoch - 1].test_top1 == result.best_top1
    top1, top5, ce = manual_metrics(distiller.student, val.dataset)
    assert h[-1].test_top1 == pytest.approx(top1)
    assert h[-1].test_top5 == pytest.approx(top5)
    assert h[-1].test_loss == pytest.approx(ce, rel=1e-5)
    assert h[-1].test_top1 > 100 / C  # better than chance on learnable data
    assert not result.stopped


def test_evaluate_matches_manual_on_fixed_model():
    torch.manual_seed(3)
    distiller, _, val = make_run()
    metrics = evaluate(distiller, val, device=torch.device("cpu"))
    top1, top5, ce = manual_metrics(distiller.student, val.dataset)
    assert metrics["top1"] == pytest.approx(top1)
    assert metrics["top5"] == pytest.approx(top5)
    assert 0 < metrics["top1"] < metrics["top5"] < 100
    assert metrics["loss"] == pytest.approx(ce, rel=1e-5)


def test_topk_correct_clips_k_to_the_class_count():
    logits = torch.tensor([[0.1, 0.9, 0.0], [0.8, 0.1, 0.2], [0.3, 0.2, 0.1]])
    targets = torch.tensor([1, 2, 2])
    hit1, hit2, hit5 = topk_correct(logits, targets, (1, 2, 5))
    assert (hit1.item(), hit2.item(), hit5.item()) == (1, 2, 3)


def test_loss_terms_lr_and_nesterov_sgd_by_hand():
    # Epoch means of each term, LR per epoch, and one SGD step checked against the formula.
    distiller, train, val = make_run(aux_weight=0.5)
    result = fit(distiller, train, val, config=config(epochs=2, lr_milestones=(1,)))
    for m in result.history:
        assert set(m.loss_terms) == {"loss_ce", "loss_aux"}
        assert m.loss_terms["loss_aux"] == pytest.approx(0.5 * m.loss_terms["loss_ce"], rel=1e-5)
        assert m.train_loss == pytest.approx(sum(m.loss_terms.values()), rel=1e-5)
    assert [m.lr for m in result.history] == pytest.approx([0.1, 0.01])

    # One batch, one step: nesterov with an empty buffer gives p ← p − lr·(1+μ)·(g + λp).
    torch.manual_seed(0)
    student = nn.Sequential(nn.Flatten(), nn.Linear(3 * 8 * 8, C))
    ref = copy.deepcopy(student)
    data = Blobs(16, seed=1)
    train, val = build_loaders(data, data, batch_size=16)
    fit(CEDistiller(student), train, val, config=config(epochs=1, weight_decay=0.01))
    x, y = next(iter(train))
    F.cross_entropy(ref(x), y).backward()
    with torch.no_grad():
        for p_ref, p in zip(ref.parameters(), student.parameters(), strict=True):
            expected = p_ref - 0.1 * 1.9 * (p_ref.grad + 0.01 * p_ref)
            torch.testing.assert_close(p, expected, rtol=1e-5, atol=1e-6)


class Recorder(Callback):
    def __init__(self, stop_at=None):
        self.events, self.stop_at = [], stop_at

    def on_fit_start(self, state):
        self.events.append(("fit_start", state.start_epoch))

    def on_batch_end(self, state, batch_index, num_batches, loss_terms):
        self.events.append(("batch", state.epoch, batch_index, num_batches, loss_terms is None))
        if self.stop_at == ("batch", state.epoch, batch_index):
            raise StopTraining

    def on_epoch_end(self, state, metrics):
        self.events.append(("epoch_end", metrics.epoch, state.best_top1))
        if self.stop_at == ("epoch", metrics.epoch):
            raise StopTraining

    def on_fit_end(self, state, result):
        self.events.append(("fit_end", len(result.history), result.stopped))


def test_callbacks_fire_in_order():
    distiller, train, val = make_run()
    rec = Recorder()
    result = fit(distiller, train, val, config=config(epochs=2), callbacks=[rec])
    expected = [("fit_start", 1)]
    for e in (1, 2):
        # 4 batches, log_every=2: running means at batches 1 and 3 only
        expected += [("batch", e, i, 4, i in (0, 2)) for i in range(4)]
        expected.append(("epoch_end", e, max(m.test_top1 for m in result.history[:e])))
    expected.append(("fit_end", 2, False))
    assert rec.events == expected


def test_stop_training_at_epoch_end_and_mid_epoch(tmp_path):
    distiller, train, val = make_run()
    rec = Recorder(stop_at=("epoch", 1))
    cfg = config(epochs=3, checkpoint_dir=tmp_path)
    result = fit(distiller, train, val, config=cfg, callbacks=[rec])
    assert result.stopped and len(result.history) == 1
    assert rec.events[-1] == ("fit_end", 1, True)
    assert load_checkpoint(tmp_path / CHECKPOINT_NAME)["epoch"] == 1

    distiller, train, val = make_run()
    rec = Recorder(stop_at=("batch", 2, 1))
    result = fit(distiller, train, val, config=config(epochs=3, checkpoint_dir=tmp_path / "c"),
                 callbacks=[rec])  # fmt: skip
    assert result.stopped and [m.epoch for m in result.history] == [1]
    assert ("batch", 2, 2, 4, True) not in rec.events  # stopped right after batch 1
    # the abandoned epoch leaves the epoch-1 checkpoint as the resume point
    assert load_checkpoint(tmp_path / "c" / CHECKPOINT_NAME)["epoch"] == 1


def state_of(distiller):
    return {k: v.clone() for k, v in distiller.trainable_state_dict().items()}


@pytest.mark.parametrize("num_workers", [0, 2])
def test_resume_equals_uninterrupted(tmp_path, num_workers):
    teacher = TinyNet()
    # A: 3 epochs straight.
    a, train, val = make_run(num_workers=num_workers, teacher=copy.deepcopy(teacher))
    res_a = fit(a, train, val, config=config(epochs=3, checkpoint_dir=tmp_path / "a"))
    # B: stopped after epoch 2, then a *fresh* distiller (other init) resumes for epoch 3.
    b, train, val = make_run(num_workers=num_workers, teacher=copy.deepcopy(teacher))
    cfg_b = config(epochs=3, checkpoint_dir=tmp_path / "b", resume=True)
    stopped = fit(b, train, val, config=cfg_b, callbacks=[Recorder(stop_at=("epoch", 2))])
    assert stopped.stopped and len(stopped.history) == 2
    torch.manual_seed(123)  # scramble the global RNG: the checkpoint must restore it
    b2, train, val = make_run(seed=5, num_workers=num_workers, teacher=copy.deepcopy(teacher))
    b2_train, b2_val = make_run(num_workers=num_workers)[1:]  # loaders with the run's seed
    rec = Recorder()
    res_b = fit(b2, b2_train, b2_val, config=cfg_b, callbacks=[rec])
    assert rec.events[0] == ("fit_start", 3)

    sa, sb = state_of(a), state_of(b2)
    assert sa.keys() == sb.keys() and not any(k.startswith("teacher.") for k in sa)
    for k in sa:
        assert torch.equal(sa[k], sb[k]), k
    strip = [{**m.to_dict(), "seconds": 0} for m in res_a.history]
    assert strip == [{**m.to_dict(), "seconds": 0} for m in res_b.history]
    assert (res_a.best_top1, res_a.best_epoch) == (res_b.best_top1, res_b.best_epoch)
    # the teacher never trains
    for k, v in teacher.state_dict().items():
        assert torch.equal(v, b2.teacher.state_dict()[k])


def test_checkpoint_is_weights_only_and_resume_errors(tmp_path):
    distiller, train, val = make_run()
    fit(distiller, train, val, config=config(epochs=1, checkpoint_dir=tmp_path))
    ckpt = torch.load(tmp_path / CHECKPOINT_NAME, weights_only=True)
    assert {"epoch", "distiller", "optimizer", "scaler", "history", "rng"} <= set(ckpt)
    assert ckpt["history"][0]["epoch"] == 1
    assert not list(tmp_path.glob(".*tmp*"))  # atomic write left no temporary file
    with pytest.raises(FileNotFoundError, match="not found"):
        fit(distiller, train, val, config=config(resume=tmp_path / "nope.pt"))
    other = CEDistiller(TinyNet(width=5))
    with pytest.raises(ValueError, match="does not match"):
        fit(other, train, val, config=config(resume=tmp_path / CHECKPOINT_NAME))


def test_metrics_logger_and_progress_bar(tmp_path):
    distiller, train, val = make_run(aux_weight=0.5)
    stream = io.StringIO()
    cbs = [MetricsLogger(tmp_path), ProgressBar(file=stream)]
    cfg = config(epochs=2, checkpoint_dir=tmp_path, resume=True)
    fit(distiller, train, val, config=cfg, callbacks=[*cbs, Recorder(stop_at=("epoch", 1))])
    result = fit(distiller, train, val, config=cfg, callbacks=cbs)  # resumes at epoch 2
    lines = (tmp_path / "metrics.jsonl").read_text().splitlines()
    rows = [json.loads(line) for line in lines]
    assert [r["epoch"] for r in rows] == [1, 2]
    assert rows == [m.to_dict() for m in result.history]
    csv_lines = (tmp_path / "metrics.csv").read_text().splitlines()
    assert csv_lines[0].split(",")[-2:] == ["loss_ce", "loss_aux"] and len(csv_lines) == 3
    assert "2/2" in stream.getvalue() and "epochs" in stream.getvalue()


def test_amp_only_on_cuda():
    assert not amp_enabled("auto", torch.device("cpu"))
    assert amp_enabled(True, torch.device("cpu"))  # CPU autocast when asked explicitly
    assert amp_enabled("auto", torch.device("cuda"))
    assert not amp_enabled(False, torch.device("cuda"))
    with pytest.raises(ValueError):
        amp_enabled("yes", torch.device("cpu"))


@pytest.mark.parametrize(
    ("field", "value", "words"),
    [("grad_clip_norm", -1.0, "grad_clip_norm must be > 0"),  # once: gradient ascent
     ("grad_clip_norm", 0.0, "grad_clip_norm must be > 0"),  # once: every gradient zeroed
     ("label_smoothing", 1.5, "label_smoothing must be in [0, 1)"),  # negative targets
     ("epochs", 0, "epochs must be an integer >= 1"),  # once: an untrained "best" student
     ("epochs", 1.5, "epochs must be an integer >= 1"),
     ("lr", float("nan"), "lr must be > 0"),
     ("log_every", 0, "log_every must be an integer >= 1"),  # once: ZeroDivisionError
     ("mixup_prob", 2.0, "mixup_prob must be in [0, 1]"),
     ("weight_decay", -1.0, "weight_decay must be >= 0"),
     ("mixup_alpha", -1.0, "mixup_alpha must be >= 0"),
     ("lr_milestones", (0, 3), "lr_milestones must be integers >= 1"),
     ("betas", (0.9,), "betas must be two numbers"),
     ("num_classes", 1, "num_classes must be an integer >= 2")],
)  # fmt: skip
def test_train_config_refuses_settings_that_would_train_wrong(field, value, words):
    with pytest.raises(ValueError, match=re.escape(words)):
        TrainConfig(**{field: value})


def test_fit_refuses_an_empty_training_loader():
    distiller, _train, val = make_run()
    empty, _ = build_loaders(Blobs(0, seed=1), Blobs(4, seed=2), batch_size=16)
    with pytest.raises(ValueError, match="yields no batch"):
        fit(distiller, empty, val, config=config())
