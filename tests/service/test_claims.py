"""The queue's source of truth on SQLite and PostgreSQL: FIFO claims, hand-backs, retries of
dead attempts, and which queued jobs get a new broker message (``service.claims`` and the
reaper pass ``service.queue.reap_and_resend``)."""

from __future__ import annotations

from datetime import timedelta

import pytest
from test_crud import SPEC, make_job

from service import claims, crud
from service.db import make_sessionmaker
from service.queue import reap_and_resend
from service.tables import FailureReason, Job, JobStatus, utcnow


def age(session, job_id: str, *, seconds: float, column: str = "enqueued_at") -> None:
    """Move one of the job's timestamps ``seconds`` into the past."""
    session.query(Job).filter(Job.id == job_id).update(
        {column: utcnow() - timedelta(seconds=seconds)}
    )
    session.commit()


def test_each_message_claims_the_oldest_queued_job(session, owner):
    first, second, third = (make_job(session, owner) for _ in range(3))
    crud.request_cancel(session, job_id=first.id)  # cancelled while queued: never claimed
    # Messages arrive in any order (a re-send of the third, then the others): the order of
    # claims is the order of submission.
    assert claims.claim_next_job(session, worker_id="w1") == second.id
    assert claims.claim_next_job(session, worker_id="w2") == third.id
    assert claims.claim_next_job(session, worker_id="w3") is None  # a spare message: skipped
    assert claims.job_held_by(session, worker_id="w2") == third.id
    assert claims.holds_claim(session, job_id=second.id, worker_id="w1")
    assert not claims.holds_claim(session, job_id=second.id, worker_id="w2")


def test_a_claim_happens_once_whatever_the_number_of_messages(engine, session, owner):
    job = make_job(session, owner)
    other = make_sessionmaker(engine)()
    try:
        won = [claims.claim_next_job(s, worker_id=f"w{i}") for i, s in enumerate((session, other))]
    finally:
        other.close()
    assert won == [job.id, None]
    assert not crud.claim_job(session, job_id=job.id, worker_id="w9")  # a re-sent message


def test_hand_back_keeps_the_attempt_and_respects_the_claim(session, owner):
    job = make_job(session, owner)
    assert crud.claim_job(session, job_id=job.id, worker_id="w1")
    assert not claims.hand_back_job(session, job_id=job.id, worker_id="someone-else")
    assert claims.hand_back_job(session, job_id=job.id, worker_id="w1")
    row = crud.get_job(session, job.id)
    assert (row.status, row.attempt, row.worker_id, row.enqueued_at) == ("queued", 1, None, None)
    # Being cancelled: a hand-back ends it as cancelled instead of queueing it again.
    assert crud.claim_job(session, job_id=job.id, worker_id="w2")
    crud.request_cancel(session, job_id=job.id)
    assert claims.hand_back_job(session, job_id=job.id, worker_id="w2")
    assert crud.get_job(session, job.id).status == JobStatus.cancelled


def test_a_dead_attempt_is_retried_then_failed(session, owner):
    job = make_job(session, owner)  # max_attempts=2
    assert crud.claim_job(session, job_id=job.id, worker_id="w1")
    retry = {"failure_reason": FailureReason.worker_lost, "message": "killed by SIGKILL"}
    assert claims.retry_job(session, job_id=job.id, worker_id="w0", **retry) is None
    assert claims.retry_job(session, job_id=job.id, worker_id="w1", **retry) == JobStatus.queued
    assert crud.get_job(session, job.id).attempt == 2
    assert crud.claim_job(session, job_id=job.id, worker_id="w2")
    assert claims.retry_job(session, job_id=job.id, worker_id="w2", **retry) == JobStatus.failed
    row = crud.get_job(session, job.id)
    assert row.failure_reason == "worker_lost"
    assert row.message == "killed by SIGKILL (attempt 2 of 2)"


def test_resend_candidates_are_jobs_whose_message_may_be_lost(session, owner):
    _recent, old, unsent, handed_back = (make_job(session, owner) for _ in range(4))
    age(session, old.id, seconds=100)
    session.query(Job).filter(Job.id == unsent.id).update({"enqueued_at": None})
    session.commit()  # the API could not reach the broker, and its grace is not over yet
    crud.claim_job(session, job_id=handed_back.id, worker_id="w")
    claims.hand_back_job(session, job_id=handed_back.id, worker_id="w")
    candidates = claims.resend_candidates(session, requeue_after_s=60)
    assert [job_id for job_id, _ in candidates] == [old.id, handed_back.id]
    later = utcnow() + timedelta(seconds=45)  # past the in-flight grace of the API's send
    ids = [job_id for job_id, _ in claims.resend_candidates(session, requeue_after_s=60, now=later)]
    assert ids == [old.id, unsent.id, handed_back.id]
    assert claims.count_queued(session) == 4


def test_reaper_sends_only_what_the_broker_lacks_oldest_first(engine, session, owner):
    jobs = [make_job(session, owner) for _ in range(3)]
    for job in jobs:
        age(session, job.id, seconds=100)
    sessions = make_sessionmaker(engine)
    sent: list[str] = []
    pass_ = {"stale_after_s": 60, "requeue_after_s": 60, "enqueue": sent.append}
    # Three queued, three messages waiting: nothing to send, however old the sends are.
    assert reap_and_resend(sessions, waiting=lambda gpus: 3, **pass_) == []
    # One message waits (the other two were lost): two are sent, the oldest jobs first.
    assert reap_and_resend(sessions, waiting=lambda gpus: 1, **pass_) == [jobs[0].id, jobs[1].id]
    assert sent == [jobs[0].id, jobs[1].id]
    # Just sent: not again within requeue_after_s, even if the broker looks empty.
    assert reap_and_resend(sessions, waiting=lambda gpus: 0, **pass_) == [jobs[2].id]
    assert reap_and_resend(sessions, waiting=lambda gpus: 0, **pass_) == []


def test_two_reapers_send_a_lost_message_once(engine, session, owner):
    job = make_job(session, owner)
    age(session, job.id, seconds=100)
    [(job_id, previous)] = claims.resend_candidates(session, requeue_after_s=60)
    other = make_sessionmaker(engine)()
    try:  # both read the same row; only the first compare-and-set wins the send
        assert claims.mark_sending(session, job_id=job_id, previous=previous)
        assert not claims.mark_sending(other, job_id=job_id, previous=previous)
    finally:
        other.close()


def test_a_failed_send_is_retried_on_the_next_pass(engine, session, owner):
    job = make_job(session, owner)
    age(session, job.id, seconds=100)
    sessions = make_sessionmaker(engine)

    def broker_down(_job_id: str) -> None:
        raise ConnectionError("broker down")

    pass_ = {"stale_after_s": 60, "requeue_after_s": 60, "waiting": lambda gpus: 0}
    with pytest.raises(ConnectionError):  # reaches the reaper loop, which logs it
        reap_and_resend(sessions, enqueue=broker_down, **pass_)
    sent: list[str] = []
    assert reap_and_resend(sessions, enqueue=sent.append, **pass_) == [job.id] == sent


def test_cancel_twice_and_after_the_end_change_nothing(session, owner):
    running, done = make_job(session, owner), make_job(session, owner)
    assert crud.claim_job(session, job_id=running.id, worker_id="w")
    crud.request_cancel(session, job_id=running.id)
    asked = crud.get_job(session, running.id).cancel_requested_at
    crud.request_cancel(session, job_id=running.id)  # twice: the first request stands
    row = crud.get_job(session, running.id)
    assert (row.status, row.cancel_requested_at) == (JobStatus.cancelling, asked)
    assert crud.finish_job(session, job_id=running.id, status=JobStatus.cancelled)
    crud.request_cancel(session, job_id=running.id)
    assert crud.get_job(session, running.id).status == JobStatus.cancelled
    assert crud.claim_job(session, job_id=done.id, worker_id="w")
    assert crud.finish_job(session, job_id=done.id, status=JobStatus.succeeded)
    crud.request_cancel(session, job_id=done.id)  # after success: no change
    row = crud.get_job(session, done.id)
    assert (row.status, row.cancel_requested_at) == (JobStatus.succeeded, None)


def make_gpu_job(session, owner, gpus: int):
    """A queued job of ``training.gpus = gpus`` (its queue: service/routing.py)."""
    spec = {**SPEC, "training": {**SPEC.get("training", {}), "gpus": gpus}}
    job, _ = crud.create_job(session, owner_id=owner.id, spec=spec, max_attempts=2)
    crud.mark_enqueued(session, job_id=job.id)
    return job


def test_claims_are_first_in_first_out_within_each_gpu_queue(session, owner):
    two_gpus = make_gpu_job(session, owner, 2)  # the oldest, but of another queue
    first, second = make_gpu_job(session, owner, 1), make_gpu_job(session, owner, 1)
    # A message of the one-GPU queue never takes the two-GPU job, however old it is.
    assert claims.job_gpus(session, second.id) == 1
    assert claims.claim_next_job(session, worker_id="w1", gpus=1) == first.id
    assert claims.claim_next_job(session, worker_id="w2", gpus=1) == second.id
    assert claims.claim_next_job(session, worker_id="w3", gpus=1) is None
    assert claims.claim_next_job(session, worker_id="w4", gpus=2) == two_gpus.id


def test_a_backlog_of_another_gpu_queue_does_not_hide_a_job(session, owner):
    backlog = [make_gpu_job(session, owner, 2) for _ in range(7)]  # older than the scan
    one_gpu = make_gpu_job(session, owner, 1)
    assert claims.claim_next_job(session, worker_id="w1", gpus=1, scan=3) == one_gpu.id
    assert claims.claim_next_job(session, worker_id="w2", gpus=2, scan=3) == backlog[0].id


def test_reaper_counts_missing_messages_per_gpu_queue(engine, session, owner):
    one, two = make_gpu_job(session, owner, 1), make_gpu_job(session, owner, 2)
    for job in (one, two):
        age(session, job.id, seconds=100)
    sent: list[str] = []
    waiting = {1: 1, 2: 0}  # the one-GPU queue still holds its message; the other lost it
    pass_ = {"stale_after_s": 60, "requeue_after_s": 60, "enqueue": sent.append}
    assert reap_and_resend(make_sessionmaker(engine), waiting=waiting.get, **pass_) == [two.id]
    assert sent == [two.id]
