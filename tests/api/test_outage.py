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

BODY = {"method": "vanilla", "student": {"arch": "resnet8"}, "dataset": {"name": "mnist5k"},
        "training": {"epochs": 1}}  # fmt: skip


def test_database_outage_is_503_with_retry_after_and_recovers(tmp_path):
    log = tmp_path / "api.log"
    with private_postgres() as postgres:
        upgrade(postgres.url)
        key = make_key(postgres.url, "outage")
        env = {"WKD_DATABASE_URL": postgres.url, "WKD_DATA_DIR": str(tmp_path / "data"),
               "WKD_REAPER_INTERVAL_S": "0", "WKD_RETRY_AFTER_S": "7"}  # fmt: skip
        with uvicorn_api(env, log) as base, httpx.Client(
            base_url=base, headers={"Authorization": f"Bearer {key}"}, timeout=30
        ) as client:
            job = client.post("/jobs", json=BODY)
            assert job.status_code == 202, job.text
            job_id = job.json()["id"]
            requests = [("GET", "/jobs"), ("GET", f"/jobs/{job_id}"), ("POST", "/jobs"),
                        ("GET", f"/jobs/{job_id}/metrics"), ("POST", f"/jobs/{job_id}/cancel"),
                        ("GET", "/checkpoints"), ("GET", f"/jobs/{job_id}/artifacts")]  # fmt: skip
            postgres.stop()
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
            postgres.start()
            deadline, unavailable = time.monotonic() + 20, len(requests)
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
