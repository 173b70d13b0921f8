"""ETags and the rendered-document cache of GET /jobs/{id}, and the API paths no other test
exercised: the generic 500 handler, a missing artifact file (410), an unsafe artifact name
(404), an owner reading its own checkpoint, the body limit on uploads, job messages."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import psycopg
import pytest
from fastapi.testclient import TestClient
from sqlalchemy import event

from api.limits import BodyLimitMiddleware
from api.main import create_app
from service import crud
from service.messages import message_roots, public_message
from service.settings import Settings
from service.tables import FailureReason, JobStatus

POSTGRES_ONLY = pytest.param("postgres", marks=pytest.mark.postgres)
VANILLA = {"method": "vanilla", "student": {"arch": "resnet8"}, "dataset": {"name": "mnist5k"},
           "training": {"epochs": 2, "batch_size": 32}}  # fmt: skip


def _artifact(db, job_id, name, path=None):
    crud.add_artifact(db, job_id=job_id, name=name, kind="file", size=1, sha256="0" * 64,
                      path=path or f"{job_id}/{name}")  # fmt: skip


def test_etag_304_and_a_new_artifact_changes_the_document(client, alice, db):
    job_id = client.post("/jobs", json=VANILLA, headers=alice).json()["id"]
    first = client.get(f"/jobs/{job_id}", headers=alice)
    etag = first.headers["etag"]
    unchanged = client.get(f"/jobs/{job_id}", headers=alice | {"If-None-Match": etag})
    assert unchanged.status_code == 304 and unchanged.content == b""
    assert unchanged.headers["etag"] == etag
    assert client.get(f"/jobs/{job_id}", headers=alice | {"If-None-Match": "*"}).status_code == 304
    _artifact(db, job_id, "metrics.csv")  # no status change: only the artifacts table moves
    after = client.get(f"/jobs/{job_id}", headers=alice | {"If-None-Match": f"W/{etag}"})
    assert after.status_code == 200, "a cached document hid the new artifact"
    assert [a["name"] for a in after.json()["artifacts"]] == ["metrics.csv"]
    assert after.headers["etag"] != etag
    other = client.get(f"/jobs/{job_id}", headers=alice | {"If-None-Match": '"nope", "x"'})
    assert other.status_code == 200


def test_a_cancel_is_seen_through_the_cache(client, alice):
    job_id = client.post("/jobs", json=VANILLA, headers=alice).json()["id"]
    assert client.get(f"/jobs/{job_id}", headers=alice).json()["status"] == "queued"
    client.post(f"/jobs/{job_id}/cancel", headers=alice)
    assert client.get(f"/jobs/{job_id}", headers=alice).json()["status"] == "cancelled"


def _statements(client) -> list[str]:
    """The statements the API's synchronous read engine runs from now on (its thread path)."""
    seen: list[str] = []
    event.listen(client.app.state.read_engine, "before_cursor_execute",
                 lambda *args: seen.append(args[2]))  # fmt: skip
    return seen


def test_a_cached_poll_is_one_light_query_and_still_checks_the_key(client, alice, bob):
    job_id = client.post("/jobs", json=VANILLA, headers=alice).json()["id"]
    first = client.get(f"/jobs/{job_id}", headers=alice)  # renders and caches the document
    statements = _statements(client)
    again = client.get(f"/jobs/{job_id}", headers=alice)
    assert again.content == first.content and again.headers["etag"] == first.headers["etag"]
    if client.app.state.stamps is None:  # SQLite: one light query in a thread
        assert len(statements) == 1, statements
        assert "jobs.spec" not in statements[0]  # key, job id and updated_at: not the row
    else:  # PostgreSQL: checked on the event loop (api/stamps.py), no thread, no engine
        assert statements == []
    # the cached document is served only to its owner's live key
    assert client.get(f"/jobs/{job_id}", headers=bob).status_code == 404
    assert client.get(f"/jobs/{job_id}").status_code == 401
    wrong = {"Authorization": "Bearer wkd_not_a_key"}
    assert client.get(f"/jobs/{job_id}", headers=wrong).status_code == 401
    assert client.get("/jobs/job_000000000000000000000000", headers=alice).status_code == 404
    assert client.get("/jobs/..%2Fetc", headers=alice).status_code == 404


@pytest.mark.parametrize("database_url", [POSTGRES_ONLY], indirect=True)
def test_a_failing_async_check_falls_back_to_the_thread_path(client, alice, monkeypatch):
    stamps = client.app.state.stamps  # the async check exists on PostgreSQL only
    job_id = client.post("/jobs", json=VANILLA, headers=alice).json()["id"]
    first = client.get(f"/jobs/{job_id}", headers=alice)

    async def refused():
        raise psycopg.OperationalError("connection refused")

    monkeypatch.setattr(stamps, "_idle", [])
    monkeypatch.setattr(stamps, "_connect", refused)
    statements = _statements(client)
    again = client.get(f"/jobs/{job_id}", headers=alice)
    assert again.status_code == 200 and again.content == first.content
    assert len(statements) == 1  # the light query, through the engine in a thread
    assert client.get(f"/jobs/{job_id}", headers={"Authorization": "Bearer x"}).status_code == 401


def test_unhandled_error_is_a_generic_500_logged_once(settings, caplog):
    app = create_app(settings, enqueue=lambda _id: None)

    @app.get("/boom")
    def boom():
        raise RuntimeError("secret /srv/wkd/data detail")

    with TestClient(app, raise_server_exceptions=False) as client, caplog.at_level(logging.ERROR):
        response = client.get("/boom")
        assert client.get("/catalog").status_code == 200  # still serving
    assert response.status_code == 500
    assert response.json() == {"detail": "internal server error"}
    assert "secret" not in response.text
    assert [r.message for r in caplog.records if r.name == "api.errors"] == [
        "GET /boom: unhandled error"
    ]


def test_artifact_file_missing_is_410_and_unsafe_name_404(client, alice, db, settings):
    job_id = client.post("/jobs", json=VANILLA, headers=alice).json()["id"]
    _artifact(db, job_id, "metrics.csv")  # registered, but no file on disk
    gone = client.get(f"/jobs/{job_id}/artifacts/metrics.csv", headers=alice)
    assert gone.status_code == 410 and gone.json()["detail"] == "artifact file is missing"
    _artifact(db, job_id, "escape.txt", path="../../etc/passwd")  # a row pointing outside
    unsafe = client.get(f"/jobs/{job_id}/artifacts/escape.txt", headers=alice)
    assert unsafe.status_code == 404 and unsafe.json()["detail"] == "artifact not found"
    assert client.get(f"/jobs/{job_id}/artifacts/.hidden", headers=alice).status_code == 404


def test_owner_reads_its_own_checkpoint(client, alice):
    import numpy as np
    from safetensors.numpy import save

    blob = save({"fc.weight": np.zeros((10, 4), np.float32)})
    created = client.post("/checkpoints", headers=alice,
                          data={"arch": "resnet8", "num_classes": "10"},
                          files={"file": ("t.safetensors", blob)}).json()  # fmt: skip
    read = client.get(f"/checkpoints/{created['id']}", headers=alice)
    assert read.status_code == 200 and read.json() == created


def test_the_body_limit_middleware_guards_uploads(client, alice, settings):
    """Without the middleware, the handler would spool the whole body (and 413 later from
    save_stream): this pins that the 413 comes from the middleware, before any parsing."""
    assert any(m.cls is BodyLimitMiddleware for m in client.app.user_middleware)
    body = b"x" * (settings.max_upload_bytes + 128 * 1024)
    response = client.post("/checkpoints", headers=alice | {"Content-Type": "multipart/form-data;"
                           " boundary=zz"}, content=body)  # fmt: skip
    assert response.status_code == 413
    assert response.json()["detail"].startswith("request body exceeds")  # the middleware's
    assert response.headers["connection"] == "close"


def test_job_messages_never_show_server_paths_or_tracebacks(client, alice, db, settings):
    job_id = client.post("/jobs", json=VANILLA, headers=alice).json()["id"]
    message = (f"could not read {settings.data_dir.absolute()}/datasets/mnist5k/train.npz\n"
               "Traceback (most recent call last):\n  File \"/srv/app/x.py\", line 1")  # fmt: skip
    crud.finish_job(db, job_id=job_id, status=JobStatus.failed,
                    failure_reason=FailureReason.internal, message=message)  # fmt: skip
    shown = client.get(f"/jobs/{job_id}", headers=alice).json()["message"]
    assert shown == "could not read <server path>"
    listed = client.get("/jobs", headers=alice).json()["data"][0]["message"]
    assert listed == shown
    cancelled = client.post(f"/jobs/{job_id}/cancel", headers=alice).json()["message"]
    assert cancelled == shown
    # the event stream (what the web page reads) shows the same message
    with client.stream("GET", f"/jobs/{job_id}/events", headers=alice) as response:
        body = response.read().decode()
    states = [json.loads(line[len("data: "):]) for line in body.splitlines()
              if line.startswith("data: ") and '"status"' in line]  # fmt: skip
    assert states and all(state["message"] == shown for state in states)
    assert "Traceback" not in body and str(settings.data_dir.absolute()) not in body
    assert public_message("diverged at epoch 3 (loss nan)") == "diverged at epoch 3 (loss nan)"


def test_relative_service_folders_are_hidden_too(tmp_path):
    """``wkd serve``'s default folder is the relative ``.wkd``: paths built from it stay
    relative, and the API hides them as it hides absolute ones."""
    settings = Settings(data_dir=Path(".wkd"), checkpoint_dir=tmp_path / "teachers")
    roots = message_roots(settings)
    assert ".wkd" in roots and str(tmp_path / "teachers") in roots
    assert list(roots) == sorted(roots, key=len, reverse=True)  # a folder inside another: whole
    message = ("no file .wkd/datasets/mnist5k/train.npz; teacher "
               f"{tmp_path}/teachers/ck_1.pt; see my.wkd/notes and .wkdx/y")  # fmt: skip
    assert public_message(message, roots) == (
        "no file <server path>; teacher <server path>; see my.wkd/notes and .wkdx/y"
    )
    assert public_message("failed in .wkd", roots) == "failed in <server path>"
