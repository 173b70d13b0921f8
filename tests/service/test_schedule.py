"""A job that sets ``training.epochs`` alone gets the recipe's schedule scaled to its epochs."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from service.schedule import scaled_milestones
from service.spec import validate_job_spec

PRESET = "cifar100/wkd_l/resnet32x4_resnet8x4"
TEACHER = {"arch": "resnet32x4", "path": "t.pth"}


def test_milestones_scale_without_repeats_and_stay_inside_the_run() -> None:
    assert scaled_milestones([150, 180, 210], 5 / 240, 5) == [3, 4]
    assert scaled_milestones([150, 180, 210], 24 / 240, 24) == [15, 18, 21]
    assert scaled_milestones([150, 180, 210], 1 / 240, 1) == []


def test_preset_with_fewer_epochs_scales_milestones_and_decay_start() -> None:
    spec = validate_job_spec({"preset": PRESET, "teacher": TEACHER, "training": {"epochs": 24}})
    assert spec.training.lr_milestones == [15, 18, 21]
    assert spec.params["cosine_decay_epoch"] == 15
    assert any("lr_milestones scaled from [150, 180, 210] to [15, 18, 21]" in n for n in spec.notes)
    assert any("cosine_decay_epoch scaled from 150 to 15" in n for n in spec.notes)


def test_explicit_settings_win_and_the_full_recipe_is_untouched() -> None:
    spec = validate_job_spec(
        {
            "preset": PRESET, "teacher": TEACHER, "params": {"cosine_decay_epoch": 2},
            "training": {"epochs": 24, "lr_milestones": [10]},
        }
    )  # fmt: skip
    assert spec.training.lr_milestones == [10] and spec.params["cosine_decay_epoch"] == 2
    assert spec.notes == []
    full = validate_job_spec({"preset": PRESET, "teacher": TEACHER})
    assert full.training.lr_milestones == [150, 180, 210] and full.notes == []


def test_dkd_warmup_scales_from_the_method_default() -> None:
    spec = validate_job_spec(
        {
            "method": "dkd", "teacher": {"arch": "resnet8", "path": "t.pth"},
            "student": {"arch": "resnet8"}, "dataset": {"name": "mnist5k"},
            "training": {"epochs": 12},
        }
    )  # fmt: skip
    assert spec.params["warmup_epochs"] == 1 and spec.training.lr_milestones == [8, 9, 10]
    stored = spec.to_stored()
    assert validate_job_spec(stored).to_stored() == stored  # resolving again changes nothing


def test_the_api_refuses_notes_from_a_client() -> None:
    with pytest.raises(ValidationError, match="written by the service"):
        validate_job_spec({"preset": PRESET, "notes": ["x"]}, for_api=True)
