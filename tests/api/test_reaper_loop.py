"""The reaper loop as the API runs it (``reaper_interval_s`` > 0, started by the lifespan):
a job accepted while the broker was down and a job whose worker died are both sent once
the broker answers; an outage of the broker or the database is logged once, not per pass
(docs/reliability.md, sections 1 and 8)."""

from __future__ import annotations

import logging
import time
from datetime import timedelta

from fastapi.testclient import TestClient
from sqlalchemy import update

from api.main import create_app
from service import crud
from service.db import make_engine, make_sessionmaker
from service.tables import Job, utcnow
from service.testing import free_port

BODY = {"method": "vanilla", "student": {"arch": "resnet8"}, "dataset": {"name": "mnist5k"},
        "training": {"epochs": 1}}  # fmt: skip


class Broker(list):
    """Records the ids sent, which then wait (no worker takes them), as the API's Enqueuer
    does; refuses with a connection error while ``down``."""

    down = False

    def __call__(self, job_id: str) -> None:
        self._check()
        self.append(job_id)

    def waiting(self, gpus: int) -> int:
        self._check()
        return len(self)

    def _check(self) -> None:
        if self.down:
            raise ConnectionError("Error 111 connecting to the broker. Connection refused.")


def wait_until(predicate, what: str, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, f"the reaper loop did not {what}"
        time.sleep(0.05)


def reaper_lines(caplog) -> list[str]:
    return [r.getMessage() for r in caplog.records
            if r.name == "api.main" and r.getMessage().startswith("reaper: ")]  # fmt: skip


def test_the_apis_reaper_loop_sends_what_the_broker_missed(settings, alice, caplog):
    caplog.set_level(logging.INFO, logger="api.main")
    looping = settings.model_copy(update={"reaper_interval_s": 0.05, "requeue_after_s": 0.2})
    broker = Broker()
    with TestClient(create_app(looping, enqueue=broker)) as client:
        app = client.app
        broker.down = True
        accepted, other = (client.post("/jobs", json=BODY, headers=alice) for _ in range(2))
        assert accepted.status_code == other.status_code == 202
        assert accepted.json()["status"] == "queued"
        unsent, dead = accepted.json()["id"], other.json()["id"]
        with make_sessionmaker(app.state.engine)() as db:
            assert crud.get_job(db, unsent).enqueued_at is None
            # the second job started on a worker that then died: its heartbeat is stale
            assert crud.claim_job(db, job_id=dead, worker_id="a-worker-that-died")
            beat = utcnow() - timedelta(seconds=looping.stale_after_s + 60)
            db.execute(update(Job).where(Job.id == dead).values(heartbeat_at=beat))
            # past the in-flight grace of the API's own send (requeue_after_s here)
            created = utcnow() - timedelta(seconds=60)
            db.execute(update(Job).where(Job.id == unsent).values(created_at=created))
            db.commit()
        wait_until(lambda: len(reaper_lines(caplog)) >= 1, "meet the broker outage")
        assert broker == []
        broker.down = False  # the broker is back: both jobs are sent, oldest first, once
        wait_until(lambda: len(broker) >= 2, "send the jobs")
        with make_sessionmaker(app.state.engine)() as db:
            rows = [crud.get_job(db, job_id) for job_id in (unsent, dead)]
            sent = [(j.status, j.attempt, j.enqueued_at is not None) for j in rows]
        assert sent == [("queued", 1, True), ("queued", 2, True)]
        # The database goes away under the loop, then comes back.
        engine = make_engine(f"postgresql+psycopg://postgres@127.0.0.1:{free_port()}/gone",
                             connect_args={"connect_timeout": 2})  # fmt: skip
        live, app.state.sessionmaker = app.state.sessionmaker, make_sessionmaker(engine)
        wait_until(lambda: len(reaper_lines(caplog)) >= 3, "meet the database outage")
        time.sleep(0.5)  # more failed passes
        app.state.sessionmaker = live
        wait_until(lambda: len(reaper_lines(caplog)) >= 4, "see the database back")
        engine.dispose()
    assert broker == [unsent, dead]
    lines = reaper_lines(caplog)
    assert len(lines) == 4, lines  # one line per outage and one per recovery, not per pass
    assert lines[0].startswith("reaper: the broker is unavailable (ConnectionError: Error 111")
    assert lines[1].startswith("reaper: the broker is back; passes work again after ")
    assert lines[2].startswith("reaper: the database is unavailable (OperationalError: ")
    assert lines[3].startswith("reaper: the database is back; passes work again after ")
    assert not [r for r in caplog.records if r.name == "api.main" and r.exc_info]
