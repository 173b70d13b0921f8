"""The names the service accepts, as torch-free tables: architectures, datasets, methods.

The API validates job specs against these tables without importing torch; a test pins each
table to the ``wkd_core`` registries and to the distillers' keyword signatures, so the two
cannot drift apart. Presets live in ``wkd_core.presets`` (pure data) and are read through
:func:`get_preset`.
"""

from __future__ import annotations

import importlib
import math
from dataclasses import dataclass, field
from typing import Any, Literal

MAX_LIST_ITEMS = 16  # items of a list parameter
InputKind = Literal["cifar", "imagenet", "detection"]
Task = Literal["classification", "detection"]
TASKS: tuple[str, ...] = ("classification", "detection")


@dataclass(frozen=True)
class ArchInfo:
    family: str
    input_kind: InputKind


@dataclass(frozen=True)
class DatasetInfo:
    num_classes: int | None  # None: read from the data, so the spec must give num_classes
    image_size: int
    input_kind: InputKind
    # The most training samples a class has for ``train_subset_per_class`` (None: any value
    # works, a class with fewer keeps all of its own; 0: the set has no labels to subset).
    max_per_class: int | None = None


@dataclass(frozen=True)
class ParamInfo:
    """A method parameter: its type, default, and allowed values (``minimum`` and
    ``maximum`` inclusive unless ``positive``, which excludes 0). A ``list`` parameter holds
    integers within those bounds, at most ``MAX_LIST_ITEMS`` of them."""

    type: type
    default: Any
    choices: tuple[Any, ...] | None = None
    minimum: float = 0
    maximum: float = 1e6
    positive: bool = False


@dataclass(frozen=True)
class MethodInfo:
    needs_teacher: bool
    params: dict[str, ParamInfo] = field(default_factory=dict)


def _archs(family: str, kind: InputKind, *names: str) -> dict[str, ArchInfo]:
    return {name: ArchInfo(family, kind) for name in names}


ARCHITECTURES: dict[str, ArchInfo] = {
    **_archs("cifar_resnet", "cifar", "resnet8", "resnet14", "resnet20", "resnet32", "resnet44"),
    **_archs("cifar_resnet", "cifar", "resnet56", "resnet110", "resnet8x4", "resnet32x4"),
    **_archs("cifar_resnet_imagenet_style", "cifar", "ResNet18", "ResNet50"),
    **_archs("wrn", "cifar", "wrn_16_1", "wrn_16_2", "wrn_40_1", "wrn_40_2"),
    **_archs("vgg", "cifar", "vgg8", "vgg11", "vgg13", "vgg16", "vgg19"),
    **_archs("mobilenetv2", "cifar", "MobileNetV2"),
    **_archs("shufflenet", "cifar", "ShuffleV1", "ShuffleV2"),
    **_archs("torchvision_resnet", "imagenet", "tv_resnet18", "tv_resnet34", "tv_resnet50"),
    **_archs("torchvision_resnet", "imagenet", "tv_resnet101"),
    **_archs("torchvision_mobilenetv2", "imagenet", "tv_mobilenet_v2"),
    **_archs("mobilenetv1", "imagenet", "MobileNetV1"),
    # wkd_core/models/timm_models.py: OFA-KD's CNN↔Transformer architectures, through timm
    **_archs("timm", "imagenet", "timm_resnet18", "timm_mobilenetv2_100", "timm_convnext_tiny"),
    **_archs("timm", "imagenet", "timm_swin_tiny_patch4_window7_224"),
    **_archs("timm", "imagenet", "timm_swin_pico_patch4_window7_224"),  # OFA-KD's Swin-P
    **_archs("timm", "imagenet", "timm_vit_small_patch16_224", "timm_deit_tiny_patch16_224"),
    **_archs("timm", "imagenet", "timm_mixer_b16_224", "timm_resmlp_12_224"),
    **_archs("timm", "cifar", "vit_tiny_p4_32"),
    # detection (wkd_core.detection.models): Faster R-CNN + FPN
    **_archs("resnet_fpn", "detection", "fasterrcnn_resnet18_fpn", "fasterrcnn_resnet50_fpn"),
    **_archs("resnet_fpn", "detection", "fasterrcnn_resnet101_fpn"),
    **_archs("mobilenet_fpn", "detection", "fasterrcnn_mobilenet_v2_fpn"),
    **_archs("tiny_fpn", "detection", "fasterrcnn_tiny_fpn", "fasterrcnn_small_fpn"),
}

DATASETS: dict[str, DatasetInfo] = {
    "cifar10": DatasetInfo(10, 32, "cifar"),
    "cifar100": DatasetInfo(100, 32, "cifar"),
    "mnist5k": DatasetInfo(10, 32, "cifar", max_per_class=400),  # wkd_core.data.mnist5k
    "imagenet": DatasetInfo(1000, 224, "imagenet"),
    "cifar100_224": DatasetInfo(100, 224, "imagenet"),  # OFA-KD's CIFAR-100 at 224×224
    "imagefolder": DatasetInfo(None, 224, "imagenet"),
    "synthetic": DatasetInfo(100, 32, "cifar", max_per_class=0),  # random tensors, for tests
    # detection (wkd_core.detection.data): object classes C, typical image side
    "coco": DatasetInfo(80, 800, "detection"),
    "shapes": DatasetInfo(4, 96, "detection"),  # drawn coloured shapes, COCO format
    "shapes_mini": DatasetInfo(4, 96, "detection"),
}

# Keyword arguments of each distiller (wkd_core/distillers/<method>.py) that a job may set,
# with the distillers' own defaults. Arguments the pipeline supplies (the interrelation
# ``distance`` / ``cost`` and its ``cost_source``, chosen by the spec's ``interrelations``; the
# projector's ``input_size``) are not listed: a job cannot set them.
_CE = {"ce_weight": ParamInfo(float, 1.0)}
_TEMPERATURE = {"maximum": 1000.0, "positive": True}
_EPOCH = {"maximum": 10_000}
_SINKHORN = {
    "kappa": ParamInfo(float, 1.0, maximum=1000.0, positive=True),
    "eps": ParamInfo(float, 0.05, maximum=100.0, positive=True),
    "n_iter": ParamInfo(int, 10, minimum=1, maximum=10_000),
}
_FEATURE = {
    "mean_cov_ratio": ParamInfo(float, 2.0),
    "spatial_grid": ParamInfo(int, 4, minimum=1, maximum=64),
    "feat_eps": ParamInfo(float, 1e-5, maximum=1.0, positive=True),
    "projector": ParamInfo(str, "bottleneck", ("conv1x1", "bottleneck")),
    "cosine_decay_epoch": ParamInfo(int, 0, **_EPOCH),
}
# Those of them with a mean term of their own, which mean_cov_ratio (γ) weighs; the others
# need γ = 1 (wkd_core.losses.feature_divergences.SEPARABLE; a test keeps the two equal).
SEPARABLE_DIVERGENCES = ("gaussian_wd", "gaussian_kl", "gaussian_sym_kl")
# WKD-F's dissimilarities: the method, then the paper's ablation (losses/feature_divergences.py).
_DIVERGENCES = (
    "gaussian_wd", "gaussian_kl", "gaussian_sym_kl", "laplace_kl", "exponential_kl", "pmf_wd"
)  # fmt: skip
METHODS: dict[str, MethodInfo] = {
    "vanilla": MethodInfo(False, dict(_CE)),
    "kd": MethodInfo(
        True,
        {
            "temperature": ParamInfo(float, 4.0, **_TEMPERATURE),
            "ce_weight": ParamInfo(float, 0.1),
            "kd_weight": ParamInfo(float, 0.9),
        },
    ),
    "dkd": MethodInfo(
        True,
        {
            **_CE,
            "alpha": ParamInfo(float, 1.0),
            "beta": ParamInfo(float, 8.0),
            "temperature": ParamInfo(float, 4.0, **_TEMPERATURE),
            "warmup_epochs": ParamInfo(int, 20, **_EPOCH),
        },
    ),
    "wkd_l": MethodInfo(
        True,
        {
            **_CE,
            "temperature": ParamInfo(float, 2.0, **_TEMPERATURE),
            "wkd_logit_weight": ParamInfo(float, 30.0),
            **_SINKHORN,
            "cosine_decay_epoch": ParamInfo(int, 0, **_EPOCH),
        },
    ),
    "wkd_f": MethodInfo(
        True,
        {
            **_CE,
            "wkd_feat_weight": ParamInfo(float, 0.02),
            **_FEATURE,
            "divergence": ParamInfo(str, "gaussian_wd", _DIVERGENCES),
        },
    ),
    "fitnet": MethodInfo(
        True,
        {
            **_CE,
            "feat_weight": ParamInfo(float, 100.0),
            "hint_layer": ParamInfo(int, -1, minimum=-8, maximum=8),  # an index into feats
            "projector": _FEATURE["projector"],
        },
    ),
    "wkd_lf": MethodInfo(
        True,
        {
            **_CE,
            "temperature": ParamInfo(float, 2.0, **_TEMPERATURE),
            "wkd_logit_weight": ParamInfo(float, 10.0),
            **_SINKHORN,
            "wkd_feat_weight": ParamInfo(float, 1.0),
            **_FEATURE,
        },
    ),
}


# Detection (wkd_core/detection/distill.py): the keyword hyper-parameters of
# ``roi_distill_terms`` / ``DetectionDistiller`` each method uses, with their defaults, plus the
# loop's warm-up. The pipeline supplies the interrelation ``distance``.
_DET_LOOP = {
    "warmup_iters": ParamInfo(int, 1000),
    "warmup_factor": ParamInfo(float, 0.001, maximum=1.0),  # the lr's fraction at iteration 0
    # multi-scale training: each training image's shorter side drawn from this list (empty:
    # the detector's fixed size); evaluation keeps the fixed size (wkd_core.detection.models)
    "train_min_sizes": ParamInfo(list, [], minimum=1, maximum=4096),
}
# The same ranges as classification's (temperature, Sinkhorn, feat_eps): a zero T or ε would
# divide by zero when the job runs.
_DET_LOGIT = {  # T and λ of the ImageNet RN34→RN18 release (T = 2; λ between its 30 and 10)
    "temperature": ParamInfo(float, 2.0, **_TEMPERATURE),
    "wkd_logit_weight": ParamInfo(float, 10.0),
    **_SINKHORN,
}
_DET_FEATURE = {  # w_F of the ImageNet RN34→RN18 WKD-F release; 1.0 diverges on RoIs
    "wkd_feat_weight": ParamInfo(float, 0.02),
    "mean_cov_ratio": ParamInfo(float, 2.0),
    "spatial_grid": ParamInfo(int, 4, (1, 2, 3, 4, 5, 6)),  # cells of >= 2 positions on 7x7
    "feat_eps": _FEATURE["feat_eps"],
}
DETECTION_METHODS: dict[str, MethodInfo] = {
    "vanilla": MethodInfo(False, dict(_DET_LOOP)),
    "kd": MethodInfo(
        True,
        {
            **_DET_LOOP,
            "temperature": ParamInfo(float, 1.0, **_TEMPERATURE),
            "kd_weight": ParamInfo(float, 1.0),
        },
    ),
    "dkd": MethodInfo(
        True,
        {
            **_DET_LOOP,
            "alpha": ParamInfo(float, 1.0),
            "beta": ParamInfo(float, 0.25),
            "temperature": ParamInfo(float, 1.0, **_TEMPERATURE),
        },
    ),
    "wkd_l": MethodInfo(True, {**_DET_LOOP, **_DET_LOGIT}),
    "wkd_f": MethodInfo(True, {**_DET_LOOP, **_DET_FEATURE}),
    "wkd_lf": MethodInfo(True, {**_DET_LOOP, **_DET_LOGIT, **_DET_FEATURE}),
}


def methods_of(task: str) -> dict[str, MethodInfo]:
    """The method table of a task (``classification`` or ``detection``)."""
    return DETECTION_METHODS if task == "detection" else METHODS


# Detectors whose backbone body loads from a catalog classifier's ImageNet weights (the usual
# COCO start, wkd_core/detection/checkpoints.py): the classifier's head is dropped.
BACKBONE_SOURCES: dict[str, tuple[str, ...]] = {
    "fasterrcnn_resnet18_fpn": ("tv_resnet18",),
    "fasterrcnn_resnet50_fpn": ("tv_resnet50",),
    "fasterrcnn_resnet101_fpn": ("tv_resnet101",),
    "fasterrcnn_mobilenet_v2_fpn": ("tv_mobilenet_v2",),
}


def student_init_error(
    student: str,
    source: str,
    source_classes: int | None,
    classes: int | None,
    *,
    backbone_only: bool,
) -> str | None:
    """Why weights of architecture ``source`` (``source_classes`` outputs) cannot start a
    ``student`` for a dataset of ``classes`` classes, or ``None`` when they can."""
    if source in BACKBONE_SOURCES.get(student, ()):
        return None
    if source != student:
        known = (student, *BACKBONE_SOURCES.get(student, ()))
        return (
            f"weights of {source!r} do not fit student {student!r} "
            f"(it starts from {' or '.join(repr(k) for k in known)} weights)"
        )
    if not backbone_only and classes is not None and source_classes not in (None, classes):
        return (
            f"the weights have {source_classes} classes but the dataset has {classes}; set "
            "backbone_only to load all but the classifier"
        )
    return None


def dataset_num_classes(name: str, explicit: int | None = None) -> int | None:
    """The class count of a dataset: the catalog's, else the spec's explicit one."""
    info = DATASETS[name]
    return info.num_classes if info.num_classes is not None else explicit


def check_param(method: str, name: str, value: Any, *, task: str = "classification") -> Any:
    """``value`` coerced to the parameter's type; raises ``ValueError`` naming the problem."""
    table = methods_of(task)[method].params
    info = table.get(name)
    if info is None:
        known = ", ".join(sorted(table))
        raise ValueError(f"unknown parameter {name!r} for method {method!r} (known: {known})")
    if info.type is list:
        return _check_int_list(name, value, info)
    if info.type is float and isinstance(value, int | float) and not isinstance(value, bool):
        value = float(value) if abs(value) <= info.maximum else math.inf
    elif not isinstance(value, info.type) or (info.type is int and isinstance(value, bool)):
        raise ValueError(f"parameter {name!r} must be a {info.type.__name__}, got {value!r}")
    if info.choices is not None and value not in info.choices:
        raise ValueError(f"parameter {name!r} must be one of {list(info.choices)}")
    if info.type in (int, float) and not _in_range(info, value):
        low = f"> {info.minimum:g}" if info.positive else f">= {info.minimum:g}"
        raise ValueError(f"parameter {name!r} must be finite, {low} and <= {info.maximum:g}")
    return value


def _check_int_list(name: str, value: Any, info: ParamInfo) -> list[int]:
    """A list parameter: integers in ``[minimum, maximum]``, at most ``MAX_LIST_ITEMS``."""
    ok = isinstance(value, list) and len(value) <= MAX_LIST_ITEMS
    ok = ok and all(
        isinstance(v, int) and not isinstance(v, bool) and info.minimum <= v <= info.maximum
        for v in value
    )
    if not ok:
        raise ValueError(
            f"parameter {name!r} must be a list of at most {MAX_LIST_ITEMS} integers in "
            f"{info.minimum:g}..{info.maximum:g}, got {value!r}"
        )
    return list(value)


def _range(info: ParamInfo) -> dict[str, Any]:
    """The numeric bounds of a parameter, as ``GET /catalog`` shows them."""
    if info.type is list:  # the bounds of its items
        return {"minimum": int(info.minimum), "maximum": int(info.maximum),
                "exclusive_minimum": False, "max_items": MAX_LIST_ITEMS}  # fmt: skip
    if info.type not in (int, float):
        return {}
    return {"minimum": info.type(info.minimum), "maximum": info.type(info.maximum),
            "exclusive_minimum": info.positive}  # fmt: skip


def _in_range(info: ParamInfo, value: float) -> bool:
    if not math.isfinite(value) or value > info.maximum:
        return False
    return value > info.minimum if info.positive else value >= info.minimum


def get_preset(name: str) -> dict[str, Any]:
    """The preset ``name`` from ``wkd_core.presets`` as a partial JobSpec dict.

    Imported lazily: ``wkd_core.presets`` is pure data and ``wkd_core/__init__`` imports no
    torch, so the API can call this without loading the library.
    """
    try:
        presets = importlib.import_module("wkd_core.presets")
    except ImportError as error:
        raise LookupError(f"presets are unavailable ({error})") from error
    table = getattr(presets, "PRESETS", None)
    if table is None or name not in table:
        known = ", ".join(sorted(table or ()))
        raise LookupError(f"unknown preset {name!r} (known: {known})")
    return dict(table[name])


def preset_names() -> list[str]:
    """Known preset names, or an empty list when ``wkd_core.presets`` is not installed."""
    try:
        presets = importlib.import_module("wkd_core.presets")
    except ImportError:
        return []
    return sorted(getattr(presets, "PRESETS", {}))


def as_public_dict() -> dict[str, Any]:
    """The catalog as JSON-ready data (the body of ``GET /catalog``)."""
    return {
        "architectures": {
            name: {"family": a.family, "input_kind": a.input_kind}
            for name, a in ARCHITECTURES.items()
        },
        "datasets": {
            name: {
                "num_classes": d.num_classes,
                "image_size": d.image_size,
                "input_kind": d.input_kind,
            }
            for name, d in DATASETS.items()
        },
        "methods": _public_methods(METHODS),
        "detection_methods": _public_methods(DETECTION_METHODS),
        "tasks": list(TASKS),
        "presets": preset_names(),
    }


def _public_methods(table: dict[str, MethodInfo]) -> dict[str, Any]:
    return {
        name: {
            "needs_teacher": m.needs_teacher,
            "params": {
                p: {
                    "type": info.type.__name__,
                    "default": info.default,
                    "choices": list(info.choices) if info.choices else None,
                    **_range(info),
                }
                for p, info in m.params.items()
            },
        }
        for name, m in table.items()
    }
