"""Uploading a WKD-L cost matrix (``kind=cost_matrix``) and naming it in a job."""

from __future__ import annotations

import io

import numpy as np
import torch
from safetensors.numpy import save

from tests.api.test_checkpoints import WEIGHTS, upload
from tests.api.test_jobs import VANILLA, submit


def matrix_form(num_classes: int = 10) -> dict:
    return {"kind": "cost_matrix", "num_classes": str(num_classes)}


def torch_file(tensor: torch.Tensor) -> bytes:
    buffer = io.BytesIO()
    torch.save(tensor, buffer)
    return buffer.getvalue()


def test_upload_checks_the_header_and_names_the_problem(client, alice, settings):
    good = upload(client, alice, save({"d": np.zeros((10, 10), np.float32)}), "m.safetensors",
                  form=matrix_form())  # fmt: skip
    assert good.status_code == 201, good.text
    assert (good.json()["kind"], good.json()["arch"]) == ("cost_matrix", "")
    cases = [
        (save({"d": np.zeros((10, 9), np.float32)}), "m.safetensors", "must be square"),
        (save({"d": np.zeros((5, 5), np.float32)}), "m.safetensors", "5x5 but num_classes is 10"),
        (save({"d": np.zeros((10, 10), np.int32)}), "m.safetensors", "floating-point"),
        (save({"a": np.zeros((10, 10), np.float32), "b": np.zeros(1, np.float32)}),
         "m.safetensors", "exactly one tensor"),
        (b"not a zip", "linear_cka.pth", "not a PyTorch checkpoint"),
    ]  # fmt: skip
    for content, name, message in cases:
        response = upload(client, alice, content, name, form=matrix_form())
        assert response.status_code == 422, (name, response.text)
        detail = response.json()["detail"][0]
        assert detail["loc"] == ["body", "file"] and message in detail["msg"]
    pth = upload(client, alice, torch_file(torch.zeros(10, 10)), "linear_cka.pth",
                 form=matrix_form())  # fmt: skip
    assert pth.status_code == 201, pth.text
    bad_kind = upload(client, alice, b"x", "m.pth", form={"kind": "weights", "num_classes": "10"})
    assert bad_kind.json()["detail"][0]["loc"] == ["body", "kind"]


def test_a_job_names_the_uploaded_matrix(client, alice, bob):
    matrix = upload(client, alice, torch_file(torch.zeros(10, 10)), "linear_cka.pth",
                    form=matrix_form()).json()["id"]  # fmt: skip
    teacher = upload(client, alice, WEIGHTS, "t.pth").json()["id"]
    body = VANILLA | {
        "method": "wkd_l",
        "teacher": {"checkpoint_id": teacher},
        "interrelations": {"source": "file", "checkpoint_id": matrix},
    }
    accepted = submit(client, alice, body)
    assert accepted.status_code == 202, accepted.text
    assert accepted.json()["spec"]["interrelations"]["checkpoint_id"] == matrix

    def error(response):
        assert response.status_code == 422, response.text
        detail = response.json()["detail"][0]
        return detail["loc"][1:], detail["msg"]

    swapped = body | {"interrelations": {"source": "file", "checkpoint_id": teacher}}
    assert error(submit(client, alice, swapped)) == (
        ["interrelations", "checkpoint_id"],
        f"checkpoint {teacher} is teacher weights, not a cost matrix",
    )
    as_teacher = body | {"teacher": {"checkpoint_id": matrix}}
    assert "not teacher weights" in error(submit(client, alice, as_teacher))[1]
    assert error(submit(client, bob, body))[0] == ["teacher", "checkpoint_id"]  # not bob's
    wide = upload(client, alice, save({"d": np.zeros((100, 100), np.float32)}), "m.safetensors",
                  form=matrix_form(100)).json()["id"]  # fmt: skip
    too_wide = body | {"interrelations": {"source": "file", "checkpoint_id": wide}}
    assert (
        "is 100x100 but dataset 'mnist5k' has 10 classes"
        in error(submit(client, alice, too_wide))[1]
    )
    no_source = body | {"interrelations": {"checkpoint_id": matrix}}
    assert error(submit(client, alice, no_source))[0] == ["interrelations", "source"]
