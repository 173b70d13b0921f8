"""The configurations the authors released, by name: WKD-L/F/LF and the KD/DKD baselines.

A preset is a frozen :class:`Preset`: dataset, teacher and student architectures, the method
and its keyword hyper-parameters (exactly the keyword arguments of
``create_distiller(method, ...)``), the training recipe, and the published top-1 accuracy.

Sources, per method:

* ``wkd_l`` / ``wkd_f`` / ``wkd_lf``: the YAML files of the official code, JiamingLv/WKD @
  214cf88 (``configs/cifar100/{wkd_l,wkd_f,wkd_lf}/*.yaml``, ``configs/imagenet/*/wkd_*.yaml``)
  with the defaults of its ``mdistiller/engine/cfg.py``; nesterov SGD. Numbers: the README.
* ``kd`` / ``dkd``: megvii-research/mdistiller (``configs/cifar100/kd.yaml``,
  ``configs/cifar100/dkd/*.yaml``, ``configs/imagenet/{r34_r18,r50_mv1}/{kd,dkd}.yaml`` and
  the ``CFG.KD`` / ``CFG.DKD`` defaults). mdistiller's SGD is not nesterov and sets no seed.
  mdistiller ships no KD config for WRN-40-2→ShuffleV1; that preset is the KD defaults with the
  pair's solver settings from ``dkd/wrn40_2_shuv1.yaml``.

The WKD-L cost matrix itself (D = 1 − linear CKA of the teacher's classes) is not a
hyper-parameter: the pipeline computes it (``interrelations`` says how) and passes ``distance=``.
"""

from __future__ import annotations

import ast
import dataclasses
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any, NamedTuple


@dataclass(frozen=True)
class TrainingRecipe:
    """A training recipe: the ``training`` block of a job spec (``service.spec.TrainingSpec``).

    The released WKD / mdistiller recipes are SGD with a step learning-rate schedule (lr ×
    lr_gamma at each milestone epoch); the fields after ``momentum`` are OFA-KD's options
    (``wkd_core.train.config.TrainConfig`` documents each), at their off values by default.
    """

    batch_size: int
    epochs: int
    lr: float
    lr_milestones: tuple[int, ...]
    weight_decay: float
    nesterov: bool
    seed: int | None  # None: the released config sets none
    lr_gamma: float = 0.1
    momentum: float = 0.9
    optimizer: str = "sgd"
    betas: tuple[float, float] = (0.9, 0.999)
    eps: float = 1e-8
    decay_bias_and_norm: bool = True
    lr_schedule: str = "step"
    min_lr: float = 0.0
    warmup_epochs: int = 0
    warmup_lr: float = 0.0
    grad_clip_norm: float | None = None
    label_smoothing: float = 0.0
    mixup_alpha: float = 0.0
    cutmix_alpha: float = 0.0
    mixup_prob: float = 1.0
    mixup_switch_prob: float = 0.5
    randaugment: str | None = None
    random_erasing: float = 0.0
    drop_path_rate: float | None = None


@dataclass(frozen=True)
class Preset:
    """One released configuration.

    Attributes:
        name: ``"<dataset>/<method>/<teacher>_<student>"``.
        params: keyword arguments of ``create_distiller(method, ...)`` (read-only mapping),
            except those the pipeline supplies: ``distance`` (the interrelation matrix) and
            ``input_size`` (the projector's shape probe, from the dataset's image size).
            Arguments left at the distiller's default (``feat_eps`` = 1e-5) equal the
            released value.
        interrelations: the options of ``wkd_core.ir`` that build the WKD-L matrix (empty for
            other methods): linear CKA (``source`` "cka", ``kernel`` "linear", the released
            COST_MATRIX) on the teacher's ``feature``: "features" on CIFAR (last-stage map,
            spatial positions as samples), "logits" on ImageNet.
        published_top1: the top-1 (%) reported for this configuration, ``None`` if unknown.
        source: where the values come from.
    """

    name: str
    dataset: str
    num_classes: int
    teacher: str
    student: str
    method: str
    params: Mapping[str, Any]
    training: TrainingRecipe
    interrelations: Mapping[str, Any] = field(default_factory=lambda: MappingProxyType({}))
    published_top1: float | None = None
    source: str = ""
    generations: int | None = None  # Born-Again self-distillation (wkd_core.generations)
    task: str = "classification"

    def to_spec(self) -> dict[str, Any]:
        """The plain job-spec dict ``wkd_core.pipeline.run_job`` reads (no ``None`` seeds)."""
        training = dataclasses.asdict(self.training)
        training["lr_milestones"] = list(self.training.lr_milestones)
        training["betas"] = list(self.training.betas)
        if training["seed"] is None:
            del training["seed"]
        params = {k: list(v) if isinstance(v, tuple) else v for k, v in self.params.items()}
        # Keys and values only: a spec has no room for the name, top-1 or source.
        spec: dict[str, Any] = {
            "method": self.method,
            "teacher": {"arch": self.teacher},
            "student": {"arch": self.student},
            "dataset": {"name": self.dataset},
            "params": params,
            "training": training,
        }
        if self.interrelations:
            spec["interrelations"] = dict(self.interrelations)
        if self.generations is not None:
            spec["generations"] = self.generations
        if self.task != "classification":
            spec["task"] = self.task
        return spec


# ---- the released recipes -------------------------------------------------------------------

_CIFAR_MILESTONES = (150, 180, 210)
_IMAGENET_MILESTONES = (30, 60, 90)


class _Pair(NamedTuple):
    dataset: str
    num_classes: int
    teacher: str
    student: str
    cifar_lr: float  # CIFAR lr of the pair (0.01 for the Shuffle student); unused on ImageNet
    ir_feature: str  # the teacher output the interrelations are computed from

    def wkd_recipe(self, seed: int | None) -> TrainingRecipe:
        """The WKD fork's solver: nesterov SGD."""
        if self.dataset == "cifar100":
            return TrainingRecipe(64, 240, self.cifar_lr, _CIFAR_MILESTONES, 5e-4, True, seed)
        return TrainingRecipe(256, 100, 0.1, _IMAGENET_MILESTONES, 1e-4, True, seed)

    def mdistiller_recipe(self) -> TrainingRecipe:
        """mdistiller's solver: plain-momentum SGD, no seed; ImageNet on 8 GPUs (batch 512)."""
        if self.dataset == "cifar100":
            return TrainingRecipe(64, 240, self.cifar_lr, _CIFAR_MILESTONES, 5e-4, False, None)
        return TrainingRecipe(512, 100, 0.2, _IMAGENET_MILESTONES, 1e-4, False, None)


_PAIRS = {
    "rn32x4_rn8x4": _Pair("cifar100", 100, "resnet32x4", "resnet8x4", 0.05, "features"),
    "wrn402_sv1": _Pair("cifar100", 100, "wrn_40_2", "ShuffleV1", 0.01, "features"),
    "rn34_rn18": _Pair("imagenet", 1000, "tv_resnet34", "tv_resnet18", 0.1, "logits"),
    "rn50_mv1": _Pair("imagenet", 1000, "tv_resnet50", "MobileNetV1", 0.1, "logits"),
}

# The tables below read like the paper's: one row per pair, columns named by the *_KEYS tuple.
_SINKHORN = {"eps": 0.05, "n_iter": 10}

# WKD-L, wkd-method.md §1.4. Seed: none in the released config as documented.
_WKD_L_KEYS = ("temperature", "wkd_logit_weight", "kappa", "cosine_decay_epoch")
_WKD_L = {  # T, λ, κ, decay start
    "rn32x4_rn8x4": (8.0, 600.0, 1.0, 150),
    "wrn402_sv1": (6.0, 200.0, 1.0, 150),
    "rn34_rn18": (2.0, 30.0, 1.0, 0),
    "rn50_mv1": (2.0, 25.0, 2.0, 0),
}
# WKD-F, §2; the last column is the seed.
_WKD_F_KEYS = (
    "wkd_feat_weight", "mean_cov_ratio", "spatial_grid", "projector", "cosine_decay_epoch"
)  # fmt: skip
_WKD_F = {  # w_F, γ, grid, projector, decay start, seed
    "rn32x4_rn8x4": (0.08, 4.0, 1, "conv1x1", 150, 10),
    "wrn402_sv1": (0.3, 3.0, 4, "conv1x1", 150, 10),
    "rn34_rn18": (0.02, 2.0, 4, "bottleneck", 0, 0),
    "rn50_mv1": (0.005, 2.0, 4, "bottleneck", 30, 0),
}
# WKD-LF, §3; the last column is the seed.
_WKD_LF_KEYS = _WKD_L_KEYS[:3] + _WKD_F_KEYS
_WKD_LF = {  # T, λ, κ, w_F, γ, grid, projector, decay start, seed
    "rn32x4_rn8x4": (8.0, 200.0, 1.0, 0.08, 8.0, 1, "conv1x1", 150, 10),
    "wrn402_sv1": (4.0, 60.0, 1.0, 0.5, 3.0, 4, "conv1x1", 150, 10),
    # w_F = 1.0 against 0.02 for WKD-F alone: suspicious, but what the released config says.
    "rn34_rn18": (2.0, 10.0, 1.0, 1.0, 2.0, 4, "bottleneck", 0, 0),
    "rn50_mv1": (2.0, 25.0, 2.0, 0.005, 2.0, 4, "bottleneck", 0, 0),
}
_WKD_TOP1 = {  # official README, top-1 %: WKD-L, WKD-F, WKD-LF
    "rn32x4_rn8x4": (76.53, 76.77, 77.28),
    "wrn402_sv1": (76.72, 77.36, 77.50),
    "rn34_rn18": (72.49, 72.50, 72.76),
    "rn50_mv1": (73.17, 73.12, 73.69),
}
# mdistiller baselines; the last column is the published top-1, None where none of our
# sources has it (mdistiller's README for CIFAR RN32x4→RN8x4 and ImageNet RN34→RN18, the
# DKD paper's numbers as quoted in wkd-method.md §5.2 for RN50→MV1).
_KD_KEYS = ("temperature", "ce_weight", "kd_weight")
_KD = {
    "rn32x4_rn8x4": (4.0, 0.1, 0.9, 73.33),
    "wrn402_sv1": (4.0, 0.1, 0.9, None),
    "rn34_rn18": (1.0, 0.5, 0.5, 71.03),
    "rn50_mv1": (1.0, 0.5, 0.5, 70.50),
}
_DKD_KEYS = ("ce_weight", "alpha", "beta", "temperature", "warmup_epochs")
_DKD = {
    "rn32x4_rn8x4": (1.0, 1.0, 8.0, 4.0, 20, 76.32),
    "wrn402_sv1": (1.0, 1.0, 8.0, 4.0, 20, None),
    "rn34_rn18": (1.0, 1.0, 0.5, 1.0, 1, 71.70),
    "rn50_mv1": (1.0, 1.0, 2.0, 1.0, 1, 72.05),
}

_WKD_SOURCE = "JiamingLv/WKD@214cf88 configs + README"
_MDISTILLER_SOURCE = "megvii-research/mdistiller configs + README"


def _preset(pair: _Pair, method: str, params: dict, training: TrainingRecipe, top1, source):
    ir = {"source": "cka", "kernel": "linear", "feature": pair.ir_feature}
    ir = ir if "wkd_logit_weight" in params else {}
    return Preset(
        name=f"{pair.dataset}/{method}/{pair.teacher}_{pair.student}",
        dataset=pair.dataset,
        num_classes=pair.num_classes,
        teacher=pair.teacher,
        student=pair.student,
        method=method,
        params=MappingProxyType(params),
        training=training,
        interrelations=MappingProxyType(ir),
        published_top1=top1,
        source=source,
    )


def _presets_of(key: str) -> list[Preset]:
    pair = _PAIRS[key]
    top1_l, top1_f, top1_lf = _WKD_TOP1[key]
    *feat, seed_f = _WKD_F[key]
    *both, seed_lf = _WKD_LF[key]
    *kd, top1_kd = _KD[key]
    *dkd, top1_dkd = _DKD[key]
    ce = {"ce_weight": 1.0}
    wkd_l = {**ce, **dict(zip(_WKD_L_KEYS, _WKD_L[key], strict=True)), **_SINKHORN}
    wkd_f = {**ce, **dict(zip(_WKD_F_KEYS, feat, strict=True))}
    wkd_lf = {**ce, **dict(zip(_WKD_LF_KEYS, both, strict=True)), **_SINKHORN}
    kd_params = dict(zip(_KD_KEYS, kd, strict=True))
    dkd_params = dict(zip(_DKD_KEYS, dkd, strict=True))
    mdistiller = pair.mdistiller_recipe()
    return [
        _preset(pair, "wkd_l", wkd_l, pair.wkd_recipe(None), top1_l, _WKD_SOURCE),
        _preset(pair, "wkd_f", wkd_f, pair.wkd_recipe(seed_f), top1_f, _WKD_SOURCE),
        _preset(pair, "wkd_lf", wkd_lf, pair.wkd_recipe(seed_lf), top1_lf, _WKD_SOURCE),
        _preset(pair, "kd", kd_params, mdistiller, top1_kd, _MDISTILLER_SOURCE),
        _preset(pair, "dkd", dkd_params, mdistiller, top1_dkd, _MDISTILLER_SOURCE),
    ]


_PRESETS: dict[str, Preset] = {p.name: p for key in _PAIRS for p in _presets_of(key)}


def _add_detection_presets() -> None:
    """Faster R-CNN on COCO (``wkd_core.presets_detection``)."""
    from wkd_core.presets_detection import detection_presets

    _PRESETS.update({p.name: p for p in detection_presets()})


_add_detection_presets()


def detection_training_defaults() -> dict[str, Any]:
    """The ``training`` block of a detection job that names no preset (COCO's 1x)."""
    from wkd_core.presets_detection import detection_training_defaults as defaults

    return defaults()


def _add_paper_presets() -> None:
    """The paper's other experiments (ablations …), built from the released ones above."""
    from wkd_core.presets_paper import paper_presets

    _PRESETS.update({p.name: p for p in paper_presets(dict(_PRESETS))})


_add_paper_presets()


class _SpecTable(Mapping):
    """Read-only name → job-spec dict view; each lookup builds a fresh dict."""

    def __getitem__(self, name: str) -> dict[str, Any]:
        return _PRESETS[name].to_spec()

    def __iter__(self) -> Iterator[str]:
        return iter(_PRESETS)

    def __len__(self) -> int:
        return len(_PRESETS)


#: Every preset as the plain job-spec dict (``Preset.to_spec``) that the service's catalog
#: and the CLI merge their fields and overrides into.
PRESETS: Mapping[str, dict[str, Any]] = _SpecTable()


def list_presets() -> list[str]:
    """Names of every released configuration, sorted."""
    return sorted(_PRESETS)


def get_preset(name: str) -> Preset:
    """The preset called ``name``; ``ValueError`` naming the known ones otherwise."""
    if name not in _PRESETS:
        raise ValueError(f"unknown preset {name!r}; known: {', '.join(list_presets())}")
    return _PRESETS[name]


# ---- overrides ------------------------------------------------------------------------------

_TOP_LEVEL = ("dataset", "num_classes", "teacher", "student")


def _coerce(value: Any, current: Any, key: str) -> Any:
    """``value`` in the type of ``current`` (strings from a command line are parsed)."""
    if isinstance(value, str) and not isinstance(current, str):
        try:
            value = ast.literal_eval(value)
        except (ValueError, SyntaxError):
            raise ValueError(f"override {key}={value!r}: not a valid value") from None
    if isinstance(current, tuple) and isinstance(value, list | tuple):
        return tuple(value)
    if isinstance(current, float) and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if current is not None and value is not None and not isinstance(value, type(current)):
        raise ValueError(f"override {key}={value!r}: expected {type(current).__name__}")
    return value


def apply_overrides(preset: Preset, overrides: Mapping[str, Any]) -> Preset:
    """A copy of ``preset`` with dotted-key overrides applied.

    Keys: ``params.<name>``, ``training.<field>`` and the top-level fields (``teacher``,
    ``student``, ``dataset`` …). Values keep the type of the value they replace (an int is
    accepted for a float; strings such as ``"0.1"`` or ``"[30, 60]"`` are parsed). Unknown keys
    raise ``ValueError`` listing the valid ones, so a typo never passes silently.

    >>> p = apply_overrides(get_preset("cifar100/kd/resnet32x4_resnet8x4"),
    ...                     {"params.temperature": 2, "training.epochs": "10"})
    >>> p.params["temperature"], p.training.epochs
    (2.0, 10)
    """
    params = dict(preset.params)
    training: dict[str, Any] = {}
    top: dict[str, Any] = {}
    training_fields = [f.name for f in dataclasses.fields(TrainingRecipe)]
    for key, value in overrides.items():
        section, _, name = key.partition(".")
        if section == "params" and name in params:
            params[name] = _coerce(value, params[name], key)
        elif section == "training" and name in training_fields:
            training[name] = _coerce(value, getattr(preset.training, name), key)
        elif key in _TOP_LEVEL:
            top[key] = _coerce(value, getattr(preset, key), key)
        else:
            known = [*(f"params.{k}" for k in params), *(f"training.{k}" for k in training_fields)]
            known += _TOP_LEVEL
            raise ValueError(f"unknown override {key!r}; known: {', '.join(known)}")
    return dataclasses.replace(
        preset,
        params=MappingProxyType(params),
        training=dataclasses.replace(preset.training, **training),
        **top,
    )
