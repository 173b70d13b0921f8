"""POST/GET /checkpoints: upload, checksum, validation, and the size limit (413)."""

from __future__ import annotations

import hashlib
import io

import numpy as np
import pytest
import torch
from safetensors.numpy import save

from wkd_client import Client

FORM = {"arch": "resnet8", "num_classes": "10"}


def torch_bytes(obj) -> bytes:
    buffer = io.BytesIO()
    torch.save(obj, buffer)
    return buffer.getvalue()


def state_dict(classes: int = 10) -> dict:
    return {"conv.weight": torch.randn(4, 3, 3, 3), "fc.weight": torch.randn(classes, 4),
            "fc.bias": torch.zeros(classes)}  # fmt: skip


WEIGHTS = torch_bytes(state_dict())


def upload(client, headers, content=WEIGHTS, name="teacher.pth", form=FORM):
    files = {"file": (name, content, "application/octet-stream")}
    return client.post("/checkpoints", headers=headers, data=form, files=files)


def test_upload_returns_id_and_sha256_and_is_listed(client, alice, bob, settings):
    content = torch_bytes({"model": state_dict(), "epoch": 240})  # RepDistiller's nesting
    response = upload(client, alice, content)
    assert response.status_code == 201, response.text
    body = response.json()
    assert body["id"].startswith("ck_") and body["sha256"] == hashlib.sha256(content).hexdigest()
    assert (body["size"], body["arch"], body["num_classes"]) == (len(content), "resnet8", 10)
    assert response.headers["location"] == f"/checkpoints/{body['id']}"
    stored = settings.checkpoint_dir / f"{body['id']}.pth"  # a server-generated name
    assert stored.read_bytes() == content
    assert [c["id"] for c in client.get("/checkpoints", headers=alice).json()["data"]] == [
        body["id"]
    ]
    assert client.get("/checkpoints", headers=bob).json()["data"] == []
    assert client.get(f"/checkpoints/{body['id']}", headers=bob).status_code == 404


def test_the_list_pages_newest_first_and_the_client_follows_the_pages(client, alice, settings):
    """GET /checkpoints pages like GET /jobs (the test server's page size is 5): none is
    lost past the first page; ``Client.checkpoints()`` and the web page follow the tokens."""
    ids = [upload(client, alice, name=f"t{i}.pth").json()["id"] for i in range(7)]
    first = client.get("/checkpoints", headers=alice).json()
    assert [c["id"] for c in first["data"]] == ids[::-1][:5] and first["next_page_token"]
    params = {"page_token": first["next_page_token"]}
    rest = client.get("/checkpoints", headers=alice, params=params).json()
    assert [c["id"] for c in rest["data"]] == ids[::-1][5:] and rest["next_page_token"] == ""
    two = client.get("/checkpoints", headers=alice, params={"page_size": 2}).json()
    assert len(two["data"]) == 2
    bad = client.get("/checkpoints", headers=alice, params={"page_token": "nonsense"})
    assert bad.status_code == 400
    remote = Client("http://testserver")
    remote._http = client  # the TestClient is an httpx.Client: the same requests, in process
    client.headers.update(alice)
    assert [c.id for c in remote.checkpoints()] == ids[::-1]
    assert [c.id for c in remote.checkpoints(limit=6)] == ids[::-1][:6]


def test_upload_needs_a_key_before_anything_is_parsed(client):
    assert upload(client, {}).status_code == 401


def test_upload_validation_names_the_field(client, alice, settings):
    cases = [
        ({"name": "teacher.pkl"}, ["body", "file"]),
        ({"form": {"arch": "resnet9000", "num_classes": "10"}}, ["body", "arch"]),
        ({"form": {"arch": "resnet8", "num_classes": "x"}}, ["body", "num_classes"]),
        ({"form": {"arch": "resnet8"}}, ["body", "num_classes"]),
        ({"form": {"arch": "resnet8", "num_classes": str(10**30)}}, ["body", "num_classes"]),
        ({"form": {"arch": "resnet8", "num_classes": str(10**12)}}, ["body", "num_classes"]),
        ({"form": {"arch": "resnet8", "num_classes": " 10"}}, ["body", "num_classes"]),
        ({"form": {"arch": "resnet8", "num_classes": "1"}}, ["body", "num_classes"]),
    ]
    for kwargs, loc in cases:
        response = upload(client, alice, **kwargs)
        assert response.status_code == 422 and response.json()["detail"][0]["loc"] == loc
    assert list(settings.checkpoint_dir.iterdir()) == []


def test_safetensors_classifier_is_cross_checked(client, alice, settings):
    blob = save(
        {"fc.weight": np.zeros((100, 64), np.float32), "fc.bias": np.zeros(100, np.float32)}
    )
    bad = upload(client, alice, blob, name="t.safetensors")
    assert bad.status_code == 422 and bad.json()["detail"][0]["loc"] == ["body", "num_classes"]
    assert list(settings.checkpoint_dir.iterdir()) == []  # the rejected file is removed
    good = upload(
        client, alice, blob, name="t.safetensors", form={"arch": "resnet8", "num_classes": "100"}
    )
    assert good.status_code == 201
    junk = upload(client, alice, b"\xff" * 64, name="t.safetensors")
    assert junk.status_code == 422 and junk.json()["detail"][0]["loc"] == ["body", "file"]


def test_upload_over_the_limit_is_413_by_content_length(client, alice, settings):
    response = upload(client, alice, b"x" * (settings.max_upload_bytes + 70 * 1024))
    assert response.status_code == 413 and "exceeds" in response.json()["detail"]
    assert list(settings.checkpoint_dir.iterdir()) == []


def test_upload_over_the_limit_is_413_while_streaming(client, alice, settings):
    """A chunked body has no Content-Length: the limit is counted as the bytes arrive."""
    boundary = "b0undary"
    head = (f"--{boundary}\r\nContent-Disposition: form-data; name=\"arch\"\r\n\r\nresnet8\r\n"
            f"--{boundary}\r\nContent-Disposition: form-data; name=\"num_classes\"\r\n\r\n10\r\n"
            f"--{boundary}\r\nContent-Disposition: form-data; name=\"file\"; filename=\"t.pth\"\r\n"
            "Content-Type: application/octet-stream\r\n\r\n").encode()  # fmt: skip
    sent = io.BytesIO()

    def chunks():
        yield head
        for _ in range(40):  # 40 × 8 KiB = 320 KiB, well past the 64 KiB + overhead limit
            sent.write(b"y" * 8192)
            yield b"y" * 8192
        yield f"\r\n--{boundary}--\r\n".encode()

    headers = alice | {"Content-Type": f"multipart/form-data; boundary={boundary}"}
    response = client.post("/checkpoints", headers=headers, content=chunks())
    assert response.status_code == 413
    assert list(settings.checkpoint_dir.iterdir()) == []


def test_json_bodies_have_a_small_limit(client, alice, settings):
    body = b'{"method": "vanilla", "pad": "' + b"x" * settings.max_json_bytes + b'"}'
    response = client.post(
        "/jobs", headers=alice | {"Content-Type": "application/json"}, content=body
    )
    assert response.status_code == 413


def test_pth_classifier_is_cross_checked(client, alice):
    bad = upload(client, alice, torch_bytes(state_dict(100)))
    assert bad.status_code == 422 and "100 outputs" in bad.json()["detail"][0]["msg"]


class _Boom:
    def __reduce__(self):
        import os

        return (os.system, ("true",))


def _truncated() -> bytes:
    return WEIGHTS[: len(WEIGHTS) // 2]


def _legacy() -> bytes:
    buffer = io.BytesIO()
    torch.save(state_dict(), buffer, _use_new_zipfile_serialization=False)
    return buffer.getvalue()


@pytest.mark.parametrize(
    ("content", "words"),
    [
        (b"", "empty"),
        (bytes(range(256)) * 40, "not a PyTorch checkpoint"),
        (b"PK\x03\x04" + b"\x00" * 100, "zip archive"),
        (_truncated(), "truncated"),
        (torch_bytes({"weights": _Boom()}), "posix.system"),
        (torch_bytes({"epoch": 3}), "no state dict"),
        (_legacy(), "legacy"),
    ],
    ids=["empty", "random", "bad-zip", "truncated", "os.system", "no-tensors", "legacy"],
)
def test_unusable_pth_is_refused_at_upload(client, alice, settings, content, words):
    response = upload(client, alice, content)
    assert response.status_code == 422, response.text
    error = response.json()["detail"][0]
    assert error["loc"] == ["body", "file"] and words in error["msg"]
    assert list(settings.checkpoint_dir.iterdir()) == []
