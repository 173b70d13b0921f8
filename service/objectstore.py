"""Where artifacts and uploaded checkpoints are kept: one interface, two backends.

``WKD_STORAGE_BACKEND`` picks the backend (:func:`open_store`):

- ``local`` (default): the folders ``artifact_dir`` and ``checkpoint_dir``. Every process that
  serves or runs jobs must see the same folders (one host, or a shared volume).
- ``s3``: an S3-compatible bucket (AWS S3, MinIO, Ceph …) through boto3, so that workers on
  several hosts and the API share everything a job needs. Keys are
  ``<s3_prefix><area>/<key>``, e.g. ``wkd/artifacts/job_…/student.safetensors``.

Objects live in two *areas*, ``artifacts`` and ``checkpoints``; a *key* is the relative path
the database stores (``job_…/student.safetensors``, ``ck_….pth``), checked by
:func:`service.storage.safe_join` rules before use. Processes always work on local files
(a job writes into its local folder, an upload is spooled to disk): :meth:`put_file` publishes
a local file under a key, :meth:`fetch` makes a local copy of one. For the local backend both
are no-ops when the file already is the stored one.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from collections.abc import Iterator
from functools import lru_cache
from pathlib import Path
from typing import Literal, Protocol

from service import storage
from service.settings import Settings

Area = Literal["artifacts", "checkpoints"]
AREAS: tuple[Area, ...] = ("artifacts", "checkpoints")


class ObjectStore(Protocol):
    """The storage interface every process uses for artifacts and checkpoints."""

    is_local: bool

    def put_file(self, area: Area, key: str, path: Path) -> None:
        """Store the local file ``path`` as ``key`` (replacing an older object)."""

    def fetch(self, area: Area, key: str, destination: Path) -> Path:
        """A local file with the object's bytes: ``destination``, or the stored file itself."""

    def exists(self, area: Area, key: str) -> bool: ...

    def delete(self, area: Area, key: str) -> None:
        """Remove the object; no error when it is absent."""

    def local_path(self, area: Area, key: str) -> Path | None:
        """The stored file when it is on this host's disk (``None`` for a remote store)."""

    def iter_bytes(self, area: Area, key: str) -> Iterator[bytes]:
        """The object's content in chunks (for streaming a download)."""

    def size(self, area: Area, key: str) -> int: ...


class MissingObjectError(FileNotFoundError):
    """No object under that key."""


class StoreUnavailableError(OSError):
    """The object store could not be reached, did not answer within its timeouts, or
    answered with a server error (5xx): worth retrying later, unlike a missing object or a
    refused request. The API answers it with ``503`` + ``Retry-After``."""


def _check_key(key: str) -> str:
    if not key or key.startswith("/") or any(p in ("", ".", "..") for p in key.split("/")):
        raise ValueError(f"unsafe key {key!r}")
    return key


class LocalStore:
    """The ``local`` backend: ``artifact_dir`` and ``checkpoint_dir`` on this host."""

    is_local = True

    def __init__(self, artifact_dir: Path, checkpoint_dir: Path) -> None:
        self.roots = {"artifacts": Path(artifact_dir), "checkpoints": Path(checkpoint_dir)}

    def path(self, area: Area, key: str) -> Path:
        root = self.roots[area]
        root.mkdir(parents=True, exist_ok=True)
        return storage.safe_join(root, _check_key(key))

    def put_file(self, area: Area, key: str, path: Path) -> None:
        target = self.path(area, key)
        if target.exists() and os.path.samefile(target, path):
            return
        target.parent.mkdir(parents=True, exist_ok=True)
        partial = target.with_name(target.name + ".partial")
        shutil.copyfile(path, partial)
        os.replace(partial, target)

    def fetch(self, area: Area, key: str, destination: Path) -> Path:
        source = self.path(area, key)
        if not source.is_file():
            raise MissingObjectError(f"{area}/{key}")
        return source

    def exists(self, area: Area, key: str) -> bool:
        return self.path(area, key).is_file()

    def delete(self, area: Area, key: str) -> None:
        self.path(area, key).unlink(missing_ok=True)

    def local_path(self, area: Area, key: str) -> Path | None:
        return self.path(area, key)

    def iter_bytes(self, area: Area, key: str) -> Iterator[bytes]:
        return storage.iter_file(self.fetch(area, key, Path()))

    def size(self, area: Area, key: str) -> int:
        return self.fetch(area, key, Path()).stat().st_size


class S3Store:
    """The ``s3`` backend: one bucket, keys under ``prefix``, through a boto3 client."""

    is_local = False

    def __init__(self, client, bucket: str, prefix: str = "") -> None:
        self.client, self.bucket, self.prefix = client, bucket, prefix

    def object_key(self, area: Area, key: str) -> str:
        if area not in AREAS:
            raise ValueError(f"unknown area {area!r}")
        return f"{self.prefix}{area}/{_check_key(key)}"

    def put_file(self, area: Area, key: str, path: Path) -> None:
        with _answered(area, key):
            self.client.upload_file(str(path), self.bucket, self.object_key(area, key))

    def fetch(self, area: Area, key: str, destination: Path) -> Path:
        destination.parent.mkdir(parents=True, exist_ok=True)
        handle, partial = tempfile.mkstemp(dir=destination.parent, suffix=".partial")
        os.close(handle)
        try:
            with _answered(area, key):
                self.client.download_file(self.bucket, self.object_key(area, key), partial)
            os.replace(partial, destination)
        finally:
            Path(partial).unlink(missing_ok=True)
        return destination

    def exists(self, area: Area, key: str) -> bool:
        try:
            self.size(area, key)
        except MissingObjectError:
            return False
        return True

    def delete(self, area: Area, key: str) -> None:
        with _answered(area, key):
            self.client.delete_object(Bucket=self.bucket, Key=self.object_key(area, key))

    def local_path(self, area: Area, key: str) -> Path | None:
        return None

    def iter_bytes(self, area: Area, key: str) -> Iterator[bytes]:
        with _answered(area, key):
            body = self.client.get_object(Bucket=self.bucket, Key=self.object_key(area, key))
        return body["Body"].iter_chunks(storage.CHUNK)

    def size(self, area: Area, key: str) -> int:
        with _answered(area, key):
            head = self.client.head_object(Bucket=self.bucket, Key=self.object_key(area, key))
        return int(head["ContentLength"])


@contextlib.contextmanager
def _answered(area: Area, key: str) -> Iterator[None]:
    """Translate what boto3 raises into the store's errors: a missing object into
    :class:`MissingObjectError`; no connection, a timeout (after the client's retries) or a
    5xx answer into :class:`StoreUnavailableError`. Anything else (a refused request, bad
    credentials) is raised as it is: retrying would not help."""
    from boto3.exceptions import S3UploadFailedError
    from botocore.exceptions import ClientError, ConnectionError, HTTPClientError
    from s3transfer.exceptions import RetriesExceededError

    try:
        yield
    except ClientError as error:
        if _is_missing(error):
            raise MissingObjectError(f"{area}/{key}") from None
        if _is_server_error(error):
            raise StoreUnavailableError(_describe(error)) from error
        raise
    except S3UploadFailedError as error:  # boto3 wraps the ClientError of an upload
        cause = error.__context__
        if isinstance(cause, ClientError) and _is_server_error(cause):
            raise StoreUnavailableError(_describe(cause)) from error
        raise
    except (ConnectionError, HTTPClientError, RetriesExceededError) as error:
        raise StoreUnavailableError(_describe(error)) from error


def _is_missing(error) -> bool:
    code = str(error.response.get("Error", {}).get("Code", ""))
    return code in ("404", "NoSuchKey", "NotFound")


def _is_server_error(error) -> bool:
    status = error.response.get("ResponseMetadata", {}).get("HTTPStatusCode") or 0
    return int(status) >= 500


def _describe(error: BaseException) -> str:
    """The failure's kind only: boto3's text names the store's endpoint URL and the key, and
    this message can become a job's reason, which its owner reads (the error stays chained
    as ``__cause__`` for the logs)."""
    return f"object store unavailable ({type(error).__name__})"


def s3_client(settings: Settings):
    """A boto3 S3 client for the settings (path-style addressing for custom endpoints)."""
    import boto3
    from botocore.config import Config

    options = {
        "endpoint_url": settings.s3_endpoint_url or None,
        "region_name": settings.s3_region or None,
        "aws_access_key_id": settings.s3_access_key_id or None,
        "aws_secret_access_key": settings.s3_secret_access_key or None,
    }
    style = "path" if settings.s3_endpoint_url else "auto"
    # botocore waits 60 s for a connection and 60 s for each read, 5 attempts: a frozen store
    # held a request for minutes. The settings bound one call to about
    # s3_max_attempts × (s3_connect_timeout_s + s3_read_timeout_s) plus back-off.
    config = Config(
        s3={"addressing_style": style},
        connect_timeout=settings.s3_connect_timeout_s, read_timeout=settings.s3_read_timeout_s,
        retries={"mode": "standard", "max_attempts": settings.s3_max_attempts},
    )  # fmt: skip
    return boto3.client("s3", config=config, **options)


def open_store(settings: Settings) -> ObjectStore:
    """The backend ``settings.storage_backend`` names (one per process and settings: a client
    is never shared across a fork)."""
    return _store(settings.model_dump_json(), os.getpid())


@lru_cache(maxsize=8)
def _store(settings_json: str, _pid: int) -> ObjectStore:
    settings = Settings.model_validate_json(settings_json)
    if settings.storage_backend == "s3":
        return S3Store(s3_client(settings), settings.s3_bucket, settings.s3_prefix)
    return LocalStore(settings.artifact_dir, settings.checkpoint_dir)


def staging_dir(settings: Settings) -> Path:
    """Local folder for uploads on their way to a remote store."""
    folder = Path(settings.data_dir) / "staging"
    folder.mkdir(parents=True, exist_ok=True)
    return folder
