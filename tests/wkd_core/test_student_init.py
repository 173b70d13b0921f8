"""A student's initial weights (``student.init``): whole, or backbone only with the keys that
did not match reported; detectors from ImageNet classifiers or other detectors' backbones."""

from __future__ import annotations

import pytest
import torch
from safetensors.torch import save_file

from wkd_core.detection import create_detector
from wkd_core.detection.checkpoints import load_detector_init
from wkd_core.models import create_model
from wkd_core.models.student_init import (
    StudentInitError,
    load_student_init,
    student_init_source,
)


def _state(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.clone() for k, v in model.state_dict().items()}


def test_whole_student_loads_strictly_from_a_file(tmp_path):
    torch.manual_seed(0)
    source = create_model("resnet8", num_classes=10)
    path = tmp_path / "init.safetensors"
    save_file({k: v.contiguous() for k, v in source.state_dict().items()}, str(path))
    student = create_model("resnet8", num_classes=10)
    report = load_student_init(student, path)
    assert (report.layout, report.loaded, report.missing, report.unexpected) == (
        "whole", len(source.state_dict()), [], [])  # fmt: skip
    for key, value in source.state_dict().items():
        assert torch.equal(student.state_dict()[key], value), key
    with pytest.raises(StudentInitError, match="backbone_only loads all but the classifier"):
        load_student_init(create_model("resnet8", num_classes=100), path)


def test_backbone_only_keeps_the_classifier_and_reports_the_rest():
    torch.manual_seed(0)
    source = _state(create_model("resnet8", num_classes=100))  # e.g. pre-trained elsewhere
    source["extra.weight"] = torch.zeros(3)
    del source["layer1.0.conv1.weight"]
    student = create_model("resnet8", num_classes=10)
    before = _state(student)
    report = load_student_init(student, source, backbone_only=True)
    after = student.state_dict()
    assert torch.equal(after["fc.weight"], before["fc.weight"])  # the classifier: untouched
    assert torch.equal(after["layer1.0.conv1.weight"], before["layer1.0.conv1.weight"])
    assert torch.equal(after["layer2.0.conv2.weight"], source["layer2.0.conv2.weight"])
    assert report.layout == "backbone"
    assert (report.missing, report.unexpected) == (["layer1.0.conv1.weight"], ["extra.weight"])
    assert report.loaded == len(source) - 3  # fc.weight, fc.bias and extra.weight not loaded
    summary = report.summary()
    assert "1 missing: layer1.0.conv1.weight" in summary and "1 unexpected: extra.weight" in summary
    assert report.to_dict()["num_missing"] == 1


def test_backbone_only_refuses_other_shapes_and_unrelated_files():
    student = create_model("resnet8", num_classes=10)
    with pytest.raises(StudentInitError, match=r"shape mismatch: conv1\.weight"):
        load_student_init(student, create_model("resnet8x4", num_classes=10).state_dict(),
                          backbone_only=True)  # fmt: skip
    with pytest.raises(StudentInitError, match="no key of the file fits the student"):
        load_student_init(student, {"encoder.w": torch.zeros(2)}, backbone_only=True)


def test_detector_from_an_imagenet_classifier_and_from_another_detector():
    from torchvision.models import resnet18

    torch.manual_seed(0)
    imagenet = resnet18().state_dict()
    student = create_detector("fasterrcnn_resnet18_fpn", num_classes=4)
    report = load_detector_init(student, imagenet)  # the usual COCO start: backbone only
    assert report.layout == "torchvision-backbone"
    assert torch.equal(
        student.backbone.body.layer4[1].conv2.weight, imagenet["layer4.1.conv2.weight"]
    )
    assert any(k.startswith("backbone.fpn.") for k in report.missing)
    assert all(not k.startswith("backbone.body.") for k in report.missing)

    coco = create_detector("fasterrcnn_resnet18_fpn", num_classes=80)  # other classes
    with pytest.raises(StudentInitError, match="backbone_only loads the backbone alone"):
        load_detector_init(student, coco.state_dict())
    head = student.roi_heads.box_predictor.cls_score.weight.clone()
    report = load_detector_init(student, coco.state_dict(), backbone_only=True)
    assert report.layout == "detector-backbone" and report.missing == []
    assert torch.equal(student.backbone.fpn.inner_blocks[0][0].weight,
                       coco.backbone.fpn.inner_blocks[0][0].weight)  # fmt: skip
    assert torch.equal(student.roi_heads.box_predictor.cls_score.weight, head)
    assert "roi_heads.box_predictor.cls_score.weight" in report.unexpected
    with pytest.raises(StudentInitError, match="shape mismatch"):
        load_detector_init(student, create_detector("fasterrcnn_resnet50_fpn", num_classes=4)
                           .state_dict(), backbone_only=True)  # fmt: skip


def test_classifier_backbone_only_into_a_detector_reports_the_fpn_missing():
    from torchvision.models import resnet18

    imagenet = resnet18().state_dict()
    student = create_detector("fasterrcnn_resnet18_fpn", num_classes=4)
    report = load_detector_init(student, imagenet, backbone_only=True)
    assert report.layout == "classifier-backbone"
    assert set(report.unexpected) == {"fc.weight", "fc.bias"}
    assert report.missing and all(k.startswith("backbone.fpn.") for k in report.missing)
    assert torch.equal(student.backbone.body.conv1.weight, imagenet["conv1.weight"])


@pytest.mark.parametrize(
    "arch, detector, key",
    [
        ("tv_mobilenet_v2", "fasterrcnn_mobilenet_v2_fpn", "features.17.conv.2.weight"),
        ("tv_resnet101", "fasterrcnn_resnet101_fpn", "layer3.22.conv2.weight"),
    ],
)
def test_detector_starts_from_its_catalog_classifiers_imagenet_file(tmp_path, arch, detector, key):
    """A ``resnet101-*.pth`` / ``mobilenet_v2-*.pth`` as uploaded under the catalog's
    classifier (``service.catalog.BACKBONE_SOURCES``) fills the whole body; only the FPN, the
    RPN and the RoI heads keep their initialisation."""
    from service.catalog import BACKBONE_SOURCES

    assert BACKBONE_SOURCES[detector] == (arch,)
    torch.manual_seed(0)
    classifier = create_model(arch, num_classes=1000)
    path = tmp_path / f"{arch}.pth"
    torch.save(classifier.state_dict(), path)
    uploaded = classifier.state_dict()
    prefix = "features." if arch == "tv_mobilenet_v2" else ""  # MobileNetV2's body: features
    for backbone_only in (False, True):
        student = create_detector(detector, num_classes=4)
        body = student.backbone.body
        assert not torch.equal(body.state_dict()[key.removeprefix(prefix)], uploaded[key])
        report = load_detector_init(student, path, backbone_only=backbone_only)
        for name, tensor in body.state_dict().items():  # the whole body is the upload's
            assert torch.equal(tensor, uploaded[prefix + name]), name
        # what is missing: the detector's parts (all of them, or the backbone's FPN alone)
        scope = "backbone." if backbone_only else ""
        assert report.missing == [
            k for k in student.state_dict()
            if k.startswith(scope) and not k.startswith("backbone.body.")
        ]  # fmt: skip
        parts = {k.split(".")[0] for k in report.missing} | {
            ".".join(k.split(".")[:2]) for k in report.missing if k.startswith("backbone.")
        }
        expected = {"backbone", "backbone.fpn"} | (set() if backbone_only else {"rpn", "roi_heads"})
        assert parts == expected
    other = "tv_resnet18" if arch == "tv_mobilenet_v2" else "tv_mobilenet_v2"
    with pytest.raises(StudentInitError, match="backbone_only loads the backbone alone"):
        load_detector_init(student, create_model(other, num_classes=1000).state_dict())


def test_init_source_of_a_spec(tmp_path):
    assert student_init_source({"student": {"arch": "resnet8"}}, None) is None
    spec = {"student": {"arch": "resnet8", "init": {"path": "a.pth", "backbone_only": True}}}
    assert student_init_source(spec, None) == ("a.pth", True)
    by_id = {"student": {"arch": "resnet8", "init": {"checkpoint_id": "ck_1"}}}
    assert student_init_source(by_id, tmp_path / "f") == (tmp_path / "f", False)
    with pytest.raises(ValueError, match="no file was resolved"):
        student_init_source(by_id, None)
