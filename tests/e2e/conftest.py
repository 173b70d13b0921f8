"""End-to-end fixtures: the two stacks of :mod:`stacks` (real processes) and a teacher
trained here on mnist5k."""

from __future__ import annotations

from pathlib import Path

import pytest
from stacks import Stack, embedded_stack, postgres_redis_stack


@pytest.fixture(scope="module")
def postgres_redis(tmp_path_factory):
    with postgres_redis_stack(tmp_path_factory.mktemp("e2e-pg")) as stack:
        yield stack


@pytest.fixture(scope="module")
def embedded(tmp_path_factory):
    with embedded_stack(tmp_path_factory.mktemp("e2e-embedded")) as stack:
        yield stack


@pytest.fixture(scope="module", params=["postgres_redis", "embedded"])
def stack(request) -> Stack:
    return request.getfixturevalue(request.param)


@pytest.fixture(scope="session")
def teacher_file(tmp_path_factory) -> Path:
    """A resnet8 teacher trained here on mnist5k (2 short epochs), as safetensors."""
    from wkd_core.pipeline import run_job

    out = tmp_path_factory.mktemp("teacher")
    spec = {"method": "vanilla", "params": {}, "student": {"arch": "resnet8"},
            "dataset": {"name": "mnist5k", "train_subset_per_class": 100},
            "training": {"epochs": 2, "batch_size": 32, "lr": 0.05, "lr_milestones": [1],
                         "num_workers": 0, "seed": 0}}  # fmt: skip
    result = run_job(spec, out_dir=out)
    assert result.best_top1 > 25  # it learned something (chance is 10%)
    return result.artifacts["student.safetensors"]
