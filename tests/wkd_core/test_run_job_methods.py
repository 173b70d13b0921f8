"""Every method runs end to end through ``run_job`` on the real mnist5k digits, on both paths:
the eager reference loop with host loaders (``fast: false``) and the fast path
(``fast: true``: the captured step, here run eagerly on the CPU, and device-resident data)."""

from __future__ import annotations

import math

import pytest

from wkd_core.pipeline import run_job

TERMS = {
    "vanilla": {"loss_ce"},
    "kd": {"loss_ce", "loss_kd"},
    "dkd": {"loss_ce", "loss_dkd"},
    "wkd_l": {"loss_ce", "loss_target", "loss_wd"},
    "wkd_f": {"loss_ce", "loss_wkd_f"},
    "wkd_lf": {"loss_ce", "loss_target", "loss_wd", "loss_wkd_f"},
}
PARAMS = {  # small CIFAR-style settings (the presets' ImageNet defaults need 224×224)
    "wkd_l": {"temperature": 4.0, "wkd_logit_weight": 10.0},
    "wkd_f": {"projector": "conv1x1", "spatial_grid": 1, "wkd_feat_weight": 0.05},
    "wkd_lf": {"projector": "conv1x1", "spatial_grid": 1, "temperature": 4.0},
}


def spec(method: str, *, fast: bool, per_class: int = 6) -> dict:
    return {
        "method": method,
        "params": dict(PARAMS.get(method, {})),
        "student": {"arch": "resnet8"},
        "teacher": {"arch": "resnet8"},
        "dataset": {"name": "mnist5k", "train_subset_per_class": per_class},
        "interrelations": {"max_per_class": 4},
        "training": {"epochs": 1, "batch_size": 16, "lr": 0.05, "lr_milestones": [1],
                     "num_workers": 0, "seed": 0, "fast": fast},
    }  # fmt: skip


@pytest.fixture(scope="module")
def teacher(tmp_path_factory):
    result = run_job(
        spec("vanilla", fast=False, per_class=10), out_dir=tmp_path_factory.mktemp("t")
    )
    return result.artifacts["student.safetensors"]


@pytest.mark.slow
@pytest.mark.parametrize("fast", [False, True], ids=["eager", "fast"])
@pytest.mark.parametrize("method", list(TERMS))
def test_every_method_runs_through_run_job(tmp_path, teacher, method, fast):
    path = None if method == "vanilla" else teacher
    result = run_job(spec(method, fast=fast), out_dir=tmp_path, teacher_path=path)
    (epoch,) = result.history
    assert set(epoch.loss_terms) == TERMS[method]
    assert all(math.isfinite(v) for v in epoch.loss_terms.values())
    assert math.isfinite(epoch.train_loss) and 0.0 <= epoch.test_top1 <= 100.0
    assert {"student.safetensors", "manifest.json", "metrics.csv"} <= set(result.artifacts)


@pytest.mark.parametrize(("shape", "size"), [("cifar", 32), ("imagenet", 224)])
def test_synthetic_dataset_options_reach_the_model_and_the_data(tmp_path, shape, size):
    """``dataset.num_classes`` and ``shape`` of the synthetic set shape the student and the
    labels (the student once kept the shape's 100 or 1,000 classes, its labels up to 99)."""
    from safetensors.torch import load_file

    from wkd_core.job_parts import build_datasets

    job = {"method": "vanilla", "student": {"arch": "resnet8"},
           "dataset": {"name": "synthetic", "length": 6, "num_classes": 7, "shape": shape},
           "training": {"epochs": 1, "batch_size": 3, "lr": 0.05, "lr_milestones": [],
                        "seed": 0, "fast": False}}  # fmt: skip
    train, _plain, test = build_datasets(job, None)
    assert {train[i][1] for i in range(len(train))} <= set(range(7))
    assert tuple(test[0][0].shape) == (3, size, size)
    run_job(job, out_dir=tmp_path, device="cpu")
    weights = load_file(str(tmp_path / "student.safetensors"))
    assert weights["fc.weight"].shape[0] == 7
