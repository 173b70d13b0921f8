"""An object store that stops answering (frozen with SIGSTOP, as ``docker pause`` does) or
is gone (connection refused), with the ``s3`` backend. Under the API a download answers
``503`` + ``Retry-After`` within the store's timeouts instead of holding the request for
botocore's minutes, the API keeps serving, and the same download works once the store is
back. Under the worker a running job retries its checkpoint upload until the store answers
again and succeeds on its first attempt. A real ``moto_server`` process stands in for S3."""

from __future__ import annotations

import os
import signal
import threading
import time

import pytest
from deploy_tools import moto_server
from fastapi.testclient import TestClient
from stacks import wait_until

from api.main import create_app
from service import accounts, crud, objectstore
from service.db import make_engine, make_sessionmaker, upgrade
from service.settings import Settings
from service.spec import validate_job_spec
from service.tables import JobStatus

TIMEOUT_S = 1.0  # connect and read timeout of each S3 call, one attempt
CONTENT = b"\x00\x01" * 50_000
SPEC = {"method": "vanilla", "student": {"arch": "resnet8"}, "dataset": {"name": "mnist5k"}}


def s3_settings(tmp_path, url: str, **overrides) -> Settings:
    return Settings(
        data_dir=tmp_path / "data", database_url=f"sqlite:///{tmp_path / 'wkd.db'}",
        storage_backend="s3", s3_endpoint_url=url, s3_bucket="wkd-faults", s3_prefix="wkd/",
        s3_region="us-east-1", s3_access_key_id="testing", s3_secret_access_key="testing",
        s3_connect_timeout_s=TIMEOUT_S, s3_read_timeout_s=TIMEOUT_S, s3_max_attempts=1,
        reaper_interval_s=0, retry_after_s=7, **overrides,
    )  # fmt: skip


def finished_job_with_artifact(settings: Settings) -> tuple[str, str, str]:
    """A succeeded job whose ``student.safetensors`` lies in the bucket; (API key, its
    download URL, its key in the store)."""
    upgrade(settings.database_url)
    engine = make_engine(settings.database_url)
    try:
        with make_sessionmaker(engine)() as session:
            owner, key = accounts.create_api_key(session, name="s3")
            job, _ = crud.create_job(session, owner_id=owner.id, max_attempts=1,
                                     spec=validate_job_spec(SPEC).to_stored())  # fmt: skip
            source = settings.data_dir / "student.safetensors"
            source.parent.mkdir(parents=True, exist_ok=True)
            source.write_bytes(CONTENT)
            path = f"{job.id}/student.safetensors"
            objectstore.open_store(settings).put_file("artifacts", path, source)
            crud.add_artifact(session, job_id=job.id, name="student.safetensors", path=path,
                              kind="weights", size=len(CONTENT), sha256="0" * 64)  # fmt: skip
            crud.finish_job(session, job_id=job.id, status=JobStatus.succeeded)
            return key, f"/jobs/{job.id}/artifacts/student.safetensors", path
    finally:
        engine.dispose()


def timed_get(client: TestClient, url: str, headers: dict):
    started = time.monotonic()
    response = client.get(url, headers=headers)
    return response, time.monotonic() - started


def test_a_frozen_or_gone_object_store_is_a_503_and_the_download_works_after(tmp_path):
    with moto_server(tmp_path) as (url, server):
        settings = s3_settings(tmp_path, url)
        objectstore.s3_client(settings).create_bucket(Bucket=settings.s3_bucket)
        key, download, stored = finished_job_with_artifact(settings)
        headers = {"Authorization": f"Bearer {key}"}
        with TestClient(create_app(settings, enqueue=lambda _job_id: None)) as client:
            assert client.get(download, headers=headers).content == CONTENT

            os.kill(server.pid, signal.SIGSTOP)
            try:
                frozen, took = timed_get(client, download, headers)
                assert client.get("/jobs", headers=headers).status_code == 200  # still serving
                with pytest.raises(objectstore.StoreUnavailableError, match="ReadTimeout"):
                    objectstore.open_store(settings).size("artifacts", stored)
            finally:
                os.kill(server.pid, signal.SIGCONT)
            assert frozen.status_code == 503, frozen.text
            assert frozen.json() == {"detail": "the object store is unavailable; retry shortly"}
            assert frozen.headers["retry-after"] == "7"
            assert TIMEOUT_S * 0.9 < took < TIMEOUT_S + 4, took  # one read timeout, no retries

            thawed = client.get(download, headers=headers)
            assert thawed.status_code == 200 and thawed.content == CONTENT

            server.terminate()
            server.wait(timeout=20)
            gone, took = timed_get(client, download, headers)
            assert gone.status_code == 503 and "object store" in gone.json()["detail"], gone.text
            assert took < TIMEOUT_S + 4, took


def test_a_running_job_rides_out_a_frozen_object_store(tmp_path):
    from sqlalchemy import select

    from service.tables import JobMetric
    from worker.common import session_factory
    from worker.supervisor import LOG_FILE, supervise_job

    with moto_server(tmp_path) as (url, server):
        settings = s3_settings(tmp_path, url, store_retry_s=60, heartbeat_seconds=0.5)
        objectstore.s3_client(settings).create_bucket(Bucket=settings.s3_bucket)
        upgrade(settings.database_url)
        sessions = session_factory(settings)
        body = {**SPEC, "dataset": {"name": "mnist5k", "train_subset_per_class": 10},
                "training": {"epochs": 4, "batch_size": 50, "lr": 0.05, "lr_milestones": [],
                             "num_workers": 0}}  # fmt: skip
        with sessions() as session:
            owner = accounts.create_api_key(session, name="s3")[0]
            job, _ = crud.create_job(session, owner_id=owner.id, max_attempts=2,
                                     spec=validate_job_spec(body).to_stored())  # fmt: skip
            crud.mark_enqueued(session, job_id=job.id)

        def epochs() -> list[int]:
            with sessions() as session:
                query = select(JobMetric.epoch).where(JobMetric.job_id == job.id)
                return sorted(session.scalars(query))

        outcome: list = []
        thread = threading.Thread(
            target=lambda: outcome.append(supervise_job(job.id, settings=settings)))
        thread.start()
        log = settings.artifact_dir / job.id / LOG_FILE
        wait_until(epochs, timeout=120, what="epoch 1")
        os.kill(server.pid, signal.SIGSTOP)  # the next epoch's checkpoint upload meets it
        try:
            retried = lambda: log.is_file() and b"object store unavailable" in log.read_bytes()  # noqa: E731
            wait_until(lambda: retried() or not thread.is_alive(), timeout=120,
                       what="a retried upload")  # fmt: skip
            time.sleep(2 * TIMEOUT_S)
        finally:
            os.kill(server.pid, signal.SIGCONT)
        thread.join(timeout=300)
        with sessions() as session:
            job = crud.get_job(session, job.id)
        curve = epochs()
        keys = {item["Key"] for item in objectstore.s3_client(settings).list_objects_v2(
            Bucket=settings.s3_bucket)["Contents"]}  # fmt: skip
        sessions.kw["bind"].dispose()

    text = log.read_text()
    assert outcome and outcome[0].status == "succeeded", text
    assert (job.status, job.attempt) == (JobStatus.succeeded, 1)
    assert curve == [1, 2, 3, 4]  # each epoch once: the stalled upload delayed, lost nothing
    assert "checkpoint.pt: object store unavailable (ReadTimeoutError)" in text
    assert f"wkd/artifacts/{job.id}/student.safetensors" in keys
