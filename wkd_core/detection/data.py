"""Detection data: a COCO-format loader and the synthetic ``shapes`` set written in that format.

A sample is ``(image, target)``: a (3, H, W) float tensor in [0, 1] and
``{"boxes": (N, 4) float xyxy in pixels, "labels": (N,) int64 in 1…C, "image_id": int}``.
Labels are contiguous (1…C in the order of the sorted COCO category ids; 0 is the detector's
background); ``dataset.label_to_category`` maps them back for evaluation. Crowd annotations and
boxes thinner than one pixel are dropped from training targets (they stay in the ground truth
that :mod:`wkd_core.detection.evaluate` scores against, as pycocotools expects).

The detector resizes and normalises inside its own ``transform`` (torchvision's
``GeneralizedRCNNTransform``: shorter side to ``min_size``, longer at most ``max_size``), so the
data transforms are only the ones of the recipe: a random horizontal flip for training
(detectron2's and torchvision's COCO default), nothing for evaluation.

Datasets by name (``create_detection_dataset``):

- ``coco``: MS-COCO 2017 from a local folder ``root/{train2017,val2017}/*.jpg`` +
  ``root/annotations/instances_{train2017,val2017}.json`` (80 classes); ``test`` means val2017.
- ``shapes`` (320 training / 80 test images) and ``shapes_mini`` (64 / 32): coloured
  circles, squares, triangles and crosses on textured backgrounds (4 classes, 96×96 images),
  drawn from a seed and written once as COCO files under ``root`` (default
  ``~/.cache/wkd``), then read by the same loader.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import shutil
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image, ImageDraw
from torch import Tensor
from torch.utils.data import Dataset

from wkd_core.registry import Registry

__all__ = [
    "DETECTION_DATASETS",
    "CocoDetection",
    "DetectionDatasetInfo",
    "create_detection_dataset",
    "detection_collate",
    "detection_dataset_info",
    "list_detection_datasets",
    "write_shapes_coco",
]

DETECTION_DATASETS: Registry[Dataset] = Registry("detection dataset")
_INFOS: dict[str, DetectionDatasetInfo] = {}


@dataclass(frozen=True)
class DetectionDatasetInfo:
    num_classes: int  # object classes C (the predictor has C + 1 outputs)
    image_size: int  # typical shorter side of the images


def list_detection_datasets() -> list[str]:
    return DETECTION_DATASETS.names()


def detection_dataset_info(name: str) -> DetectionDatasetInfo:
    DETECTION_DATASETS.get(name)
    return _INFOS[name]


def create_detection_dataset(
    name: str, *, split: str, root: str | Path | None = None, train: bool | None = None, **options
) -> CocoDetection:
    """A registered detection dataset; ``train`` (default: ``split == "train"``) flips images."""
    if split not in ("train", "val", "test"):
        raise ValueError(f"split must be train, val or test, got {split!r}")
    train = split == "train" if train is None else train
    return DETECTION_DATASETS.create(name, split=split, root=root, train=train, **options)


def detection_collate(batch: list[tuple[Tensor, dict]]) -> tuple[list[Tensor], list[dict]]:
    """Lists of images and targets (sizes differ, so nothing is stacked)."""
    images, targets = zip(*batch, strict=True)
    return list(images), list(targets)


class CocoDetection(Dataset):
    """Images of a folder with their ``instances_*.json`` annotations (read by pycocotools).

    Args:
        image_dir: folder of the image files named in the annotation file.
        ann_file: COCO instances JSON.
        train: randomly flip image and boxes horizontally (p = 0.5).
    """

    def __init__(self, image_dir: str | Path, ann_file: str | Path, *, train: bool) -> None:
        from pycocotools.coco import COCO

        self.image_dir, self.ann_file, self.train = Path(image_dir), Path(ann_file), train
        if not self.ann_file.is_file():
            raise FileNotFoundError(f"annotation file not found: {self.ann_file}")
        with contextlib.redirect_stdout(io.StringIO()):  # pycocotools prints progress
            self.coco = COCO(str(self.ann_file))
        self.ids = sorted(self.coco.getImgIds())
        self.label_to_category = [0, *sorted(self.coco.getCatIds())]  # index 0: background
        self.category_to_label = {c: i for i, c in enumerate(self.label_to_category) if i}
        self.class_names = [self.coco.cats[c]["name"] for c in self.label_to_category[1:]]

    @property
    def num_classes(self) -> int:
        return len(self.label_to_category) - 1

    def __len__(self) -> int:
        return len(self.ids)

    def __getitem__(self, index: int) -> tuple[Tensor, dict[str, Any]]:
        image_id = self.ids[index]
        info = self.coco.imgs[image_id]
        with Image.open(self.image_dir / info["file_name"]) as img:
            array = np.asarray(img.convert("RGB"), dtype=np.uint8)
        image = torch.from_numpy(array.copy()).permute(2, 0, 1).float().div_(255.0)
        target = self.target(image_id)
        if self.train and torch.rand(()) < 0.5:
            image, target = hflip(image, target)
        return image, target

    def target(self, image_id: int) -> dict[str, Any]:
        """Boxes (xyxy) and contiguous labels of one image, crowd and degenerate boxes dropped."""
        anns = self.coco.imgToAnns.get(image_id, [])
        boxes, labels = [], []
        for ann in anns:
            x, y, w, h = ann["bbox"]
            if ann.get("iscrowd", 0) or w < 1 or h < 1:
                continue
            boxes.append([x, y, x + w, y + h])
            labels.append(self.category_to_label[ann["category_id"]])
        return {
            "boxes": torch.tensor(boxes, dtype=torch.float32).reshape(-1, 4),
            "labels": torch.tensor(labels, dtype=torch.int64),
            "image_id": image_id,
        }


def hflip(image: Tensor, target: dict[str, Any]) -> tuple[Tensor, dict[str, Any]]:
    """Mirror a (3, H, W) image and its xyxy boxes left–right."""
    width = image.shape[-1]
    boxes = target["boxes"].clone()
    boxes[:, [0, 2]] = width - target["boxes"][:, [2, 0]]
    return image.flip(-1), {**target, "boxes": boxes}


def _register(name: str, info: DetectionDatasetInfo) -> Callable:
    def decorator(factory: Callable) -> Callable:
        DETECTION_DATASETS.register(name)(factory)
        _INFOS[name] = info
        return factory

    return decorator


@_register("coco", DetectionDatasetInfo(num_classes=80, image_size=800))
def coco(*, split: str, root: str | Path | None, train: bool) -> CocoDetection:
    """MS-COCO 2017 (``test`` and ``val`` are val2017; no download, ``root`` is required)."""
    if root is None:
        raise ValueError("dataset 'coco' needs a root folder (train2017/, val2017/, annotations/)")
    folder = "train2017" if split == "train" else "val2017"
    return CocoDetection(
        Path(root) / folder, Path(root) / "annotations" / f"instances_{folder}.json", train=train
    )


# ----------------------------------------------------------------------------- shapes
SHAPE_CLASSES = ("circle", "square", "triangle", "cross")
SHAPES_VERSION = 2  # 2: every shape stands out from the background under it
MIN_CONTRAST = 80  # the largest channel difference from the mean background under the box


@_register("shapes", DetectionDatasetInfo(num_classes=len(SHAPE_CLASSES), image_size=96))
def shapes(*, split: str, root: str | Path | None, train: bool, **options) -> CocoDetection:
    """The synthetic shapes set: 320 training and 80 test images (the demo's size)."""
    return _shapes(
        split=split, root=root, train=train, **{"num_train": 320, "num_test": 80, **options}
    )


@_register("shapes_mini", DetectionDatasetInfo(num_classes=len(SHAPE_CLASSES), image_size=96))
def shapes_mini(*, split: str, root: str | Path | None, train: bool, **options) -> CocoDetection:
    """The synthetic shapes set at test size: 64 training and 32 test images."""
    return _shapes(
        split=split, root=root, train=train, **{"num_train": 64, "num_test": 32, **options}
    )


def _shapes(
    *,
    split: str,
    root: str | Path | None,
    train: bool,
    num_train: int,
    num_test: int,
    image_size: int = 96,
    seed: int = 0,
) -> CocoDetection:
    """The shapes set, written on first use under ``root/shapes-v2-…`` and reused."""
    base = Path(root) if root is not None else Path.home() / ".cache" / "wkd"
    folder = base / f"shapes-v{SHAPES_VERSION}-n{num_train}-{num_test}-s{image_size}-seed{seed}"
    if not (folder / "annotations" / "instances_test.json").is_file():
        write_shapes_coco(
            folder, num_train=num_train, num_test=num_test, image_size=image_size, seed=seed
        )
    part = "train" if split == "train" else "test"
    return CocoDetection(
        folder / part, folder / "annotations" / f"instances_{part}.json", train=train
    )


def write_shapes_coco(
    folder: str | Path, *, num_train: int, num_test: int, image_size: int = 96, seed: int = 0
) -> Path:
    """Draw the shapes set and write it as COCO (``train/``, ``test/``, ``annotations/``).

    Every image has a textured background (a smooth colour gradient, stripes at a random
    angle and pixel noise) and 1–4 non-overlapping shapes of 14–40 px in random colours, each
    colour at least ``MIN_CONTRAST`` away (in one channel) from the mean background under its
    box, so no shape is invisible; the boxes are the shapes' tight bounding boxes. Written
    to a temporary folder and renamed, so concurrent jobs never read a half-written set.
    """
    folder = Path(folder)
    folder.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{folder.name}.", dir=folder.parent))
    try:
        rng = np.random.default_rng(seed)
        for part, count in (("train", num_train), ("test", num_test)):
            (tmp / part).mkdir()
            images, anns = [], []
            for i in range(count):
                image, objects = draw_shapes_image(rng, image_size)
                name = f"{i:06d}.png"
                image.save(tmp / part / name)
                images.append(
                    {"id": i + 1, "file_name": name, "width": image_size, "height": image_size}
                )
                for label, (x0, y0, x1, y1) in objects:
                    w, h = x1 - x0, y1 - y0
                    anns.append(
                        {
                            "id": len(anns) + 1,
                            "image_id": i + 1,
                            "category_id": label,
                            "bbox": [x0, y0, w, h],
                            "area": w * h,
                            "iscrowd": 0,
                        }
                    )
            categories = [{"id": k + 1, "name": n} for k, n in enumerate(SHAPE_CLASSES)]
            (tmp / "annotations").mkdir(exist_ok=True)
            payload = {"images": images, "annotations": anns, "categories": categories}
            (tmp / "annotations" / f"instances_{part}.json").write_text(json.dumps(payload))
        try:
            os.replace(tmp, folder)
        except OSError:  # another process finished first: keep theirs
            shutil.rmtree(tmp, ignore_errors=True)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return folder


def draw_shapes_image(
    rng: np.random.Generator, size: int
) -> tuple[Image.Image, list[tuple[int, tuple[float, float, float, float]]]]:
    """One image and its objects ``[(category id 1…4, (x0, y0, x1, y1)), …]``."""
    background = _background(rng, size)
    image = Image.fromarray(background)
    draw = ImageDraw.Draw(image)
    objects: list[tuple[int, tuple[float, float, float, float]]] = []
    for _ in range(int(rng.integers(1, 5))):
        for _attempt in range(20):
            side = int(rng.integers(14, 41))
            x0, y0 = (int(v) for v in rng.integers(0, size - side, 2))
            box = (x0, y0, x0 + side, y0 + side)
            if all(_iou(box, other) == 0.0 for _, other in objects):
                break
        else:
            continue
        label = int(rng.integers(1, len(SHAPE_CLASSES) + 1))
        colour = _visible_colour(rng, background[box[1] : box[3], box[0] : box[2]])
        _draw_shape(draw, SHAPE_CLASSES[label - 1], box, colour)
        objects.append((label, tuple(float(v) for v in box)))
    return image, objects


def _visible_colour(rng: np.random.Generator, patch: np.ndarray) -> tuple[int, int, int]:
    """A random colour at least ``MIN_CONTRAST`` from the patch's mean in some channel."""
    mean = patch.reshape(-1, 3).mean(0)
    while True:  # a uniform colour qualifies with probability > 0.5: few draws
        colour = rng.integers(0, 256, 3)
        if np.abs(colour - mean).max() >= MIN_CONTRAST:
            return tuple(int(c) for c in colour)


def _background(rng: np.random.Generator, size: int) -> np.ndarray:
    yy, xx = np.mgrid[0:size, 0:size] / size
    low, high = rng.uniform(0, 255, 3), rng.uniform(0, 255, 3)
    grad = low + (high - low) * (xx * rng.uniform() + yy * (1 - rng.uniform()))[..., None]
    angle, period = rng.uniform(0, np.pi), rng.uniform(4, 16)
    stripes = np.sin((xx * np.cos(angle) + yy * np.sin(angle)) * size / period * 2 * np.pi)
    texture = grad + 25.0 * stripes[..., None] + rng.normal(0, 12, (size, size, 3))
    return np.clip(texture, 0, 255).astype(np.uint8)


def _draw_shape(draw: ImageDraw.ImageDraw, kind: str, box: tuple, colour: tuple) -> None:
    x0, y0, x1, y1 = box
    if kind == "circle":
        draw.ellipse((x0, y0, x1 - 1, y1 - 1), fill=colour)
    elif kind == "square":
        draw.rectangle((x0, y0, x1 - 1, y1 - 1), fill=colour)
    elif kind == "triangle":
        draw.polygon([((x0 + x1) / 2, y0), (x1 - 1, y1 - 1), (x0, y1 - 1)], fill=colour)
    else:  # cross: two bars of a third of the side
        t = (x1 - x0) / 3
        draw.rectangle((x0 + t, y0, x1 - t - 1, y1 - 1), fill=colour)
        draw.rectangle((x0, y0 + t, x1 - 1, y1 - t - 1), fill=colour)


def _iou(a: tuple, b: tuple) -> float:
    w = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    h = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = w * h
    return inter / ((a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter)
