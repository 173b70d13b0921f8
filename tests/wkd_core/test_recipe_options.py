"""OFA-KD's training options: the cosine schedule with warm-up, AdamW, the weight-decay
groups, label smoothing, mixup / cutmix, and how the trainer and the fast step use them.

References: timm's ``CosineLRScheduler`` and ``Mixup`` (the implementations OFA-KD runs),
``F.cross_entropy(label_smoothing=…)``, and AdamW's update written out by hand.
"""

from __future__ import annotations

import copy
import math
import warnings

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from wkd_core.distillers import create_distiller
from wkd_core.models import create_model
from wkd_core.train import TrainConfig, fit
from wkd_core.train import trainer as trainer_module
from wkd_core.train.fast import CapturedStep, fast_blockers, train_epoch_fast
from wkd_core.train.mixing import BatchMixer, MixDraw, hard_labels, mix, smoothed_one_hot
from wkd_core.train.optim import make_optimizer, param_groups
from wkd_core.train.schedules import epoch_lr, step_lr
from wkd_core.train.trainer import batch_mixer, train_one_epoch

C = 10
SIZE = 16


def tiny_distiller(method: str = "vanilla", **params):
    torch.manual_seed(0)
    student = create_model("resnet8", num_classes=C)
    teacher = None if method == "vanilla" else create_model("resnet8", num_classes=C)
    return create_distiller(method, student=student, teacher=teacher, **params)


def loaders(count: int = 2, batch: int = 8):
    """Real loaders of ``count`` batches (``fit`` re-seeds them per epoch)."""
    from torch.utils.data import TensorDataset

    from wkd_core.data import build_loaders

    images, labels = zip(*batches(count, batch), strict=True)
    dataset = TensorDataset(torch.cat(images), torch.cat(labels))
    return build_loaders(dataset, dataset, batch_size=batch, distributed=False)


def batches(count: int = 3, batch: int = 8):
    gen = torch.Generator().manual_seed(1)
    return [
        (
            torch.randn(batch, 3, SIZE, SIZE, generator=gen),
            torch.randint(0, C, (batch,), generator=gen),
        )
        for _ in range(count)
    ]


# ---- learning-rate schedule -------------------------------------------------------------------


def test_cosine_with_warmup_by_hand_and_against_timm():
    from timm.scheduler import CosineLRScheduler

    base, low, start, epochs, warm = 0.05, 1e-3, 1e-4, 300, 3
    lrs = {
        e: epoch_lr(e, schedule="cosine", base_lr=base, epochs=epochs, min_lr=low,
                    warmup_epochs=warm, warmup_lr=start)
        for e in range(1, epochs + 1)
    }  # fmt: skip
    # by hand: epochs 1-3 ramp from warmup_lr by (base − warmup_lr)/3; epoch 4 is cosine at t=3
    assert lrs[1] == pytest.approx(1e-4)
    assert lrs[2] == pytest.approx(1e-4 + (0.05 - 1e-4) / 3)
    assert lrs[3] == pytest.approx(1e-4 + 2 * (0.05 - 1e-4) / 3)
    assert lrs[4] == pytest.approx(1e-3 + 0.5 * 0.049 * (1 + math.cos(math.pi * 3 / 300)))
    assert lrs[151] == pytest.approx(1e-3 + 0.5 * 0.049)
    assert lrs[300] == pytest.approx(1e-3 + 0.5 * 0.049 * (1 + math.cos(math.pi * 299 / 300)))
    # timm, stepped per epoch as OFA-KD's train.py does: epoch e (0-based) runs _get_lr(e)
    param = torch.nn.Parameter(torch.zeros(1))
    optimizer = torch.optim.SGD([param], lr=base)
    scheduler = CosineLRScheduler(
        optimizer, t_initial=epochs, lr_min=low, warmup_lr_init=start, warmup_t=warm
    )
    for e in range(epochs):
        scheduler.step(e)
        assert lrs[e + 1] == pytest.approx(optimizer.param_groups[0]["lr"], rel=1e-12), e


def test_step_schedule_without_warmup_is_the_released_step_decay():
    for e in range(1, 241):
        got = epoch_lr(e, schedule="step", base_lr=0.05, epochs=240, milestones=(150, 180, 210))
        assert got == step_lr(e, base_lr=0.05, milestones=(150, 180, 210))
    warm = [epoch_lr(e, schedule="step", base_lr=0.1, epochs=9, milestones=(5,), warmup_epochs=2,
                     warmup_lr=0.0) for e in range(1, 10)]  # fmt: skip
    assert warm[:3] == pytest.approx([0.0, 0.05, 0.1]) and warm[5] == pytest.approx(0.01)
    with pytest.raises(ValueError, match="lr_schedule"):
        epoch_lr(1, schedule="linear", base_lr=0.1, epochs=2)


# ---- optimizers ---------------------------------------------------------------------------------


def test_adamw_updates_equal_the_formula():
    """Two AdamW steps of the trainer equal m, v, bias correction and decoupled decay by hand."""
    lr, (b1, b2), eps, wd = 1e-2, (0.8, 0.99), 1e-6, 0.05
    config = TrainConfig(optimizer="adamw", lr=lr, betas=(b1, b2), eps=eps, weight_decay=wd)
    distiller = tiny_distiller()
    reference = copy.deepcopy(distiller)
    optimizer = make_optimizer(distiller, config)
    assert isinstance(optimizer, torch.optim.AdamW)
    data = batches(2)
    train_one_epoch(
        distiller, data, optimizer, torch.amp.GradScaler("cpu", enabled=False), epoch=1,
        total_epochs=1, device=torch.device("cpu"),
    )  # fmt: skip
    params = list(reference.trainable_parameters())
    m = [torch.zeros_like(p) for p in params]
    v = [torch.zeros_like(p) for p in params]
    reference.train()
    for t, (images, labels) in enumerate(data, start=1):
        loss = reference(images, labels).total
        grads = torch.autograd.grad(loss, params)
        with torch.no_grad():
            for p, g, m_i, v_i in zip(params, grads, m, v, strict=True):
                m_i.mul_(b1).add_(g, alpha=1 - b1)
                v_i.mul_(b2).addcmul_(g, g, value=1 - b2)
                p.mul_(1 - lr * wd)
                m_hat, v_hat = m_i / (1 - b1**t), v_i / (1 - b2**t)
                p.sub_(lr * m_hat / (v_hat.sqrt() + eps))
    # atol 1e-5, a thousandth of one step (lr 1e-2): where a gradient is near eps, the
    # update g / (|g| + eps) magnifies float32 noise (one element of 18,432 was 1.2e-6 off
    # in a full run); leaving out the decay (3e-3 off) or the bias correction (4e-2) fails
    for got, want in zip(distiller.trainable_parameters(), params, strict=True):
        torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)


def test_no_decay_group_holds_biases_and_norms_as_timms_factory():
    from timm.optim import param_groups_weight_decay

    distiller = tiny_distiller("kd")
    groups = param_groups(distiller, weight_decay=2e-3, decay_bias_and_norm=False)
    assert [g["weight_decay"] for g in groups] == [0.0, 2e-3]
    reference = param_groups_weight_decay(distiller, weight_decay=2e-3)  # timm's own split
    for ours, theirs in zip(groups, reference, strict=True):
        teacher = {id(p) for p in distiller.teacher.parameters()}
        assert [id(p) for p in ours["params"]] == [
            id(p) for p in theirs["params"] if id(p) not in teacher
        ]
        assert ours["weight_decay"] == theirs["weight_decay"]
    # an SGD step on a zero gradient moves only the decayed parameters
    optimizer = make_optimizer(
        distiller,
        TrainConfig(
            lr=1.0, weight_decay=0.1, decay_bias_and_norm=False, momentum=0, nesterov=False
        ),
    )
    before = [p.detach().clone() for p in distiller.trainable_parameters()]
    for p in distiller.trainable_parameters():
        p.grad = torch.zeros_like(p)
    optimizer.step()
    for (name, p), old in zip(
        ((n, p) for n, p in distiller.named_parameters() if not n.startswith("teacher.")),
        before,
        strict=True,
    ):
        moved = not torch.equal(p, old)
        assert moved == (p.ndim > 1 and not name.endswith(".bias")), name


# ---- label smoothing, mixup, cutmix -------------------------------------------------------------


def test_label_smoothing_equals_cross_entropys_own():
    logits, labels = torch.randn(6, C), torch.randint(0, C, (6,))
    soft = smoothed_one_hot(labels, C, 0.1)
    torch.testing.assert_close(soft.sum(1), torch.ones(6))
    torch.testing.assert_close(
        F.cross_entropy(logits, soft), F.cross_entropy(logits, labels, label_smoothing=0.1)
    )
    distiller = tiny_distiller()
    images = torch.randn(6, 3, SIZE, SIZE)
    distiller.eval()  # the same BN statistics for both calls
    out = distiller(images, soft).losses["loss_ce"]
    with torch.no_grad():
        want = F.cross_entropy(distiller.student(images), labels, label_smoothing=0.1)
    torch.testing.assert_close(out, want)


class GlobalNumpy:
    """timm's Mixup draws from NumPy's global RNG: the same draws, through our interface."""

    def random(self):
        return np.random.rand()

    def beta(self, a, b):
        return np.random.beta(a, b)

    def integers(self, low, high):
        return np.random.randint(low, high)


def rand_bbox_065(img_shape, lam, margin=0.0, count=None):
    """timm 0.6.5's ``rand_bbox`` (OFA-KD pins 0.6.5): half a side either way of the centre;
    timm 1.0 extends the far side to ``(cut + 1) // 2``, one pixel more for odd sides."""
    ratio = np.sqrt(1 - lam)
    img_h, img_w = img_shape[-2:]
    cut_h, cut_w = int(img_h * ratio), int(img_w * ratio)
    cy = np.random.randint(0, img_h, size=count)
    cx = np.random.randint(0, img_w, size=count)
    yl, yh = np.clip(cy - cut_h // 2, 0, img_h), np.clip(cy + cut_h // 2, 0, img_h)
    xl, xh = np.clip(cx - cut_w // 2, 0, img_w), np.clip(cx + cut_w // 2, 0, img_w)
    return yl, yh, xl, xh


@pytest.mark.parametrize(("mixup", "cutmix"), [(0.8, 1.0), (0.8, 0.0), (0.0, 1.0)])
def test_mixup_and_cutmix_equal_timms_mixup(monkeypatch, mixup, cutmix):
    from timm.data import Mixup
    from timm.data import mixup as timm_mixup

    monkeypatch.setattr(timm_mixup, "rand_bbox", rand_bbox_065)

    ours = BatchMixer(C, label_smoothing=0.1, mixup_alpha=mixup, cutmix_alpha=cutmix, prob=0.8)
    ours.rng = GlobalNumpy()
    theirs = Mixup(mixup_alpha=mixup, cutmix_alpha=cutmix, prob=0.8, switch_prob=0.5,
                   label_smoothing=0.1, num_classes=C)  # fmt: skip
    kinds = set()
    for seed in range(12):
        images, labels = torch.randn(6, 3, 12, 10), torch.randint(0, C, (6,))
        np.random.seed(seed)
        want_x, want_y = theirs(images.clone(), labels.clone())
        np.random.seed(seed)
        draw = ours.draw(12, 10)
        np.random.seed(seed)
        got_x, got_y = ours(images, labels)
        kinds.add(draw.kind)
        torch.testing.assert_close(got_x, want_x)
        torch.testing.assert_close(got_y, want_y)
    assert "none" in kinds and len(kinds) == 1 + (mixup > 0) + (cutmix > 0)


def test_mixture_and_label_weights_are_the_documented_ones():
    images, labels = torch.randn(4, 3, 8, 8), torch.tensor([0, 1, 2, 3])
    x, y = mix(images, labels, MixDraw("mixup", 0.7), C)
    torch.testing.assert_close(x, 0.7 * images + 0.3 * images.flip(0))
    assert y[0, 0].item() == pytest.approx(0.7) and y[0, 3].item() == pytest.approx(0.3)
    x, y = mix(images, labels, MixDraw("cutmix", 1 - 4 / 64, (2, 4, 3, 5)), C, smoothing=0.1)
    inside = torch.zeros(8, 8, dtype=torch.bool)
    inside[2:4, 3:5] = True
    torch.testing.assert_close(x[..., inside], images.flip(0)[..., inside])
    torch.testing.assert_close(x[..., ~inside], images[..., ~inside])
    lam, on, off = 1 - 4 / 64, 1 - 0.1 + 0.01, 0.01
    assert y[1, 1].item() == pytest.approx(lam * on + (1 - lam) * off)
    assert y[1, 2].item() == pytest.approx(lam * off + (1 - lam) * on)
    assert hard_labels(y).tolist() == [0, 1, 2, 3]
    assert torch.equal(hard_labels(labels), labels)


def test_cutmix_lambda_is_the_uncovered_fraction_and_draws_are_seeded():
    mixer = BatchMixer(C, cutmix_alpha=1.0)
    mixer.reseed(3)
    first = [mixer.draw(32, 32) for _ in range(20)]
    mixer.reseed(3)
    assert [mixer.draw(32, 32) for _ in range(20)] == first
    for draw in first:
        assert draw.kind == "cutmix" and draw.lam == pytest.approx(1 - draw.box.area() / 1024)


# ---- the trainer and the fast step --------------------------------------------------------------


class Spy(torch.nn.Module):
    """Records what a network is called with."""

    def __init__(self, model):
        super().__init__()
        self.model, self.seen = model, []

    def forward(self, x):
        self.seen.append(x.detach().clone())
        return self.model(x)


def test_the_teacher_sees_the_same_mixed_images_as_the_student():
    torch.manual_seed(0)
    student, teacher = (
        Spy(create_model("resnet8", num_classes=C)),
        Spy(create_model("resnet8", num_classes=C)),
    )
    distiller = create_distiller("kd", student=student, teacher=teacher)
    config = TrainConfig(num_classes=C, mixup_alpha=0.8, cutmix_alpha=1.0, label_smoothing=0.1)
    mixer = batch_mixer(config)
    data = batches(3)
    optimizer = make_optimizer(distiller, config)
    train_one_epoch(
        distiller, data, optimizer, torch.amp.GradScaler("cpu", enabled=False), epoch=1,
        total_epochs=1, device=torch.device("cpu"), mixer=mixer,
    )  # fmt: skip
    assert len(student.seen) == len(teacher.seen) == 3
    for s, t, (images, _) in zip(student.seen, teacher.seen, data, strict=True):
        assert torch.equal(s, t) and s.shape == images.shape
    assert any(not torch.equal(s, x) for s, (x, _) in zip(student.seen, data, strict=True))
    assert batch_mixer(TrainConfig()) is None
    with pytest.raises(ValueError, match="num_classes"):
        batch_mixer(TrainConfig(label_smoothing=0.1))


def test_dkd_and_wkd_l_take_the_top_class_of_soft_targets():
    gen = torch.Generator().manual_seed(7)
    distance = torch.rand(C, C, generator=gen)
    distance = (distance + distance.t()) / 2
    distance.fill_diagonal_(0)
    images, labels = torch.randn(4, 3, SIZE, SIZE), torch.randint(0, C, (4,))
    soft = 0.6 * smoothed_one_hot(labels, C) + 0.4 * smoothed_one_hot(labels.flip(0), C)
    for method, params, term in (
        ("dkd", {}, "loss_dkd"),
        ("wkd_l", {"distance": distance}, "loss_wd"),
    ):
        distiller = tiny_distiller(method, **params).eval()
        hard = distiller(images, labels).losses
        mixed = distiller(images, soft).losses
        torch.testing.assert_close(mixed[term], hard[term])
        torch.testing.assert_close(
            mixed["loss_ce"], F.cross_entropy(distiller.student(images), soft)
        )


def test_fast_step_smooths_labels_as_the_eager_loop():
    data = batches(3)
    config = TrainConfig(lr=0.1, num_classes=C, label_smoothing=0.2)
    reference = tiny_distiller("kd")
    fast = copy.deepcopy(reference)
    optimizer = make_optimizer(reference, config)
    train_one_epoch(
        reference, data, optimizer, torch.amp.GradScaler("cpu", enabled=False), epoch=1,
        total_epochs=1, device=torch.device("cpu"), mixer=batch_mixer(config),
    )  # fmt: skip
    step = CapturedStep(
        fast, make_optimizer(fast, config), total_epochs=1, capture=False, warmup=1,
        label_smoothing=0.2, num_classes=C,
    )  # fmt: skip
    train_epoch_fast(step, data, epoch=1, lr=0.1, device=torch.device("cpu"))
    for got, want in zip(
        fast.trainable_parameters(), reference.trainable_parameters(), strict=True
    ):
        torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-6)


def test_fit_falls_back_to_the_eager_loop_for_what_the_fast_step_lacks(monkeypatch, tmp_path):
    assert fast_blockers(TrainConfig()) == []
    assert (
        fast_blockers(TrainConfig(label_smoothing=0.1, lr_schedule="cosine", warmup_epochs=1)) == []
    )
    config = TrainConfig(
        epochs=2, lr=0.01, optimizer="adamw", decay_bias_and_norm=False, mixup_alpha=0.8,
        num_classes=C, lr_schedule="cosine", warmup_epochs=1, warmup_lr=1e-3, log_every=1,
    )  # fmt: skip
    assert len(fast_blockers(config)) == 3

    def no_capture(*args, **kwargs):
        raise AssertionError("the captured step must not be built")

    data = loaders()
    eager = fit(tiny_distiller(), *data, config=config)
    monkeypatch.setattr(trainer_module, "CapturedStep", no_capture)
    with pytest.warns(UserWarning, match="fast step does not support optimizer 'adamw'"):
        fast = fit(tiny_distiller(), *data, config=TrainConfig(**{**vars(config), "fast": True}))
    assert (
        [m.lr for m in fast.history]
        == [m.lr for m in eager.history]
        == pytest.approx([1e-3, 0.005])  # the warm-up's start, then the cosine at t = 1 of 2
    )
    assert [m.train_loss for m in fast.history] == pytest.approx(
        [m.train_loss for m in eager.history]
    )
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # "auto" falls back without a word (here: CPU anyway)
        fit(tiny_distiller(), *data, config=TrainConfig(**{**vars(config), "epochs": 1}))


def test_resumed_run_mixes_as_an_uninterrupted_one(tmp_path):
    config = TrainConfig(
        epochs=2, lr=0.05, num_classes=C, mixup_alpha=0.8, cutmix_alpha=1.0, label_smoothing=0.1,
        checkpoint_dir=tmp_path / "a", resume=True,
    )  # fmt: skip
    data = loaders()
    whole = tiny_distiller()
    fit(whole, *data, config=config)
    first = TrainConfig(**{**vars(config), "epochs": 1, "checkpoint_dir": tmp_path / "b"})
    fit(tiny_distiller(), *data, config=first)
    resumed = tiny_distiller()
    fit(resumed, *data, config=TrainConfig(**{**vars(config), "checkpoint_dir": tmp_path / "b"}))
    for got, want in zip(resumed.trainable_parameters(), whole.trainable_parameters(), strict=True):
        torch.testing.assert_close(got, want)
