"""GET /catalog and GET /healthz."""

from __future__ import annotations

from fastapi.testclient import TestClient

from api.main import create_app
from service import catalog
from service.settings import Settings


def test_catalog_lists_every_name_with_method_parameters(client):
    body = client.get("/catalog").json()
    assert set(body["architectures"]) == set(catalog.ARCHITECTURES)
    assert body["architectures"]["tv_resnet18"]["input_kind"] == "imagenet"
    assert body["datasets"]["mnist5k"] == {
        "num_classes": 10,
        "image_size": 32,
        "input_kind": "cifar",
    }
    assert body["datasets"]["imagefolder"]["num_classes"] is None
    kd = body["methods"]["kd"]
    assert kd["needs_teacher"] and kd["params"]["temperature"]["default"] == 4.0
    assert not body["methods"]["vanilla"]["needs_teacher"]


def test_healthz_pings_the_database(client, tmp_path):
    assert client.get("/healthz").json() == {"status": "ok", "database": "ok", "broker": "ok"}
    broken = Settings(data_dir=tmp_path, reaper_interval_s=0,
                      database_url="postgresql+psycopg://nobody@127.0.0.1:1/none")  # fmt: skip
    with TestClient(create_app(broken, enqueue=lambda _id: None)) as down:
        response = down.get("/healthz")
    assert response.status_code == 503 and response.json()["status"] == "unavailable"


def test_openapi_documents_the_endpoints(client):
    paths = client.get("/openapi.json").json()["paths"]
    for path in ("/jobs", "/jobs/{job_id}", "/jobs/{job_id}/cancel", "/jobs/{job_id}/metrics",
                 "/jobs/{job_id}/artifacts", "/jobs/{job_id}/artifacts/{name}", "/checkpoints",
                 "/catalog", "/healthz"):  # fmt: skip
        assert path in paths
    assert "multipart/form-data" in paths["/checkpoints"]["post"]["requestBody"]["content"]


def test_openapi_documents_errors_enums_and_the_preset_rule(client):
    document = client.get("/openapi.json").json()
    paths, schemas = document["paths"], document["components"]["schemas"]
    expected = {("/jobs", "post"): {"400", "401", "409", "413", "422", "429", "503"},
                ("/jobs", "get"): {"400", "401", "422", "503"},
                ("/jobs/{job_id}", "get"): {"304", "401", "404", "503"},
                ("/jobs/{job_id}/artifacts/{name}", "get"): {"401", "404", "410", "503"},
                ("/checkpoints", "post"): {"400", "401", "413", "422", "503"},
                ("/healthz", "get"): {"200", "503"}}  # fmt: skip
    for (path, method), codes in expected.items():
        responses = paths[path][method]["responses"]
        assert codes <= set(responses), (path, method, set(responses))
    error = paths["/jobs"]["post"]["responses"]["422"]["content"]["application/json"]["schema"]
    assert error == {"$ref": "#/components/schemas/ErrorBody"}
    spec = schemas["JobSpec"]
    assert {"required": ["method", "student", "dataset"]} in spec["anyOf"]
    assert "preset" in spec["properties"]["student"]["description"]
    assert spec["properties"]["method"]["enum"] == list(catalog.METHODS)
    assert schemas["StudentSpec"]["properties"]["arch"]["enum"] == list(catalog.ARCHITECTURES)
    assert schemas["DatasetSpec"]["properties"]["name"]["enum"] == list(catalog.DATASETS)
    assert schemas["TrainingSpec"]["properties"]["seed"]["maximum"] == 2**32 - 1
