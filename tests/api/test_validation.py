"""Defects of issue 7: bad numbers and text are 422s naming the field, never 500s."""

from __future__ import annotations

import json

import pytest

from service.spec import MAX_SEED

VANILLA = {"method": "vanilla", "student": {"arch": "resnet8"}, "dataset": {"name": "mnist5k"},
           "training": {"epochs": 2, "batch_size": 32}}  # fmt: skip


def post_raw(client, headers, text: str):
    """Send ``text`` as the JSON body byte for byte (NaN and friends included)."""
    headers = headers | {"Content-Type": "application/json"}
    return client.post("/jobs", headers=headers, content=text.encode("utf-8"))


def with_training(**fields) -> dict:
    return VANILLA | {"training": VANILLA["training"] | fields}


@pytest.mark.parametrize("token", ["NaN", "Infinity", "-Infinity"])
@pytest.mark.parametrize(
    ("field", "template"),
    [("momentum", "{}"), ("weight_decay", "{}"), ("lr_milestones", "[1, {}]"), ("lr", "{}")],
)
def test_non_finite_numbers_are_422(client, alice, enqueued, token, field, template):
    body = json.dumps(with_training(**{field: "@"})).replace('"@"', template.format(token))
    response = post_raw(client, alice, body)
    assert response.status_code == 422, response.text
    error = response.json()["detail"][0]
    assert error["loc"][:3] == ["body", "training", field] and error["msg"]
    assert enqueued == []


@pytest.mark.parametrize(
    "body",
    [
        '{"method": "vanilla", "student": {"arch": "\\ud800"}, "dataset": {"name": "mnist5k"}}',
        '{"method": "\\udfff", "student": {"arch": "resnet8"}, "dataset": {"name": "mnist5k"}}',
        '{"preset": "x\\ud83d", "method": "vanilla"}',
        '{"method": "kd", "student": {"arch": "resnet8"}, "dataset": {"name": "mnist5k"},'
        ' "teacher": {"checkpoint_id": "ck_\\u0000"}}',
        '{"method": "vanilla", "student": {"arch": "resnet8"}, "dataset": {"name": "mnist5k"},'
        ' "params": {"ce_weight": NaN}}',
        '{"method": "vanilla", "student": {"arch": "resnet8"}, "dataset": {"name": "mnist5k"},'
        ' "params": {"\\ud800": 1}}',
    ],
    ids=["surrogate-arch", "surrogate-method", "surrogate-preset", "nul", "nan-param", "key"],
)
def test_unencodable_text_is_422_and_the_connection_stays(client, alice, body):
    response = post_raw(client, alice, body)
    assert response.status_code == 422, response.text
    assert response.json()["detail"][0]["msg"]
    assert client.get("/healthz").status_code == 200


@pytest.mark.parametrize(
    ("training", "loc"),
    [
        ({"seed": 2**80}, "seed"),
        ({"seed": MAX_SEED + 1}, "seed"),
        ({"seed": -1}, "seed"),
        ({"epochs": "5"}, "epochs"),
        ({"epochs": True}, "epochs"),
        ({"epochs": 5.0}, "epochs"),
        ({"batch_size": 10**30}, "batch_size"),
        ({"lr_milestones": [10**30]}, "lr_milestones"),
        ({"lr_milestones": list(range(1, 200))}, "lr_milestones"),
        ({"nesterov": "yes"}, "nesterov"),
        ({"lr": "0.1"}, "lr"),
        ({"num_workers": 17}, "num_workers"),  # over settings.max_num_workers (16)
    ],
)
def test_integers_are_strict_and_bounded(client, alice, training, loc):
    response = client.post("/jobs", json=with_training(**training), headers=alice)
    assert response.status_code == 422, response.text
    error = response.json()["detail"][0]
    assert error["loc"][:3] == ["body", "training", loc] and error["msg"]


@pytest.mark.parametrize(
    ("patch", "loc"),
    [
        ({"params": {"ce_weight": 10**400}}, ["body", "params", "ce_weight"]),
        ({"dataset": {"name": "mnist5k", "train_subset_per_class": 10**12}},
         ["body", "dataset", "train_subset_per_class"]),
        ({"dataset": {"name": "imagefolder", "num_classes": 10**12}},
         ["body", "dataset", "num_classes"]),
    ],
)  # fmt: skip
def test_other_numbers_are_bounded(client, alice, patch, loc):
    response = client.post("/jobs", json=VANILLA | patch, headers=alice)
    assert response.status_code == 422, response.text
    assert response.json()["detail"][0]["loc"] == loc


def test_largest_allowed_seed_and_workers_are_accepted(client, alice):
    response = client.post("/jobs", json=with_training(seed=MAX_SEED, num_workers=16),
                           headers=alice)  # fmt: skip
    assert response.status_code == 202, response.text
    assert response.json()["spec"]["training"]["seed"] == MAX_SEED


def test_idempotency_compares_the_resolved_spec(client, alice, enqueued):
    key = {"Idempotency-Key": "normalised"}
    first = client.post("/jobs", json=VANILLA, headers=alice | key)
    explicit = with_training(seed=0, momentum=0.9, nesterov=True) | {"params": {}}
    again = client.post("/jobs", json=explicit, headers=alice | key)
    assert again.status_code == 202, again.text
    assert again.json()["id"] == first.json()["id"] and len(enqueued) == 1
    different = client.post("/jobs", json=with_training(seed=1), headers=alice | key)
    assert different.status_code == 422 and "different body" in different.json()["detail"]


@pytest.mark.parametrize(
    ("training", "loc", "message"),
    [
        ({"warmup_epochs": -1}, "warmup_epochs", "greater than or equal to 0"),
        ({"warmup_epochs": 2}, "warmup_epochs", "the warm-up must end before the last epoch"),
        ({"mixup_alpha": -0.5}, "mixup_alpha", "greater than or equal to 0"),
        ({"optimizer": "lamb"}, "optimizer", "'sgd' or 'adamw'"),
        ({"label_smoothing": 1.0}, "label_smoothing", "less than 1"),
        ({"randaugment": "rand-x"}, "randaugment", "not a RandAugment policy"),
        ({"randaugment": "rand-m9"}, "randaugment", "only for cifar100_224"),
        ({"drop_path_rate": 0.1}, "drop_path_rate", "timm option"),
    ],
)
def test_training_recipe_options_are_checked(client, alice, enqueued, training, loc, message):
    response = client.post("/jobs", json=with_training(**training), headers=alice)
    assert response.status_code == 422, response.text
    error = response.json()["detail"][0]
    assert error["loc"][:3] == ["body", "training", loc] and message in error["msg"]
    assert enqueued == []


def test_ofa_kd_recipe_is_accepted_and_stored(client, alice, enqueued):
    recipe = {"optimizer": "adamw", "betas": [0.9, 0.999], "lr": 5e-4, "lr_schedule": "cosine",
              "warmup_epochs": 1, "warmup_lr": 5e-7, "min_lr": 1e-5, "label_smoothing": 0.1,
              "mixup_alpha": 0.8, "cutmix_alpha": 1.0, "grad_clip_norm": 5.0}  # fmt: skip
    response = client.post("/jobs", json=with_training(**recipe), headers=alice)
    assert response.status_code == 202, response.text
    stored = response.json()["spec"]["training"]
    assert {k: stored[k] for k in recipe} == recipe and len(enqueued) == 1
