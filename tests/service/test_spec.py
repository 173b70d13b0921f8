"""JobSpec: field checks against the catalog, cross-field checks, preset resolution."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from service import catalog
from service.spec import JobSpec, validate_job_spec
from service.spec_checks import teacher_class_errors

BASE = {
    "method": "wkd_l",
    "teacher": {"arch": "resnet32x4", "checkpoint_id": "ck_1"},
    "student": {"arch": "resnet8x4"},
    "dataset": {"name": "cifar100"},
}


def errors_of(data, **kwargs):
    with pytest.raises(ValidationError) as info:
        validate_job_spec(data, **kwargs)
    return {tuple(e["loc"]): e["msg"] for e in info.value.errors()}


def test_resolved_fills_method_defaults_and_coerces_types():
    spec = validate_job_spec(BASE | {"params": {"temperature": 2, "n_iter": 5}})
    expected = {n: p.default for n, p in catalog.METHODS["wkd_l"].params.items()}
    assert spec.params == expected | {"temperature": 2.0, "n_iter": 5}
    assert isinstance(spec.params["temperature"], float)
    stored = spec.to_stored()
    assert stored["training"]["epochs"] == 240 and stored["teacher"]["checkpoint_id"] == "ck_1"
    assert JobSpec.model_validate(stored).resolved().to_stored() == stored  # a fixed point


@pytest.mark.parametrize(
    ("patch", "loc"),
    [
        ({"student": {"arch": "resnet9000"}}, ("student", "arch")),
        ({"dataset": {"name": "cifar1000"}}, ("dataset", "name")),
        ({"method": "magic"}, ("method",)),
        ({"training": {"epochs": -3}}, ("training", "epochs")),
        ({"training": {"batch_size": 0}}, ("training", "batch_size")),
        ({"training": {"lr": 0}}, ("training", "lr")),
        ({"training": {"lr_milestones": [30, 20]}}, ("training", "lr_milestones")),
        ({"colour": "blue"}, ("colour",)),
        ({"training": {"epochz": 3}}, ("training", "epochz")),
        ({"params": {"temprature": 3.0}}, ("params", "temprature")),
        ({"params": {"n_iter": "ten"}}, ("params", "n_iter")),
        ({"teacher": None}, ("teacher",)),
        ({"teacher": {"arch": "resnet32x4"}}, ("teacher",)),
        ({"teacher": {"arch": "resnet32x4", "checkpoint_id": "c", "job_id": "j"}}, ("teacher",)),
        ({"teacher": {"arch": "tv_resnet34", "checkpoint_id": "c"}}, ("teacher", "arch")),
        ({"student": {"arch": "MobileNetV1"}}, ("student", "arch")),
        ({"dataset": {"name": "imagefolder"}}, ("dataset", "num_classes")),
        ({"dataset": {"name": "cifar100", "num_classes": 10}}, ("dataset", "num_classes")),
    ],
)
def test_invalid_specs_name_the_field(patch, loc):
    assert loc in errors_of(BASE | patch)


def test_vanilla_needs_no_teacher_and_refuses_one():
    vanilla = {"method": "vanilla", "student": {"arch": "resnet8"}, "dataset": {"name": "mnist5k"}}
    assert validate_job_spec(vanilla).teacher is None
    assert ("teacher",) in errors_of(vanilla | {"teacher": BASE["teacher"]})


def test_api_rejects_server_paths():
    data = BASE | {"teacher": {"arch": "resnet32x4", "path": "/etc/passwd"},
                   "dataset": {"name": "cifar100", "root": "/data"}}  # fmt: skip
    assert validate_job_spec(data).teacher.path == "/etc/passwd"  # the CLI may use paths
    errors = errors_of(data, for_api=True)
    assert ("teacher", "path") in errors and ("dataset", "root") in errors


def test_teacher_class_count_must_match_the_dataset():
    spec = validate_job_spec(BASE)
    assert teacher_class_errors(spec, 100) == []
    [(loc, message, value)] = teacher_class_errors(spec, 10)
    assert loc == ("teacher", "checkpoint_id") and "10 classes" in message and value == "ck_1"


PRESETS = {
    "cifar100/wkd_l/resnet32x4_resnet8x4": {
        "method": "wkd_l",
        "params": {"temperature": 8.0, "wkd_logit_weight": 600.0},
        "teacher": {"arch": "resnet32x4"},
        "student": {"arch": "resnet8x4"},
        "dataset": {"name": "cifar100"},
        "training": {"epochs": 240, "lr": 0.05, "batch_size": 64},
    }
}


def fake_presets(name):
    if name not in PRESETS:
        raise LookupError(f"unknown preset {name!r}")
    return dict(PRESETS[name])


def test_preset_fills_unset_fields_and_explicit_fields_win():
    body = {"preset": "cifar100/wkd_l/resnet32x4_resnet8x4",
            "teacher": {"checkpoint_id": "ck_9"}, "params": {"temperature": 4},
            "training": {"epochs": 2}}  # fmt: skip
    spec = validate_job_spec(body, for_api=True, get_preset=fake_presets)
    assert spec.method == "wkd_l" and spec.student.arch == "resnet8x4"
    assert spec.teacher.arch == "resnet32x4" and spec.teacher.checkpoint_id == "ck_9"
    assert spec.params["temperature"] == 4.0 and spec.params["wkd_logit_weight"] == 600.0
    assert (spec.training.epochs, spec.training.lr) == (2, 0.05)
    assert spec.preset == body["preset"]


def test_preset_errors_name_the_field():
    assert ("preset",) in errors_of({"preset": "nope"}, get_preset=fake_presets)
    # the preset's method parameters do not carry over to another method
    body = {"preset": "cifar100/wkd_l/resnet32x4_resnet8x4", "method": "kd",
            "teacher": {"checkpoint_id": "ck_9"}}  # fmt: skip
    spec = validate_job_spec(body, get_preset=fake_presets)
    assert set(spec.params) == set(catalog.METHODS["kd"].params)
    assert ("method",) in errors_of({"student": {"arch": "resnet8"},
                                     "dataset": {"name": "mnist5k"}})  # fmt: skip


def test_a_partial_student_or_dataset_takes_its_name_from_the_preset():
    body = {"preset": "cifar100/wkd_l/resnet32x4_resnet8x4", "teacher": {"checkpoint_id": "ck_9"},
            "dataset": {"train_subset_per_class": 50},
            "student": {"init": {"checkpoint_id": "ck_2"}}}  # fmt: skip
    spec = validate_job_spec(body, for_api=True, get_preset=fake_presets)
    assert (spec.dataset.name, spec.dataset.train_subset_per_class) == ("cifar100", 50)
    assert (spec.student.arch, spec.student.init.checkpoint_id) == ("resnet8x4", "ck_2")
    # an explicit name still wins, and without a preset the name is still required
    spec = validate_job_spec(body | {"dataset": {"name": "cifar10"}}, get_preset=fake_presets)
    assert spec.dataset.name == "cifar10"
    assert ("dataset", "name") in errors_of(BASE | {"dataset": {"train_subset_per_class": 5}})
    assert ("preset",) in errors_of(body | {"preset": "nope"}, get_preset=fake_presets)


def test_get_preset_reports_unknown_names():
    with pytest.raises(LookupError, match="no-such-preset"):
        catalog.get_preset("no-such-preset")
