"""Distillers on tiny fake models: named terms, gradients, frozen teacher, schedules, losses."""

from __future__ import annotations

import math
import re

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from wkd_core.distillers import (
    ConvReg,
    ConvRegBottleNeck,
    DistillOutput,
    create_distiller,
    list_distillers,
)
from wkd_core.losses import dkd_loss, kd_loss, sharpen_cost, wkd_feature_loss, wkd_logit_loss

NUM_CLASSES = 6
BATCH = 8


class TinyNet(nn.Module):
    """conv → BN → ReLU (the "last stage") → mean pool → linear, with the model interface."""

    def __init__(self, width: int, stride: int = 1) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, width, 3, stride=stride, padding=1)
        self.bn = nn.BatchNorm2d(width)
        self.fc = nn.Linear(width, NUM_CLASSES)

    def forward_features(self, x):
        pre = self.bn(self.conv(x))
        feat = F.relu(pre)
        pooled = feat.mean((2, 3))
        feats = {"feats": [x, feat], "preact_feats": [x, pre], "pooled_feat": pooled}
        return self.fc(pooled), feats

    def forward(self, x):
        return self.forward_features(x)[0]

    def get_classifier(self) -> nn.Linear:
        return self.fc


def make_models(student_stride: int = 1):
    torch.manual_seed(0)
    return TinyNet(4, stride=student_stride), TinyNet(7)


def make_batch():
    gen = torch.Generator().manual_seed(1)
    images = torch.randn(BATCH, 3, 8, 8, generator=gen)
    targets = torch.randint(0, NUM_CLASSES, (BATCH,), generator=gen)
    return images, targets


def make_distance() -> torch.Tensor:
    """A symmetric D = 1 − IR with zero diagonal, like the released matrices."""
    gen = torch.Generator().manual_seed(2)
    ir = torch.rand(NUM_CLASSES, NUM_CLASSES, generator=gen) * 0.5
    ir = (ir + ir.T) / 2
    ir.fill_diagonal_(1.0)
    return 1.0 - ir


# Small-input settings of every method (grid 2 on the 8x8 teacher map).
PARAMS = {
    "vanilla": {},
    "kd": {"temperature": 4.0},
    "dkd": {"warmup_epochs": 5},
    "wkd_l": {"distance": None, "temperature": 4.0, "wkd_logit_weight": 50.0},
    "wkd_f": {
        "input_size": (8, 8),
        "spatial_grid": 2,
        "projector": "conv1x1",
        "wkd_feat_weight": 0.5,
    },
    "wkd_lf": {
        "distance": None,
        "input_size": (8, 8),
        "spatial_grid": 2,
        "projector": "bottleneck",
    },
}
TERMS = {
    "vanilla": {"loss_ce"},
    "kd": {"loss_ce", "loss_kd"},
    "dkd": {"loss_ce", "loss_dkd"},
    "wkd_l": {"loss_ce", "loss_target", "loss_wd"},
    "wkd_f": {"loss_ce", "loss_wkd_f"},
    "wkd_lf": {"loss_ce", "loss_target", "loss_wd", "loss_wkd_f"},
}


def build(method: str, student_stride: int = 1, **overrides):
    student, teacher = make_models(student_stride)
    params = {**PARAMS[method], **overrides}
    if "distance" in params and params["distance"] is None:
        params["distance"] = make_distance()
    return create_distiller(method, student=student, teacher=teacher, **params)


def test_every_method_is_registered():
    assert set(list_distillers()) >= set(TERMS)


def test_create_distiller_errors():
    student, teacher = make_models()
    with pytest.raises(ValueError, match="unknown distiller"):
        create_distiller("crd", student=student, teacher=teacher)
    with pytest.raises(ValueError, match="needs a teacher"):
        create_distiller("kd", student=student)
    with pytest.raises(ValueError, match="temprature"):
        create_distiller("kd", student=student, teacher=teacher, temprature=2.0)


@pytest.mark.parametrize("method", list(TERMS))
def test_step_terms_gradients_and_frozen_teacher(method):
    distiller = build(method, student_stride=2 if method == "wkd_f" else 1)
    distiller.train()
    teacher = distiller.teacher
    teacher_state = {k: v.clone() for k, v in teacher.state_dict().items()} if teacher else {}
    student_running = distiller.student.bn.running_mean.clone()
    images, targets = make_batch()

    out = distiller(images, targets, epoch=1, total_epochs=10)
    assert isinstance(out, DistillOutput)
    assert out.logits.shape == (BATCH, NUM_CLASSES)
    assert set(out.losses) == TERMS[method]
    for name, value in out.losses.items():
        assert value.dim() == 0 and value.dtype == torch.float32 and torch.isfinite(value), name
    assert out.losses["loss_ce"].item() > 0

    optimizer = torch.optim.SGD(distiller.trainable_parameters(), lr=0.1, momentum=0.9)
    out.total.backward()
    for name, param in distiller.student.named_parameters():
        assert param.grad is not None and param.grad.abs().sum() > 0, name
    projector = getattr(distiller, "projector", None)
    if method in ("wkd_f", "wkd_lf"):
        for name, param in projector.named_parameters():
            assert param.grad is not None and param.grad.abs().sum() > 0, name
    if teacher is not None:
        assert all(p.grad is None and not p.requires_grad for p in teacher.parameters())
    optimizer.step()

    # The step moved the student, never the teacher (weights and BN statistics).
    assert not torch.equal(distiller.student.bn.running_mean, student_running)
    if teacher is not None:
        assert not teacher.training
        for key, value in teacher.state_dict().items():
            assert torch.equal(value, teacher_state[key]), key
        assert not any(k.startswith("teacher.") for k in distiller.trainable_state_dict())
        trainable = {id(p) for p in distiller.trainable_parameters()}
        assert trainable.isdisjoint(id(p) for p in teacher.parameters())


def test_vanilla_ignores_a_teacher_and_matches_cross_entropy():
    student, teacher = make_models()
    distiller = create_distiller("vanilla", student=student, teacher=teacher)
    assert distiller.teacher is None
    images, targets = make_batch()
    out = distiller(images, targets)
    torch.testing.assert_close(out.losses["loss_ce"], F.cross_entropy(out.logits, targets))


def teacher_logits(distiller, images):
    with torch.no_grad():
        return distiller.teacher(images)


def test_kd_terms_equal_the_loss_functions():
    distiller = build("kd", temperature=3.0, ce_weight=0.2, kd_weight=0.7)
    images, targets = make_batch()
    out = distiller(images, targets)
    logits_t = teacher_logits(distiller, images)
    torch.testing.assert_close(out.losses["loss_ce"], 0.2 * F.cross_entropy(out.logits, targets))
    torch.testing.assert_close(
        out.losses["loss_kd"], 0.7 * kd_loss(out.logits, logits_t, temperature=3.0)
    )


def test_kd_defaults_are_mdistillers():
    distiller = build("kd")
    assert (distiller.temperature, distiller.ce_weight, distiller.kd_weight) == (4.0, 0.1, 0.9)
    dkd = build("dkd", warmup_epochs=20)
    assert (dkd.ce_weight, dkd.alpha, dkd.beta, dkd.temperature, dkd.warmup_epochs) == (
        1.0,
        1.0,
        8.0,
        4.0,
        20,
    )


@pytest.mark.parametrize(("epoch", "factor"), [(1, 0.2), (3, 0.6), (5, 1.0), (9, 1.0)])
def test_dkd_linear_warmup(epoch, factor):
    distiller = build("dkd", warmup_epochs=5, alpha=0.5, beta=2.0, temperature=2.0)
    images, targets = make_batch()
    out = distiller(images, targets, epoch=epoch, total_epochs=10)
    logits_t = teacher_logits(distiller, images)
    direct = dkd_loss(out.logits, logits_t, targets, alpha=0.5, beta=2.0, temperature=2.0)
    torch.testing.assert_close(out.losses["loss_dkd"], factor * direct)


def direct_wd_parts(distiller, logits_s, logits_t, targets, cost):
    """(L_t, WD) from two direct calls of the loss function (λ = 0 and λ = 1)."""
    kw = {"temperature": distiller.temperature, "eps": 0.05, "n_iter": 10}
    target = wkd_logit_loss(logits_s, logits_t, targets, cost, weight=0.0, **kw)
    wd = wkd_logit_loss(logits_s, logits_t, targets, cost, weight=1.0, **kw) - target
    return target, wd


def test_wkd_l_equals_a_direct_call_of_the_loss():
    distance = make_distance()
    distiller = build("wkd_l", distance=distance, kappa=2.0, temperature=4.0, wkd_logit_weight=50.0)
    cost = sharpen_cost(distance, kappa=2.0)
    torch.testing.assert_close(distiller.cost, cost)
    images, targets = make_batch()
    out = distiller(images, targets, epoch=1, total_epochs=10)
    logits_t = teacher_logits(distiller, images)
    direct = wkd_logit_loss(
        out.logits, logits_t, targets, cost, temperature=4.0, eps=0.05, n_iter=10, weight=50.0
    )
    torch.testing.assert_close(out.losses["loss_target"] + out.losses["loss_wd"], direct)
    target, wd = direct_wd_parts(distiller, out.logits, logits_t, targets, cost)
    torch.testing.assert_close(out.losses["loss_target"], target)
    assert wd.item() > 0


@pytest.mark.parametrize("method", ["wkd_l", "wkd_lf"])
def test_wkd_wd_weight_follows_the_cosine_decay(method):
    start, total = 4, 10
    distiller = build(method, cosine_decay_epoch=start, wkd_logit_weight=20.0)
    images, targets = make_batch()
    logits_t = teacher_logits(distiller, images)
    for epoch in (1, start, 7, total):
        out = distiller(images, targets, epoch=epoch, total_epochs=total)
        target, wd = direct_wd_parts(distiller, out.logits, logits_t, targets, distiller.cost)
        factor = 1.0 if epoch <= start else 0.5 * (1 + math.cos(math.pi * (epoch - start) / 6))
        torch.testing.assert_close(out.losses["loss_target"], target)  # never decays
        torch.testing.assert_close(out.losses["loss_wd"], factor * 20.0 * wd)
    assert out.losses["loss_wd"].abs().item() < 1e-6  # weight 0 at the last epoch


def test_wkd_f_equals_the_loss_on_the_projected_student_map_and_decays():
    start, total = 2, 6
    distiller = build("wkd_f", student_stride=2, cosine_decay_epoch=start, mean_cov_ratio=3.0)
    assert isinstance(distiller.projector, ConvReg)
    assert isinstance(distiller.projector.conv, nn.ConvTranspose2d)  # 4x4 student, 8x8 teacher
    images, targets = make_batch()
    for epoch, factor in [(1, 1.0), (4, 0.5), (total, 0.0)]:
        out = distiller(images, targets, epoch=epoch, total_epochs=total)
        _, feats_s = distiller.student.forward_features(images)
        _, feats_t = distiller.teacher_forward(images)
        projected = distiller.projector(feats_s["feats"][-1])
        direct = wkd_feature_loss(projected, feats_t["feats"][-1], gamma=3.0, grid=2, eps=1e-5)
        torch.testing.assert_close(out.losses["loss_wkd_f"], factor * 0.5 * direct)


def test_wkd_f_projector_is_fp32_under_autocast():
    distiller = build("wkd_f", student_stride=2)
    images, targets = make_batch()
    seen = []
    distiller.projector.register_forward_hook(lambda m, i, o: seen.append((i[0].dtype, o.dtype)))
    with torch.autocast(device_type="cpu", dtype=torch.bfloat16):
        out = distiller(images, targets, epoch=1, total_epochs=2)
    assert seen == [(torch.float32, torch.float32)]
    assert out.losses["loss_wkd_f"].dtype == torch.float32


def test_wkd_lf_has_both_parts_and_a_bottleneck():
    distiller = build("wkd_lf")
    assert isinstance(distiller.projector, ConvRegBottleNeck)
    assert "cost" in distiller.trainable_state_dict()  # the cost travels with checkpoints
    projector_ids = {id(p) for p in distiller.projector.parameters()}
    assert projector_ids <= {id(p) for p in distiller.trainable_parameters()}


def test_wkd_l_fc_cost_is_the_sharpened_cosine_distance_of_teacher_classifier_rows():
    student, teacher = make_models()
    distiller = create_distiller("wkd_l", student=student, teacher=teacher, cost_source="fc")
    weight = teacher.fc.weight.detach()
    normed = weight / weight.norm(dim=1, keepdim=True)
    distance = 1.0 - normed @ normed.T
    expected = torch.relu(1.0 - torch.exp(-1.0 * distance)) + 1e-8
    torch.testing.assert_close(distiller.cost, expected, atol=1e-6, rtol=1e-5)
    images, targets = make_batch()
    assert torch.isfinite(distiller(images, targets).total)


def test_wkd_l_takes_a_ready_cost_and_rejects_ambiguity():
    student, teacher = make_models()
    cost = sharpen_cost(make_distance(), kappa=1.0)
    distiller = create_distiller("wkd_l", student=student, teacher=teacher, cost=cost)
    torch.testing.assert_close(distiller.cost, cost)
    with pytest.raises(ValueError, match="exactly one"):
        create_distiller("wkd_l", student=student, teacher=teacher)
    with pytest.raises(ValueError, match="exactly one"):
        create_distiller("wkd_l", student=student, teacher=teacher, cost=cost, cost_source="fc")
    with pytest.raises(ValueError, match="cost_source"):
        create_distiller("wkd_l", student=student, teacher=teacher, cost=cost, cost_source="x")
    with pytest.raises(ValueError, match=r"\(C, C\)"):
        create_distiller("wkd_l", student=student, teacher=teacher, cost=cost[:, :3])


def test_wkd_defaults_are_the_released_imagenet_r34_r18_settings():
    student, teacher = make_models()
    l_ = create_distiller("wkd_l", student=student, teacher=teacher, distance=make_distance())
    assert (l_.temperature, l_.wkd_logit_weight, l_.eps, l_.n_iter) == (
        2.0,
        30.0,
        0.05,
        10,
    )
    assert l_.ce_weight == 1.0 and l_.cosine_decay_epoch == 0
    f = create_distiller(
        "wkd_f", student=student, teacher=teacher, input_size=(8, 8), spatial_grid=2
    )
    assert (f.wkd_feat_weight, f.mean_cov_ratio, f.feat_eps) == (0.02, 2.0, 1e-5)
    assert isinstance(f.projector, ConvRegBottleNeck)


def test_a_released_cifar_preset_trains_a_step_on_the_real_models():
    from wkd_core.models import create_model
    from wkd_core.presets import get_preset

    preset = get_preset("cifar100/wkd_lf/resnet32x4_resnet8x4")
    torch.manual_seed(0)
    student = create_model(preset.student, num_classes=100)
    teacher = create_model(preset.teacher, num_classes=100)
    distance = 1.0 - torch.eye(100)  # the 0/1 interrelations
    distiller = create_distiller(
        preset.method,
        student=student,
        teacher=teacher,
        distance=distance,
        input_size=(32, 32),
        **preset.params,
    )
    images, targets = torch.randn(4, 3, 32, 32), torch.randint(0, 100, (4,))
    out = distiller.train()(images, targets, epoch=200, total_epochs=240)
    assert set(out.losses) == TERMS["wkd_lf"]
    assert all(torch.isfinite(v) for v in out.losses.values())
    out.total.backward()
    assert all(p.grad is not None for p in distiller.projector.parameters())
    assert all(p.grad is None for p in teacher.parameters())


def test_a_fitnet_hint_layer_the_models_lack_is_named():
    """resnet8 has 4 feature maps: hint_layer 8 (the catalog allows -8 … 8) is a clear
    ValueError when the job builds its distiller, not an IndexError in the probe."""
    from wkd_core.distillers import create_distiller
    from wkd_core.models import create_model

    student, teacher = (create_model("resnet8", num_classes=10) for _ in range(2))
    with pytest.raises(ValueError, match=r"layer 8: CifarResNet has 4 feature maps"):
        create_distiller("fitnet", student=student, teacher=teacher, hint_layer=8,
                         input_size=(32, 32))  # fmt: skip
    create_distiller("fitnet", student=student, teacher=teacher, hint_layer=-4,
                     input_size=(32, 32))  # fmt: skip


@pytest.mark.parametrize(("grid", "words"), [(9, "grid must be in [1, 8] for a 8x8 map"),
                                             (8, "single-position cells")])  # fmt: skip
def test_a_wkd_f_grid_the_teacher_map_cannot_hold_fails_when_built(grid, words):
    """resnet8's last map is 8×8: the loss's grid rule runs when the distiller is built (a
    job then fails while preparing, with invalid_input), not at the first batch."""
    from wkd_core.distillers import create_distiller
    from wkd_core.models import create_model

    student, teacher = (create_model("resnet8", num_classes=10) for _ in range(2))
    with pytest.raises(ValueError, match=re.escape(words)):
        create_distiller("wkd_f", student=student, teacher=teacher, spatial_grid=grid,
                         input_size=(32, 32), projector="conv1x1")  # fmt: skip


@pytest.mark.parametrize(
    ("params", "words"),
    [({"divergence": "gaussian_kl", "spatial_grid": 8}, "single-position cells"),
     ({"divergence": "laplace_kl", "mean_cov_ratio": 2.0}, "no separate mean term")],
)  # fmt: skip
def test_wkd_f_divergence_rules_apply_when_the_distiller_is_built(params, words):
    """Each failed the job at its first batch, as an internal error, before."""
    from wkd_core.distillers import create_distiller
    from wkd_core.models import create_model

    student, teacher = (create_model("resnet8", num_classes=10) for _ in range(2))
    with pytest.raises(ValueError, match=words):
        create_distiller("wkd_f", student=student, teacher=teacher, input_size=(32, 32),
                         projector="conv1x1", **params)  # fmt: skip


def test_a_teacher_with_nan_weights_is_refused_when_built(tmp_path):
    from safetensors.torch import save_file

    from wkd_core.job_parts import build_teacher
    from wkd_core.models import create_model

    state = create_model("resnet8", num_classes=10).state_dict()
    state["bn1.weight"][0] = float("nan")
    save_file(state, tmp_path / "t.safetensors")
    spec = {"method": "kd", "teacher": {"arch": "resnet8"}}
    with pytest.raises(ValueError, match=r"the teacher's weights hold NaN .*\(bn1.weight\)"):
        build_teacher(spec, tmp_path / "t.safetensors", 10)
