"""The one settings object of the service, read from ``WKD_*`` environment variables.

Every process (API, worker, Alembic, the CLI's ``serve`` and ``keys`` commands) builds its
configuration from :class:`Settings`. Defaults make the embedded deployment: SQLite, kombu's
filesystem broker and local folders, all under ``data_dir``. Production sets two URLs::

    WKD_DATABASE_URL=postgresql+psycopg://wkd:secret@db:5432/wkd
    WKD_BROKER_URL=redis://redis:6379/0
"""

from __future__ import annotations

import os
from functools import lru_cache
from pathlib import Path
from typing import Any, Literal

from pydantic import Field, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

MiB = 1024 * 1024


class Settings(BaseSettings):
    """Service configuration; every field can be set as ``WKD_<FIELD_NAME>``."""

    model_config = SettingsConfigDict(env_prefix="WKD_", env_ignore_empty=True, extra="ignore")

    data_dir: Path = Path(".wkd")
    database_url: str = ""  # default: sqlite:///<data_dir>/wkd.db
    broker_url: str = ""  # default: filesystem:// with folders under <data_dir>/broker
    artifact_dir: Path | None = None  # default: <data_dir>/artifacts (one folder per job)
    checkpoint_dir: Path | None = None  # default: <data_dir>/checkpoints (uploaded teachers)
    dataset_root: Path | None = None  # default: <data_dir>/datasets
    cache_dir: Path | None = None  # default: <data_dir>/cache (interrelation matrices)
    download_datasets: bool = False  # let the worker fetch a missing CIFAR into dataset_root

    queue_name: str = "wkd"
    max_upload_bytes: int = Field(default=512 * MiB, gt=0)
    max_json_bytes: int = Field(default=64 * 1024, gt=0)
    heartbeat_seconds: float = Field(default=10.0, gt=0)
    stale_heartbeats: int = Field(default=6, ge=2)  # a job is lost after this many missed beats
    reaper_interval_s: float = Field(default=30.0, ge=0)  # 0 turns the API's reaper off
    max_attempts: int = Field(default=3, ge=1)
    # A queued job whose last message was sent this long ago, while fewer messages wait in
    # the broker than jobs are queued, gets a new one (its message was lost: a worker died
    # holding it, the broker restarted without persistence, a claim failed). See
    # docs/reliability.md: an idle worker starts such a job within about
    # requeue_after_s + reaper_interval_s.
    requeue_after_s: float = Field(default=60.0, gt=0)
    # How long the worker retries a database write (claim, per-epoch metrics, heartbeat,
    # the final status) through a database outage before it gives up on that write.
    db_retry_s: float = Field(default=120.0, ge=0)
    # The same for each call to a remote object store (WKD_STORAGE_BACKEND=s3) that is
    # unreachable, times out or answers 5xx: publishing a checkpoint or an artifact, fetching
    # a teacher or a checkpoint (worker/store.py).
    store_retry_s: float = Field(default=120.0, ge=0)
    # PostgreSQL, API and worker (docs/reliability.md, "A stuck database"): a connection
    # attempt gives up after db_connect_timeout_s, and the server cancels a statement that
    # runs (or waits on a lock) longer than db_statement_timeout_s; 0 turns that off.
    db_connect_timeout_s: int = Field(default=10, ge=1, le=3600)
    db_statement_timeout_s: float = Field(default=30.0, ge=0, le=86400)
    # The API's broker client (POST /jobs, the reaper) gives up on a Redis that sends nothing
    # for this long, per attempt (kombu makes a few): a frozen or unreachable broker makes a
    # submission a 202 left to the reaper within seconds, instead of a request that hangs.
    broker_timeout_s: float = Field(default=3.0, gt=0, le=300)
    # After asking a runner to stop (cancel, time limit, worker shutdown) the supervisor
    # waits this long for it to stop at its next batch, then kills its process group.
    runner_stop_grace_s: float = Field(default=30.0, gt=0)
    # Level of the worker's own job log lines (claim, start, epoch, end), independent of
    # Celery's --loglevel, so that the default deployment logs one line per event.
    worker_log_level: str = "INFO"
    # Jobs run at once by one worker on its GPU (Celery concurrency). 4: the best of
    # K = 1, 2, 4 for CIFAR-sized jobs in bench/jobs_per_gpu.py on an H100
    # (docs/benchmarks.md). A worker that sees no NVIDIA GPU runs one job at a time.
    jobs_per_gpu: int = Field(default=4, ge=1, le=16)
    job_time_limit_s: int = Field(default=7 * 24 * 3600, gt=0)
    default_page_size: int = Field(default=20, ge=1)
    max_page_size: int = Field(default=100, ge=1)
    # API hardening (docs/service.md, "Limits"; docs/reliability.md, "API")
    max_num_workers: int = Field(default=16, ge=0, le=64)  # training.num_workers accepted
    retry_after_s: int = Field(default=5, ge=1)  # Retry-After of a 503 (database down)
    upload_check_memory_bytes: int = Field(default=1024 * MiB, ge=64 * MiB)
    upload_check_cpu_s: int = Field(default=30, ge=1)  # CPU seconds of the upload checker
    upload_check_timeout_s: float = Field(default=60.0, gt=0)  # its wall-clock limit
    job_cache_entries: int = Field(default=256, ge=0)  # rendered GET /jobs/{id}; 0: none
    job_readers: int = Field(default=8, ge=1)  # GET /jobs/{id} reads at once
    # per API key; 0 means no limit
    max_running_jobs_per_key: int = Field(default=4, ge=0)  # preparing, running, cancelling
    max_queued_jobs_per_key: int = Field(default=100, ge=0)
    max_stored_bytes_per_key: int = Field(default=10 * 1024 * MiB, ge=0)  # uploaded teachers

    # Where artifacts and uploaded checkpoints live (service/objectstore.py): "local" folders
    # (artifact_dir, checkpoint_dir) or an S3-compatible object store shared by every host.
    storage_backend: Literal["local", "s3"] = "local"
    s3_bucket: str = ""
    s3_prefix: str = ""  # key prefix inside the bucket, e.g. "wkd/"
    s3_endpoint_url: str = ""  # MinIO, Ceph, moto …; empty: AWS
    s3_region: str = ""
    s3_access_key_id: str = ""  # empty: boto3's own chain (AWS_* variables, instance role)
    s3_secret_access_key: str = ""
    # Each S3 call gives up after this many attempts, each waiting at most the connect and read
    # timeouts (a read timeout counts silence, not a transfer's length); then 503 in the API.
    s3_connect_timeout_s: float = Field(default=10.0, gt=0, le=600)
    s3_read_timeout_s: float = Field(default=30.0, gt=0, le=3600)
    s3_max_attempts: int = Field(default=3, ge=1, le=10)
    # Multi-GPU jobs (service/routing.py): devices this worker has, and the most a job may ask.
    worker_gpus: int = Field(default=1, ge=1, le=64)
    max_job_gpus: int = Field(default=1, ge=1, le=64)
    # GET /jobs/{id}/events: poll interval, keep-alive comments, open streams allowed
    events_poll_s: float = Field(default=0.5, gt=0)
    events_keepalive_s: float = Field(default=15.0, gt=0)
    events_max_streams: int = Field(default=200, ge=1)  # per API process
    events_max_streams_per_key: int = Field(default=10, ge=1)
    # A stream closes after this long (clients resume with Last-Event-ID), so that a restart
    # of the API never waits on streams of long jobs.
    events_max_stream_s: float = Field(default=300.0, gt=0)

    @model_validator(mode="after")
    def _fill_derived(self) -> Settings:
        data_dir = self.data_dir.expanduser()
        self.data_dir = data_dir
        if not self.database_url:
            self.database_url = f"sqlite:///{(data_dir / 'wkd.db').absolute()}"
        self.database_url = normalize_database_url(self.database_url)
        if not self.broker_url:
            self.broker_url = "filesystem://"
        self.artifact_dir = self.artifact_dir or data_dir / "artifacts"
        self.checkpoint_dir = self.checkpoint_dir or data_dir / "checkpoints"
        self.dataset_root = self.dataset_root or data_dir / "datasets"
        self.cache_dir = self.cache_dir or data_dir / "cache"
        self.default_page_size = min(self.default_page_size, self.max_page_size)
        if self.storage_backend == "s3" and not self.s3_bucket:
            raise ValueError("WKD_STORAGE_BACKEND=s3 needs WKD_S3_BUCKET")
        return self

    @property
    def stale_after_s(self) -> float:
        """Seconds without a heartbeat after which the reaper declares a job's worker lost."""
        return self.heartbeat_seconds * self.stale_heartbeats

    def worker_concurrency(self) -> int:
        """Jobs one worker runs at once: ``jobs_per_gpu`` where an NVIDIA GPU is visible and the
        worker has one GPU, else 1 (checked from the device files and CUDA_VISIBLE_DEVICES,
        without touching CUDA)."""
        visible = os.environ.get("CUDA_VISIBLE_DEVICES")
        has_gpu = Path("/dev/nvidiactl").exists() and visible not in ("", "-1")
        # A multi-GPU worker runs one job at a time: its jobs may span all its devices.
        return self.jobs_per_gpu if has_gpu and self.worker_gpus == 1 else 1

    @property
    def is_sqlite(self) -> bool:
        return self.database_url.startswith("sqlite")

    def broker_transport_options(self) -> dict[str, Any]:
        """kombu transport options; for ``filesystem://`` the folders under ``data_dir``.

        Producer and consumer use the same folder for in and out, so that one folder is the
        queue (kombu's documented setup for two processes on one host).
        """
        if not self.broker_url.startswith("filesystem"):
            return {}
        root = (self.data_dir / "broker").absolute()
        return {
            "data_folder_in": str(root / "queue"),
            "data_folder_out": str(root / "queue"),
            "control_folder": str(root / "control"),
            "processed_folder": str(root / "processed"),
            "store_processed": False,
        }

    def ensure_dirs(self) -> None:
        """Create the local folders the settings name (idempotent)."""
        folders = [self.data_dir, self.artifact_dir, self.checkpoint_dir, self.cache_dir]
        folders += [Path(p) for p in self.broker_transport_options().values() if isinstance(p, str)]
        for folder in folders:
            Path(folder).mkdir(parents=True, exist_ok=True)


def normalize_database_url(url: str) -> str:
    """Point bare PostgreSQL URLs at psycopg 3 (SQLAlchemy would otherwise pick psycopg2)."""
    for prefix in ("postgres://", "postgresql://"):
        if url.startswith(prefix):
            return "postgresql+psycopg://" + url[len(prefix) :]
    return url


@lru_cache
def get_settings() -> Settings:
    """The process-wide settings (cached; tests build their own ``Settings`` instead)."""
    return Settings()
