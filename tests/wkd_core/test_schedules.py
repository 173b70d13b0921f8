"""Schedules against values worked out by hand."""

import itertools
import math

import pytest

from wkd_core.train.schedules import cosine_decay_factor, linear_warmup, step_lr


@pytest.mark.parametrize(
    ("epoch", "expected"),
    [(1, 0.05), (150, 0.05), (151, 0.005), (180, 0.005), (181, 0.0005), (210, 0.0005),
     (211, 0.00005), (240, 0.00005)],
)  # fmt: skip
def test_step_lr_cifar_recipe(epoch, expected):
    # CIFAR-100: LR 0.05, x0.1 after epochs 150/180/210, epochs counted from 1.
    lr = step_lr(epoch, base_lr=0.05, milestones=(150, 180, 210), gamma=0.1)
    assert lr == pytest.approx(expected, rel=1e-12)


def test_step_lr_gamma_and_no_milestones():
    assert step_lr(31, base_lr=0.1, milestones=[30, 60], gamma=0.5) == pytest.approx(0.05)
    assert step_lr(61, base_lr=0.1, milestones=[30, 60], gamma=0.5) == pytest.approx(0.025)
    assert step_lr(1000, base_lr=0.1, milestones=[]) == 0.1


def test_cosine_decay_by_hand():
    # s = 150, E = 240: 90 decay epochs.
    kw = {"total_epochs": 240, "start_epoch": 150}
    assert cosine_decay_factor(1, **kw) == 1.0
    assert cosine_decay_factor(150, **kw) == 1.0
    assert cosine_decay_factor(195, **kw) == pytest.approx(0.5, abs=1e-12)  # half-way
    assert cosine_decay_factor(240, **kw) == pytest.approx(0.0, abs=1e-12)  # 0 at the end
    # epoch 151: ½(1 + cos(π/90))
    assert cosine_decay_factor(151, **kw) == pytest.approx(0.5 * (1 + math.cos(math.pi / 90)))
    # epoch 225: ½(1 + cos(5π/6)) = ½(1 − √3/2)
    assert cosine_decay_factor(225, **kw) == pytest.approx(0.5 * (1 - math.sqrt(3) / 2))


def test_cosine_decay_from_epoch_zero_is_monotone():
    # ImageNet: start 0, E = 100, the decay runs over all epochs.
    values = [cosine_decay_factor(e, total_epochs=100, start_epoch=0) for e in range(0, 101)]
    assert values[0] == 1.0
    assert values[50] == pytest.approx(0.5)
    assert values[100] == pytest.approx(0.0, abs=1e-12)
    assert all(a >= b for a, b in itertools.pairwise(values))


def test_linear_warmup():
    assert linear_warmup(1, warmup=20) == pytest.approx(0.05)
    assert linear_warmup(10, warmup=20) == pytest.approx(0.5)
    assert linear_warmup(20, warmup=20) == 1.0
    assert linear_warmup(240, warmup=20) == 1.0
    assert linear_warmup(3, warmup=0) == 1.0


def test_schedules_on_device_tensors_equal_the_float_forms():
    # The captured training step keeps the epoch in a 0-dim tensor and computes the factors
    # in the graph; they must be the same numbers as the host-side floats.
    import torch

    for epoch in (1, 20, 150, 151, 200, 240):
        e = torch.tensor(float(epoch))
        for start in (0, 150, 240):
            ref = cosine_decay_factor(epoch, total_epochs=240, start_epoch=start)
            got = cosine_decay_factor(e, total_epochs=240, start_epoch=start)
            assert float(got) == pytest.approx(ref, abs=1e-6)
        for warmup in (0, 20):
            assert float(linear_warmup(e, warmup=warmup)) == pytest.approx(
                linear_warmup(epoch, warmup=warmup), abs=1e-7
            )
