"""Multi-GPU jobs: queues by GPU count, 422 beyond the largest worker, and a job run by the
real supervisor under torchrun as two gloo processes on this CPU (DDP, one process per
"device")."""

from __future__ import annotations

import secrets

import pytest
from fastapi.testclient import TestClient

from api.main import create_app
from service import accounts, crud, routing
from service.db import make_engine, make_sessionmaker, upgrade
from service.queue import Enqueuer, celery_config
from service.settings import Settings
from service.spec import validate_job_spec
from service.tables import JobStatus

SPEC = {
    "method": "vanilla",
    "student": {"arch": "resnet8"},
    "dataset": {"name": "mnist5k", "train_subset_per_class": 10},
    "training": {"epochs": 1, "batch_size": 50, "lr_milestones": [], "num_workers": 0},
}


@pytest.fixture
def sqlite_settings(tmp_path):
    def make(**values) -> Settings:
        settings = Settings(data_dir=tmp_path, reaper_interval_s=0, **values)
        upgrade(settings.database_url)
        return settings

    return make


def sessions_of(settings: Settings):
    return make_sessionmaker(make_engine(settings.database_url))


def insert_job(sessions, spec: dict, *, owner: str | None = None) -> str:
    with sessions() as session:
        if owner is None:
            owner = accounts.create_api_key(session, name=secrets.token_hex(4))[0].id
        job, _ = crud.create_job(session, owner_id=owner, max_attempts=1,
                                 spec=validate_job_spec(spec).to_stored())  # fmt: skip
    return job.id


def test_queues_are_named_by_gpu_count():
    settings = Settings(queue_name="q", worker_gpus=4, max_job_gpus=8)
    assert routing.queue_for(settings, 1) == "q"
    assert routing.queue_for(settings, 3) == "q-gpus-3"
    assert routing.worker_queues(settings) == ["q", "q-gpus-2", "q-gpus-3", "q-gpus-4"]
    assert len(routing.known_queues(settings)) == 8
    assert routing.spec_gpus({"training": {}}) == 1  # specs stored before the field existed
    with pytest.raises(ValueError):
        routing.queue_for(settings, 0)


def test_worker_consumes_the_queues_its_gpus_can_serve(monkeypatch):
    from types import SimpleNamespace

    from service.settings import get_settings
    from worker import celery_app

    client = celery_config(Settings(queue_name="q", max_job_gpus=4))  # the API sends to all
    assert [q.name for q in client["task_queues"]] == ["q", "q-gpus-2", "q-gpus-3", "q-gpus-4"]
    for env, consumed in (({}, ["q", "q-gpus-2"]), ({"--queues": "q"}, ["q"])):
        monkeypatch.setenv("WKD_QUEUE_NAME", "q")
        monkeypatch.setenv("WKD_WORKER_GPUS", "2")
        monkeypatch.setenv("WKD_MAX_JOB_GPUS", "4")
        get_settings.cache_clear()
        try:
            app = celery_app.make_app(get_settings())
            if env:  # what `celery worker --queues q` does before the signal
                app.amqp.queues.select(env["--queues"])
            celery_app._consume_own_queues(instance=SimpleNamespace(app=app))
        finally:
            get_settings.cache_clear()
        assert sorted(app.amqp.queues.consume_from) == consumed  # the reaper may send to all
        assert len(app.amqp.queues) == 4


def test_job_asking_for_more_gpus_than_any_worker_is_422(sqlite_settings):
    settings = sqlite_settings(max_job_gpus=2)
    sent: list[str] = []
    with TestClient(create_app(settings, enqueue=sent.append)) as client:
        with make_sessionmaker(client.app.state.engine)() as session:
            key = accounts.create_api_key(session, name="gpus")[1]
        headers = {"Authorization": f"Bearer {key}"}
        too_many = {**SPEC, "training": {**SPEC["training"], "gpus": 3}}
        response = client.post("/jobs", json=too_many, headers=headers)
        assert response.status_code == 422
        (error,) = response.json()["detail"]
        assert error["loc"] == ["body", "training", "gpus"]
        assert "the most a job may ask for is 2" in error["msg"]
        uneven = {**SPEC, "training": {**SPEC["training"], "gpus": 2, "batch_size": 51}}
        response = client.post("/jobs", json=uneven, headers=headers)
        assert response.status_code == 422
        assert response.json()["detail"][0]["loc"] == ["body", "training", "batch_size"]
        fits = {**SPEC, "training": {**SPEC["training"], "gpus": 2}}
        response = client.post("/jobs", json=fits, headers=headers)
        assert response.status_code == 202
        assert response.json()["spec"]["training"]["gpus"] == 2
    assert sent == [response.json()["id"]]  # only the accepted job was enqueued


@pytest.mark.redis
def test_enqueuer_routes_by_the_jobs_gpu_count(sqlite_settings):
    import redis

    queue = f"wkd-route-{secrets.token_hex(4)}"
    settings = sqlite_settings(queue_name=queue, max_job_gpus=2,
                               broker_url="redis://127.0.0.1:6379/13")  # fmt: skip
    sessions = sessions_of(settings)
    one = insert_job(sessions, SPEC)
    two = insert_job(sessions, {**SPEC, "training": {**SPEC["training"], "gpus": 2}})
    client = redis.Redis(host="127.0.0.1", port=6379, db=13)
    try:
        enqueue = Enqueuer(settings)
        enqueue(one)
        enqueue(two)
        assert client.llen(queue) == 1 and client.llen(f"{queue}-gpus-2") == 1
        assert one.encode() in client.lindex(queue, 0)
        assert two.encode() in client.lindex(f"{queue}-gpus-2", 0)
    finally:
        client.delete(queue, f"{queue}-gpus-2", f"_kombu.binding.{queue}",
                      f"_kombu.binding.{queue}-gpus-2")  # fmt: skip


def test_runner_command_uses_torchrun_for_several_gpus(tmp_path):
    from worker.launch import TooManyGpusError, runner_command

    single = runner_command("job_x", gpus=1, result=tmp_path / "r", teacher=None, worker_gpus=2)
    assert single[1:3] == ["-m", "worker.runner"]
    double = runner_command("job_x", gpus=2, result=tmp_path / "r", teacher=None, worker_gpus=2)
    assert double[1:6] == ["-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2"]
    assert double[6:9] == ["-m", "worker.runner", "job_x"]
    with pytest.raises(TooManyGpusError):
        runner_command("job_x", gpus=4, result=tmp_path / "r", teacher=None, worker_gpus=2)


@pytest.mark.slow
def test_two_gpu_job_runs_under_torchrun_with_two_gloo_processes(sqlite_settings):
    from worker.supervisor import supervise_job

    settings = sqlite_settings(worker_gpus=2, heartbeat_seconds=1)
    sessions = sessions_of(settings)
    spec = {**SPEC, "training": {**SPEC["training"], "gpus": 2, "epochs": 2}}
    job_id = insert_job(sessions, spec)

    outcome = supervise_job(job_id, settings=settings, sessions=sessions, poll_s=0.2)

    log = (settings.artifact_dir / job_id / "runner.log").read_text()
    assert outcome.status == "succeeded", (outcome.message, log[-3000:])
    assert f"job {job_id}: process 0 of 2" in log and f"job {job_id}: process 1 of 2" in log
    with sessions() as session:
        curve = crud.list_metrics(session, job_id=job_id)
        names = {a.name for a in crud.list_artifacts(session, job_id=job_id)}
        job = crud.get_job(session, job_id)
    assert [row["epoch"] for row in curve] == [1, 2]  # rank 0 alone reported, once per epoch
    assert job.status == JobStatus.succeeded and job.progress_epoch == 2
    assert {"student.safetensors", "manifest.json", "metrics.csv"} <= names


def test_worker_refuses_a_job_bigger_than_itself(sqlite_settings):
    from worker.supervisor import supervise_job

    settings = sqlite_settings(worker_gpus=1)
    sessions = sessions_of(settings)
    job_id = insert_job(sessions, {**SPEC, "training": {**SPEC["training"], "gpus": 2}})
    outcome = supervise_job(job_id, settings=settings, sessions=sessions)
    assert outcome.status == "failed" and outcome.failure_reason == "invalid_input"
    assert "this worker has 1" in outcome.message


@pytest.mark.slow
def test_cancelling_a_two_gpu_job_stops_every_process(sqlite_settings):
    import threading
    import time

    from worker.supervisor import supervise_job

    settings = sqlite_settings(worker_gpus=2, heartbeat_seconds=1)
    sessions = sessions_of(settings)
    job_id = insert_job(sessions, {**SPEC, "training": {**SPEC["training"], "gpus": 2,
                                                        "epochs": 200}})  # fmt: skip
    outcome = []
    thread = threading.Thread(target=lambda: outcome.append(
        supervise_job(job_id, settings=settings, sessions=sessions, poll_s=0.2, kill_grace_s=20)))
    thread.start()
    deadline = time.monotonic() + 180
    while True:
        with sessions() as session:
            job = crud.get_job(session, job_id)
        if job.progress_epoch >= 1 or job.is_terminal:
            break
        assert time.monotonic() < deadline, "the job never finished an epoch"
        time.sleep(0.2)
    with sessions() as session:
        crud.request_cancel(session, job_id=job_id)
    thread.join(timeout=120)
    assert not thread.is_alive()
    log = (settings.artifact_dir / job_id / "runner.log").read_text()
    assert outcome[0].status == "cancelled", (outcome[0].message, log[-3000:])
    time.sleep(2)  # a rank left behind would exit within a second of its agent's end
    assert not _processes_of(job_id)


def _processes_of(job_id: str) -> list[str]:
    """Command lines of live processes that mention ``job_id``."""
    from pathlib import Path

    found = []
    for entry in Path("/proc").iterdir():
        try:
            raw = (entry / "cmdline").read_bytes()
            state = (entry / "stat").read_text().split(") ", 1)[1][0]
        except (OSError, IndexError):
            continue
        if job_id.encode() in raw and state != "Z":
            found.append(raw.replace(b"\0", b" ").decode(errors="replace"))
    return found
