"""The detection presets: Faster R-CNN + FPN on MS-COCO (``task: detection``), and the schedule
a detection job gets where it names no preset. Pure data, like :mod:`wkd_core.presets`.
"""

from __future__ import annotations

from types import MappingProxyType
from typing import Any

from wkd_core.presets import _SINKHORN, Preset, TrainingRecipe

# The WKD paper names no detection recipe and the authors released no detection code; the
# pairs and the schedule are ReviewKD's COCO setting (dvlab-research/ReviewKD@2e2b4dc,
# Detection/configs/ReviewKD-{R18-R101,R50-R101,MV2-R50}.yaml over Base-Distillation.yaml):
# batch 8, lr 0.01, 180k iterations with steps at 120k and 160k (= 12.3 epochs of COCO
# train2017, steps after epochs 8 and 11: detectron2's 1x schedule), detectron2's SGD
# defaults (momentum 0.9, weight decay 1e-4, no nesterov, 1000 warm-up iterations from 0.001),
# multi-scale training as Base-Distillation.yaml's INPUT.MIN_SIZE_TRAIN (shorter side drawn
# from 640…800 per image, detectron2's "choice" sampling; the test size stays 800).
# The distillation hyper-parameters are this project's defaults (service.catalog
# DETECTION_METHODS): no published value exists. No AP is published that we could read.
_DETECTION_PAIRS = {  # teacher, student
    "r101_r18": ("fasterrcnn_resnet101_fpn", "fasterrcnn_resnet18_fpn"),
    "r101_r50": ("fasterrcnn_resnet101_fpn", "fasterrcnn_resnet50_fpn"),
    "r50_mv2": ("fasterrcnn_resnet50_fpn", "fasterrcnn_mobilenet_v2_fpn"),
}
_COCO_RECIPE = TrainingRecipe(8, 12, 0.01, (8, 11), 1e-4, False, None)
_DET_WARMUP = {"warmup_iters": 1000, "warmup_factor": 0.001}
_MIN_SIZE_TRAIN = (640, 672, 704, 736, 768, 800)  # Base-Distillation.yaml
_DET_PARAMS = {
    "kd": {"temperature": 1.0, "kd_weight": 1.0},
    "dkd": {"alpha": 1.0, "beta": 0.25, "temperature": 1.0},
    "wkd_l": {"temperature": 2.0, "wkd_logit_weight": 10.0, "kappa": 1.0, **_SINKHORN},
    "wkd_f": {"wkd_feat_weight": 0.02, "mean_cov_ratio": 2.0, "spatial_grid": 4},
}
_DET_PARAMS["wkd_lf"] = {**_DET_PARAMS["wkd_l"], **_DET_PARAMS["wkd_f"]}
_DET_SOURCE = (
    "schedule and input sizes: dvlab-research/ReviewKD@2e2b4dc Detection/configs; params: ours"
)


def detection_presets() -> list[Preset]:
    ir = {"source": "cka", "kernel": "linear", "feature": "features"}
    return [
        Preset(
            name=f"coco/{method}/{teacher}_{student}",
            dataset="coco",
            num_classes=80,
            teacher=teacher,
            student=student,
            method=method,
            params=MappingProxyType({**_DET_WARMUP, "train_min_sizes": _MIN_SIZE_TRAIN, **params}),
            training=_COCO_RECIPE,
            interrelations=MappingProxyType(ir if "wkd_logit_weight" in params else {}),
            source=_DET_SOURCE,
            task="detection",
        )
        for teacher, student in _DETECTION_PAIRS.values()
        for method, params in _DET_PARAMS.items()
    ]


def detection_training_defaults() -> dict[str, Any]:
    """The ``training`` block a detection job gets where it names no preset: the COCO
    presets' schedule (detectron2's 1x: 12 epochs, steps after 8 and 11, batch 8, lr 0.01,
    no nesterov), not the classification defaults' 240 epochs."""
    recipe = _COCO_RECIPE
    return {
        "batch_size": recipe.batch_size, "epochs": recipe.epochs, "lr": recipe.lr,
        "lr_milestones": list(recipe.lr_milestones), "weight_decay": recipe.weight_decay,
        "nesterov": recipe.nesterov,
    }  # fmt: skip
