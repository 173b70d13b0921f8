"""A database outage under a real uvicorn: 503 + Retry-After, never a 500, logged once
without a traceback, and recovery without a restart; /healthz reports each dependency.

Both tests stop servers of their own (a private PostgreSQL, a private Redis), never the
shared ones.
"""

from __future__ import annotations

import time

import httpx
import pytest
from private_services import make_key, private_postgres, private_redis, uvicorn_api

from service.db import upgrade

pytestmark = [pytest.mark.e2e, pytest.mark.slow]

OUTAGE_S = 30.0  # how long PostgreSQL stays stopped (issue 7: "stopped for 30 s")
BODY = {"method": "vanilla", "student": {"arch": "resnet8"}, "dataset": {"name": "mnist5k"},
        "training": {"epochs": 1}}  # fmt: skip


def test_database_outage_is_503_with_retry_after_and_recovers(tmp_path):
    log = tmp_path / "api.log"
    with private_postgres() as postgres:
        upgrade(postgres.url)
        key = make_key(postgres.url, "outage")
        env = {"WKD_DATABASE_URL": postgres.url, "WKD_DATA_DIR": str(tmp_path / "data"),
               "WKD_REAPER_INTERVAL_S": "0", "WKD_RETRY_AFTER_S": "7"}  # fmt: skip
        with (
            uvicorn_api(env, log) as base,
            httpx.Client(
                base_url=base, headers={"Authorization": f"Bearer {key}"}, timeout=30
            ) as client,
        ):
            job = client.post("/jobs", json=BODY)
            assert job.status_code == 202, job.text
            job_id = job.json()["id"]
            requests = [("GET", "/jobs"), ("GET", f"/jobs/{job_id}"), ("POST", "/jobs"),
                        ("GET", f"/jobs/{job_id}/metrics"), ("POST", f"/jobs/{job_id}/cancel"),
                        ("GET", "/checkpoints"), ("GET", f"/jobs/{job_id}/artifacts")]  # fmt: skip
            postgres.stop()
            down = time.monotonic()
            for method, path in requests:
                response = client.request(method, path, json=BODY if method == "POST" else None)
                assert response.status_code == 503, (method, path, response.text)
                assert response.headers["retry-after"] == "7"
                assert "database is unavailable" in response.json()["detail"]
                assert response.headers.get("connection") != "close"
            health = client.get("/healthz")
            assert health.status_code == 503
            assert health.json()["database"] != "ok" and health.json()["broker"] == "ok"
            assert client.get("/catalog").status_code == 200  # needs no database
            unavailable = len(requests)
            while time.monotonic() - down < OUTAGE_S:  # the 30 s, polled every second
                assert client.get("/jobs").status_code == 503
                unavailable += 1
                time.sleep(1)
            postgres.start()
            deadline = time.monotonic() + 20
            while (status := client.get("/jobs").status_code) != 200:
                assert status == 503 and time.monotonic() < deadline, "the API did not recover"
                unavailable += 1  # still starting up, or a pooled connection found dead
                time.sleep(0.2)
            assert client.get(f"/jobs/{job_id}").json()["status"] == "queued"
            assert client.get("/healthz").status_code == 200
    text = log.read_text()
    assert "Traceback" not in text and " 500 " not in text
    assert text.count("database unavailable") == unavailable  # once per 503


def test_healthz_reports_a_broker_outage(tmp_path, database_url):
    with private_redis() as (redis_url, redis_server):
        env = {"WKD_DATABASE_URL": database_url, "WKD_BROKER_URL": redis_url,
               "WKD_DATA_DIR": str(tmp_path / "data"), "WKD_REAPER_INTERVAL_S": "0"}  # fmt: skip
        with uvicorn_api(env, tmp_path / "api.log") as base:
            up = httpx.get(f"{base}/healthz")
            assert up.status_code == 200 and up.json()["broker"] == "ok"
            redis_server.terminate()
            redis_server.wait(timeout=10)
            down = httpx.get(f"{base}/healthz")
            assert down.status_code == 503
            body = down.json()
            assert body["status"] == "unavailable" and body["database"] == "ok"
            assert "Connection" in body["broker"]


def test_a_job_submitted_while_the_broker_is_down_is_sent_once_it_is_back(tmp_path, settings):
    """202 while Redis is down, the job stays queued; the API's own reaper loop sends it once
    Redis is back, and the message it sends makes a worker claim that job."""
    from service import claims, crud
    from service.db import make_engine, make_sessionmaker
    from service.queue import make_celery, waiting_messages
    from service.testing import private_redis as restartable_redis

    with restartable_redis(tmp_path / "redis") as redis:
        key = make_key(settings.database_url, "broker-outage")
        env = {"WKD_DATABASE_URL": settings.database_url, "WKD_BROKER_URL": redis.url,
               "WKD_DATA_DIR": str(tmp_path / "data"), "WKD_REAPER_INTERVAL_S": "0.5",
               "WKD_REQUEUE_AFTER_S": "1"}  # fmt: skip
        engine = make_engine(settings.database_url)
        sessions = make_sessionmaker(engine)
        log = tmp_path / "api.log"
        with (
            uvicorn_api(env, log) as base,
            httpx.Client(
                base_url=base, headers={"Authorization": f"Bearer {key}"}, timeout=60
            ) as client,
        ):
            redis.stop()
            accepted = client.post("/jobs", json=BODY)
            assert accepted.status_code == 202, accepted.text
            job_id = accepted.json()["id"]
            assert client.get(f"/jobs/{job_id}").json()["status"] == "queued"
            with sessions() as session:
                assert crud.get_job(session, job_id).enqueued_at is None  # nothing was sent
            redis.start()  # same port, empty: the API's reaper loop sends the job
            deadline = time.monotonic() + 120
            while True:
                with sessions() as session:
                    if crud.get_job(session, job_id).enqueued_at is not None:
                        break
                assert time.monotonic() < deadline, log.read_text()[-3000:]
                time.sleep(0.2)
        worker_side = make_celery(settings.model_copy(update={"broker_url": redis.url}))
        with worker_side.connection_for_read() as connection:
            queue = connection.SimpleQueue(settings.queue_name)
            message = queue.get(timeout=10)
            message.ack()
            assert message.headers["task"] == "worker.tasks.run_job"
            [hint] = message.payload[0]
            queue.close()
        assert waiting_messages(worker_side, settings.queue_name) == 0  # sent once
        with sessions() as session:  # what the worker's task does with the message
            gpus = claims.job_gpus(session, hint)
            assert claims.claim_next_job(session, worker_id="w", gpus=gpus) == job_id == hint
        engine.dispose()
    text = log.read_text()
    assert text.count("reaper: the broker is unavailable") <= 1
    assert f"could not enqueue {job_id}: the broker is unavailable (OperationalError: " in text
    assert "Traceback" not in text  # an expected outage: one line, no traceback
    assert f"job {job_id} had no message in the broker; sent one" in text
