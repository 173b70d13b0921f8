"""JobSpec's training options of OFA-KD's recipe: ranges, where each applies, the warm-up
scaled with the epochs, and the off defaults that leave the released recipes unchanged."""

from __future__ import annotations

import inspect

import pytest
from pydantic import ValidationError

from service.spec import TrainingSpec, validate_job_spec
from service.spec_checks import AUGMENTABLE_DATASETS, RECIPE_DEFAULTS, check_randaugment

TINY = {
    "method": "kd",
    "teacher": {"arch": "resnet8", "checkpoint_id": "ck_1"},
    "student": {"arch": "vit_tiny_p4_32"},
    "dataset": {"name": "mnist5k"},
    "training": {"epochs": 4},
}
OFA = "cifar100_224/kd/timm_convnext_tiny_timm_deit_tiny_patch16_224"


def errors_of(data):
    with pytest.raises(ValidationError) as info:
        validate_job_spec(data)
    return {tuple(e["loc"]): e["msg"] for e in info.value.errors()}


def with_training(base=TINY, **fields):
    return base | {"training": base["training"] | fields}


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ({"warmup_epochs": -1}, "greater than or equal to 0"),
        ({"mixup_alpha": -0.1}, "greater than or equal to 0"),
        ({"cutmix_alpha": -1.0}, "greater than or equal to 0"),
        ({"optimizer": "lamb"}, "'sgd' or 'adamw'"),
        ({"lr_schedule": "linear"}, "'step' or 'cosine'"),
        ({"label_smoothing": 1.0}, "less than 1"),
        ({"mixup_prob": 1.5}, "less than or equal to 1"),
        ({"betas": [0.9]}, "at least 2"),
        ({"betas": [0.9, 1.0]}, "[0, 1)"),
        ({"eps": 0.0}, "greater than 0"),
        ({"grad_clip_norm": 0.0}, "greater than 0"),
        ({"drop_path_rate": 1.0}, "less than 1"),
        ({"randaugment": "rand-x9"}, "not a RandAugment policy"),
        ({"randaugment": "auto-m9"}, "not a RandAugment policy"),
    ],
)
def test_bad_values_name_the_field(fields, message):
    (name,) = fields
    errors = errors_of(with_training(**fields))
    assert message in errors[("training", name)]


@pytest.mark.parametrize(
    ("spec", "loc", "message"),
    [
        (with_training(randaugment="rand-m9"), "randaugment", "only for cifar100_224"),
        (with_training(random_erasing=0.25), "random_erasing", "only for cifar100_224"),
        (
            with_training(TINY | {"student": {"arch": "resnet8"}}, drop_path_rate=0.1),
            "drop_path_rate",
            "timm option",
        ),
        (with_training(warmup_epochs=4), "warmup_epochs", "before the last epoch"),
        (with_training(lr_schedule="cosine", lr=0.01, min_lr=0.1), "min_lr", "down to min_lr"),
    ],
)
def test_options_where_they_do_not_apply_are_refused(spec, loc, message):
    assert message in errors_of(spec)[("training", loc)]


def test_detection_refuses_the_recipe_options():
    base = validate_job_spec({"preset": "coco/kd/fasterrcnn_resnet101_fpn_fasterrcnn_resnet18_fpn",
                              "teacher": {"checkpoint_id": "ck_1"}}).to_stored()  # fmt: skip
    base["training"] |= {"optimizer": "adamw", "label_smoothing": 0.1}
    errors = errors_of(base)
    assert "not available for detection" in errors[("training", "optimizer")]
    assert ("training", "label_smoothing") in errors


def test_the_recipe_runs_on_a_small_pair():
    spec = validate_job_spec(
        with_training(
            optimizer="adamw", betas=[0.8, 0.99], lr_schedule="cosine", warmup_epochs=1,
            warmup_lr=1e-4, min_lr=1e-5, label_smoothing=0.1, mixup_alpha=0.8, cutmix_alpha=1.0,
            grad_clip_norm=5.0, drop_path_rate=0.1, decay_bias_and_norm=False, lr=1e-3,
        )
    )  # fmt: skip
    stored = spec.to_stored()["training"]
    assert stored["optimizer"] == "adamw" and stored["betas"] == [0.8, 0.99]
    assert stored["warmup_epochs"] == 1 and stored["drop_path_rate"] == 0.1


def test_off_defaults_are_the_trainers_and_leave_released_presets_alone():
    training = TrainingSpec()
    for name, off in RECIPE_DEFAULTS.items():
        assert getattr(training, name) == off, name
    assert (training.betas, training.eps, training.min_lr, training.warmup_lr) == (
        [0.9, 0.999], 1e-8, 0.0, 0.0
    )  # fmt: skip
    from wkd_core.train import TrainConfig

    config = TrainConfig()
    for name, off in RECIPE_DEFAULTS.items():
        if hasattr(config, name):
            assert getattr(config, name) == off, name
    released = validate_job_spec({"preset": "cifar100/wkd_l/resnet32x4_resnet8x4",
                                  "teacher": {"checkpoint_id": "ck_1"}}).training  # fmt: skip
    assert (released.optimizer, released.lr_schedule, released.label_smoothing) == (
        "sgd",
        "step",
        0,
    )


def test_ofa_preset_warmup_is_scaled_with_the_epochs_and_noted():
    spec = validate_job_spec({"preset": OFA, "teacher": {"checkpoint_id": "ck_1"},
                              "training": {"epochs": 30}})  # fmt: skip
    assert spec.training.warmup_epochs == 2  # 20 of 300 → 2 of 30
    assert any("warmup_epochs scaled from 20 to 2" in note for note in spec.notes)
    short = validate_job_spec({"preset": OFA, "teacher": {"checkpoint_id": "ck_1"},
                               "training": {"epochs": 2}})  # fmt: skip
    assert short.training.warmup_epochs == 1  # at least 1, below the epochs
    explicit = validate_job_spec({"preset": OFA, "teacher": {"checkpoint_id": "ck_1"},
                                  "training": {"epochs": 30, "warmup_epochs": 5}})  # fmt: skip
    assert explicit.training.warmup_epochs == 5


def test_the_randaugment_grammar_accepts_what_timm_parses():
    from timm.data.auto_augment import rand_augment_transform

    for policy in ("rand-m9-mstd0.5-inc1", "rand", "rand-n3-m10-p0.7", "rand-m7-mmax10-inc0"):
        check_randaugment(policy)
        rand_augment_transform(policy, {"translate_const": 100})
    for policy in ("rand-m9-", "rand-q1", "rnd-m9", "rand-inc2", "rand-m9-tweights"):
        with pytest.raises(ValueError, match="not a RandAugment policy"):
            check_randaugment(policy)


def test_augmentable_datasets_take_the_augmentation_options():
    from wkd_core.data.common import DATASETS
    from wkd_core.job_parts import AUGMENT_OPTIONS

    for name in AUGMENTABLE_DATASETS:
        assert set(AUGMENT_OPTIONS) <= set(inspect.signature(DATASETS.get(name)).parameters)


WKD_F = {"method": "wkd_f", "teacher": {"arch": "resnet8", "checkpoint_id": "ck_1"},
         "student": {"arch": "resnet8"}, "dataset": {"name": "mnist5k"}}  # fmt: skip


@pytest.mark.parametrize(
    ("spec", "loc", "words"),
    [(with_training(momentum=0.0), ("training", "nesterov"), "needs momentum > 0"),
     (WKD_F | {"params": {"divergence": "laplace_kl"}}, ("params", "mean_cov_ratio"),
      "no separate mean term"),  # the catalog's γ default is 2
     (WKD_F | {"params": {"divergence": "pmf_wd", "mean_cov_ratio": 3.0}},
      ("params", "mean_cov_ratio"), "set params.mean_cov_ratio to 1"),
     (WKD_F | {"method": "wkd_l", "interrelations": {"max_per_class": 1}},
      ("interrelations", "max_per_class"), "at least 2 per class")],
)  # fmt: skip
def test_values_that_cannot_go_together_are_refused_at_submit(spec, loc, words):
    """Each was accepted and failed the job at its first step, as an internal error."""
    errors = errors_of(spec)
    assert loc in errors and words in errors[loc], errors


def test_their_working_forms_are_accepted():
    validate_job_spec(with_training(momentum=0.0, nesterov=False))
    validate_job_spec(WKD_F | {"params": {"divergence": "laplace_kl", "mean_cov_ratio": 1.0}})
    validate_job_spec(WKD_F | {"params": {"divergence": "gaussian_kl", "mean_cov_ratio": 2.0}})
    centroids = {"source": "centroid", "max_per_class": 1}  # a centroid of one sample is fine
    validate_job_spec(WKD_F | {"method": "wkd_l", "interrelations": centroids})


def test_the_separable_divergences_are_the_losses():
    from service.catalog import SEPARABLE_DIVERGENCES
    from wkd_core.losses.feature_divergences import SEPARABLE

    assert set(SEPARABLE_DIVERGENCES) == set(SEPARABLE)
