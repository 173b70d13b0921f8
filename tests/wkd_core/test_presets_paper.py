"""The paper's ablation presets: one option switched on the released ImageNet R34→R18 recipe,
the paper's number beside each, grouped for ``wkd list presets``; all valid job specs."""

from __future__ import annotations

import pytest

from service.spec import validate_job_spec
from wkd_core.presets import get_preset
from wkd_core.presets_paper import ABLATIONS

R34 = "imagenet/{}/tv_resnet34_tv_resnet18"
# The paper's tables (reference/wkd-slides.txt), written out again.
IR_TABLE = {
    "wkd_l": ({"source": "cka", "kernel": "linear", "feature": "logits"}, 72.49),
    "wkd_l-ir_poly_cka": ({"source": "cka", "kernel": "poly", "feature": "logits"}, 72.10),
    "wkd_l-ir_rbf_cka": ({"source": "cka", "kernel": "rbf", "feature": "logits"}, 72.30),
    "wkd_l-ir_classifier_cosine": ({"source": "fc"}, 72.19),
    "wkd_l-ir_centroid_cosine": ({"source": "centroid", "feature": "logits"}, 72.02),
}
FEATURE_TABLE = {  # method-variant: (divergence, γ, top-1)
    "wkd_f": ("gaussian_wd", 2.0, 72.50),
    "wkd_f-gaussian_kl": ("gaussian_kl", 2.0, 71.75),
    "wkd_f-gaussian_sym_kl": ("gaussian_sym_kl", 2.0, 71.93),
    "wkd_f-laplace_kl": ("laplace_kl", 1.0, 71.38),
    "wkd_f-exponential_kl": ("exponential_kl", 1.0, 70.14),
    "wkd_f-pmf_wd": ("pmf_wd", 1.0, 71.57),
}


@pytest.mark.parametrize("variant", list(IR_TABLE))
def test_ir_ablation_switches_only_the_interrelations(variant):
    preset, released = get_preset(R34.format(variant)), get_preset(R34.format("wkd_l"))
    options, top1 = IR_TABLE[variant]
    assert dict(preset.interrelations) == options and preset.published_top1 == top1
    assert preset.params == released.params and preset.training == released.training


@pytest.mark.parametrize("variant", list(FEATURE_TABLE))
def test_feature_ablation_switches_only_the_divergence(variant):
    preset, released = get_preset(R34.format(variant)), get_preset(R34.format("wkd_f"))
    divergence, gamma, top1 = FEATURE_TABLE[variant]
    assert preset.params.get("divergence", "gaussian_wd") == divergence
    assert preset.params["mean_cov_ratio"] == gamma and preset.published_top1 == top1
    rest = {k: v for k, v in preset.params.items() if k not in ("divergence", "mean_cov_ratio")}
    assert rest == {k: v for k, v in released.params.items() if k != "mean_cov_ratio"}
    assert preset.training == released.training


def test_fitnet_baseline_preset():
    preset = get_preset(R34.format("fitnet"))
    assert preset.method == "fitnet" and preset.published_top1 == 70.53
    assert dict(preset.params) == {
        "ce_weight": 1.0, "feat_weight": 100.0, "hint_layer": -1, "projector": "bottleneck"
    }  # fmt: skip


def test_ablation_groups_name_real_presets_with_the_paper_numbers():
    rows = [row for table in ABLATIONS.values() for row in table]
    assert len(ABLATIONS) == 2 and len(rows) == 12
    for row in rows:
        preset = get_preset(row.preset)
        assert preset.published_top1 == row.paper_top1, row.preset
        spec = validate_job_spec(
            {"preset": row.preset, "teacher": {"checkpoint_id": "ck"}}, for_api=True
        )
        assert spec.method == preset.method


def test_wkd_list_presets_prints_the_ablation_tables(capsys):
    from cli.main import main

    assert main(["list", "presets"]) == 0
    out = capsys.readouterr().out
    assert "ablation: WKD-F: how to model distributions" in out
    assert "71.57  imagenet/wkd_f-pmf_wd/tv_resnet34_tv_resnet18" in out
    assert "72.02  imagenet/wkd_l-ir_centroid_cosine/tv_resnet34_tv_resnet18" in out


def test_born_again_presets_distill_an_architecture_into_itself():
    ban = {
        "imagenet/ban-kd/tv_resnet18": 1,
        "imagenet/ban-wkd_l/tv_resnet18": 1,
        "mnist5k/ban-kd/resnet8": 2,
        "mnist5k/ban-wkd_l/resnet8": 2,
    }
    for name, generations in ban.items():
        preset = get_preset(name)
        assert preset.teacher == preset.student and preset.generations == generations
        assert preset.to_spec()["generations"] == generations
    kd = get_preset("imagenet/ban-kd/tv_resnet18")
    assert dict(kd.params) == {"temperature": 1.0, "ce_weight": 0.0, "kd_weight": 1.0}
    assert kd.training == get_preset(R34.format("wkd_l")).training  # 100 epochs, batch 256
    wkd_l = get_preset("imagenet/ban-wkd_l/tv_resnet18")
    assert wkd_l.params == get_preset(R34.format("wkd_l")).params


def test_cnn_transformer_presets_cover_both_directions_on_cifar100_224():
    from wkd_core.models import model_info
    from wkd_core.presets import list_presets

    names = [n for n in list_presets() if n.startswith("cifar100_224/")]
    assert len(names) == 36  # OFA-KD's twelve pairs × KD, WKD-L, WKD-F
    families = set()
    for name in names:
        preset = get_preset(name)
        assert preset.method in ("kd", "wkd_l", "wkd_f") and "OFA-KD" in preset.source
        assert model_info(preset.student).input_kind == "imagenet"
        families.add((preset.teacher.split("_")[1], preset.student.split("_")[1]))
        assert preset.training.batch_size == 1024 and preset.training.epochs == 300
        assert "Hao840/OFAKD@f7bb896" in preset.source
    assert families == {
        ("swin", "resnet18"), ("vit", "resnet18"), ("mixer", "resnet18"),
        ("swin", "mobilenetv2"), ("vit", "mobilenetv2"), ("mixer", "mobilenetv2"),
        ("convnext", "deit"), ("mixer", "deit"), ("convnext", "swin"), ("mixer", "swin"),
        ("convnext", "resmlp"), ("swin", "resmlp"),
    }  # fmt: skip
    mobilenet = get_preset("cifar100_224/kd/timm_mixer_b16_224_timm_mobilenetv2_100")
    resnet = get_preset("cifar100_224/kd/timm_mixer_b16_224_timm_resnet18")
    assert mobilenet.training == resnet.training  # a CNN student: cnn.yaml's recipe
    assert "configs/cifar/cnn.yaml" in mobilenet.source


@pytest.mark.parametrize("method", ["kd", "wkd_l", "wkd_f"])
def test_convnext_to_swin_p_is_ofa_kds_pair_with_its_own_swin_p(method):
    """OFA-KD's CIFAR-100 table distils ConvNeXt-T into its Swin-P (custom_model/
    swin_transformer.py), a Transformer student: vit_mlp.yaml's recipe, like DeiT-T's."""
    name = f"cifar100_224/{method}/timm_convnext_tiny_timm_swin_pico_patch4_window7_224"
    preset = get_preset(name)
    deit = get_preset(f"cifar100_224/{method}/timm_convnext_tiny_timm_deit_tiny_patch16_224")
    assert preset.student == "timm_swin_pico_patch4_window7_224"
    assert preset.training == deit.training and preset.params == deit.params
    assert "configs/cifar/vit_mlp.yaml" in preset.source
    assert "Hao840/OFAKD@18476ce custom_model/swin_transformer.py" in preset.source
    spec = validate_job_spec({"preset": name, "teacher": {"checkpoint_id": "ck"}}, for_api=True)
    assert spec.method == method


def test_cnn_transformer_presets_take_ofa_kds_recipe_for_the_students_kind():
    """configs/cifar/cnn.yaml for a CNN student, vit_mlp.yaml for a Transformer / MLP one,
    over train.py's defaults (warmup_lr 1e-4, momentum 0.9, seed 42)."""
    cnn = get_preset("cifar100_224/wkd_l/timm_swin_tiny_patch4_window7_224_timm_resnet18")
    t = cnn.training
    assert (t.optimizer, t.nesterov, t.momentum, t.lr, t.weight_decay) == (
        "sgd",
        True,
        0.9,
        0.05,
        2e-3,
    )
    assert (t.lr_schedule, t.min_lr, t.warmup_epochs, t.warmup_lr) == ("cosine", 1e-3, 3, 1e-4)
    assert (t.label_smoothing, t.mixup_alpha, t.randaugment, t.seed) == (0.1, 0.0, None, 42)
    assert t.decay_bias_and_norm is False and "configs/cifar/cnn.yaml" in cnn.source
    vit = get_preset("cifar100_224/kd/timm_convnext_tiny_timm_deit_tiny_patch16_224")
    t = vit.training
    assert (t.optimizer, t.lr, t.weight_decay, t.betas, t.eps) == (
        "adamw",
        5e-4,
        0.05,
        (0.9, 0.999),
        1e-8,
    )
    assert (t.lr_schedule, t.min_lr, t.warmup_epochs, t.warmup_lr) == ("cosine", 1e-5, 20, 5e-7)
    assert (t.grad_clip_norm, t.label_smoothing, t.random_erasing) == (5.0, 0.1, 0.25)
    assert (t.mixup_alpha, t.cutmix_alpha, t.mixup_prob, t.mixup_switch_prob) == (
        0.8,
        1.0,
        1.0,
        0.5,
    )
    assert t.randaugment == "rand-m9-mstd0.5-inc1" and "configs/cifar/vit_mlp.yaml" in vit.source
    # The released recipes keep the trainer's defaults (nothing of OFA-KD's is switched on).
    released = get_preset("cifar100/wkd_l/resnet32x4_resnet8x4").training
    assert (released.optimizer, released.lr_schedule, released.warmup_epochs) == ("sgd", "step", 0)
    assert released.label_smoothing == released.mixup_alpha == released.random_erasing == 0.0
