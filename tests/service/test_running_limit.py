"""The per-key limit on running jobs, where the worker claims (``claims.claim_next_job``)
and where the reaper decides what to send (``queue.reap_and_resend``): a key at its limit
has its queued jobs held back, the other keys' jobs start in submission order, and a held
job starts once the key is below its limit again (docs/reliability.md, section 1)."""

from __future__ import annotations

import threading
import time

import pytest
from sqlalchemy import func, select, text, update
from test_claims import age, make_gpu_job
from test_crud import make_job

from service import accounts, claims, crud
from service.db import make_engine, make_sessionmaker
from service.queue import reap_and_resend
from service.tables import ACTIVE, Job, JobStatus
from service.testing import clear_tables, scratch_database

LIMIT = {"max_running_per_key": 2}


@pytest.fixture
def other(session):
    return accounts.create_api_key(session, name="other")[0]


def test_a_key_at_its_limit_is_held_back_and_others_go_first_in_order(session, owner, other):
    a1, a2, a3 = (make_job(session, owner) for _ in range(3))
    b1, b2 = make_job(session, other), make_job(session, other)
    assert claims.claim_next_job(session, worker_id="w1", **LIMIT) == a1.id
    assert claims.claim_next_job(session, worker_id="w2", **LIMIT) == a2.id
    # The owner runs 2 of 2: its older a3 waits, the other key's jobs start, oldest first.
    assert claims.claim_next_job(session, worker_id="w3", **LIMIT) == b1.id
    assert claims.claim_next_job(session, worker_id="w4", **LIMIT) == b2.id
    assert claims.claim_next_job(session, worker_id="w5", **LIMIT) is None
    assert crud.get_job(session, a3.id).status == JobStatus.queued
    # A job being cancelled still occupies its worker: still held.
    crud.request_cancel(session, job_id=a1.id)
    assert claims.claim_next_job(session, worker_id="w6", **LIMIT) is None
    assert claims.held_job_to_wake(session, ended_job_id=a2.id, **LIMIT) is None  # still 2
    # a1 ends: the owner is below its limit, a3 is the job to wake, and it is claimed next.
    assert crud.finish_job(session, job_id=a1.id, status=JobStatus.cancelled)
    assert claims.held_job_to_wake(session, ended_job_id=a1.id, **LIMIT) == (
        a3.id, crud.get_job(session, a3.id).enqueued_at)  # fmt: skip
    assert claims.claim_next_job(session, worker_id="w7", **LIMIT) == a3.id
    # Without a limit (0) nothing is held: the setting's "no limit".
    a4 = make_job(session, owner)
    assert claims.claim_next_job(session, worker_id="w8", max_running_per_key=0) == a4.id
    assert claims.held_job_to_wake(session, ended_job_id=a1.id, max_running_per_key=0) is None


def test_held_jobs_do_not_starve_the_other_keys_behind_the_scan_window(session, owner, other):
    first = make_job(session, owner)
    held = [make_job(session, owner) for _ in range(4)]
    later = make_job(session, other)
    assert claims.claim_next_job(session, worker_id="w1", max_running_per_key=1) == first.id
    # The scan of two rows would see only held jobs if they were filtered after the query.
    claimed = claims.claim_next_job(session, worker_id="w2", max_running_per_key=1, scan=2)
    assert claimed == later.id and all(
        crud.get_job(session, job.id).status == JobStatus.queued for job in held
    )


def test_the_reaper_neither_counts_nor_sends_held_jobs(engine, session, owner, other):
    running, held = make_job(session, owner), make_job(session, owner)
    lost = make_job(session, other)  # its message was lost too
    assert crud.claim_job(session, job_id=running.id, worker_id="w1")
    for job in (held, lost):
        age(session, job.id, seconds=100)  # the idle worker that took held's message skipped it
    sent: list[str] = []
    pass_ = {"stale_after_s": 60, "requeue_after_s": 60, "enqueue": sent.append,
             "max_running_per_key": 1}  # fmt: skip
    # One message waits in the broker: it wakes a worker that claims `lost`, the only job a
    # worker may take; `held` is not counted, so nothing is sent (counting it would send one
    # that wakes a worker for nothing, every requeue_after_s).
    assert reap_and_resend(make_sessionmaker(engine), waiting=lambda gpus: 1, **pass_) == []
    assert reap_and_resend(make_sessionmaker(engine), waiting=lambda gpus: 0, **pass_) == [lost.id]
    assert claims.count_queued(session, max_running_per_key=1) == 1
    assert claims.count_queued(session) == 2
    # The running job ends: the next pass sends `held`, whose last message is long gone.
    crud.claim_job(session, job_id=lost.id, worker_id="w2")
    assert crud.finish_job(session, job_id=running.id, status=JobStatus.succeeded)
    assert reap_and_resend(make_sessionmaker(engine), waiting=lambda gpus: 0, **pass_) == [held.id]
    assert sent == [lost.id, held.id]


# ------------------------------------------------------------ two claims at the same moment
@pytest.fixture(scope="module")
def postgres_engine(tmp_path_factory):
    with scratch_database("postgres", tmp_path_factory.mktemp("limitdb")) as url:
        engine = make_engine(url)
        yield engine
        engine.dispose()


@pytest.mark.postgres
def test_two_claims_at_once_never_pass_the_limit_on_postgres(postgres_engine):
    """READ COMMITTED lets a count miss another transaction's uncommitted claim: the claim's
    per-key lock makes the second claim count after the first has committed."""
    clear_tables(postgres_engine)
    sessions = make_sessionmaker(postgres_engine)
    with sessions() as session:
        owner = accounts.create_api_key(session, name="racer")[0]
        two_gpus, one_gpu = _job(session, owner, gpus=2), _job(session, owner, gpus=1)
    first = sessions()
    try:
        # Worker 1 claims the two-GPU job and has not committed yet (its UPDATE is done).
        guard = claims._below_running_limit(first, owner.id, 1)
        first.execute(update(Job).where(Job.id == two_gpus, guard)
                      .values(status=JobStatus.preparing, worker_id="w1"))  # fmt: skip
        # Worker 2, on the one-GPU queue, claims meanwhile: it must wait for worker 1.
        won: list[str | None] = []
        second = threading.Thread(target=lambda: won.append(_claim(sessions, "w2")))
        second.start()
        _wait(lambda: won or _advisory_waiters(postgres_engine) > 0)
        first.commit()
    finally:
        first.close()
    second.join(timeout=60)
    assert won == [None]
    with sessions() as session:
        active = select(func.count()).where(Job.owner_id == owner.id, Job.status.in_(ACTIVE))
        assert session.scalar(active) == 1
        assert crud.get_job(session, one_gpu).status == JobStatus.queued


def _job(session, owner, *, gpus: int) -> str:
    return make_gpu_job(session, owner, gpus).id


def _claim(sessions, worker_id: str) -> str | None:
    with sessions() as session:
        return claims.claim_next_job(session, worker_id=worker_id, gpus=1, max_running_per_key=1)


def _advisory_waiters(engine) -> int:
    with engine.connect() as connection:
        query = text("SELECT count(*) FROM pg_locks JOIN pg_database d ON d.oid = database "
                     "WHERE d.datname = current_database() AND locktype = 'advisory' "
                     "AND NOT granted")  # fmt: skip
        return connection.scalar(query)


def _wait(predicate, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "the second claim neither waited nor finished"
        time.sleep(0.05)
