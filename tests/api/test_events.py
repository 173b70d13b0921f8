"""GET /jobs/{id}/events under TestClient (SQLite and PostgreSQL): a job played to its end by
the test, then streamed whole and resumed; the live stream runs against uvicorn in tests/e2e."""

from __future__ import annotations

import json

from service import accounts, crud
from service.tables import JobStatus

VANILLA = {"method": "vanilla", "student": {"arch": "resnet8"}, "dataset": {"name": "mnist5k"},
           "training": {"epochs": 2, "batch_size": 32}}  # fmt: skip


def metrics(epoch: int, top1: float) -> dict:
    return {"epoch": epoch, "lr": 0.05, "train_loss": 2.0 / epoch, "train_top1": top1 - 5,
            "test_top1": top1, "test_top5": 90.0, "test_loss": 1.0 / epoch,
            "loss_terms": {"loss_ce": 2.0 / epoch}, "seconds": 1.5}  # fmt: skip


def parse_sse(text: str) -> list[dict]:
    """Events as {"id", "event", "data"} (comments and the retry field skipped)."""
    events = []
    for block in text.split("\n\n"):
        fields = dict(line.split(": ", 1) for line in block.splitlines() if ": " in line
                      and not line.startswith(":"))  # fmt: skip
        if "data" in fields:
            events.append(fields | {"data": json.loads(fields["data"])})
    return events


def stream(client, job_id, headers, last_event_id=None):
    extra = {"Last-Event-ID": last_event_id} if last_event_id else {}
    with client.stream("GET", f"/jobs/{job_id}/events", headers=headers | extra) as response:
        assert response.status_code == 200
        assert response.headers["content-type"].startswith("text/event-stream")
        return parse_sse(response.read().decode())


def played_job(client, headers, db) -> str:
    """A job taken through a worker's steps: claim, running, progress, two epochs, success."""
    job_id = client.post("/jobs", json=VANILLA, headers=headers).json()["id"]
    assert crud.claim_job(db, job_id=job_id, worker_id="w") and crud.set_running(db, job_id=job_id)
    assert crud.record_batch_progress(db, job_id=job_id, batch=3, batches=8)
    doc = client.get(f"/jobs/{job_id}", headers=headers).json()
    assert doc["progress"] == {"epoch": 0, "total": 2, "batch": 3, "batches": 8}
    crud.record_epoch(db, job_id=job_id, metrics=metrics(1, 40.0))
    crud.record_batch_progress(db, job_id=job_id, batch=5, batches=8)
    crud.record_epoch(db, job_id=job_id, metrics=metrics(2, 55.0))
    crud.finish_job(db, job_id=job_id, status=JobStatus.succeeded, message="done")
    return job_id


def test_finished_job_streams_its_epochs_and_end_then_closes(client, alice, db):
    job_id = played_job(client, alice, db)
    events = stream(client, job_id, alice)
    assert [(e["event"], e["id"]) for e in events] == [
        ("epoch", "1.1.0.0"), ("epoch", "1.2.0.0"), ("state", "1.2.5.0")]  # fmt: skip
    curve = client.get(f"/jobs/{job_id}/metrics", headers=alice).json()["data"]
    assert [{k: v for k, v in e["data"].items() if k != "total"} for e in events[:2]] == curve
    end = events[-1]["data"]
    assert end["status"] == "succeeded" and end["is_terminal"] and end["message"] == "done"
    assert (end["best_top1"], end["best_epoch"], end["progress"]["epoch"]) == (55.0, 2, 2)
    # Resumed after the first epoch: the rest only; after the end: nothing.
    assert [e["id"] for e in stream(client, job_id, alice, "1.1.0.0")] == ["1.2.0.0", "1.2.5.0"]
    assert stream(client, job_id, alice, "1.2.5.0") == []


def test_a_malformed_last_event_id_streams_from_the_beginning(client, alice, db):
    """Too long, a non-ASCII digit (latin-1 ``²``, which ``str.isdigit`` takes and ``int``
    refuses), too many digits for a 64-bit column, too few parts: the whole stream."""
    job_id = played_job(client, alice, db)
    whole = [e["id"] for e in stream(client, job_id, alice)]
    assert whole == ["1.1.0.0", "1.2.0.0", "1.2.5.0"]
    for bad in ("1.1.0.0" + "0" * 100, b"1.1.0.\xb2", "1." + "9" * 19 + ".0.0", "1.1.0", "x"):
        assert [e["id"] for e in stream(client, job_id, alice, bad)] == whole, bad
    eighteen = "1." + "9" * 18 + ".0.0"  # the largest accepted: past every epoch
    assert stream(client, job_id, alice, eighteen) == []


def test_resume_from_a_running_cursor_gets_only_the_new_state(client, alice, db):
    job_id = client.post("/jobs", json=VANILLA, headers=alice).json()["id"]
    crud.claim_job(db, job_id=job_id, worker_id="w")
    crud.set_running(db, job_id=job_id)
    crud.record_epoch(db, job_id=job_id, metrics=metrics(1, 40.0))
    crud.record_batch_progress(db, job_id=job_id, batch=6, batches=8)
    crud.request_cancel(db, job_id=job_id)
    crud.finish_job(db, job_id=job_id, status=JobStatus.cancelled)
    # Only the last state of a finished job is replayed, so stream from a running cursor.
    events = stream(client, job_id, alice, "1.1.3.2")
    assert [(e["event"], e["id"]) for e in events] == [("state", "1.1.5.0")]
    assert events[0]["data"]["status"] == "cancelled"


def test_events_need_the_owner_key(client, alice, bob):
    job_id = client.post("/jobs", json=VANILLA, headers=alice).json()["id"]
    assert client.get(f"/jobs/{job_id}/events").status_code == 401
    assert client.get(f"/jobs/{job_id}/events", headers=bob).status_code == 404
    assert client.get("/jobs/job_missing/events", headers=alice).status_code == 404


def test_a_stream_of_a_running_job_closes_after_its_maximum_duration(settings, enqueued):
    from fastapi.testclient import TestClient

    from api.main import create_app
    from service.db import make_sessionmaker

    short = settings.model_copy(update={"events_max_stream_s": 1.0, "events_poll_s": 0.1})
    with TestClient(create_app(short, enqueue=enqueued)) as client:
        with make_sessionmaker(client.app.state.engine)() as db:
            headers = {"Authorization": f"Bearer {accounts.create_api_key(db, name='a')[1]}"}
            job_id = client.post("/jobs", json=VANILLA, headers=headers).json()["id"]
            crud.claim_job(db, job_id=job_id, worker_id="w")
            crud.set_running(db, job_id=job_id)
            crud.record_batch_progress(db, job_id=job_id, batch=2, batches=8)
        events = stream(client, job_id, headers)  # returns: the server closed it
    assert [(e["event"], e["id"]) for e in events] == [("state", "1.0.3.0"),
                                                       ("progress", "1.0.3.2")]  # fmt: skip
