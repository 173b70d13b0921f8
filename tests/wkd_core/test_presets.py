"""Every released configuration, pinned value by value to the published configs.

The expected tables below are written out again from the sources (wkd-method.md §1.4, §2,
§3, §4, §5.1 for WKD; mdistiller's cfg.py and YAML files for KD / DKD), independently of
``wkd_core/presets.py``: the duplication is the point of the test.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from wkd_core.distillers import ConvReg, ConvRegBottleNeck, create_distiller
from wkd_core.losses import sharpen_cost
from wkd_core.presets import PRESETS, Preset, apply_overrides, get_preset, list_presets

R32 = "cifar100/{}/resnet32x4_resnet8x4"
WRN = "cifar100/{}/wrn_40_2_ShuffleV1"
R34 = "imagenet/{}/tv_resnet34_tv_resnet18"
R50 = "imagenet/{}/tv_resnet50_MobileNetV1"

ARCHS = {
    R32: ("cifar100", 100, "resnet32x4", "resnet8x4"),
    WRN: ("cifar100", 100, "wrn_40_2", "ShuffleV1"),
    R34: ("imagenet", 1000, "tv_resnet34", "tv_resnet18"),
    R50: ("imagenet", 1000, "tv_resnet50", "MobileNetV1"),
}

# WKD-L (§1.4): T, λ, κ, cosine-decay start.
WKD_L = {
    R32: (8.0, 600.0, 1.0, 150),
    WRN: (6.0, 200.0, 1.0, 150),
    R34: (2.0, 30.0, 1.0, 0),
    R50: (2.0, 25.0, 2.0, 0),
}
# WKD-F (§2): w_F, γ, grid, projector, decay start, seed.
WKD_F = {
    R32: (0.08, 4.0, 1, "conv1x1", 150, 10),
    WRN: (0.3, 3.0, 4, "conv1x1", 150, 10),
    R34: (0.02, 2.0, 4, "bottleneck", 0, 0),
    R50: (0.005, 2.0, 4, "bottleneck", 30, 0),
}
# WKD-LF (§3): T, λ, κ, w_F, γ, grid, projector, decay start, seed.
WKD_LF = {
    R32: (8.0, 200.0, 1.0, 0.08, 8.0, 1, "conv1x1", 150, 10),
    WRN: (4.0, 60.0, 1.0, 0.5, 3.0, 4, "conv1x1", 150, 10),
    R34: (2.0, 10.0, 1.0, 1.0, 2.0, 4, "bottleneck", 0, 0),
    R50: (2.0, 25.0, 2.0, 0.005, 2.0, 4, "bottleneck", 0, 0),
}
# §5.1, official README: WKD-L, WKD-F, WKD-LF top-1.
WKD_TOP1 = {
    R32: (76.53, 76.77, 77.28),
    WRN: (76.72, 77.36, 77.50),
    R34: (72.49, 72.50, 72.76),
    R50: (73.17, 73.12, 73.69),
}
# §4: batch, epochs, lr, milestones, weight decay (nesterov SGD, momentum 0.9, ×0.1 steps).
WKD_TRAINING = {
    R32: (64, 240, 0.05, (150, 180, 210), 5e-4),
    WRN: (64, 240, 0.01, (150, 180, 210), 5e-4),
    R34: (256, 100, 0.1, (30, 60, 90), 1e-4),
    R50: (256, 100, 0.1, (30, 60, 90), 1e-4),
}
# mdistiller: KD (T, CE weight, KD weight), DKD (CE weight, α, β, T, warm-up), and top-1.
KD = {
    R32: ((4.0, 0.1, 0.9), 73.33),
    WRN: ((4.0, 0.1, 0.9), None),
    R34: ((1.0, 0.5, 0.5), 71.03),
    R50: ((1.0, 0.5, 0.5), 70.50),
}
DKD = {
    R32: ((1.0, 1.0, 8.0, 4.0, 20), 76.32),
    WRN: ((1.0, 1.0, 8.0, 4.0, 20), None),
    R34: ((1.0, 1.0, 0.5, 1.0, 1), 71.70),
    R50: ((1.0, 1.0, 2.0, 1.0, 1), 72.05),
}
MDISTILLER_TRAINING = {
    R32: (64, 240, 0.05, (150, 180, 210), 5e-4),
    WRN: (64, 240, 0.01, (150, 180, 210), 5e-4),
    R34: (512, 100, 0.2, (30, 60, 90), 1e-4),
    R50: (512, 100, 0.2, (30, 60, 90), 1e-4),
}
IR_FEATURE = {R32: "features", WRN: "features", R34: "logits", R50: "logits"}
METHODS = ("wkd_l", "wkd_f", "wkd_lf", "kd", "dkd")


def check_training(preset: Preset, expected, *, nesterov: bool, seed) -> None:
    batch, epochs, lr, milestones, wd = expected
    t = preset.training
    assert (t.batch_size, t.epochs, t.lr, t.lr_milestones, t.weight_decay) == (
        batch,
        epochs,
        lr,
        milestones,
        wd,
    )
    assert (t.momentum, t.lr_gamma, t.nesterov, t.seed) == (0.9, 0.1, nesterov, seed)


def check_pair(preset: Preset, pair: str, method: str) -> None:
    assert preset.name == pair.format(method)
    assert preset.method == method
    assert (preset.dataset, preset.num_classes, preset.teacher, preset.student) == ARCHS[pair]


def test_the_list_is_exactly_the_released_configurations():
    from wkd_core.presets_paper import paper_presets

    expected = {pair.format(m) for pair in ARCHS for m in METHODS}
    table = {name: get_preset(name) for name in list_presets()}
    released = set(table) - {p.name for p in paper_presets(table)}
    classification = {n for n in released if table[n].task == "classification"}
    assert classification == expected and len(expected) == 20


@pytest.mark.parametrize("pair", list(ARCHS))
def test_wkd_l(pair):
    preset = get_preset(pair.format("wkd_l"))
    check_pair(preset, pair, "wkd_l")
    temperature, lam, kappa, decay = WKD_L[pair]
    assert dict(preset.params) == {
        "ce_weight": 1.0,
        "temperature": temperature,
        "wkd_logit_weight": lam,
        "kappa": kappa,
        "cosine_decay_epoch": decay,
        "eps": 0.05,
        "n_iter": 10,
    }
    assert dict(preset.interrelations) == {
        "source": "cka",
        "kernel": "linear",
        "feature": IR_FEATURE[pair],
    }
    check_training(preset, WKD_TRAINING[pair], nesterov=True, seed=None)
    assert preset.published_top1 == WKD_TOP1[pair][0]


@pytest.mark.parametrize("pair", list(ARCHS))
def test_wkd_f(pair):
    preset = get_preset(pair.format("wkd_f"))
    check_pair(preset, pair, "wkd_f")
    w_f, gamma, grid, projector, decay, seed = WKD_F[pair]
    assert dict(preset.params) == {
        "ce_weight": 1.0,
        "wkd_feat_weight": w_f,
        "mean_cov_ratio": gamma,
        "spatial_grid": grid,
        "projector": projector,
        "cosine_decay_epoch": decay,
    }
    assert dict(preset.interrelations) == {}
    check_training(preset, WKD_TRAINING[pair], nesterov=True, seed=seed)
    assert preset.published_top1 == WKD_TOP1[pair][1]


@pytest.mark.parametrize("pair", list(ARCHS))
def test_wkd_lf(pair):
    preset = get_preset(pair.format("wkd_lf"))
    check_pair(preset, pair, "wkd_lf")
    temperature, lam, kappa, w_f, gamma, grid, projector, decay, seed = WKD_LF[pair]
    assert dict(preset.params) == {
        "ce_weight": 1.0,
        "temperature": temperature,
        "wkd_logit_weight": lam,
        "kappa": kappa,
        "eps": 0.05,
        "n_iter": 10,
        "wkd_feat_weight": w_f,
        "mean_cov_ratio": gamma,
        "spatial_grid": grid,
        "projector": projector,
        "cosine_decay_epoch": decay,
    }
    assert dict(preset.interrelations) == {
        "source": "cka",
        "kernel": "linear",
        "feature": IR_FEATURE[pair],
    }
    check_training(preset, WKD_TRAINING[pair], nesterov=True, seed=seed)
    assert preset.published_top1 == WKD_TOP1[pair][2]


@pytest.mark.parametrize("pair", list(ARCHS))
def test_kd_and_dkd_baselines(pair):
    kd = get_preset(pair.format("kd"))
    check_pair(kd, pair, "kd")
    (temperature, ce, kd_w), top1 = KD[pair]
    assert dict(kd.params) == {"temperature": temperature, "ce_weight": ce, "kd_weight": kd_w}
    assert kd.published_top1 == top1
    check_training(kd, MDISTILLER_TRAINING[pair], nesterov=False, seed=None)

    dkd = get_preset(pair.format("dkd"))
    check_pair(dkd, pair, "dkd")
    (ce, alpha, beta, temperature, warmup), top1 = DKD[pair]
    assert dict(dkd.params) == {
        "ce_weight": ce,
        "alpha": alpha,
        "beta": beta,
        "temperature": temperature,
        "warmup_epochs": warmup,
    }
    assert dkd.published_top1 == top1
    check_training(dkd, MDISTILLER_TRAINING[pair], nesterov=False, seed=None)


def test_unknown_preset_names_the_known_ones():
    with pytest.raises(ValueError, match="cifar100/wkd_l/resnet32x4_resnet8x4"):
        get_preset("cifar100/wkd_l/resnet56_resnet20")


def test_presets_are_read_only():
    preset = get_preset(R32.format("wkd_l"))
    with pytest.raises(TypeError):
        preset.params["temperature"] = 1.0  # type: ignore[index]
    with pytest.raises(AttributeError):
        preset.method = "kd"  # type: ignore[misc]


def test_overrides():
    base = get_preset(R32.format("wkd_lf"))
    new = apply_overrides(
        base,
        {
            "params.temperature": 4,
            "params.projector": "bottleneck",
            "training.epochs": "3",
            "training.lr_milestones": "[1, 2]",
            "training.seed": 7,
            "student": "resnet20",
        },
    )
    assert new.params["temperature"] == 4.0 and isinstance(new.params["temperature"], float)
    assert new.params["projector"] == "bottleneck"
    assert (new.training.epochs, new.training.lr_milestones, new.training.seed) == (3, (1, 2), 7)
    assert new.student == "resnet20"
    assert base.params["temperature"] == 8.0 and base.training.epochs == 240  # untouched
    with pytest.raises(ValueError, match=r"params\.temperature"):
        apply_overrides(base, {"params.temprature": 1.0})
    with pytest.raises(ValueError, match="expected int"):
        apply_overrides(base, {"training.epochs": 2.5})
    with pytest.raises(ValueError, match="not a valid value"):
        apply_overrides(base, {"training.lr": "fast"})


def test_to_spec_is_the_plain_job_dict():
    spec = get_preset(WRN.format("wkd_lf")).to_spec()
    assert spec["method"] == "wkd_lf"
    assert spec["teacher"] == {"arch": "wrn_40_2"} and spec["student"] == {"arch": "ShuffleV1"}
    assert spec["dataset"] == {"name": "cifar100"}
    assert spec["params"]["spatial_grid"] == 4
    assert spec["training"]["lr_milestones"] == [150, 180, 210]
    assert spec["training"]["seed"] == 10
    assert spec["interrelations"] == {"source": "cka", "kernel": "linear", "feature": "features"}
    assert spec == PRESETS[WRN.format("wkd_lf")]  # the table the service reads
    assert "published_top1" not in spec and "name" not in spec
    assert "seed" not in get_preset(WRN.format("wkd_l")).to_spec()["training"]


# ---- the preset reaches the distiller ---------------------------------------------------------


class TinyNet(nn.Module):
    """Any input size: conv (stride ``stride``) → BN → ReLU → pool → linear."""

    def __init__(self, width: int, num_classes: int, stride: int = 1) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, width, 3, stride=stride, padding=1)
        self.bn = nn.BatchNorm2d(width)
        self.fc = nn.Linear(width, num_classes)

    def forward_features(self, x):
        feat = F.relu(self.bn(self.conv(x)))
        pooled = feat.mean((2, 3))
        return self.fc(pooled), {"feats": [feat], "preact_feats": [feat], "pooled_feat": pooled}

    def forward(self, x):
        return self.forward_features(x)[0]


@pytest.mark.parametrize("name", [n for n in list_presets() if not n.startswith("coco/")])
def test_preset_params_reach_the_distiller(name):
    preset = get_preset(name)
    num_classes = 10  # the tiny models need not have the real class count
    params = dict(preset.params)
    distance = None
    if "wkd_logit_weight" in params:  # the pipeline supplies the matrix
        distance = torch.rand(num_classes, num_classes)
        params["distance"] = distance
    if "projector" in params:  # and the probe's input size (small for the tiny models)
        params["input_size"] = (16, 16)
    student, teacher = TinyNet(4, num_classes), TinyNet(6, num_classes)
    distiller = create_distiller(preset.method, student=student, teacher=teacher, **params)
    for key, value in preset.params.items():
        if key not in ("kappa", "projector"):
            assert getattr(distiller, key) == value, key
    if "projector" in params and preset.method != "fitnet":
        assert distiller.feat_eps == 1e-5  # the released EPS, left at the default
    if distance is not None:
        torch.testing.assert_close(distiller.cost, sharpen_cost(distance, kappa=params["kappa"]))
    if "projector" in params:
        kind = {"conv1x1": ConvReg, "bottleneck": ConvRegBottleNeck}[params["projector"]]
        assert type(distiller.projector) is kind


@pytest.mark.parametrize(("pair", "image_size"), [(R32, 32), (R34, 224)])
def test_interrelation_options_are_what_the_ir_stage_resolves(pair, image_size):
    """The explicit recipe equals what ``feature: auto`` picks at the dataset's image size."""
    from wkd_core.ir import resolve_options

    for method in ("wkd_l", "wkd_lf"):
        options = get_preset(pair.format(method)).interrelations
        resolved = resolve_options(options, image_size)
        assert resolved == resolve_options({**options, "feature": "auto"}, image_size)
        assert resolved["feature"] == IR_FEATURE[pair]


def test_loader_workers_are_capped_by_the_host(monkeypatch):
    """A job asking for 64 loader processes on a 2-core host gets 2 (issue 7)."""
    from wkd_core import job_parts

    monkeypatch.setattr(job_parts.os, "cpu_count", lambda: 2)
    assert [job_parts.loader_workers(n) for n in (0, 1, 2, 64)] == [0, 1, 2, 2]
