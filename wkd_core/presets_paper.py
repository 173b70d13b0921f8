"""Presets for the paper's other experiments: the ablations, Born-Again self-distillation and
CNN↔Transformer pairs, each with its source and, where available, the paper's number.

Pure data like :mod:`wkd_core.presets` (which registers these next to the released ones):
no torch import, so the API's catalog can read them.

Ablations (ImageNet ResNet34→ResNet18, the released WKD recipe of the pair with one option
switched; numbers from the paper's Tables 1–2 as printed in its NeurIPS slides,
``reference/wkd-slides.txt``):

* WKD-L, "how to model category interrelations": linear / polynomial / RBF CKA, cosine of the
  teacher's classifier weights, cosine of class centroids: 72.49 / 72.10 / 72.30 / 72.19 /
  72.02. Only the interrelation matrix changes (the job's ``interrelations`` options).
* WKD-F, "how to model distributions": FitNet (Frobenius) 70.53; diagonal Gaussian with WD
  72.50, KL 71.75, symmetric KL 71.93; Laplace KL 71.38; exponential KL 70.14;
  non-parametric PMF (histogram) WD 71.57. Only ``divergence`` changes (γ = 1 for the
  divergences without a separate mean term, see ``wkd_core.losses.feature_divergences``);
  FitNet is the ``fitnet`` method at WKD-F's layer and projector with mdistiller's weight 100.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass
from types import MappingProxyType
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from wkd_core.presets import Preset

SLIDES_SOURCE = "Lv et al. NeurIPS 2024, ablation tables (reference/wkd-slides.txt)"


@dataclass(frozen=True)
class AblationRow:
    """One row of an ablation table: what varies, the preset that runs it, the paper's top-1."""

    label: str
    preset: str
    paper_top1: float


def _variant(base: Preset, suffix: str, *, params=None, interrelations=None) -> Preset:
    """A copy of the released preset ``base`` with one thing switched: ``…/<method>-<suffix>/…``."""
    preset = base
    dataset, _, pair = preset.name.split("/")
    return dataclasses.replace(
        preset,
        name=f"{dataset}/{preset.method}-{suffix}/{pair}",
        params=MappingProxyType(dict(params if params is not None else preset.params)),
        interrelations=MappingProxyType(
            dict(interrelations if interrelations is not None else preset.interrelations)
        ),
        source=f"{preset.source}; variant: {SLIDES_SOURCE}",
    )


_R34 = "tv_resnet34_tv_resnet18"
_WKD_L = f"imagenet/wkd_l/{_R34}"
_WKD_F = f"imagenet/wkd_f/{_R34}"

# (label, suffix, interrelations options, paper top-1)
_IR_ROWS = (
    ("CKA, polynomial kernel", "ir_poly_cka", {"source": "cka", "kernel": "poly"}, 72.10),
    ("CKA, RBF kernel", "ir_rbf_cka", {"source": "cka", "kernel": "rbf"}, 72.30),
    ("cosine, classifier weights", "ir_classifier_cosine", {"source": "fc"}, 72.19),
    ("cosine, class centroids", "ir_centroid_cosine", {"source": "centroid"}, 72.02),
)
# (label, divergence, paper top-1)
_DIVERGENCE_ROWS = (
    ("Gaussian (diag), KL-Div", "gaussian_kl", 71.75),
    ("Gaussian (diag), symmetric KL-Div", "gaussian_sym_kl", 71.93),
    ("Laplace, KL-Div", "laplace_kl", 71.38),
    ("exponential, KL-Div", "exponential_kl", 70.14),
    ("non-parametric PMF (histogram), WD", "pmf_wd", 71.57),
)
_NO_MEAN_TERM = ("laplace_kl", "exponential_kl", "pmf_wd")


def _ir_presets(released: Mapping[str, Preset]) -> list[Preset]:
    out = []
    for _, suffix, options, top1 in _IR_ROWS:
        ir = {**options, "feature": "logits"} if options["source"] != "fc" else options
        variant = _variant(released[_WKD_L], suffix, interrelations=ir)
        out.append(dataclasses.replace(variant, published_top1=top1))
    return out


def _divergence_presets(released: Mapping[str, Preset]) -> list[Preset]:
    base = dict(released[_WKD_F].params)
    out = []
    for _, divergence, top1 in _DIVERGENCE_ROWS:
        params: dict[str, Any] = {**base, "divergence": divergence}
        if divergence in _NO_MEAN_TERM:
            params["mean_cov_ratio"] = 1.0
        variant = _variant(released[_WKD_F], divergence, params=params)
        out.append(dataclasses.replace(variant, published_top1=top1))
    return out


def _fitnet_preset(released: Mapping[str, Preset]) -> Preset:
    wkd_f = released[_WKD_F]
    params = {"ce_weight": 1.0, "feat_weight": 100.0, "hint_layer": -1, "projector": "bottleneck"}
    return dataclasses.replace(
        wkd_f,
        name=f"imagenet/fitnet/{_R34}",
        method="fitnet",
        params=MappingProxyType(params),
        published_top1=70.53,
        source=(
            "WKD-F's ImageNet R34→R18 recipe (JiamingLv/WKD@214cf88) with mdistiller's "
            f"CFG.FITNET weights; number: {SLIDES_SOURCE}"
        ),
    )


def ablation_presets(released: Mapping[str, Preset]) -> list[Preset]:
    """Every ablation preset that is not already a released configuration."""
    return [*_ir_presets(released), _fitnet_preset(released), *_divergence_presets(released)]


def _ablations() -> dict[str, tuple[AblationRow, ...]]:
    ir = [AblationRow("CKA, linear kernel (WKD-L)", _WKD_L, 72.49)]
    ir += [AblationRow(label, f"imagenet/wkd_l-{s}/{_R34}", t) for label, s, _, t in _IR_ROWS]
    feat = [
        AblationRow("FitNet, Frobenius", f"imagenet/fitnet/{_R34}", 70.53),
        AblationRow("Gaussian (diag), WD (WKD-F)", _WKD_F, 72.50),
    ]
    feat += [
        AblationRow(label, f"imagenet/wkd_f-{d}/{_R34}", t) for label, d, t in _DIVERGENCE_ROWS
    ]
    return {
        "WKD-L: how to model category interrelations (ImageNet R34→R18)": tuple(ir),
        "WKD-F: how to model distributions (ImageNet R34→R18)": tuple(feat),
    }


#: Ablation tables by title: each row names the preset that runs it and the paper's top-1.
ABLATIONS: dict[str, tuple[AblationRow, ...]] = _ablations()


# ---- Born-Again self-distillation ---------------------------------------------------------------

BAN_SOURCE = (
    "Furlanello et al., Born Again Neural Networks, ICML 2018 (KD term alone at T = 1, each "
    "generation on the teacher's schedule); WKD-L: the released ImageNet R34→R18 WKD-L "
    "parameters (JiamingLv/WKD@214cf88); setting: Lv et al. NeurIPS 2024, self-KD table"
)
_BAN_KD = {"temperature": 1.0, "ce_weight": 0.0, "kd_weight": 1.0}


def _ban_presets(released: Mapping[str, Preset]) -> list[Preset]:
    """ImageNet ResNet-18 BAN with KD and with WKD-L (one generation after generation 0), and
    the small mnist5k resnet8 setting that runs on a CPU (two generations of 3 epochs)."""
    wkd_l = released[_WKD_L]
    imagenet = wkd_l.training  # nesterov SGD, batch 256, lr 0.1, 100 epochs, ×0.1 at 30/60/90
    small = dataclasses.replace(
        imagenet, batch_size=64, epochs=3, lr=0.05, lr_milestones=(2,), weight_decay=5e-4, seed=0
    )
    small_wkd_l = {**dict(wkd_l.params), "temperature": 4.0, "wkd_logit_weight": 10.0}
    ir_features = {"source": "cka", "kernel": "linear", "feature": "features"}
    settings = [  # dataset, classes, arch, method, params, recipe, ir, generations, source
        ("imagenet", 1000, "tv_resnet18", "kd", _BAN_KD, imagenet, {}, 1, BAN_SOURCE),
        ("imagenet", 1000, "tv_resnet18", "wkd_l", dict(wkd_l.params), imagenet,
         dict(wkd_l.interrelations), 1, BAN_SOURCE),
        ("mnist5k", 10, "resnet8", "kd", _BAN_KD, small, {}, 2, "our small CPU setting"),
        ("mnist5k", 10, "resnet8", "wkd_l", small_wkd_l, small, ir_features, 2,
         "our small CPU setting"),
    ]  # fmt: skip
    return [
        dataclasses.replace(  # every field set: a preset built from the released one's type
            wkd_l,
            name=f"{dataset}/ban-{method}/{arch}",
            dataset=dataset,
            num_classes=classes,
            teacher=arch,
            student=arch,
            method=method,
            params=MappingProxyType(dict(params)),
            training=recipe,
            interrelations=MappingProxyType(ir),
            published_top1=None,  # the paper's self-KD numbers are not available here
            source=source,
            generations=generations,
        )
        for dataset, classes, arch, method, params, recipe, ir, generations, source in settings
    ]


# ---- CNN↔Transformer on CIFAR-100 (OFA-KD's setting) ---------------------------------------------

OFA_COMMIT = "Hao840/OFAKD@f7bb896"  # the newest commit; configs/cifar unchanged since 12eeba8
_OFA_SETTING = (
    "setting: Hao et al., OFA-KD, NeurIPS 2023 (CIFAR-100 at 224, timm models), pair from its "
    "CIFAR-100 table; Lv et al. NeurIPS 2024, CNN↔Transformer table (numbers not available)"
)
# OFA-KD's two CIFAR-100 recipes: its configs/cifar/*.yaml over train.py's defaults, with
# timm 0.6.5's optimizer and scheduler factories, run as its README says (8 processes of
# batch 128: a global batch of 1024, which is what our batch_size means). Common to both:
# 300 epochs, cosine learning rate per epoch after a linear warm-up from warmup_lr
# (train.py default 1e-4 where the config sets none), label smoothing 0.1, no weight decay on
# biases and norms (timm's create_optimizer_v2), seed 42 (train.py default).
OFA_CNN_RECIPE = {  # configs/cifar/cnn.yaml: students ResNet / MobileNet
    "batch_size": 1024, "epochs": 300, "lr": 0.05, "lr_milestones": (), "weight_decay": 2e-3,
    "nesterov": True,  # timm's "sgd" is Nesterov SGD, momentum 0.9 (train.py default)
    "momentum": 0.9, "seed": 42, "optimizer": "sgd", "decay_bias_and_norm": False,
    "lr_schedule": "cosine", "min_lr": 1e-3, "warmup_epochs": 3, "warmup_lr": 1e-4,
    "label_smoothing": 0.1,
}  # fmt: skip
OFA_VIT_MLP_RECIPE = {  # configs/cifar/vit_mlp.yaml: Transformer / MLP students
    "batch_size": 1024, "epochs": 300, "lr": 5e-4, "lr_milestones": (), "weight_decay": 0.05,
    "seed": 42, "optimizer": "adamw", "betas": (0.9, 0.999), "eps": 1e-8,
    "decay_bias_and_norm": False, "lr_schedule": "cosine", "min_lr": 1e-5, "warmup_epochs": 20,
    "warmup_lr": 5e-7, "grad_clip_norm": 5.0, "label_smoothing": 0.1, "mixup_alpha": 0.8,
    "cutmix_alpha": 1.0, "mixup_prob": 1.0, "mixup_switch_prob": 0.5,
    "randaugment": "rand-m9-mstd0.5-inc1", "random_erasing": 0.25,
}  # fmt: skip
OFA_RECIPES = {  # student → (recipe fields, its config file)
    "timm_resnet18": (OFA_CNN_RECIPE, "configs/cifar/cnn.yaml"),
    "timm_mobilenetv2_100": (OFA_CNN_RECIPE, "configs/cifar/cnn.yaml"),
    "timm_deit_tiny_patch16_224": (OFA_VIT_MLP_RECIPE, "configs/cifar/vit_mlp.yaml"),
    "timm_swin_pico_patch4_window7_224": (OFA_VIT_MLP_RECIPE, "configs/cifar/vit_mlp.yaml"),
    "timm_resmlp_12_224": (OFA_VIT_MLP_RECIPE, "configs/cifar/vit_mlp.yaml"),
}
# Swin-P is OFA-KD's own model, registered in its custom_model/swin_transformer.py.
SWIN_P_SOURCE = "Swin-P: Hao840/OFAKD@18476ce custom_model/swin_transformer.py (same at f7bb896)"
# (teacher, student): the twelve pairs of OFA-KD's CIFAR-100 table: Swin-T, ViT-S and
# Mixer-B/16 → the CNNs ResNet18 and MobileNetV2; ConvNeXt-T and Mixer-B/16 → the
# Transformers DeiT-T and (OFA-KD's own) Swin-P; ConvNeXt-T and Swin-T → the MLP ResMLP-S12.
# Which of them the WKD paper's CNN↔Transformer table reports is not in our sources, so
# every one is a preset.
OFA_PAIRS = (
    *((teacher, student)
      for student in ("timm_resnet18", "timm_mobilenetv2_100")
      for teacher in ("timm_swin_tiny_patch4_window7_224", "timm_vit_small_patch16_224",
                      "timm_mixer_b16_224")),
    *((teacher, student)
      for student in ("timm_deit_tiny_patch16_224", "timm_swin_pico_patch4_window7_224")
      for teacher in ("timm_convnext_tiny", "timm_mixer_b16_224")),
    ("timm_convnext_tiny", "timm_resmlp_12_224"),
    ("timm_swin_tiny_patch4_window7_224", "timm_resmlp_12_224"),
)  # fmt: skip
_OFA_KD = {"temperature": 1.0, "ce_weight": 1.0, "kd_weight": 1.0}  # train.py's KD defaults


def ofa_source(student: str) -> str:
    """Where a CNN↔Transformer preset's recipe comes from (file and commit)."""
    _, config = OFA_RECIPES[student]
    swin_p = f"{SWIN_P_SOURCE}; " if student == "timm_swin_pico_patch4_window7_224" else ""
    return (
        f"recipe: {OFA_COMMIT} {config} + train.py defaults (timm 0.6.5 factories, 8×128 "
        f"batch per its README); KD: train.py defaults (T 1, weights 1/1); {swin_p}"
        f"{_OFA_SETTING}"
    )


def _ofa_presets(released: Mapping[str, Preset]) -> list[Preset]:
    """KD, WKD-L and WKD-F for each pair of :data:`OFA_PAIRS` on ``cifar100_224``.

    The training recipe is OFA-KD's for the student's kind (:data:`OFA_RECIPES`): a CNN
    student gets ``cnn.yaml`` (Nesterov SGD, lr 0.05, wd 2e-3, cosine to 1e-3 after 3
    warm-up epochs, label smoothing 0.1), a Transformer / MLP student ``vit_mlp.yaml``
    (AdamW lr 5e-4, wd 0.05, cosine to 1e-5 after 20 warm-up epochs, gradient clipping 5,
    label smoothing 0.1, RandAugment rand-m9-mstd0.5-inc1, random erasing 0.25, mixup 0.8,
    cutmix 1.0). WKD-L / WKD-F take the released CIFAR RN32x4→RN8x4 parameters (100 classes),
    the cosine decay of their weights starting at epoch 150 of 300; WKD-F uses the 1×1-conv
    projector and a 1×1 grid (the unofficial ``hainn2803/WKD`` Swin-T→RN18 config: w_F
    0.008, γ 2). The WKD paper's numbers for these pairs are not in our sources.
    """
    cifar = released["cifar100/wkd_l/resnet32x4_resnet8x4"]
    wkd_l = {**dict(cifar.params), "cosine_decay_epoch": 150}
    wkd_f = {
        "ce_weight": 1.0, "wkd_feat_weight": 0.008, "mean_cov_ratio": 2.0, "spatial_grid": 1,
        "projector": "conv1x1", "cosine_decay_epoch": 150,
    }  # fmt: skip
    out = []
    for teacher, student in OFA_PAIRS:
        for method, params in (("kd", _OFA_KD), ("wkd_l", wkd_l), ("wkd_f", wkd_f)):
            ir = {"source": "cka", "kernel": "linear", "feature": "logits"}
            out.append(
                dataclasses.replace(
                    cifar,
                    name=f"cifar100_224/{method}/{teacher}_{student}",
                    dataset="cifar100_224",
                    teacher=teacher,
                    student=student,
                    method=method,
                    params=MappingProxyType(dict(params)),
                    # the released recipe's type, every field OFA-KD sets replaced
                    training=dataclasses.replace(cifar.training, **OFA_RECIPES[student][0]),
                    interrelations=MappingProxyType(ir if method == "wkd_l" else {}),
                    published_top1=None,
                    source=ofa_source(student),
                )
            )
    return out


def paper_presets(released: Mapping[str, Preset]) -> list[Preset]:
    """Every preset of this module, built from the ``released`` ones by name (registered by
    :mod:`wkd_core.presets`, which passes its table: this module never imports it)."""
    return [*ablation_presets(released), *_ban_presets(released), *_ofa_presets(released)]
