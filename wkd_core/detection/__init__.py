"""Object detection: WKD in Faster R-CNN (models, COCO data, RoI distillation, COCO metrics).

>>> from wkd_core.detection import create_detector, create_detection_dataset
>>> student = create_detector("fasterrcnn_tiny_fpn", num_classes=4)
>>> train_set = create_detection_dataset("shapes_mini", split="train")

See ``docs/internals.md`` (detection) for the design and ``docs/results.md`` for the numbers.
"""

from wkd_core.detection.checkpoints import (
    convert_detectron2,
    detector_num_classes,
    load_detector_weights,
)
from wkd_core.detection.data import (
    CocoDetection,
    create_detection_dataset,
    detection_collate,
    detection_dataset_info,
    list_detection_datasets,
    write_shapes_coco,
)
from wkd_core.detection.distill import (
    DETECTION_METHODS,
    DetectionDistiller,
    roi_distill_terms,
)
from wkd_core.detection.evaluate import COCO_METRICS, coco_evaluate, coco_summary
from wkd_core.detection.models import (
    create_detector,
    detector_info,
    list_detectors,
    set_train_sizes,
)
from wkd_core.detection.train import detection_loaders, fit_detection

__all__ = [
    "COCO_METRICS",
    "DETECTION_METHODS",
    "CocoDetection",
    "DetectionDistiller",
    "coco_evaluate",
    "coco_summary",
    "convert_detectron2",
    "create_detection_dataset",
    "create_detector",
    "detection_collate",
    "detection_dataset_info",
    "detection_loaders",
    "detector_info",
    "detector_num_classes",
    "fit_detection",
    "list_detection_datasets",
    "list_detectors",
    "load_detector_weights",
    "roi_distill_terms",
    "set_train_sizes",
    "write_shapes_coco",
]
