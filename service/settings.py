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
from typing import Any

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

    queue_name: str = "wkd"
    max_upload_bytes: int = Field(default=512 * MiB, gt=0)
    max_json_bytes: int = Field(default=64 * 1024, gt=0)
    heartbeat_seconds: float = Field(default=10.0, gt=0)
    stale_heartbeats: int = Field(default=6, ge=2)  # a job is lost after this many missed beats
    reaper_interval_s: float = Field(default=30.0, ge=0)  # 0 turns the API's reaper off
    max_attempts: int = Field(default=3, ge=1)
    # Jobs run at once by one worker on its GPU (Celery concurrency). 4: the best of
    # K = 1, 2, 4 for CIFAR-sized jobs in bench/jobs_per_gpu.py on an H100
    # (docs/benchmarks.md). A worker that sees no NVIDIA GPU runs one job at a time.
    jobs_per_gpu: int = Field(default=4, ge=1, le=16)
    job_time_limit_s: int = Field(default=7 * 24 * 3600, gt=0)
    default_page_size: int = Field(default=20, ge=1)
    max_page_size: int = Field(default=100, ge=1)

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
        return self

    @property
    def stale_after_s(self) -> float:
        """Seconds without a heartbeat after which the reaper declares a job's worker lost."""
        return self.heartbeat_seconds * self.stale_heartbeats

    def worker_concurrency(self) -> int:
        """Jobs one worker runs at once: ``jobs_per_gpu`` where an NVIDIA GPU is visible, else
        1 (checked from the device files and CUDA_VISIBLE_DEVICES, without touching CUDA)."""
        visible = os.environ.get("CUDA_VISIBLE_DEVICES")
        has_gpu = Path("/dev/nvidiactl").exists() and visible not in ("", "-1")
        return self.jobs_per_gpu if has_gpu else 1

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
