"""Claim a job and supervise the subprocess that runs it (the Celery task's body).

The model is Ray Jobs' ``JobSupervisor`` (service-notes §3.4): the task itself stays
torch-free and starts ``python -m worker.runner JOB_ID`` in a new session (its own process
group), then, until it exits, every ``poll_s`` seconds

- refreshes ``jobs.heartbeat_at`` (every ``heartbeat_seconds``), so the reaper sees a live job;
- reads the row: a cancel request, an exceeded time limit, a lost claim (the reaper gave
  the job to another worker) or the worker shutting down (SIGTERM, :mod:`worker.shutdown`)
  sends SIGTERM to the runner, which stops at its next batch, and SIGKILL to the whole group
  ``runner_stop_grace_s`` later;
- logs each new epoch (one line) in the worker's own log.

The Celery task calls :func:`supervise_next_job`: it claims the *oldest* queued job, whatever
id its message names (a message is a wake-up; docs/reliability.md). :func:`supervise_job`
claims a given job (tests, tools).

When the runner has exited, :mod:`worker.verdict` finishes the job row if the runner could
not; a job stopped for a worker shutdown is handed back to the queue without counting an
attempt, a runner killed by a signal without evidence of memory exhaustion is retried from its
last checkpoint. Every database write is retried through a short outage
(:func:`worker.common.retry_db`) and every state change is a compare-and-set, so a runner, a
supervisor, a cancel and a reaper racing on one row act once.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

from service import accounts, claims, crud, objectstore, routing, storage
from service.settings import Settings
from service.tables import FailureReason, Job, JobStatus
from worker import launch, shutdown
from worker.common import SessionFactory, new_worker_id, retry_db, session_factory
from worker.standby import standby
from worker.store import worker_store
from worker.verdict import (
    RETRY,
    oom_kill_count,
    read_verdict,
    redact_paths,
    stderr_shows_oom,
    tail,
    verdict_of,
)
from worker.watch import Watch

log = logging.getLogger(__name__)

RESULT_FILE = "runner-result.json"
LOG_FILE = "runner.log"
ERR_FILE = launch.ERR_FILE
TEACHER_ARTIFACT = "student.safetensors"


class TeacherUnavailableError(ValueError):
    """The job's teacher cannot be found (deleted upload, unfinished source job …)."""


@dataclass
class Outcome:
    """How a task ended: ``skipped`` (nothing claimable), ``lost`` (claim taken away),
    ``handed_back`` (worker shutdown: queued again, no attempt counted), ``queued`` (the
    attempt died and is retried) or the job's terminal status, with its failure reason and
    message."""

    status: str
    failure_reason: str | None = None
    message: str | None = None
    job_id: str | None = None

    @property
    def needs_message(self) -> bool:
        """The job is queued again and needs a broker message (the task sends it)."""
        return self.status in ("handed_back", JobStatus.queued.value)


def resolve_teacher(session, job: Job, settings: Settings) -> Path | None:
    """The teacher weights of ``job`` as a local file: an upload of its owner or an earlier
    job's student, fetched from the object store into the cache when the store is remote."""
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
        area, key = "checkpoints", row.path
    elif teacher.get("job_id"):
        source = crud.get_job_for_owner(session, job_id=teacher["job_id"], owner_id=job.owner_id)
        if source is None or source.status != JobStatus.succeeded:
            raise TeacherUnavailableError(f"job {teacher['job_id']} has no succeeded student")
        artifact = crud.get_artifact(session, job_id=source.id, name=TEACHER_ARTIFACT)
        if artifact is None:
            raise TeacherUnavailableError(f"job {source.id} has no {TEACHER_ARTIFACT}")
        area, key = "artifacts", artifact.path
    else:
        raise TeacherUnavailableError("the service takes a teacher checkpoint_id or job_id")
    store = worker_store(settings)
    # Stored teachers never change (new uploads get new ids), so a local copy stays valid.
    copy = Path(settings.cache_dir) / "teachers" / area / key
    if not store.is_local and copy.is_file():
        return copy
    try:
        return store.fetch(area, key, copy)
    except objectstore.MissingObjectError:
        name = Path(key).name
        message = f"the teacher's file is missing on the server ({name})"
        raise TeacherUnavailableError(message) from None


def supervise_job(
    job_id: str,
    *,
    settings: Settings,
    sessions: SessionFactory | None = None,
    worker_id: str | None = None,
    poll_s: float = 1.0,
    kill_grace_s: float | None = None,
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

    def claim(session) -> bool:  # a retried claim whose first commit went through holds it
        return crud.claim_job(session, job_id=job_id, worker_id=worker_id) or claims.holds_claim(
            session, job_id=job_id, worker_id=worker_id
        )

    if not retry_db(sessions, claim, what=f"claim {job_id}", budget_s=settings.db_retry_s):
        log.info("job %s is not queued any more; skipping this delivery", job_id)
        return Outcome("skipped", job_id=job_id)
    return run_claimed(job_id, settings=settings, sessions=sessions, worker_id=worker_id,
                       poll_s=poll_s, kill_grace_s=kill_grace_s, warm=warm)  # fmt: skip


def supervise_next_job(
    settings: Settings,
    *,
    hint: str | None = None,
    sessions: SessionFactory | None = None,
    worker_id: str | None = None,
    poll_s: float = 1.0,
    kill_grace_s: float | None = None,
    warm: bool = False,
) -> Outcome:
    """Claim the oldest queued job and run it; ``Outcome("skipped")`` when none is queued
    (or every queued job is held back by its key's running limit).

    ``hint`` is the id the message named. It decides only the queue, the jobs of its GPU
    count (service/routing.py); within that queue the order of jobs is the order of
    submission, whatever order their messages (first sends or re-sends) arrive in.
    """
    sessions = sessions or session_factory(settings)
    worker_id = worker_id or new_worker_id()

    def claim(session) -> str | None:
        held = claims.job_held_by(session, worker_id=worker_id)
        # the queue the message came from: jobs of the hinted job's GPU count
        gpus = claims.job_gpus(session, hint)
        return held or claims.claim_next_job(
            session, worker_id=worker_id, gpus=gpus,
            max_running_per_key=settings.max_running_jobs_per_key,
        )  # fmt: skip

    job_id = retry_db(sessions, claim, what="claim the next job", budget_s=settings.db_retry_s)
    if job_id is None:
        log.info("message for %s: no queued job left (already run or cancelled)", hint)
        return Outcome("skipped", job_id=hint)
    return run_claimed(job_id, settings=settings, sessions=sessions, worker_id=worker_id,
                       poll_s=poll_s, kill_grace_s=kill_grace_s, warm=warm)  # fmt: skip


def run_claimed(
    job_id: str,
    *,
    settings: Settings,
    sessions: SessionFactory,
    worker_id: str,
    poll_s: float = 1.0,
    kill_grace_s: float | None = None,
    warm: bool = False,
) -> Outcome:
    """Start the runner of a job this worker has claimed and see it to its end."""
    job, teacher, error = retry_db(
        sessions, lambda session: _load_claimed(session, job_id, settings),
        what=f"job {job_id}: read", budget_s=settings.db_retry_s,
    )  # fmt: skip
    if error is not None:
        reason, message = FailureReason.invalid_input, redact_paths(str(error), settings)
        _finish(sessions, settings, job_id, JobStatus.failed, reason, message)
        log.info("job %s: failed %s: %s", job_id, reason.value, message)
        return Outcome(JobStatus.failed.value, reason.value, message, job_id)
    folder = storage.job_dir(settings.artifact_dir, job_id)
    result_path, log_path = folder / RESULT_FILE, folder / LOG_FILE
    result_path.unlink(missing_ok=True)
    launch.restore_checkpoint(settings, job_id, folder)  # from the object store, if remote
    gpus = routing.spec_gpus(job.spec)
    log.info("job %s: claimed, attempt %s of %s (%s, %s, %s GPU); starting its runner", job_id,
             job.attempt, job.max_attempts, job.spec.get("method"),
             job.spec.get("student", {}).get("arch"), gpus)  # fmt: skip
    oom_before = oom_kill_count()
    process = None
    if warm and gpus == 1:
        process = standby.hand_over(
            settings, job_id=job_id, result=result_path, teacher=teacher, log=log_path
        )
    if process is None:
        process = launch.start_runner(job_id, settings, spec=job.spec, result=result_path,
                                      teacher=teacher, log=log_path)  # fmt: skip
    register_log(sessions, settings, job_id)  # downloadable while the job runs
    grace = settings.runner_stop_grace_s if kill_grace_s is None else kill_grace_s
    watch = Watch(process, job_id, worker_id, sessions, settings, poll_s, grace)
    returncode = watch.run()
    oom_after = oom_kill_count()
    oom_kill = oom_before is not None and oom_after is not None and oom_after > oom_before
    outcome = conclude(job_id, sessions, folder, returncode, watch.stop_reason, settings,
                       worker_id=worker_id, oom_kill=oom_kill)  # fmt: skip
    if warm and not shutdown.draining.is_set():
        standby.start(settings)  # the next job's process, while this worker is idle
    return outcome


def _load_claimed(session, job_id: str, settings: Settings):
    """``(job, teacher path, None)``, or ``(job, None, error)`` when the teacher is missing."""
    job = crud.get_job(session, job_id)
    try:
        gpus = routing.spec_gpus(job.spec)
        if gpus > settings.worker_gpus:
            raise launch.TooManyGpusError(
                f"the job asks for {gpus} GPUs; this worker has {settings.worker_gpus}"
            )
        return job, resolve_teacher(session, job, settings), None
    except (TeacherUnavailableError, ValueError) as error:
        return job, None, error


def _finish(sessions, settings, job_id, status, reason=None, message=None) -> bool:
    return retry_db(
        sessions, lambda session: crud.finish_job(
            session, job_id=job_id, status=status, failure_reason=reason, message=message),
        what=f"job {job_id}: finish", budget_s=settings.db_retry_s,
    )  # fmt: skip


def register_log(sessions: SessionFactory, settings: Settings, job_id: str) -> None:
    """(Re-)register ``runner.log`` with its current size and checksum, if it is readable
    (the job's folder may have become unwritable or vanished: the job row says why)."""
    path = Path(settings.artifact_dir) / job_id / LOG_FILE
    try:
        size, sha256 = path.stat().st_size, storage.file_sha256(path)
    except OSError:
        return
    publish_log(job_id, path, settings)
    retry_db(
        sessions, lambda session: crud.add_artifact(
            session, job_id=job_id, name=LOG_FILE, kind="log", size=size, sha256=sha256,
            path=storage.artifact_relpath(job_id, LOG_FILE)),
        what=f"job {job_id}: register {LOG_FILE}", budget_s=settings.db_retry_s,
    )  # fmt: skip


def publish_log(job_id: str, path: Path, settings: Settings) -> None:
    """Put ``runner.log`` in the object store (no-op for the local folder); a failure is
    logged, never fatal."""
    try:  # not retried: a store outage must not hold back the job's verdict for a log
        store = objectstore.open_store(settings)
        if not store.is_local:
            store.put_file("artifacts", storage.artifact_relpath(job_id, LOG_FILE), path)
    except Exception:  # the job's own verdict matters more than its log
        log.exception("job %s: could not store %s", job_id, LOG_FILE)


def conclude(
    job_id: str,
    sessions: SessionFactory,
    folder: Path,
    returncode: int,
    stop_reason: str | None,
    settings: Settings,
    *,
    worker_id: str | None = None,
    oom_kill: bool = False,
) -> Outcome:
    """Finish the job row from the runner's verdict, unless the runner already did.

    A job stopped for a worker shutdown is handed back (queued, same attempt); one whose
    runner was killed by a signal without evidence of memory exhaustion is retried
    (queued, next attempt) while attempts remain. Tracebacks the runner wrote to its stderr
    go to this process's log, never to the user's ``runner.log`` or message.
    """
    verdict = read_verdict(folder / RESULT_FILE)
    register_log(sessions, settings, job_id)
    if stop_reason == "lost":
        log.warning("job %s was re-queued elsewhere; leaving its row alone", job_id)
        return Outcome("lost", job_id=job_id)
    errors = tail(folder / ERR_FILE)
    job = retry_db(sessions, lambda session: crud.get_job(session, job_id),
                   what=f"job {job_id}: read", budget_s=settings.db_retry_s)  # fmt: skip
    if not job.is_terminal and stop_reason == "shutdown" and worker_id is not None:
        handed = retry_db(
            sessions, lambda session: claims.hand_back_job(
                session, job_id=job_id, worker_id=worker_id),
            what=f"job {job_id}: hand back", budget_s=settings.db_retry_s,
        )  # fmt: skip
        if handed:
            log.warning("job %s: handed back to the queue for the worker's shutdown (attempt "
                        "%s not counted)", job_id, job.attempt)  # fmt: skip
            return Outcome("handed_back", job_id=job_id)
    elif not job.is_terminal:
        evidence = oom_kill or stderr_shows_oom(errors)
        status, reason, message = verdict_of(
            job, returncode, stop_reason, verdict, settings, oom_evidence=evidence
        )
        message = redact_paths(message, settings)
        if status == RETRY and worker_id is not None:
            retried = retry_db(
                sessions, lambda session: claims.retry_job(
                    session, job_id=job_id, worker_id=worker_id, failure_reason=reason,
                    message=message),
                what=f"job {job_id}: retry", budget_s=settings.db_retry_s,
            )  # fmt: skip
            if retried == JobStatus.queued:
                log.warning("job %s: %s; queued again to resume from its last checkpoint",
                            job_id, message)  # fmt: skip
                _log_errors(job_id, errors)
                return Outcome(JobStatus.queued.value, reason.value, message, job_id)
        elif status != RETRY:
            _finish(sessions, settings, job_id, status, reason, message)
        else:  # no claim to guard the retry with (a direct caller): fail it
            _finish(sessions, settings, job_id, JobStatus.failed, reason, message)
    job = retry_db(sessions, lambda session: crud.get_job(session, job_id),
                   what=f"job {job_id}: read", budget_s=settings.db_retry_s)  # fmt: skip
    log.info("job %s: %s%s%s", job_id, job.status.value,
             f" ({job.failure_reason})" if job.failure_reason else "",
             f": {job.message}" if job.message else "")  # fmt: skip
    if job.status != JobStatus.succeeded:
        _log_errors(job_id, errors)
    return Outcome(job.status.value, job.failure_reason, job.message, job_id)


def _log_errors(job_id: str, errors: str) -> None:
    """The runner's stderr (tracebacks) in the operators' log, once per attempt."""
    if errors.strip():
        log.warning("job %s: the runner's stderr (last lines):\n%s", job_id, errors.rstrip())
