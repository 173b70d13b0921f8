"""A typed client for every endpoint of a running WKD service (httpx; no torch).

::

    from wkd_client import Client

    with Client("http://127.0.0.1:8000", key="wkd_…") as wkd:
        teacher = wkd.upload_checkpoint("resnet32x4.pth", arch="resnet32x4", num_classes=100)
        job = wkd.submit({"preset": "cifar100/wkd_l/resnet32x4_resnet8x4",
                          "teacher": {"checkpoint_id": teacher.id}})
        job = wkd.wait(job.id, on_event=print)   # follows GET /jobs/{id}/events
        wkd.download(job.id, "student.safetensors", ".")

The URL and key default to ``WKD_URL`` and ``WKD_API_KEY``. Every failure is a
:class:`WkdError` whose message is one line.
"""

from __future__ import annotations

import math
import os
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx

from wkd_client.models import (
    Artifact,
    Checkpoint,
    CheckpointPage,
    Event,
    Job,
    JobPage,
    JobSummary,
    Metric,
    Study,
    StudyItem,
    StudyPage,
)
from wkd_client.sse import parse_events

DEFAULT_URL = "http://127.0.0.1:8000"


class WkdError(Exception):
    """A request failed: ``status_code`` (``None`` when the server was not reached)."""

    def __init__(self, message: str, status_code: int | None = None) -> None:
        super().__init__(message)
        self.status_code = status_code


class WkdTimeoutError(WkdError, TimeoutError):
    """:meth:`Client.wait` ran out of time before the job ended."""


def _describe(response: httpx.Response) -> str:
    """One line from an error response: the API's ``detail`` (422s as ``field: message``)."""
    try:
        detail = response.json().get("detail")
    except (ValueError, AttributeError):
        detail = response.text.strip()[:200] or response.reason_phrase
    if isinstance(detail, list):
        parts = []
        for error in detail:
            loc = [str(p) for p in error.get("loc", []) if p != "body"]
            parts.append(f"{'.'.join(loc)}: {error.get('msg')}" if loc else str(error.get("msg")))
        detail = "invalid request: " + "; ".join(parts)
    return f"HTTP {response.status_code}: {' '.join(str(detail).split())}"


class Client:
    """The service at ``url`` with API key ``key``.

    Args:
        url: the API's base URL (default ``WKD_URL``, else ``http://127.0.0.1:8000``).
        key: an API key from ``wkd keys create`` (default ``WKD_API_KEY``).
        timeout: seconds for connecting and for each ordinary request.
    """

    def __init__(
        self, url: str | None = None, key: str | None = None, *, timeout: float = 30.0
    ) -> None:
        self.url = (url or os.environ.get("WKD_URL") or DEFAULT_URL).rstrip("/")
        self.key = key or os.environ.get("WKD_API_KEY")
        if self.key is not None and not (self.key.isascii() and self.key.isprintable()):
            raise WkdError("invalid API key: keys are printable ASCII (see `wkd keys create`)")
        headers = {"Authorization": f"Bearer {self.key}"} if self.key else {}
        try:
            self._http = httpx.Client(base_url=self.url, headers=headers, timeout=timeout)
        except httpx.InvalidURL as error:
            raise WkdError(f"invalid URL {self.url!r}: {error}") from None

    def close(self) -> None:
        self._http.close()

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *_exc: object) -> None:
        self.close()

    # ------------------------------------------------------------------ plumbing
    def _request(self, method: str, path: str, **kwargs: Any) -> httpx.Response:
        try:
            response = self._http.request(method, path, **kwargs)
        except httpx.TransportError as error:
            raise WkdError(f"cannot reach {self.url}: {_reason(error)}") from None
        if response.is_error:
            raise WkdError(_describe(response), response.status_code)
        return response

    # -------------------------------------------------------------------- service
    def health(self) -> dict[str, Any]:
        """``GET /healthz`` (no key needed)."""
        return self._request("GET", "/healthz").json()

    def catalog(self) -> dict[str, Any]:
        """Architectures, datasets, methods with their parameters, and preset names."""
        return self._request("GET", "/catalog").json()

    # ----------------------------------------------------------------------- jobs
    def submit(self, spec: dict[str, Any], *, idempotency_key: str | None = None) -> Job:
        """``POST /jobs``: queue a job (a preset and/or explicit fields)."""
        headers = {"Idempotency-Key": idempotency_key} if idempotency_key else {}
        return Job.model_validate(self._request("POST", "/jobs", json=spec, headers=headers).json())

    def get_job(self, job_id: str) -> Job:
        return Job.model_validate(self._request("GET", f"/jobs/{job_id}").json())

    def list_jobs(
        self, *, status: str | None = None, page_size: int | None = None,
        page_token: str | None = None,
    ) -> JobPage:  # fmt: skip
        """One page of the key's jobs, newest first."""
        params = {"status": status, "page_size": page_size, "page_token": page_token}
        params = {k: v for k, v in params.items() if v is not None}
        return JobPage.model_validate(self._request("GET", "/jobs", params=params).json())

    def iter_jobs(
        self, *, status: str | None = None, limit: int | None = None
    ) -> Iterator[JobSummary]:
        """Every job (following the page tokens), newest first, at most ``limit``."""
        return _follow_pages(lambda token: self.list_jobs(status=status, page_token=token), limit)

    def metrics(self, job_id: str) -> list[Metric]:
        data = self._request("GET", f"/jobs/{job_id}/metrics").json()["data"]
        return [Metric.model_validate(row) for row in data]

    def cancel(self, job_id: str) -> Job:
        """Cancel (idempotent): queued jobs at once, running ones at their next batch."""
        return Job.model_validate(self._request("POST", f"/jobs/{job_id}/cancel").json())

    # ------------------------------------------------------------------ artifacts
    def artifacts(self, job_id: str) -> list[Artifact]:
        data = self._request("GET", f"/jobs/{job_id}/artifacts").json()["data"]
        return [Artifact.model_validate(row) for row in data]

    def download(self, job_id: str, name: str, dest: str | Path = ".") -> Path:
        """Save artifact ``name`` to ``dest`` (a folder, or a file path); returns the path."""
        dest = Path(dest)
        path = dest / name if dest.is_dir() else dest
        partial = path.with_name(path.name + ".part")
        try:
            with self._http.stream("GET", f"/jobs/{job_id}/artifacts/{name}") as response:
                if response.is_error:
                    response.read()
                    raise WkdError(_describe(response), response.status_code)
                with partial.open("wb") as out:
                    for chunk in response.iter_bytes():
                        out.write(chunk)
        except httpx.TransportError as error:
            partial.unlink(missing_ok=True)
            raise WkdError(f"cannot reach {self.url}: {_reason(error)}") from None
        partial.replace(path)
        return path

    # ---------------------------------------------------------------- checkpoints
    def upload_checkpoint(self, path: str | Path, *, arch: str, num_classes: int) -> Checkpoint:
        """``POST /checkpoints``: upload teacher weights (.pth, .pt or .safetensors)."""
        return self._upload(path, {"arch": arch, "num_classes": str(num_classes)})

    def upload_cost_matrix(self, path: str | Path, *, num_classes: int) -> Checkpoint:
        """``POST /checkpoints`` with ``kind=cost_matrix``: a (C, C) interrelation matrix
        (the authors' ``linear_cka.pth`` form); use its id as ``params.cost_matrix_id``."""
        return self._upload(path, {"kind": "cost_matrix", "num_classes": str(num_classes)})

    def _upload(self, path: str | Path, fields: dict[str, str]) -> Checkpoint:
        path = Path(path)
        if not path.is_file():
            raise WkdError(f"no such file: {path}")
        with path.open("rb") as handle:
            response = self._request("POST", "/checkpoints", data=fields,
                                     files={"file": (path.name, handle)}, timeout=None)  # fmt: skip
        return Checkpoint.model_validate(response.json())

    def list_checkpoints(
        self, *, page_size: int | None = None, page_token: str | None = None
    ) -> CheckpointPage:
        """One page of the key's uploads, newest first."""
        params = {"page_size": page_size, "page_token": page_token}
        params = {k: v for k, v in params.items() if v is not None}
        response = self._request("GET", "/checkpoints", params=params)
        return CheckpointPage.model_validate(response.json())

    def checkpoints(self, *, limit: int | None = None) -> list[Checkpoint]:
        """Every upload of the key (following the page tokens), newest first, at most
        ``limit``."""
        pages = _follow_pages(lambda token: self.list_checkpoints(page_token=token), limit)
        return list(pages)

    def get_checkpoint(self, checkpoint_id: str) -> Checkpoint:
        response = self._request("GET", f"/checkpoints/{checkpoint_id}")
        return Checkpoint.model_validate(response.json())

    # -------------------------------------------------------------------- studies
    def submit_study(self, spec: dict[str, Any]) -> Study:
        """``POST /studies``: one job per method × seed on one teacher, student and dataset."""
        return Study.model_validate(self._request("POST", "/studies", json=spec).json())

    def get_study(self, study_id: str) -> Study:
        return Study.model_validate(self._request("GET", f"/studies/{study_id}").json())

    def list_studies(
        self, *, page_size: int | None = None, page_token: str | None = None
    ) -> StudyPage:
        """One page of the key's studies, newest first."""
        params = {"page_size": page_size, "page_token": page_token}
        params = {k: v for k, v in params.items() if v is not None}
        return StudyPage.model_validate(self._request("GET", "/studies", params=params).json())

    def iter_studies(self, *, limit: int | None = None) -> Iterator[StudyItem]:
        """Every study (following the page tokens), newest first, at most ``limit``."""
        return _follow_pages(lambda token: self.list_studies(page_token=token), limit)

    def wait_study(
        self,
        study_id: str,
        *,
        timeout: float | None = None,
        poll: float = 5.0,
        on_update: Callable[[Study], None] | None = None,
        reconnect_for: float = 60.0,
    ) -> Study:
        """Poll ``GET /studies/{id}`` every ``poll`` seconds until every job has ended;
        ``on_update`` sees each document. A busy server (429, 5xx) is retried; a server
        that cannot be reached is an error at the first poll, and later once it has been
        unreachable for ``reconnect_for`` seconds in a row (a restart takes less);
        :class:`WkdTimeoutError` after ``timeout`` seconds."""
        if not (math.isfinite(poll) and poll > 0):
            raise ValueError(f"poll must be a positive number of seconds, got {poll}")
        deadline = None if timeout is None else time.monotonic() + timeout
        reached, unreachable_since = False, None
        while True:
            try:
                study = self.get_study(study_id)
            except WkdError as error:
                if not _retryable(error):
                    raise
                if error.status_code is None:  # not reached at all
                    now = time.monotonic()
                    unreachable_since = unreachable_since or now
                    if not reached or now - unreachable_since >= reconnect_for:
                        raise
            else:
                reached, unreachable_since = True, None
                if on_update is not None:
                    on_update(study)
                if study.is_terminal:
                    return study
            if deadline is not None and time.monotonic() > deadline:
                raise WkdTimeoutError(f"study {study_id} did not finish in time")
            time.sleep(poll)

    # --------------------------------------------------------------------- events
    def events(
        self, job_id: str, *, last_event_id: str | None = None, read_timeout: float = 60.0
    ) -> Iterator[Event]:
        """One connection to ``GET /jobs/{id}/events``: its events until it closes.

        The server sends a keep-alive at least every 15 s, so ``read_timeout`` only trips on
        a dead connection (a :class:`WkdError`).
        """
        headers = {"Accept": "text/event-stream"}
        if last_event_id:
            headers["Last-Event-ID"] = last_event_id
        timeout = httpx.Timeout(self._http.timeout.connect, read=read_timeout)
        try:
            with self._http.stream("GET", f"/jobs/{job_id}/events", headers=headers,
                                   timeout=timeout) as response:  # fmt: skip
                if response.is_error:
                    response.read()
                    raise WkdError(_describe(response), response.status_code)
                yield from parse_events(response.iter_lines())
        except httpx.TransportError as error:
            raise WkdError(f"event stream from {self.url} broke: {_reason(error)}") from None

    def wait(
        self,
        job_id: str,
        *,
        timeout: float | None = None,
        on_event: Callable[[Event], None] | None = None,
        last_event_id: str | None = None,
        reconnect_delay: float = 1.0,
    ) -> Job:
        """Follow the job's event stream until it ends; returns the finished job.

        A broken stream is resumed with ``Last-Event-ID``, so ``on_event`` sees every event
        once (pass ``last_event_id`` to continue an earlier stream). Errors other than a lost
        connection or a busy server (429, 5xx) are raised; :class:`WkdTimeoutError` after
        ``timeout`` seconds.
        """
        deadline = None if timeout is None else time.monotonic() + timeout
        last_id = last_event_id
        while True:
            remaining = 60.0 if deadline is None else deadline - time.monotonic()
            try:
                stream = self.events(job_id, last_event_id=last_id,
                                     read_timeout=min(60.0, max(remaining, 1.0)))  # fmt: skip
                for event in stream:
                    last_id = event.id or last_id
                    if on_event is not None:
                        on_event(event)
                    if event.is_end:
                        return self.get_job(job_id)
                    _check_deadline(deadline, job_id)
            except WkdError as error:
                if not _retryable(error):
                    raise
            _check_deadline(deadline, job_id)
            job = self.get_job(job_id)  # the stream closed early: maybe the job just ended
            if job.is_terminal and last_id is None:
                return job
            time.sleep(reconnect_delay)


def _follow_pages(fetch: Callable[[str | None], Any], limit: int | None) -> Iterator[Any]:
    """The items of ``fetch(token)`` page after page (``data``, ``next_page_token``)."""
    token, count = None, 0
    while True:
        page = fetch(token)
        for item in page.data:
            if limit is not None and count >= limit:
                return
            count += 1
            yield item
        if not page.next_page_token:
            return
        token = page.next_page_token


def _retryable(error: WkdError) -> bool:
    """A lost connection, a busy server (429) or a server error (5xx): try again."""
    code = error.status_code
    return code is None or code == 429 or code >= 500


def _check_deadline(deadline: float | None, job_id: str) -> None:
    if deadline is not None and time.monotonic() > deadline:
        raise WkdTimeoutError(f"job {job_id} did not finish in time")


def _reason(error: httpx.TransportError) -> str:
    text = str(error) or type(error).__name__
    return " ".join(text.split())
