"""crud on SQLite and PostgreSQL: keys, idempotent creation, paging, the job state machine."""

from __future__ import annotations

import threading
from datetime import timedelta

import pytest

from service import accounts, crud
from service.db import make_sessionmaker
from service.spec import validate_job_spec
from service.tables import FailureReason, JobMetric, JobStatus, utcnow

SPEC = validate_job_spec(
    {"method": "vanilla", "student": {"arch": "resnet8"}, "dataset": {"name": "mnist5k"},
     "training": {"epochs": 3}}
).to_stored()  # fmt: skip


def make_job(session, owner, **kwargs):
    job, created = crud.create_job(session, owner_id=owner.id, spec=SPEC, max_attempts=2, **kwargs)
    assert created
    crud.mark_enqueued(session, job_id=job.id)
    return job


def epoch_row(epoch, top1, **extra):
    row = {
        "epoch": epoch,
        "lr": 0.1,
        "train_loss": 1.0,
        "train_top1": 50.0,
        "test_top1": top1,
        "test_top5": 90.0,
        "test_loss": 0.5,
        "loss_terms": {"loss_ce": 1.0},
        "seconds": 2.0,
    }
    return row | extra  # fmt: skip


def test_api_keys_are_stored_hashed_and_verified(session):
    row, plaintext = accounts.create_api_key(session, name="alice")
    assert plaintext.startswith("wkd_") and row.key_hash == accounts.hash_key(plaintext)
    assert plaintext not in (row.key_hash, row.prefix) and plaintext.startswith(row.prefix)
    assert accounts.verify_api_key(session, plaintext).id == row.id
    assert accounts.verify_api_key(session, plaintext + "x") is None
    assert accounts.revoke_api_key(session, key_id=row.id)
    assert accounts.verify_api_key(session, plaintext) is None


def test_create_job_fills_progress_and_defaults(session, owner):
    job = make_job(session, owner)
    assert job.id.startswith("job_") and job.status == JobStatus.queued
    assert (job.progress_epoch, job.progress_total, job.attempt, job.max_attempts) == (0, 3, 1, 2)
    assert job.created_at.tzinfo is not None and crud.get_job(session, job.id).spec == SPEC


def test_idempotency_replay_mismatch_and_in_flight(session, owner):
    first = make_job(session, owner, idempotency_key="k1", fingerprint="f1")
    again, created = crud.create_job(session, owner_id=owner.id, spec=SPEC, max_attempts=2,
                                     idempotency_key="k1", fingerprint="f1")  # fmt: skip
    assert not created and again.id == first.id
    with pytest.raises(crud.IdempotencyConflictError) as conflict:
        crud.create_job(session, owner_id=owner.id, spec=SPEC, max_attempts=2,
                        idempotency_key="k1", fingerprint="f2")  # fmt: skip
    assert conflict.value.reason == "mismatch"
    pending, _ = crud.create_job(session, owner_id=owner.id, spec=SPEC, max_attempts=2,
                                 idempotency_key="k2", fingerprint="f")  # fmt: skip
    with pytest.raises(crud.IdempotencyConflictError) as conflict:  # not yet handed to the broker
        crud.create_job(session, owner_id=owner.id, spec=SPEC, max_attempts=2,
                        idempotency_key="k2", fingerprint="f")  # fmt: skip
    assert conflict.value.reason == "in_flight" and conflict.value.job.id == pending.id
    other, _ = accounts.create_api_key(session, name="other")  # keys are per owner
    _, created = crud.create_job(session, owner_id=other.id, spec=SPEC, max_attempts=2,
                                 idempotency_key="k1", fingerprint="zzz")  # fmt: skip
    assert created


def test_list_jobs_pages_newest_first_with_filter(session, owner):
    jobs = [make_job(session, owner) for _ in range(7)]
    crud.request_cancel(session, job_id=jobs[1].id)
    seen, token = [], None
    while True:
        page = crud.list_jobs(session, owner_id=owner.id, page_size=3, page_token=token)
        assert len(page.items) <= 3
        seen += [j.id for j in page.items]
        token = page.next_page_token
        if not token:
            break
    expected = sorted(jobs, key=lambda j: (j.created_at, j.id), reverse=True)
    assert seen == [j.id for j in expected]
    cancelled = crud.list_jobs(session, owner_id=owner.id, page_size=10, status=JobStatus.cancelled)
    assert [j.id for j in cancelled.items] == [jobs[1].id] and cancelled.next_page_token == ""
    first = crud.list_jobs(session, owner_id=owner.id, page_size=2)
    with pytest.raises(ValueError, match="another status"):
        crud.list_jobs(session, owner_id=owner.id, page_size=2, page_token=first.next_page_token,
                       status=JobStatus.queued)  # fmt: skip
    with pytest.raises(ValueError, match="malformed"):
        crud.list_jobs(session, owner_id=owner.id, page_size=2, page_token="!!notatoken")


def test_cancel_transitions(session, owner):
    queued, running, done = (make_job(session, owner) for _ in range(3))
    crud.request_cancel(session, job_id=queued.id)
    job = crud.get_job(session, queued.id)
    assert job.status == JobStatus.cancelled and job.finished_at and job.cancel_requested_at
    assert not crud.claim_job(session, job_id=queued.id, worker_id="w")  # the worker skips it
    assert crud.claim_job(session, job_id=running.id, worker_id="w")
    assert crud.set_running(session, job_id=running.id)
    crud.request_cancel(session, job_id=running.id)
    assert crud.get_job(session, running.id).status == JobStatus.cancelling
    assert crud.is_cancel_requested(session, job_id=running.id)
    assert not crud.set_running(session, job_id=running.id)
    assert crud.finish_job(session, job_id=running.id, status=JobStatus.cancelled)
    crud.finish_job(session, job_id=done.id, status=JobStatus.failed, failure_reason="diverged")
    crud.request_cancel(session, job_id=done.id)  # terminal: no-op
    job = crud.get_job(session, done.id)
    assert job.status == JobStatus.failed and job.cancel_requested_at is None
    assert not crud.is_cancel_requested(session, job_id=done.id)


def test_claim_is_a_compare_and_set_under_concurrency(session, engine, owner):
    job = make_job(session, owner)
    factory, results = make_sessionmaker(engine), []
    barrier = threading.Barrier(4)

    def claim(worker):
        with factory() as own:
            barrier.wait()
            results.append(crud.claim_job(own, job_id=job.id, worker_id=worker))

    threads = [threading.Thread(target=claim, args=(f"w{i}",)) for i in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert sorted(results) == [False, False, False, True]
    claimed = crud.get_job(session, job.id)
    assert claimed.status == JobStatus.preparing and claimed.started_at and claimed.heartbeat_at


def test_record_epoch_upserts_and_tracks_best(session, owner):
    job = make_job(session, owner)
    crud.claim_job(session, job_id=job.id, worker_id="w")
    crud.set_running(session, job_id=job.id)
    crud.record_epoch(session, job_id=job.id, metrics=epoch_row(1, 40.0))
    crud.record_epoch(session, job_id=job.id, metrics=epoch_row(2, 60.0))
    crud.record_epoch(session, job_id=job.id, metrics=epoch_row(3, 55.0))
    job = crud.get_job(session, job.id)
    assert (job.progress_epoch, job.best_top1, job.best_epoch, job.last_top1) == (3, 60.0, 2, 55.0)
    # resumed from epoch 1: epoch 2 runs again and its row is replaced, not duplicated
    crud.record_epoch(session, job_id=job.id, metrics=epoch_row(2, 45.0, loss_terms={"a": 2.0}))
    rows = crud.list_metrics(session, job_id=job.id)
    assert [r["epoch"] for r in rows] == [1, 2, 3] and session.query(JobMetric).count() == 3
    assert rows[1]["test_top1"] == 45.0 and rows[1]["loss_terms"] == {"a": 2.0}
    job = crud.get_job(session, job.id)
    assert (job.progress_epoch, job.best_top1, job.best_epoch, job.last_top1) == (2, 45.0, 2, 45.0)


def test_finish_job_only_once_and_checks_reason(session, owner):
    job = make_job(session, owner)
    with pytest.raises(ValueError):
        crud.finish_job(session, job_id=job.id, status=JobStatus.failed)
    with pytest.raises(ValueError):
        crud.finish_job(session, job_id=job.id, status=JobStatus.running)
    assert crud.finish_job(
        session,
        job_id=job.id,
        status=JobStatus.failed,
        failure_reason=FailureReason.out_of_memory,
        message="CUDA OOM",
    )
    assert not crud.finish_job(session, job_id=job.id, status=JobStatus.succeeded)
    job = crud.get_job(session, job.id)
    assert (job.status, job.failure_reason, job.message) == ("failed", "out_of_memory", "CUDA OOM")
    assert job.is_terminal and job.finished_at is not None


def test_reaper_requeues_then_fails_lost_jobs(session, owner):
    lost, cancelling, fresh = (make_job(session, owner) for _ in range(3))
    for job in (lost, cancelling, fresh):
        crud.claim_job(session, job_id=job.id, worker_id="w")
    crud.request_cancel(session, job_id=cancelling.id)
    later = utcnow() + timedelta(seconds=100)
    crud.heartbeat(session, job_id=fresh.id)
    assert crud.reap_stale_jobs(session, stale_after_s=1000, now=later) == []
    requeued = crud.reap_stale_jobs(session, stale_after_s=60, now=later)
    assert set(requeued) == {lost.id, fresh.id}
    job = crud.get_job(session, lost.id)
    assert (job.status, job.attempt, job.worker_id, job.enqueued_at) == ("queued", 2, None, None)
    assert crud.get_job(session, cancelling.id).status == JobStatus.cancelled
    crud.mark_enqueued(session, job_id=lost.id)
    crud.mark_enqueued(session, job_id=fresh.id)
    assert crud.claim_job(session, job_id=lost.id, worker_id="w2")  # attempt 2 of 2
    much_later = later + timedelta(seconds=1000)
    assert lost.id not in crud.reap_stale_jobs(session, stale_after_s=60, now=much_later)
    job = crud.get_job(session, lost.id)
    assert (job.status, job.failure_reason) == ("failed", "worker_lost")


def test_reaper_resends_jobs_that_never_reached_the_broker(session, owner):
    job, _ = crud.create_job(session, owner_id=owner.id, spec=SPEC, max_attempts=2)
    assert crud.reap_stale_jobs(session, stale_after_s=60) == []  # still in its grace window
    later = utcnow() + crud.IN_FLIGHT_GRACE + timedelta(seconds=1)
    assert crud.reap_stale_jobs(session, stale_after_s=60, now=later) == [job.id]


def test_artifacts_upsert_by_name(session, owner):
    job = make_job(session, owner)
    crud.add_artifact(
        session,
        job_id=job.id,
        name="student.safetensors",
        kind="weights",
        size=10,
        sha256="a" * 64,
        path=f"{job.id}/student.safetensors",
    )
    crud.add_artifact(
        session,
        job_id=job.id,
        name="student.safetensors",
        kind="weights",
        size=20,
        sha256="b" * 64,
        path=f"{job.id}/student.safetensors",
    )
    crud.add_artifact(session, job_id=job.id, name="metrics.csv", kind="metrics", size=5,
                      sha256="c" * 64, path=f"{job.id}/metrics.csv")  # fmt: skip
    rows = crud.list_artifacts(session, job_id=job.id)
    assert [(r.name, r.size) for r in rows] == [("metrics.csv", 5), ("student.safetensors", 20)]
    assert crud.get_artifact(session, job_id=job.id, name="nope") is None
