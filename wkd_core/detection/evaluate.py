"""COCO evaluation of a detector: AP, AP50, AP75, APs, APm, APl from pycocotools.

The detector runs in eval mode (torchvision's post-processing: per-class NMS at IoU 0.5, score
threshold 0.05, at most 100 detections per image, boxes back in the original image's pixels);
its detections are converted to COCO results (``[x, y, w, h]``, original category ids) and
scored by ``COCOeval`` against the dataset's own ground truth, so the numbers are exactly what
``pycocotools`` reports for the same detections. Values are fractions in [0, 1]; a size range
without ground-truth objects gives −1 (pycocotools' convention).
"""

from __future__ import annotations

import contextlib
import io
from collections.abc import Iterable, Sequence
from typing import Any

import numpy as np
import torch
from torch import nn

__all__ = ["COCO_METRICS", "coco_evaluate", "coco_summary", "detections_to_coco"]

COCO_METRICS = ("AP", "AP50", "AP75", "APs", "APm", "APl")


def detections_to_coco(
    image_ids: Sequence[int], outputs: Sequence[dict[str, torch.Tensor]], label_to_category
) -> list[dict[str, Any]]:
    """torchvision detections (xyxy boxes, contiguous labels) → COCO result dicts."""
    results = []
    for image_id, out in zip(image_ids, outputs, strict=True):
        boxes = out["boxes"].detach().cpu().double()
        xywh = torch.cat([boxes[:, :2], boxes[:, 2:] - boxes[:, :2]], dim=1).tolist()
        for box, score, label in zip(
            xywh, out["scores"].tolist(), out["labels"].tolist(), strict=True
        ):
            results.append(
                {
                    "image_id": int(image_id),
                    "category_id": label_to_category[label],
                    "bbox": [round(v, 3) for v in box],
                    "score": float(score),
                }
            )
    return results


def coco_summary(coco_gt, results: list[dict[str, Any]], image_ids: Iterable[int]) -> dict:
    """``COCOeval`` (bbox) of ``results`` on ``image_ids``: the six headline metrics."""
    from pycocotools.cocoeval import COCOeval

    if not results:  # loadRes rejects an empty list; no detection scores zero
        return dict.fromkeys(COCO_METRICS, 0.0)
    with contextlib.redirect_stdout(io.StringIO()):
        coco_dt = coco_gt.loadRes(results)
        evaluator = COCOeval(coco_gt, coco_dt, iouType="bbox")
        evaluator.params.imgIds = sorted(set(image_ids))
        evaluator.evaluate()
        evaluator.accumulate()
        evaluator.summarize()
    return {
        name: float(v)
        for name, v in zip(COCO_METRICS, np.asarray(evaluator.stats[:6]), strict=True)
    }


@torch.no_grad()
def coco_evaluate(detector: nn.Module, loader, *, device: torch.device | str = "cpu") -> dict:
    """Run ``detector`` over ``loader`` (a :class:`CocoDetection` without flips) and score it.

    Returns:
        ``{"AP", "AP50", "AP75", "APs", "APm", "APl"}`` as fractions.
    """
    dataset = loader.dataset
    was_training = detector.training
    detector.eval()
    results, seen = [], []
    try:
        for images, targets in loader:
            outputs = detector([img.to(device) for img in images])
            ids = [int(t["image_id"]) for t in targets]
            results += detections_to_coco(ids, outputs, dataset.label_to_category)
            seen += ids
    finally:
        detector.train(was_training)
    return coco_summary(dataset.coco, results, seen)
