"""JobSpec for ``task: detection``: the default task stays classification, detection jobs
take detection datasets and detectors on both sides, and the detection parameter tables."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from service import catalog
from service.spec import validate_job_spec
from service.spec_checks import teacher_class_errors

DET = {
    "task": "detection",
    "method": "wkd_lf",
    "teacher": {"arch": "fasterrcnn_small_fpn", "checkpoint_id": "ck_1"},
    "student": {"arch": "fasterrcnn_tiny_fpn"},
    "dataset": {"name": "shapes_mini"},
}


def errors_of(data, **kwargs):
    with pytest.raises(ValidationError) as info:
        validate_job_spec(data, **kwargs)
    return {tuple(e["loc"]): e["msg"] for e in info.value.errors()}


def test_classification_stays_the_default():
    spec = validate_job_spec({"method": "vanilla", "student": {"arch": "resnet8"},
                              "dataset": {"name": "cifar100"}})  # fmt: skip
    assert spec.task == "classification"
    assert spec.params == {"ce_weight": 1.0}


def test_detection_job_resolves_with_detection_defaults():
    spec = validate_job_spec(DET | {"params": {"spatial_grid": 6, "wkd_logit_weight": 5}},
                             for_api=True)  # fmt: skip
    table = catalog.DETECTION_METHODS["wkd_lf"].params
    assert spec.params == {n: p.default for n, p in table.items()} | {
        "spatial_grid": 6, "wkd_logit_weight": 5.0}  # fmt: skip
    assert "projector" not in spec.params and spec.to_stored()["task"] == "detection"


@pytest.mark.parametrize(
    ("patch", "loc"),
    [
        ({"student": {"arch": "resnet8"}}, ("student", "arch")),  # a classifier student
        ({"teacher": {"arch": "resnet32x4", "checkpoint_id": "ck_1"}}, ("teacher", "arch")),
        ({"dataset": {"name": "cifar100"}}, ("dataset", "name")),  # no boxes
        ({"task": "classification"}, ("task",)),  # a detection dataset needs the task
        ({"task": "segmentation"}, ("task",)),
        ({"params": {"projector": "conv1x1"}}, ("params", "projector")),  # not a detection one
        ({"params": {"spatial_grid": 7}}, ("params", "spatial_grid")),  # 1-position cells
        ({"dataset": {"name": "shapes", "train_subset_per_class": 5}},
         ("dataset", "train_subset_per_class")),
        ({"params": {"train_min_sizes": 800}}, ("params", "train_min_sizes")),  # not a list
        ({"params": {"train_min_sizes": [640, 0]}}, ("params", "train_min_sizes")),
        ({"params": {"train_min_sizes": [640, 800.0]}}, ("params", "train_min_sizes")),
        ({"params": {"train_min_sizes": [True]}}, ("params", "train_min_sizes")),
        ({"params": {"train_min_sizes": list(range(600, 617))}}, ("params", "train_min_sizes")),
        ({"student": {"arch": "fasterrcnn_tiny_fpn", "init": {}}}, ("student", "init")),
        ({"training": {"gpus": 2}}, ("training", "gpus")),  # one process, one GPU
        ({"method": "fitnet"}, ("method",)),  # no detection form (a 500 once)
        ({"method": "kd", "generations": 2}, ("generations",)),
        ({"method": "wkd_l", "interrelations": {"source": "centroid"}},
         ("interrelations", "source")),  # no class centroids of RoIs
        ({"method": "wkd_l", "interrelations": {"source": "file", "checkpoint_id": "ck_1"}},
         ("interrelations", "checkpoint_id")),  # the detection pipeline takes no upload
        # the classification ranges: a zero T or ε would divide by zero at run time
        ({"params": {"temperature": 0}}, ("params", "temperature")),
        ({"params": {"eps": 0.0}}, ("params", "eps")),
        ({"params": {"kappa": 1e6}}, ("params", "kappa")),
        ({"params": {"n_iter": 0}}, ("params", "n_iter")),
        ({"params": {"feat_eps": 0.0}}, ("params", "feat_eps")),
        ({"params": {"warmup_factor": 2.0}}, ("params", "warmup_factor")),
        ({"method": "kd", "params": {"temperature": -1.0}}, ("params", "temperature")),
        ({"method": "dkd", "params": {"temperature": 0.0}}, ("params", "temperature")),
    ],
)  # fmt: skip
def test_invalid_detection_jobs_name_the_field(patch, loc):
    assert loc in errors_of(DET | patch, for_api=True)


def test_teacher_class_count_is_the_object_class_count():
    spec = validate_job_spec(DET)
    assert teacher_class_errors(spec, 4) == []
    [(loc, message, _)] = teacher_class_errors(spec, 80)
    assert loc == ("teacher", "checkpoint_id") and "80 classes" in message


def test_catalog_lists_detection():
    public = catalog.as_public_dict()
    assert public["tasks"] == ["classification", "detection"]
    assert public["architectures"]["fasterrcnn_resnet101_fpn"]["input_kind"] == "detection"
    assert public["datasets"]["coco"] == {"num_classes": 80, "image_size": 800,
                                          "input_kind": "detection"}  # fmt: skip
    assert set(public["detection_methods"]) == set(public["methods"]) - {"fitnet"}
    assert any(name.startswith("coco/") for name in public["presets"])


def test_detector_safetensors_header_counts_object_classes():
    from service.storage import classifier_outputs

    header = {"roi_heads.box_predictor.cls_score.weight": {"shape": [81, 1024]},
              "roi_heads.box_head.fc6.weight": {"shape": [1024, 12544]}}  # fmt: skip
    assert classifier_outputs(header) == 80
    # a 0-d (or 1-d) cls_score tells nothing: unknown, not an IndexError (a 500 once)
    assert classifier_outputs({"roi_heads.box_predictor.cls_score.weight": {"shape": []}}) is None
    assert classifier_outputs({"roi_heads.box_predictor.cls_score.weight": {"shape": [5]}}) is None


def test_multiscale_sizes_are_a_detection_loop_parameter():
    spec = validate_job_spec(DET | {"params": {"train_min_sizes": [64, 80, 96]}}, for_api=True)
    assert spec.params["train_min_sizes"] == [64, 80, 96]
    assert validate_job_spec(DET).params["train_min_sizes"] == []  # default: the fixed size
    shown = catalog.as_public_dict()["detection_methods"]["vanilla"]["params"]["train_min_sizes"]
    assert shown == {"type": "list", "default": [], "choices": None, "minimum": 1,
                     "maximum": 4096, "exclusive_minimum": False, "max_items": 16}  # fmt: skip
    preset = validate_job_spec(
        {"preset": "coco/wkd_lf/fasterrcnn_resnet101_fpn_fasterrcnn_resnet18_fpn",
         "teacher": {"checkpoint_id": "ck_1"}}, for_api=True)  # fmt: skip
    assert preset.params["train_min_sizes"] == [640, 672, 704, 736, 768, 800]


def test_student_init_compatibility():
    check = catalog.student_init_error
    assert check("resnet8", "resnet8", 10, 10, backbone_only=False) is None
    assert "set backbone_only" in check("resnet8", "resnet8", 100, 10, backbone_only=False)
    assert check("resnet8", "resnet8", 100, 10, backbone_only=True) is None
    assert "do not fit student 'resnet14'" in check("resnet14", "resnet8", 10, 10,
                                                    backbone_only=True)  # fmt: skip
    imagenet = ("fasterrcnn_resnet18_fpn", "tv_resnet18", 1000, 4)
    assert check(*imagenet, backbone_only=False) is None  # a classifier: its backbone only
    assert check("fasterrcnn_resnet50_fpn", "tv_resnet18", 1000, 4, backbone_only=True)


def test_a_detection_job_without_a_preset_gets_the_coco_schedule():
    training = validate_job_spec(DET).training  # COCO's 1x, not classification's 240 epochs
    assert (training.epochs, training.lr_milestones, training.batch_size) == (12, [8, 11], 8)
    assert (training.lr, training.weight_decay, training.nesterov) == (0.01, 1e-4, False)
    short = validate_job_spec(DET | {"training": {"epochs": 4}})
    assert (short.training.lr_milestones, short.training.lr) == ([3], 0.01)  # 8·4/12 → 3
    assert any("lr_milestones scaled from [8, 11] to [3]" in note for note in short.notes)
    own = validate_job_spec(DET | {"training": {"epochs": 30, "lr_milestones": [20],
                                                "batch_size": 2}})  # fmt: skip
    assert (own.training.lr_milestones, own.training.batch_size) == ([20], 2)
    classification = validate_job_spec({"method": "vanilla", "student": {"arch": "resnet8"},
                                        "dataset": {"name": "cifar100"}})  # fmt: skip
    assert (classification.training.epochs, classification.training.batch_size) == (240, 64)
