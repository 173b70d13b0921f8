"""Artifacts and checkpoints in an S3-compatible object store (a real moto server on
127.0.0.1), through the storage interface and through the API with two hosts' worth of
separate data folders: nothing a job needs may live only where it was accepted."""

from __future__ import annotations

import hashlib
import secrets
import time

import httpx
import pytest
from deploy_tools import BIN, ROOT, moto_server
from stacks import clean_env, free_port, healthy, make_key, start, stop, wait_until

from service import objectstore
from service.settings import Settings

CREDENTIALS = {"WKD_S3_ACCESS_KEY_ID": "testing", "WKD_S3_SECRET_ACCESS_KEY": "testing",
               "WKD_S3_REGION": "us-east-1"}  # fmt: skip


@pytest.fixture(scope="module")
def s3_endpoint(tmp_path_factory):
    """``moto_server`` in its own process; yields its URL."""
    with moto_server(tmp_path_factory.mktemp("moto")) as (url, _process):
        yield url


@pytest.fixture
def bucket_settings(s3_endpoint, tmp_path) -> Settings:
    """Settings of a fresh bucket (created here) under a prefix."""
    settings = Settings(data_dir=tmp_path, storage_backend="s3", s3_endpoint_url=s3_endpoint,
                        s3_bucket=f"wkd-{secrets.token_hex(4)}", s3_prefix="wkd/",
                        **{k[4:].lower(): v for k, v in CREDENTIALS.items()})  # fmt: skip
    objectstore.s3_client(settings).create_bucket(Bucket=settings.s3_bucket)
    return settings


def bucket_keys(settings: Settings) -> set[str]:
    listing = objectstore.s3_client(settings).list_objects_v2(Bucket=settings.s3_bucket)
    return {item["Key"] for item in listing.get("Contents", [])}


@pytest.mark.parametrize("backend", ["local", "s3"])
def test_store_round_trip(backend, bucket_settings, tmp_path):
    settings = bucket_settings if backend == "s3" else Settings(data_dir=tmp_path / "local")
    store = objectstore.open_store(settings)
    source = tmp_path / "weights.bin"
    source.write_bytes(b"\x00\x01" * 700_000)
    store.put_file("artifacts", "job_0123456789abcdef01234567/student.safetensors", source)
    key = "job_0123456789abcdef01234567/student.safetensors"
    assert store.exists("artifacts", key) and not store.exists("checkpoints", key)
    assert store.size("artifacts", key) == 1_400_000
    assert b"".join(store.iter_bytes("artifacts", key)) == source.read_bytes()
    copy = store.fetch("artifacts", key, tmp_path / "copy" / "student.safetensors")
    assert copy.read_bytes() == source.read_bytes()
    if backend == "s3":
        assert bucket_keys(settings) == {f"wkd/artifacts/{key}"}
    store.delete("artifacts", key)
    store.delete("artifacts", key)  # absent: no error
    assert not store.exists("artifacts", key)
    with pytest.raises(objectstore.MissingObjectError):
        store.fetch("artifacts", key, tmp_path / "again")
    for bad in ("../escape", "/etc/passwd", "a//b", ""):
        with pytest.raises(ValueError):
            store.exists("artifacts", bad)


def teacher_file(tmp_path):
    """A resnet8 for 10 classes with random weights: a KD teacher needs no accuracy here."""
    import torch
    from safetensors.torch import save_file

    from wkd_core.models import create_model

    torch.manual_seed(0)
    path = tmp_path / "teacher.safetensors"
    save_file(create_model("resnet8", num_classes=10).state_dict(), path)
    return path


@pytest.mark.e2e
@pytest.mark.postgres
@pytest.mark.redis
@pytest.mark.slow
def test_job_through_the_api_with_s3_and_no_shared_folder(bucket_settings, tmp_path):
    """API and worker as separate processes with separate data folders (two hosts): upload a
    teacher, run a KD job, list and download every artifact, all through the API."""
    from service.db import upgrade
    from service.testing import temporary_postgres_database

    queue = f"wkd-s3-{secrets.token_hex(4)}"
    s3 = {"WKD_STORAGE_BACKEND": "s3", "WKD_S3_ENDPOINT_URL": bucket_settings.s3_endpoint_url,
          "WKD_S3_BUCKET": bucket_settings.s3_bucket, "WKD_S3_PREFIX": "wkd/", **CREDENTIALS}
    api_dir, worker_dir = tmp_path / "api-host", tmp_path / "worker-host"
    with temporary_postgres_database() as database_url:
        upgrade(database_url)
        common = dict(WKD_DATABASE_URL=database_url, WKD_BROKER_URL="redis://127.0.0.1:6379/13",
                      WKD_QUEUE_NAME=queue, PYTHONPATH=str(ROOT), **s3)
        port = free_port()
        logs = [tmp_path / "api.log", tmp_path / "worker.log"]
        api = start([str(BIN / "uvicorn"), "api.main:app", "--host", "127.0.0.1", "--port",
                     str(port)], clean_env(WKD_DATA_DIR=str(api_dir), **common), logs[0])
        worker = start([str(BIN / "celery"), "-A", "worker.celery_app", "worker", "--pool",
                        "prefork", "--concurrency", "1", "--hostname", f"{queue}@%h",
                        "--loglevel", "INFO"],
                       clean_env(WKD_DATA_DIR=str(worker_dir), **common), logs[1])
        base_url = f"http://127.0.0.1:{port}"
        try:
            wait_until(lambda: healthy(base_url), timeout=60, what="the API",
                       processes=[api, worker])
            wait_until(lambda: b"ready." in logs[1].read_bytes(), timeout=90, what="the worker",
                       processes=[worker])
            key = make_key(database_url, "s3")
            with httpx.Client(base_url=base_url, timeout=30,
                              headers={"Authorization": f"Bearer {key}"}) as client:
                job = run_kd_job(client, teacher_file(tmp_path), logs)

                def listing() -> list[dict] | None:  # runner.log comes from the supervisor,
                    rows = client.get(f"/jobs/{job['id']}/artifacts").json()["data"]
                    return rows if "runner.log" in {r["name"] for r in rows} else None

                listed = wait_until(listing, timeout=30, what="runner.log")  # just after the end
                downloads = {a["name"]: download(client, a["url"]) for a in listed}
        finally:
            stop(api)
            stop(worker)
            _drop_queue(queue)

    assert {"student.safetensors", "metrics.csv", "manifest.json", "runner.log"} <= set(downloads)
    for artifact in listed:
        digest = hashlib.sha256(downloads[artifact["name"]]).hexdigest()
        assert digest == artifact["sha256"], artifact["name"]
    keys = bucket_keys(bucket_settings)
    checkpoint_id = job["spec"]["teacher"]["checkpoint_id"]
    assert f"wkd/checkpoints/{checkpoint_id}.safetensors" in keys
    assert {f"wkd/artifacts/{job['id']}/{name}" for name in downloads} <= keys
    assert f"wkd/artifacts/{job['id']}/checkpoint.pt" not in keys  # removed once succeeded
    # The API's host kept no copy: the upload and the job's files are only in the bucket.
    assert not list(api_dir.glob("checkpoints/*")) and not list(api_dir.glob("staging/*"))
    assert not list(api_dir.glob("artifacts/job_*"))
    # The worker's host fetched the teacher from the bucket.
    assert list(worker_dir.glob(f"cache/teachers/checkpoints/{checkpoint_id}.safetensors"))


def run_kd_job(client: httpx.Client, teacher, logs) -> dict:
    """Upload ``teacher``, submit a 1-epoch KD job from it, poll it to its end."""
    with open(teacher, "rb") as handle:
        uploaded = client.post("/checkpoints", data={"arch": "resnet8", "num_classes": "10"},
                               files={"file": ("teacher.safetensors", handle)})
    assert uploaded.status_code == 201, uploaded.text
    spec = {"method": "kd", "teacher": {"checkpoint_id": uploaded.json()["id"]},
            "student": {"arch": "resnet8"},
            "dataset": {"name": "mnist5k", "train_subset_per_class": 10},
            "training": {"epochs": 1, "batch_size": 50, "lr_milestones": [], "num_workers": 0}}
    response = client.post("/jobs", json=spec)
    assert response.status_code == 202, response.text
    job_id = response.json()["id"]
    deadline = time.monotonic() + 300
    while not (job := client.get(f"/jobs/{job_id}").json())["is_terminal"]:
        assert time.monotonic() < deadline, "\n".join(p.read_text()[-3000:] for p in logs)
        time.sleep(0.5)
    assert job["status"] == "succeeded", (job["message"], logs[1].read_text()[-3000:])
    assert [row["epoch"] for row in job["curve"]] == [1]
    return job


def download(client: httpx.Client, url: str) -> bytes:
    response = client.get(url)
    assert response.status_code == 200, response.text
    assert response.headers["content-disposition"].startswith("attachment")
    assert int(response.headers["content-length"]) == len(response.content)
    return response.content


def _drop_queue(queue: str) -> None:
    import redis

    redis.Redis(host="127.0.0.1", port=6379, db=13).delete(queue, f"_kombu.binding.{queue}")


def test_s3_backend_needs_a_bucket():
    with pytest.raises(ValueError, match="WKD_S3_BUCKET"):
        Settings(storage_backend="s3")


def test_resume_checkpoint_travels_between_hosts(bucket_settings, tmp_path):
    """Host A publishes ``checkpoint.pt`` after an epoch; host B, given the re-queued job,
    resumes from the bucket's copy, never from a stale file of its own."""
    from worker.launch import restore_checkpoint
    from worker.reporting import PublishCheckpoint

    job_id = "job_" + "ab" * 12
    host_a = bucket_settings.model_copy(update={"data_dir": tmp_path / "a"})
    host_b = bucket_settings.model_copy(update={"data_dir": tmp_path / "b",
                                                "artifact_dir": tmp_path / "b" / "artifacts"})
    folder_a = tmp_path / "a" / "artifacts" / job_id
    folder_a.mkdir(parents=True)
    (folder_a / "checkpoint.pt").write_bytes(b"epoch 3 state")
    PublishCheckpoint(objectstore.open_store(host_a), job_id, folder_a / "checkpoint.pt") \
        .on_epoch_end(None, None)  # fmt: skip
    assert f"wkd/artifacts/{job_id}/checkpoint.pt" in bucket_keys(bucket_settings)

    folder_b = host_b.artifact_dir / job_id
    folder_b.mkdir(parents=True)
    (folder_b / "checkpoint.pt").write_bytes(b"epoch 1 state, left by an older attempt")
    assert restore_checkpoint(host_b, job_id, folder_b)
    assert (folder_b / "checkpoint.pt").read_bytes() == b"epoch 3 state"

    objectstore.open_store(host_b).delete("artifacts", f"{job_id}/checkpoint.pt")
    assert not restore_checkpoint(host_b, job_id, folder_b)  # nothing stored: start afresh
    assert not (folder_b / "checkpoint.pt").exists()
