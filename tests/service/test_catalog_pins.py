"""The torch-free catalog agrees with wkd_core: model and dataset registries, dataset info,
the distillers' keyword signatures, and every preset resolves into a valid spec."""

from __future__ import annotations

import inspect

import pytest

from service import catalog
from service.spec import validate_job_spec

PIPELINE_SUPPLIED = {"student", "teacher", "distance", "cost", "cost_source", "input_size"}


def test_architectures_match_the_model_registry():
    from wkd_core.detection import list_detectors
    from wkd_core.models import list_models

    assert set(catalog.ARCHITECTURES) == set(list_models()) | set(list_detectors())
    detection = {n for n, a in catalog.ARCHITECTURES.items() if a.input_kind == "detection"}
    assert detection == set(list_detectors())


def test_datasets_match_the_data_registry_and_info():
    from wkd_core.data import dataset_info, list_datasets
    from wkd_core.detection import detection_dataset_info, list_detection_datasets

    assert set(catalog.DATASETS) == set(list_datasets()) | set(list_detection_datasets())
    for name in list_detection_datasets():
        info, core = catalog.DATASETS[name], detection_dataset_info(name)
        assert info.input_kind == "detection", name
        assert (info.num_classes, info.image_size) == (core.num_classes, core.image_size), name
    for name, info in catalog.DATASETS.items():
        if info.input_kind == "detection":
            continue
        core = dataset_info(name)
        assert (info.num_classes, info.image_size) == (core.num_classes, core.image_size), name
        assert info.input_kind == ("imagenet" if core.image_size >= 128 else "cifar")


@pytest.mark.parametrize("method", sorted(catalog.METHODS))
def test_method_parameters_match_the_distiller_signature(method):
    from wkd_core.distillers import list_distillers
    from wkd_core.registry import DISTILLERS

    assert set(catalog.METHODS) == set(list_distillers())
    signature = inspect.signature(DISTILLERS.get(method))
    keywords = {
        name: p.default
        for name, p in signature.parameters.items()
        if p.kind is p.KEYWORD_ONLY and name not in PIPELINE_SUPPLIED
    }
    table = catalog.METHODS[method].params
    assert {n: p.default for n, p in table.items()} == keywords
    for name, info in table.items():
        assert isinstance(keywords[name], info.type), name


@pytest.mark.parametrize("method", sorted(catalog.DETECTION_METHODS))
def test_detection_parameters_are_keywords_of_the_detection_distiller(method):
    from wkd_core.detection.distill import DETECTION_METHODS, roi_distill_terms
    from wkd_core.detection.pipeline import TRAINING_PARAMS, TRANSFORM_PARAMS
    from wkd_core.detection.train import fit_detection

    assert set(catalog.DETECTION_METHODS) == set(DETECTION_METHODS)
    keywords = {**_keyword_defaults(roi_distill_terms), "kappa": 1.0}
    keywords |= {k: v for k, v in _keyword_defaults(fit_detection).items() if k in TRAINING_PARAMS}
    keywords |= {key: [] for key in TRANSFORM_PARAMS}  # set_train_sizes: empty = fixed size
    for name, info in catalog.DETECTION_METHODS[method].params.items():
        assert name in keywords, name
        assert isinstance(keywords[name], info.type) and isinstance(info.default, info.type), name
    loop = {k: keywords[k] for k in TRAINING_PARAMS}
    assert {k: catalog.DETECTION_METHODS[method].params[k].default for k in loop} == loop


def _keyword_defaults(function) -> dict:
    return {
        name: p.default
        for name, p in inspect.signature(function).parameters.items()
        if p.kind is p.KEYWORD_ONLY and p.default is not p.empty
    }


def test_every_preset_resolves_to_a_valid_spec():
    names = catalog.preset_names()
    assert names
    for name in names:
        spec = validate_job_spec(
            {"preset": name, "teacher": {"checkpoint_id": "ck_x"}}, for_api=True
        )
        assert spec.method in catalog.METHODS and spec.student is not None, name
