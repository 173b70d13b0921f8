"""Presets for the paper's other experiments: the ablations (and, in later sections, Born-Again
self-distillation and CNN↔Transformer pairs), each with its source and the paper's number.

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


def paper_presets(released: Mapping[str, Preset]) -> list[Preset]:
    """Every preset of this module, built from the ``released`` ones by name (registered by
    :mod:`wkd_core.presets`, which passes its table: this module never imports it)."""
    return ablation_presets(released)
