"""Helpers of the worker tests: job specs, inserting jobs and teachers, waiting, /proc."""

from __future__ import annotations

import time
from pathlib import Path

from service import accounts, crud, storage
from service.db import make_engine
from service.settings import Settings
from service.spec import validate_job_spec
from service.testing import clear_tables


def make_settings(database_url: str, data_dir: Path, **overrides) -> Settings:
    engine = make_engine(database_url)
    clear_tables(engine)
    engine.dispose()
    values = {"heartbeat_seconds": 0.5, "stale_heartbeats": 2, "reaper_interval_s": 0}
    return Settings(data_dir=data_dir, database_url=database_url, **(values | overrides))


def tiny_spec(**overrides) -> dict:
    """A resolved job spec for a few seconds of CPU training (merged with ``overrides``)."""
    body = {
        "method": "vanilla",
        "student": {"arch": "resnet8"},
        "dataset": {"name": "mnist5k", "train_subset_per_class": 10},
        "training": {"epochs": 2, "batch_size": 50, "lr": 0.05, "lr_milestones": [],
                     "num_workers": 0},
    }  # fmt: skip
    for key, value in overrides.items():
        body[key] = {**body[key], **value} if isinstance(value, dict) and key in body else value
    return body


def insert_job(sessions, owner: str, body: dict, *, resolve: bool = True) -> str:
    """A queued job as the API would store it (``resolve=False`` skips validation)."""
    spec = validate_job_spec(body).to_stored() if resolve else body
    with sessions() as session:
        job, _ = crud.create_job(session, owner_id=owner, spec=spec, max_attempts=2)
        crud.mark_enqueued(session, job_id=job.id)
    return job.id


def add_teacher(sessions, settings: Settings, owner: str, *, arch: str, weights_arch: str) -> str:
    """An uploaded teacher: random ``weights_arch`` weights declared as ``arch``."""
    import torch
    from safetensors.torch import save_file

    from wkd_core.models import create_model

    torch.manual_seed(0)
    model = create_model(weights_arch, num_classes=10)
    checkpoint_id = f"ck_{weights_arch}_{arch}"
    relpath = f"{checkpoint_id}.safetensors"
    path = settings.checkpoint_dir / relpath
    path.parent.mkdir(parents=True, exist_ok=True)
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(path))
    with sessions() as session:
        accounts.create_checkpoint(
            session, checkpoint_id=checkpoint_id, owner_id=owner, arch=arch, num_classes=10,
            filename="teacher.safetensors", size=path.stat().st_size,
            sha256=storage.file_sha256(path), path=relpath,
        )  # fmt: skip
    return checkpoint_id


def get_job(sessions, job_id: str):
    with sessions() as session:
        return crud.get_job(session, job_id)


def metric_rows(sessions, job_id: str) -> list:
    """The job's ``job_metrics`` rows (ORM objects, ``created_at`` included), by epoch."""
    from sqlalchemy import select

    from service.tables import JobMetric

    with sessions() as session:
        query = select(JobMetric).where(JobMetric.job_id == job_id).order_by(JobMetric.epoch)
        return list(session.scalars(query))


def wait_for(predicate, *, timeout: float, interval: float = 0.1, what: str = "condition"):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout} s waiting for {what}")


def runner_pids(job_id: str) -> list[int]:
    """Processes whose command line runs ``worker.runner`` for ``job_id`` (from /proc)."""
    pids = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            argv = (entry / "cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        if b"worker.runner" in argv and job_id.encode() in argv:
            pids.append(int(entry.name))
    return pids
