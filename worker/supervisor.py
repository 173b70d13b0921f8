"""Claim a job and supervise the subprocess that runs it (the Celery task's body).

The model is Ray Jobs' ``JobSupervisor`` (service-notes §3.4): the task itself stays
torch-free and starts ``python -m worker.runner JOB_ID`` in a new session (its own process
group), then, until it exits, every ``poll_s`` seconds

- refreshes ``jobs.heartbeat_at`` (every ``heartbeat_seconds``), so the reaper sees a live job;
- reads the row: a cancel request, an exceeded time limit or a lost claim (the reaper gave
  the job to another worker) sends SIGTERM to the runner, which stops at its next batch, and
  SIGKILL to the whole group ``kill_grace_s`` later.

When the runner has exited, the supervisor finishes the job row if the runner could not: it
maps the runner's verdict file, its exit status and the reason it was stopped to a terminal
status and a ``failure_reason`` (time_limit, out_of_memory for a SIGKILL it did not send,
internal for a crash, …). Every state change is a compare-and-set in ``service.crud``, so a
runner, a supervisor, a cancel and a reaper racing on one row act once.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from sqlalchemy.exc import SQLAlchemyError

from service import accounts, crud, storage
from service.settings import Settings
from service.tables import FailureReason, Job, JobStatus
from worker.common import SessionFactory, new_worker_id, session_factory, settings_env
from worker.standby import standby

log = logging.getLogger(__name__)

RESULT_FILE = "runner-result.json"
LOG_FILE = "runner.log"
TEACHER_ARTIFACT = "student.safetensors"


class TeacherUnavailableError(ValueError):
    """The job's teacher cannot be found (deleted upload, unfinished source job …)."""


@dataclass
class Outcome:
    """How a task ended: ``skipped`` (not claimable), ``lost`` (claim taken away) or the
    job's terminal status, with its failure reason and message."""

    status: str
    failure_reason: str | None = None
    message: str | None = None


def resolve_teacher(session, job: Job, settings: Settings) -> Path | None:
    """The teacher weights of ``job``: an upload of its owner or an earlier job's student."""
    teacher = job.spec.get("teacher")
    if not teacher:
        return None
    if job.spec.get("generations") and not (teacher.get("checkpoint_id") or teacher.get("job_id")):
        return None  # Born-Again without a given generation 0: the job trains it
    if teacher.get("checkpoint_id"):
        row = accounts.get_checkpoint_for_owner(
            session, checkpoint_id=teacher["checkpoint_id"], owner_id=job.owner_id
        )
        if row is None:
            raise TeacherUnavailableError(f"checkpoint {teacher['checkpoint_id']} no longer exists")
        path = storage.safe_join(settings.checkpoint_dir, row.path)
    elif teacher.get("job_id"):
        source = crud.get_job_for_owner(session, job_id=teacher["job_id"], owner_id=job.owner_id)
        if source is None or source.status != JobStatus.succeeded:
            raise TeacherUnavailableError(f"job {teacher['job_id']} has no succeeded student")
        artifact = crud.get_artifact(session, job_id=source.id, name=TEACHER_ARTIFACT)
        if artifact is None:
            raise TeacherUnavailableError(f"job {source.id} has no {TEACHER_ARTIFACT}")
        path = storage.safe_join(settings.artifact_dir, artifact.path)
    else:
        raise TeacherUnavailableError("the service takes a teacher checkpoint_id or job_id")
    if not path.is_file():
        raise TeacherUnavailableError(f"the teacher's file is missing on the server ({path.name})")
    return path


def supervise_job(
    job_id: str,
    *,
    settings: Settings,
    sessions: SessionFactory | None = None,
    worker_id: str | None = None,
    poll_s: float = 1.0,
    kill_grace_s: float = 30.0,
    warm: bool = False,
) -> Outcome:
    """Claim ``job_id`` (queued → preparing) and run it to a terminal state.

    Returns ``Outcome("skipped")`` at once when the claim fails: the job was cancelled while
    queued, is already taken (a duplicate delivery) or finished. ``warm`` hands the job to
    the spare runner of :mod:`worker.standby` when one is waiting, and starts the next spare
    afterwards (the Celery task does; direct callers get a cold start).
    """
    sessions = sessions or session_factory(settings)
    worker_id = worker_id or new_worker_id()
    with sessions() as session:
        if not crud.claim_job(session, job_id=job_id, worker_id=worker_id):
            log.info("job %s is not queued any more; skipping this delivery", job_id)
            return Outcome("skipped")
        job = crud.get_job(session, job_id)
        try:
            teacher = resolve_teacher(session, job, settings)
        except (TeacherUnavailableError, ValueError) as error:
            reason, message = FailureReason.invalid_input, str(error)
            crud.finish_job(session, job_id=job_id, status=JobStatus.failed,
                            failure_reason=reason, message=message)  # fmt: skip
            return Outcome(JobStatus.failed.value, reason.value, message)
    folder = storage.job_dir(settings.artifact_dir, job_id)
    result_path, log_path = folder / RESULT_FILE, folder / LOG_FILE
    result_path.unlink(missing_ok=True)
    log.info("job %s: starting its runner (attempt %s)", job_id, job.attempt)
    process = None
    if warm:
        process = standby.hand_over(
            settings, job_id=job_id, result=result_path, teacher=teacher, log=log_path
        )
    if process is None:
        process = start_runner(job_id, settings, result=result_path, teacher=teacher, log=log_path)
    watch = Watch(process, job_id, worker_id, sessions, settings, poll_s, kill_grace_s)
    returncode = watch.run()
    outcome = conclude(job_id, sessions, folder, returncode, watch.stop_reason, settings)
    if warm:
        standby.start(settings)  # the next job's process, while this worker is idle
    return outcome


def start_runner(
    job_id: str, settings: Settings, *, result: Path, teacher: Path | None, log: Path
) -> subprocess.Popen:
    """A cold ``python -m worker.runner JOB_ID`` in its own session, output to ``log``."""
    command = [sys.executable, "-m", "worker.runner", job_id, "--result", str(result)]
    if teacher is not None:
        command += ["--teacher", str(teacher)]
    with open(log, "ab") as log_file:
        return subprocess.Popen(
            command, stdout=log_file, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
            env=settings_env(settings), start_new_session=True,
        )  # fmt: skip


class Watch:
    """The supervision loop around one runner process."""

    def __init__(self, process, job_id, worker_id, sessions, settings, poll_s, kill_grace_s):
        self.process, self.job_id, self.worker_id = process, job_id, worker_id
        self.sessions, self.settings = sessions, settings
        self.poll_s, self.kill_grace_s = poll_s, kill_grace_s
        self.stop_reason: str | None = None  # cancel | time_limit | lost
        self._term_at: float | None = None

    def run(self) -> int:
        started = last_beat = time.monotonic()
        try:
            while True:
                try:
                    return self.process.wait(timeout=self.poll_s)
                except subprocess.TimeoutExpired:
                    pass
                now = time.monotonic()
                beat = now - last_beat >= self.settings.heartbeat_seconds
                if beat:
                    last_beat = now
                job = self._poll(beat)
                if self.stop_reason is None:
                    self.stop_reason = self._stop_reason(job, now - started)
                    if self.stop_reason is not None:
                        self._terminate(now)
                elif now - self._term_at >= self.kill_grace_s:
                    log.warning("job %s: runner ignored SIGTERM; killing it", self.job_id)
                    self._kill_group()
        finally:
            self._kill_group()  # stray DataLoader workers, or a runner we were interrupted in

    def _poll(self, beat: bool) -> Job | None:
        try:
            with self.sessions() as session:
                if beat:
                    crud.heartbeat(session, job_id=self.job_id)
                return crud.get_job(session, self.job_id)
        except SQLAlchemyError:
            log.exception("job %s: database unreachable; will retry", self.job_id)
            return None

    def _stop_reason(self, job: Job | None, elapsed: float) -> str | None:
        if elapsed > self.settings.job_time_limit_s:
            return "time_limit"
        if job is None or job.is_terminal:
            return None  # unreadable now, or the runner already finished it and is exiting
        if job.worker_id != self.worker_id or job.status == JobStatus.queued:
            return "lost"
        if job.cancel_requested_at is not None:
            return "cancel"
        return None

    def _terminate(self, now: float) -> None:
        log.info("job %s: stopping the runner (%s)", self.job_id, self.stop_reason)
        self._term_at = now
        # The runner only (not its DataLoader workers): it stops at the next batch and exits.
        _signal(lambda: os.kill(self.process.pid, signal.SIGTERM))

    def _kill_group(self) -> None:
        _signal(lambda: os.killpg(self.process.pid, signal.SIGKILL))


def _signal(send) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        send()


def conclude(
    job_id: str,
    sessions: SessionFactory,
    folder: Path,
    returncode: int,
    stop_reason: str | None,
    settings: Settings,
) -> Outcome:
    """Finish the job row from the runner's verdict, unless the runner already did."""
    verdict = read_verdict(folder / RESULT_FILE)
    with sessions() as session:
        if (folder / LOG_FILE).is_file():
            crud.add_artifact(
                session, job_id=job_id, name=LOG_FILE, kind="log",
                size=(folder / LOG_FILE).stat().st_size,
                sha256=storage.file_sha256(folder / LOG_FILE),
                path=storage.artifact_relpath(job_id, LOG_FILE),
            )  # fmt: skip
        if stop_reason == "lost":
            log.warning("job %s was re-queued elsewhere; leaving its row alone", job_id)
            return Outcome("lost")
        job = crud.get_job(session, job_id)
        if not job.is_terminal:
            status, reason, message = verdict_of(job, returncode, stop_reason, verdict, settings)
            crud.finish_job(session, job_id=job_id, status=status, failure_reason=reason,
                            message=message)  # fmt: skip
            job = crud.get_job(session, job_id)
    log.info("job %s: %s %s", job_id, job.status.value, job.failure_reason or "")
    return Outcome(job.status.value, job.failure_reason, job.message)


def verdict_of(
    job: Job, returncode: int, stop_reason: str | None, verdict: dict | None, settings: Settings
) -> tuple[JobStatus, FailureReason | None, str | None]:
    """The terminal state of a job the runner left unfinished."""
    if stop_reason == "time_limit":
        message = f"the job ran past its time limit of {settings.job_time_limit_s} s"
        return JobStatus.failed, FailureReason.time_limit, message
    if job.cancel_requested_at is not None:
        return JobStatus.cancelled, None, "cancelled by request"
    if verdict and verdict.get("status") == "failed":
        reason = FailureReason(verdict.get("failure_reason") or "internal")
        return JobStatus.failed, reason, verdict.get("message")
    if returncode == -signal.SIGKILL:
        message = "the job was killed (SIGKILL), most likely by the out-of-memory killer"
        return JobStatus.failed, FailureReason.out_of_memory, message
    if returncode < 0:
        message = f"the job process died of signal {signal.Signals(-returncode).name}"
        return JobStatus.failed, FailureReason.internal, message
    detail = (verdict or {}).get("message") or f"exit status {returncode}"
    return JobStatus.failed, FailureReason.internal, f"the job process ended early: {detail}"


def read_verdict(path: Path) -> dict | None:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None
