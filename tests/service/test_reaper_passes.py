"""The reaper passes as they run for real: in the worker's reaper thread through a database
outage (one warning when it begins, one when it ends, no traceback per pass), through a
broker outage, and two reapers at once against the heartbeat guard (docs/reliability.md)."""

from __future__ import annotations

import logging
import threading

import pytest
from kombu.exceptions import OperationalError as BrokerError
from sqlalchemy.orm import Session, sessionmaker
from test_claims import age
from test_crud import make_job

from service import claims, crud
from service.db import make_engine, make_sessionmaker
from service.queue import ReaperPasses, reap_and_resend
from service.tables import JobStatus
from service.testing import free_port
from worker.reaper import ReaperThread

PASS = {"stale_after_s": 60, "requeue_after_s": 60}


@pytest.fixture
def unreachable():
    """Sessions on a PostgreSQL address where nothing listens: a database that is away."""
    engine = make_engine(f"postgresql+psycopg://postgres@127.0.0.1:{free_port()}/gone",
                         connect_args={"connect_timeout": 2})  # fmt: skip
    yield make_sessionmaker(engine)
    engine.dispose()


def reaper_lines(caplog) -> list[tuple[str, str, bool]]:
    return [(r.levelname, r.getMessage(), r.exc_info is not None)
            for r in caplog.records if r.name == "worker.reaper"]  # fmt: skip


def test_a_database_outage_is_one_line_and_its_end_another(engine, session, owner, unreachable,
                                                           caplog):  # fmt: skip
    caplog.set_level(logging.INFO, logger="worker.reaper")
    sent: list[str] = []
    thread = ReaperThread(unreachable, interval_s=0.02, enqueue=sent.append,
                          waiting=lambda gpus: 0, **PASS)  # fmt: skip
    passes = threading.Semaphore(0)
    reap = thread.reap

    def counted() -> list[str]:
        try:
            return reap()
        finally:
            passes.release()

    thread.reap = counted
    thread.start()
    try:
        for _ in range(5):  # five failed passes while the database is away
            assert passes.acquire(timeout=60)
        job = make_job(session, owner)
        age(session, job.id, seconds=100)
        thread.sessions = make_sessionmaker(engine)  # the database is back
        while not sent:
            assert passes.acquire(timeout=60)
    finally:
        thread.stop()
        thread.join(timeout=30)
    assert sent == [job.id]
    [down, back] = reaper_lines(caplog)
    assert down[0] == "WARNING" and not down[2]
    assert down[1].startswith("reaper: the database is unavailable (OperationalError: ")
    assert back[0] == "WARNING" and not back[2]
    assert back[1].startswith("reaper: the database is back; passes work again after ")


def test_a_broker_outage_likewise_and_other_errors_keep_their_traceback(engine, session, owner,
                                                                         caplog):  # fmt: skip
    caplog.set_level(logging.INFO, logger="worker.reaper")
    passes = ReaperPasses(logging.getLogger("worker.reaper"))
    job = make_job(session, owner)
    age(session, job.id, seconds=100)
    sessions = make_sessionmaker(engine)

    def broker_down(_job_id: str) -> None:
        raise BrokerError("Error 111 connecting to 127.0.0.1:6379. Connection refused.")

    for _ in range(3):
        assert passes.run(lambda: reap_and_resend(sessions, enqueue=broker_down, **PASS)) == []
    sent: list[str] = []
    assert passes.run(lambda: reap_and_resend(sessions, enqueue=sent.append, **PASS)) == [job.id]

    def bug() -> list[str]:
        raise KeyError("a bug, not an outage")

    passes.run(bug)
    passes.run(bug)
    assert reaper_lines(caplog) == [
        ("WARNING", "reaper: the broker is unavailable (OperationalError: Error 111 connecting "
                    "to 127.0.0.1:6379. Connection refused.); passes are retried every "
                    "interval until it is back", False),
        ("WARNING", "reaper: the broker is back; passes work again after 3 failed", False),
        ("ERROR", "reaper pass failed", True),
        ("ERROR", "reaper pass failed", True),
    ]  # fmt: skip


# --------------------------------------------------------------------- two reapers at once
def test_two_reapers_at_once_requeue_and_send_a_dead_job_once(engine, session, owner):
    """Reapers A and B read the same three stale jobs. A re-queues and sends them, a worker
    claims the oldest, and only then does B write what it read: the heartbeat guard keeps
    B from re-queueing the new claim (which would run the job twice), and ``enqueued_at``'s
    compare-and-set keeps it from sending the others again."""
    jobs = [make_job(session, owner) for _ in range(3)]
    for job in jobs:
        assert crud.claim_job(session, job_id=job.id, worker_id="dead-worker")
        age(session, job.id, seconds=100, column="heartbeat_at")
    b_has_read, b_may_write = threading.Event(), threading.Event()

    def after_first_read(action):
        class PausedSession(Session):
            def execute(self, *args, **kwargs):
                result = super().execute(*args, **kwargs)
                if not self.info.get("paused"):
                    self.info["paused"] = True
                    action()
                return result

        opened: list[bool] = []

        def open_session() -> Session:  # only the pass's first session pauses
            kind = Session if opened else PausedSession
            opened.append(True)
            return sessionmaker(engine, class_=kind, expire_on_commit=False, autoflush=False)()

        return open_session

    def b_pause() -> None:
        b_has_read.set()
        assert b_may_write.wait(timeout=60)

    sent: list[str] = []
    errors: list[BaseException] = []

    def reaper(sessions) -> None:
        try:
            reap_and_resend(sessions, enqueue=sent.append, waiting=lambda gpus: 0, **PASS)
        except BaseException as error:  # reported below, not lost in the thread
            errors.append(error)

    b = threading.Thread(target=reaper, args=(after_first_read(b_pause),))
    a = threading.Thread(target=reaper, args=(after_first_read(lambda: b_has_read.wait(60)),))
    b.start()
    a.start()
    a.join(timeout=120)
    assert sorted(sent) == sorted(job.id for job in jobs)  # A re-queued and sent all three
    assert claims.claim_next_job(session, worker_id="new-worker") == jobs[0].id
    b_may_write.set()
    b.join(timeout=120)
    assert errors == [] and not a.is_alive() and not b.is_alive()
    assert sorted(sent) == sorted(job.id for job in jobs)  # B sent nothing more
    claimed = crud.get_job(session, jobs[0].id)
    assert (claimed.status, claimed.worker_id) == (JobStatus.preparing, "new-worker")
    for job in (crud.get_job(session, job.id) for job in jobs):
        assert job.attempt == 2  # one re-queue each, however many reapers read it
