"""A stuck database. A transaction elsewhere holds a lock on the jobs table (a long
migration, a forgotten ``psql`` session): PostgreSQL cancels the API's statements after
``WKD_DB_STATEMENT_TIMEOUT_S``, so requests answer 503 with Retry-After instead of waiting
for as long as the lock is held, and answer normally once it is gone. The server frozen
(``docker pause``; a private PostgreSQL, never the shared one): the client gives up after the
limit plus a grace, with the same 503. The worker's engine carries the same limits. The
broker frozen: ``POST /jobs`` and ``POST /studies`` answer 202 within seconds and leave the
jobs to the reaper."""

from __future__ import annotations

import os
import signal
import threading
import time

import psycopg
import pytest
from fastapi.testclient import TestClient
from private_services import private_postgres
from sqlalchemy import text
from sqlalchemy.engine import make_url

from api.main import create_app
from service import accounts, crud
from service.db import ANSWER_GRACE_S, make_engine, make_sessionmaker, upgrade
from service.settings import Settings
from service.testing import private_redis
from tests.api.test_checkpoints import WEIGHTS, upload
from worker.common import session_factory

POSTGRES_ONLY = pytest.param("postgres", marks=pytest.mark.postgres)
VANILLA = {"method": "vanilla", "student": {"arch": "resnet8"}, "dataset": {"name": "mnist5k"},
           "training": {"epochs": 2, "batch_size": 32}}  # fmt: skip
TIMEOUT_S = 1.0


def _libpq_url(database_url: str) -> str:
    return make_url(database_url).set(drivername="postgresql").render_as_string(False)


@pytest.mark.parametrize("database_url", [POSTGRES_ONLY], indirect=True)
def test_a_lock_held_elsewhere_is_a_503_after_the_statement_timeout(
    settings, database_url, enqueued
):
    settings = settings.model_copy(update={"db_statement_timeout_s": TIMEOUT_S})
    with TestClient(create_app(settings, enqueue=enqueued)) as client:
        with make_sessionmaker(client.app.state.engine)() as session:
            _row, plaintext = accounts.create_api_key(session, name="stuck")
        headers = {"Authorization": f"Bearer {plaintext}"}
        job_id = client.post("/jobs", json=VANILLA, headers=headers).json()["id"]
        before = client.get(f"/jobs/{job_id}", headers=headers)  # cached: the next takes the
        assert before.status_code == 200  # fast path (api/poll.py) first
        requests = [("GET", f"/jobs/{job_id}"), ("GET", "/jobs"), ("POST", "/jobs"),
                    ("POST", f"/jobs/{job_id}/cancel")]  # fmt: skip
        with psycopg.connect(_libpq_url(database_url)) as locker:
            # without a statement timeout the requests would wait for this session: it ends
            # itself after 15 s idle, so that such a regression fails instead of hanging
            locker.execute("SET idle_in_transaction_session_timeout = '15s'")
            locker.execute("LOCK TABLE jobs IN ACCESS EXCLUSIVE MODE")
            for method, path in requests:
                start = time.monotonic()
                body = VANILLA if path == "/jobs" and method == "POST" else None
                response = client.request(method, path, json=body, headers=headers)
                took = time.monotonic() - start
                assert response.status_code == 503, (method, path, response.text)
                assert response.headers["retry-after"] == str(settings.retry_after_s)
                assert "database is unavailable" in response.json()["detail"]
                # the fast path's lookup and the route's each wait out one timeout at most
                assert TIMEOUT_S * 0.9 < took < 4 * TIMEOUT_S + 2, (method, path, took)
            locker.rollback()  # the lock is gone
        after = client.get(f"/jobs/{job_id}", headers=headers)
        assert after.status_code == 200 and after.json()["status"] == before.json()["status"]
        assert client.get("/jobs", headers=headers).json()["data"][0]["id"] == job_id


@pytest.mark.parametrize("database_url", [POSTGRES_ONLY], indirect=True)
def test_the_api_and_the_worker_connect_with_the_settings_timeouts(
    settings, database_url, enqueued
):
    settings = settings.model_copy(
        update={"db_statement_timeout_s": 2.5, "db_connect_timeout_s": 4}
    )
    with TestClient(create_app(settings, enqueue=enqueued)) as client:
        engines = [client.app.state.engine, client.app.state.read_engine,
                   session_factory(settings).kw["bind"]]  # fmt: skip
        for engine in engines:
            with engine.connect() as connection:
                shown = connection.execute(text("SHOW statement_timeout")).scalar()
            assert shown == "2500ms"
            assert engine.url.query["connect_timeout"] == "4"
    # a URL's own options win over the setting; 0 leaves the server's default
    own = database_url + "?options=-c%20statement_timeout%3D7s"
    for url, expected in [(own, "7s"), (database_url, "0")]:
        engine = make_engine(url, statement_timeout_s=2.5 if url == own else 0)
        with engine.connect() as connection:
            assert connection.execute(text("SHOW statement_timeout")).scalar() == expected
        engine.dispose()


@pytest.mark.e2e
@pytest.mark.slow
def test_a_frozen_server_is_a_503_after_the_limit_and_a_grace(tmp_path, enqueued):
    with private_postgres() as postgres:
        upgrade(postgres.url)
        settings = Settings(data_dir=tmp_path, database_url=postgres.url, reaper_interval_s=0,
                            db_statement_timeout_s=TIMEOUT_S, db_connect_timeout_s=2)  # fmt: skip
        with TestClient(create_app(settings, enqueue=enqueued)) as client:
            with make_sessionmaker(client.app.state.engine)() as session:
                _row, plaintext = accounts.create_api_key(session, name="frozen")
            headers = {"Authorization": f"Bearer {plaintext}"}
            job_id = client.post("/jobs", json=VANILLA, headers=headers).json()["id"]
            assert client.get(f"/jobs/{job_id}", headers=headers).status_code == 200
            postgres.freeze()
            # were the client to wait for ever, the server thaws after 60 s and the test
            # fails on a 200 instead of hanging
            safety = threading.Timer(60, postgres.thaw)
            safety.start()
            try:
                for path in (f"/jobs/{job_id}", "/jobs"):
                    start = time.monotonic()
                    response = client.get(path, headers=headers)
                    took = time.monotonic() - start
                    assert response.status_code == 503, (path, response.text)
                    assert "database is unavailable" in response.json()["detail"]
                    # the poll: the fast path's lookup only (the route would wait as long
                    # again: 12.0 s measured before); the list: its pre-ping, then one
                    # connection attempt
                    answer_s = TIMEOUT_S + ANSWER_GRACE_S
                    most = 1.5 * answer_s + 1 if path != "/jobs" else 2 * answer_s + 2 + 5
                    assert answer_s * 0.9 < took < most, (path, took)
                    print(f"{path}: 503 in {took:.1f} s")
            finally:
                safety.cancel()
                postgres.thaw()
            after = client.get(f"/jobs/{job_id}", headers=headers)
            assert after.status_code == 200 and after.json()["id"] == job_id
            assert client.get("/jobs", headers=headers).status_code == 200


@pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)
def test_a_frozen_broker_leaves_submissions_to_the_reaper_within_seconds(settings, tmp_path):
    with private_redis(tmp_path / "redis") as redis:
        settings = settings.model_copy(update={"broker_url": redis.url, "broker_timeout_s": 0.5})
        with TestClient(create_app(settings)) as client:  # the real Celery producer
            sessions = make_sessionmaker(client.app.state.engine)
            with sessions() as session:
                _row, plaintext = accounts.create_api_key(session, name="frozen-broker")
            headers = {"Authorization": f"Bearer {plaintext}"}
            assert client.post("/jobs", json=VANILLA, headers=headers).status_code == 202
            teacher = upload(client, headers, WEIGHTS, "t.pth").json()["id"]
            os.kill(redis.process.pid, signal.SIGSTOP)
            safety = threading.Timer(60, os.kill, (redis.process.pid, signal.SIGCONT))
            safety.start()
            try:
                start = time.monotonic()
                accepted = client.post("/jobs", json=VANILLA, headers=headers)
                one_send = time.monotonic() - start
                assert accepted.status_code == 202 and one_send < 10, one_send
                study_body = {
                    "methods": ["kd"], "seeds": [0, 1, 2, 3], "teacher": {"checkpoint_id": teacher},
                    **{part: VANILLA[part] for part in ("student", "dataset", "training")},
                }  # fmt: skip
                start = time.monotonic()
                study = client.post("/studies", json=study_body, headers=headers)
                four_jobs = time.monotonic() - start
                assert study.status_code == 202, study.text
                # after the first failed send the rest are left to the reaper
                assert four_jobs < 1.5 * one_send + 1, (four_jobs, one_send)
            finally:
                safety.cancel()
                os.kill(redis.process.pid, signal.SIGCONT)
            left = [accepted.json()["id"], *(job["id"] for job in study.json()["jobs"])]
            with sessions() as session:
                for job_id in left:
                    job = crud.get_job(session, job_id)
                    assert job.status.value == "queued" and job.enqueued_at is None
