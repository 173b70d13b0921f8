"""Detection models by name, weights in three layouts, the shapes set and the COCO loader,
COCO metrics on hand-checkable detections, ONNX export."""

from __future__ import annotations

import json
import re

import numpy as np
import pytest
import torch

from wkd_core.detection import (
    coco_summary,
    convert_detectron2,
    create_detection_dataset,
    create_detector,
    detector_num_classes,
    list_detection_datasets,
    list_detectors,
    load_detector_weights,
    write_shapes_coco,
)
from wkd_core.detection.data import CocoDetection, hflip
from wkd_core.detection.evaluate import detections_to_coco
from wkd_core.models import CheckpointMismatch


def test_detectors_by_name_have_c_plus_one_outputs():
    assert set(list_detectors()) == {
        "fasterrcnn_resnet18_fpn",
        "fasterrcnn_resnet50_fpn",
        "fasterrcnn_resnet101_fpn",
        "fasterrcnn_mobilenet_v2_fpn",
        "fasterrcnn_tiny_fpn",
        "fasterrcnn_small_fpn",
    }
    for name in ("fasterrcnn_resnet18_fpn", "fasterrcnn_mobilenet_v2_fpn", "fasterrcnn_tiny_fpn"):
        model = create_detector(name, num_classes=7)
        assert model.roi_heads.box_predictor.cls_score.out_features == 8
        assert detector_num_classes(model.state_dict()) == 7


def test_tiny_detector_trains_and_predicts():
    torch.manual_seed(0)
    model = create_detector("fasterrcnn_tiny_fpn", num_classes=4)
    images = [torch.rand(3, 96, 96), torch.rand(3, 96, 96)]
    targets = [{"boxes": torch.tensor([[10.0, 10.0, 40.0, 50.0]]), "labels": torch.tensor([3])}] * 2
    losses = model(images, targets)
    assert set(losses) == {"loss_classifier", "loss_box_reg", "loss_objectness", "loss_rpn_box_reg"}
    sum(losses.values()).backward()
    out = model.eval()(images)
    assert out[0]["boxes"].shape[1] == 4 and out[0]["labels"].max() <= 4


def test_weights_torchvision_detector_and_backbone_layouts():
    from torchvision.models import mobilenet_v2, resnet18

    model = create_detector("fasterrcnn_resnet18_fpn", num_classes=3)
    other = create_detector("fasterrcnn_resnet18_fpn", num_classes=3)
    assert load_detector_weights(model, other.state_dict()) == "torchvision"
    assert torch.equal(model.roi_heads.box_head.fc6.weight, other.roi_heads.box_head.fc6.weight)
    classifier = resnet18()
    assert load_detector_weights(model, classifier.state_dict()) == "torchvision-backbone"
    assert torch.equal(
        model.backbone.body.layer3[0].conv1.weight, classifier.layer3[0].conv1.weight
    )
    mobile = create_detector("fasterrcnn_mobilenet_v2_fpn", num_classes=3)
    assert load_detector_weights(mobile, mobilenet_v2().state_dict()) == "torchvision-backbone"
    with pytest.raises(CheckpointMismatch):
        load_detector_weights(
            model, create_detector("fasterrcnn_resnet18_fpn", num_classes=5).state_dict()
        )


def _to_detectron2(state: dict) -> dict:
    """torchvision keys → detectron2 names, written out independently of the converter."""
    out = {}
    for key, value in state.items():
        if key.endswith("num_batches_tracked"):
            continue
        k = key
        k = k.replace("backbone.body.conv1.", "backbone.bottom_up.stem.conv1.")
        k = k.replace("backbone.body.bn1.", "backbone.bottom_up.stem.conv1.norm.")
        m = re.match(r"backbone\.body\.layer(\d)\.(\d+)\.(.*)", k)
        if m:
            stage, block, rest = int(m.group(1)) + 1, m.group(2), m.group(3)
            rest = re.sub(r"^bn(\d)\.", r"conv\1.norm.", rest)
            rest = rest.replace("downsample.0.", "shortcut.").replace(
                "downsample.1.", "shortcut.norm."
            )
            k = f"backbone.bottom_up.res{stage}.{block}.{rest}"
        k = re.sub(
            r"backbone\.fpn\.inner_blocks\.(\d)\.0\.",
            lambda m: f"backbone.fpn_lateral{int(m.group(1)) + 2}.",
            k,
        )
        k = re.sub(
            r"backbone\.fpn\.layer_blocks\.(\d)\.0\.",
            lambda m: f"backbone.fpn_output{int(m.group(1)) + 2}.",
            k,
        )
        k = k.replace("rpn.head.conv.0.0.", "proposal_generator.rpn_head.conv.")
        k = k.replace("rpn.head.cls_logits.", "proposal_generator.rpn_head.objectness_logits.")
        k = k.replace("rpn.head.bbox_pred.", "proposal_generator.rpn_head.anchor_deltas.")
        k = k.replace("box_head.fc6.", "box_head.fc1.").replace("box_head.fc7.", "box_head.fc2.")
        if "cls_score" in k:
            value = torch.cat([value[1:], value[:1]])  # detectron2: background last
        if "bbox_pred" in k and "roi_heads" in k:
            value = value[4:]  # detectron2: no background regression
        out[k] = value
    return out


def test_detectron2_layout_converts_to_the_same_detector():
    torch.manual_seed(0)
    source = create_detector("fasterrcnn_resnet18_fpn", num_classes=3, min_size=128, max_size=128)
    with torch.no_grad():
        source.roi_heads.box_predictor.bbox_pred.weight[:4].zero_()
        source.roi_heads.box_predictor.bbox_pred.bias[:4].zero_()
    d2 = _to_detectron2(source.state_dict())
    assert any(k.startswith("backbone.bottom_up.res5.1.conv2.norm.") for k in d2)
    assert convert_detectron2(d2).keys() <= source.state_dict().keys()
    target = create_detector("fasterrcnn_resnet18_fpn", num_classes=3, min_size=128, max_size=128)
    assert load_detector_weights(target, d2) == "detectron2"
    for key, value in source.state_dict().items():
        assert torch.equal(value, target.state_dict()[key]), key


def test_shapes_set_is_coco_and_loads(tmp_path):
    folder = write_shapes_coco(tmp_path / "s", num_train=6, num_test=3, image_size=64, seed=3)
    ann = json.loads((folder / "annotations" / "instances_train.json").read_text())
    assert len(ann["images"]) == 6 and [c["name"] for c in ann["categories"]] == [
        "circle",
        "square",
        "triangle",
        "cross",
    ]
    for a in ann["annotations"]:
        x, y, w, h = a["bbox"]
        assert x >= 0 and y >= 0 and x + w <= 64 and y + h <= 64 and 14 <= w <= 40
    data = CocoDetection(
        folder / "train", folder / "annotations" / "instances_train.json", train=False
    )
    image, target = data[0]
    assert image.shape == (3, 64, 64) and image.min() >= 0 and image.max() <= 1
    assert target["labels"].min() >= 1 and target["boxes"].shape[1] == 4
    assert data.num_classes == 4 and data.label_to_category == [0, 1, 2, 3, 4]
    # the pixels inside a box differ from the background around it: a shape is drawn there
    x0, y0, x1, y1 = target["boxes"][0].int().tolist()
    assert image[:, y0:y1, x0:x1].std() > 0


def test_registered_sets_and_flip(tmp_path):
    assert {"coco", "shapes", "shapes_mini"} <= set(list_detection_datasets())
    data = create_detection_dataset("shapes_mini", split="test", root=tmp_path)
    assert len(data) == 32 and not data.train
    image, target = data[1]
    flipped, ft = hflip(image, target)
    assert torch.equal(flipped.flip(-1), image)
    assert torch.allclose(ft["boxes"][:, 0], 96 - target["boxes"][:, 2])
    with pytest.raises(ValueError, match="root"):
        create_detection_dataset("coco", split="train")


def _one_image_gt(tmp_path):
    from pycocotools.coco import COCO

    gt = {
        "images": [{"id": 1, "width": 100, "height": 100, "file_name": "a.png"}],
        "annotations": [
            {
                "id": 1,
                "image_id": 1,
                "category_id": 7,
                "bbox": [10, 10, 40, 40],
                "area": 1600,
                "iscrowd": 0,
            }
        ],
        "categories": [{"id": 7, "name": "thing"}],
    }
    path = tmp_path / "gt.json"
    path.write_text(json.dumps(gt))
    return COCO(str(path))


def test_coco_metrics_on_hand_checkable_detections(tmp_path):
    coco = _one_image_gt(tmp_path)
    exact = {
        "boxes": torch.tensor([[10.0, 10.0, 50.0, 50.0]]),
        "scores": torch.tensor([0.9]),
        "labels": torch.tensor([1]),
    }
    results = detections_to_coco([1], [exact], [0, 7])
    assert results[0]["category_id"] == 7 and results[0]["bbox"] == [10.0, 10.0, 40.0, 40.0]
    assert coco_summary(coco, results, [1])["AP"] == pytest.approx(1.0)
    # a box of IoU 0.625 (40×25 inside the 40×40): a hit at IoU .50, .55 and .60 only
    partial = {**exact, "boxes": torch.tensor([[10.0, 10.0, 50.0, 35.0]])}
    metrics = coco_summary(coco, detections_to_coco([1], [partial], [0, 7]), [1])
    assert metrics["AP50"] == pytest.approx(1.0) and metrics["AP75"] == pytest.approx(0.0)
    assert metrics["AP"] == pytest.approx(0.3)  # 3 of the 10 IoU thresholds
    assert metrics["APl"] == -1.0 and metrics["APm"] == pytest.approx(0.3)  # 1600 px² is medium
    assert coco_summary(coco, [], [1])["AP"] == 0.0


def test_onnx_export_matches_torch(tmp_path):
    ort = pytest.importorskip("onnxruntime")
    from wkd_core.detection.export import export_onnx

    torch.manual_seed(0)
    model = create_detector("fasterrcnn_tiny_fpn", num_classes=4).eval()
    path = export_onnx(model, tmp_path / "d.onnx")
    assert path is not None
    image = np.random.default_rng(0).random((3, 96, 96), dtype=np.float32)
    boxes, _labels, scores = ort.InferenceSession(str(path)).run(None, {"image": image})
    with torch.no_grad():
        ref = model([torch.from_numpy(image)])[0]
    assert boxes.shape == tuple(ref["boxes"].shape)
    np.testing.assert_allclose(np.sort(scores), np.sort(ref["scores"].numpy()), atol=1e-4)


def test_multiscale_training_draws_sizes_from_the_list_and_tests_at_the_fixed_size():
    from torchvision.models.detection.transform import GeneralizedRCNNTransform

    from wkd_core.detection import set_train_sizes

    torch.manual_seed(0)
    model = set_train_sizes(create_detector("fasterrcnn_tiny_fpn", num_classes=4), [48, 64, 80])
    box = torch.tensor([[12.0, 24.0, 36.0, 60.0]])
    seen = set()
    for _ in range(30):
        images, targets = model.transform(
            [torch.rand(3, 96, 96)], [{"boxes": box.clone(), "labels": torch.tensor([1])}]
        )
        (h, w), scale = images.image_sizes[0], images.image_sizes[0][0] / 96
        assert h == w and h in (48, 64, 80)
        assert torch.allclose(targets[0]["boxes"], box * scale)  # boxes follow the image
        seen.add(h)
    assert seen == {48, 64, 80}  # every size drawn (30 draws, seeded)
    model.eval()
    assert model.transform([torch.rand(3, 96, 96)])[0].image_sizes == [(96, 96)]
    plain = set_train_sizes(model, None).transform
    assert type(plain) is GeneralizedRCNNTransform and plain.min_size == (96,)
    with pytest.raises(ValueError, match="positive"):
        set_train_sizes(model, [0, 64])


def test_detection_job_trains_at_the_spec_sizes(tmp_path, monkeypatch):
    """``params.train_min_sizes`` reaches the training loop: the student's transform resizes
    training images to the listed sizes and test images to the fixed 96."""
    import wkd_core.detection.pipeline as pipeline
    from wkd_core.detection import set_train_sizes
    from wkd_core.pipeline import run_job

    sizes: dict[bool, set[int]] = {True: set(), False: set()}

    def spying(detector, train_sizes):
        set_train_sizes(detector, train_sizes).transform.register_forward_hook(
            lambda m, args, out: sizes[m.training].update(int(h) for h, _ in out[0].image_sizes)
        )
        return detector

    monkeypatch.setattr(pipeline, "set_train_sizes", spying)
    spec = {
        "task": "detection", "method": "vanilla", "student": {"arch": "fasterrcnn_tiny_fpn"},
        "dataset": {"name": "shapes_mini", "root": str(tmp_path / "data")},
        "params": {"warmup_iters": 2, "warmup_factor": 0.001, "train_min_sizes": [64, 80]},
        "training": {"epochs": 1, "batch_size": 16, "lr": 0.01, "lr_milestones": [],
                     "weight_decay": 1e-4, "nesterov": False, "num_workers": 0, "seed": 0},
    }  # fmt: skip
    run_job(spec, out_dir=tmp_path / "out", device="cpu")
    assert sizes == {True: {64, 80}, False: {96}}
    assert (tmp_path / "out" / "student.safetensors").is_file()
