"""The job subprocess: ``python -m worker.runner JOB_ID --result FILE [--teacher PATH]``.

Started by the supervisor (:mod:`worker.supervisor`) in a fresh interpreter for every job, so
CUDA is initialised here and nowhere else, GPU memory is returned when the job ends, and
``DataLoader`` workers may be forked. It reads the job's stored spec, runs
``wkd_core.pipeline.run_job`` into the job's artifact folder with the database reporter,
registers the artifacts and finishes the job row (succeeded, cancelled or failed).

With ``--standby`` it starts ahead of its job: it imports torch and the pipeline, then reads
the job from stdin (the supervisor's warm spare, :mod:`worker.standby`).

It writes a small JSON file (``--result``) saying how it ended, which the supervisor reads:
``{"status": "succeeded"|"cancelled"|"failed"|"stopped"|"skipped", "failure_reason": …,
"message": …}``. ``stopped`` means training halted without a verdict (SIGTERM without a
cancel): the job row is left for the supervisor. A runner whose supervisor died (the worker
was killed) hands the job back to the queue itself, without counting an attempt.

Two streams: stdout is the user's ``runner.log`` (one line per stage, epoch and the end, no
tracebacks, no server paths); stderr goes to ``runner.err``, which the supervisor copies into
the worker's own log for operators. Database writes are retried through short outages
(``settings.db_retry_s``).
"""

from __future__ import annotations

import argparse
import errno
import json
import logging
import os
import signal
import sys
import threading
import time
import traceback
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from service import claims, crud, objectstore, storage
from service.settings import Settings, get_settings
from service.tables import FailureReason, JobStatus
from worker.common import SessionFactory, retry_db, session_factory
from worker.store import worker_store
from worker.uploads import InvalidUploadError, cost_matrix_file, student_init_file
from worker.verdict import redact_paths

log = logging.getLogger("worker.runner")

EXIT_DONE = 0  # the runner wrote its verdict (whatever it was)
EXIT_STOPPED = 3  # stopped without a verdict: the supervisor or the reaper decides

ARTIFACT_KINDS = {
    "student.safetensors": "weights",
    "student.onnx": "onnx",  # detection jobs, where torchvision's detector exports
    "student_best.safetensors": "weights",
    "student_last.safetensors": "weights",
    "student_best.onnx": "onnx",
    "student_last.onnx": "onnx",
    "onnx_verification.json": "onnx",
    "model_card.md": "model_card",
    "events.out.tfevents.wkd": "tensorboard",
    "interrelations.pt": "interrelations",
    "metrics.csv": "metrics",
    "metrics.jsonl": "metrics",
    "manifest.json": "manifest",
    "curves.png": "plot",
    "runner.log": "log",
    # Born-Again jobs (spec "generations", at most 20): every generation's student
    **{f"student-gen{k}.safetensors": "weights" for k in range(21)},
}
CHECKPOINT_FILE = "checkpoint.pt"
# Disk full, quota, read-only, no permission, or the folder replaced by a file (ENOTDIR and,
# from mkdir, EEXIST).
STORAGE_ERRNOS = {errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EACCES, errno.ENOTDIR,
                  errno.EEXIST}  # fmt: skip
ERR_FILE = "runner.err"  # stderr: for operators (the worker's log), never an artifact


def classify_error(error: BaseException, stage: str) -> tuple[FailureReason, str]:
    """(failure_reason, human message) of an exception raised by the pipeline."""
    import torch

    from wkd_core.models import CheckpointMismatch
    from worker.reporting import DivergedError

    text = f"{type(error).__name__}: {error}"
    if isinstance(error, DivergedError):
        return FailureReason.diverged, str(error)
    if isinstance(error, CheckpointMismatch):
        return FailureReason.teacher_mismatch, f"the teacher does not fit its architecture: {error}"
    if isinstance(error, torch.OutOfMemoryError | MemoryError):
        return FailureReason.out_of_memory, f"out of memory: {text}"
    if isinstance(error, OSError) and error.errno in STORAGE_ERRNOS:
        # The server's disk, not the user's input: full, read-only, or its folder gone.
        return FailureReason.internal, (
            f"the server could not write the job's files ({os.strerror(error.errno)})"
        )
    if stage == "preparing" and isinstance(error, ValueError | LookupError | OSError):
        return FailureReason.invalid_input, f"could not prepare the job: {text}"
    return FailureReason.internal, f"internal error while {stage}: {text}"


def store_artifacts(
    sessions: SessionFactory,
    *,
    job_id: str,
    folder: Path,
    names: Iterable[str],
    db_retry_s: float = 0.0,
    store: objectstore.ObjectStore | None = None,
) -> list[str]:
    """Put the job's files that exist in ``folder`` in the store and register them; returns
    the names stored."""
    stored = []
    for name in sorted(set(names)):
        path = folder / name
        if name not in ARTIFACT_KINDS or not path.is_file():
            continue
        size, sha256 = path.stat().st_size, storage.file_sha256(path)
        if store is not None:
            store.put_file("artifacts", storage.artifact_relpath(job_id, name), path)
        retry_db(
            sessions, lambda session, name=name, size=size, sha256=sha256: crud.add_artifact(
                session, job_id=job_id, name=name, kind=ARTIFACT_KINDS[name], size=size,
                sha256=sha256, path=storage.artifact_relpath(job_id, name)),
            what=f"job {job_id}: register {name}", budget_s=db_retry_s,
        )  # fmt: skip
        stored.append(name)
    return stored


class EpochLog:
    """A ``fit`` callback (the :class:`wkd_core.train.Callback` hooks, without importing
    torch here) writing one line per epoch to the user's ``runner.log``."""

    def on_fit_start(self, state) -> None:
        log.info("training epochs %s to %s", state.start_epoch, state.config.epochs)

    def on_batch_end(self, state, batch_index, num_batches, loss_terms) -> None:
        pass

    def on_epoch_end(self, state, metrics) -> None:
        log.info("epoch %s/%s: train loss %.4f, test top-1 %.2f%%, %.1f s", metrics.epoch,
                 state.config.epochs, metrics.train_loss, metrics.test_top1,
                 metrics.seconds)  # fmt: skip

    def on_fit_end(self, state, result) -> None:
        pass


def write_result(path: Path, **result: Any) -> None:
    """The verdict for the supervisor; the job row already says it, so a folder that cannot
    be written any more (disk full) loses nothing that matters."""
    tmp = path.with_name(path.name + ".tmp")
    try:
        tmp.write_text(json.dumps(result))
        os.replace(tmp, path)
    except OSError as error:
        log.warning("could not write the verdict file: %s", error.strerror)


def run(job_id: str, *, result_path: Path, teacher: Path | None) -> int:
    """Run one claimed job to its end; returns the process exit status."""
    from wkd_core.pipeline import run_job
    from worker.reporting import DatabaseReporter, PublishCheckpoint, Terminated

    settings = get_settings()
    sessions = session_factory(settings)
    rank, world = int(os.environ.get("RANK", "0")), int(os.environ.get("WORLD_SIZE", "1"))
    if world > 1:
        log.info("job %s: process %d of %d (torchrun)", job_id, rank, world)
    job = retry_db(sessions, lambda session: crud.get_job(session, job_id),
                   what=f"job {job_id}: read", budget_s=settings.db_retry_s)  # fmt: skip
    if job is None or job.is_terminal:
        log.info("job %s is gone or already finished; nothing to run", job_id)
        if rank == 0:
            write_result(result_path, status="skipped", message="job is gone or already finished")
        return EXIT_DONE
    claimed_by = job.worker_id  # the claim this runner works for (hand-back guard)
    folder = storage.job_dir(settings.artifact_dir, job_id)
    if rank > 0:
        try:  # the same initial weights on every rank (rank 0 reports a problem with them)
            init = student_init_file(job.spec, owner_id=job.owner_id, sessions=sessions,
                                     settings=settings)  # fmt: skip
        except InvalidUploadError:
            return EXIT_DONE
        return run_other_rank(job.spec, folder=folder, teacher=teacher, settings=settings,
                              student_init=init)  # fmt: skip
    objects = worker_store(settings)
    reporter = DatabaseReporter(job_id, sessions, heartbeat_s=settings.heartbeat_seconds,
                                db_retry_s=settings.db_retry_s)  # fmt: skip
    signal.signal(signal.SIGTERM, reporter.on_sigterm)
    stage = ["preparing"]
    log.info("job %s: attempt %s of %s, %s %s on %s", job_id, job.attempt, job.max_attempts,
             job.spec.get("method"), job.spec.get("student", {}).get("arch"),
             job.spec.get("dataset", {}).get("name"))  # fmt: skip

    def on_stage(name: str) -> None:
        stage[0] = name
        log.info("job %s: %s", job_id, name)
        if name == "running":
            retry_db(sessions, lambda session: crud.set_running(session, job_id=job_id),
                     what=f"job {job_id}: running", budget_s=settings.db_retry_s)  # fmt: skip

    def finish(status: JobStatus, reason: FailureReason | None = None, message=None) -> int:
        message = redact_paths(message, settings)
        retry_db(
            sessions, lambda session: crud.finish_job(
                session, job_id=job_id, status=status, failure_reason=reason, message=message),
            what=f"job {job_id}: finish", budget_s=settings.db_retry_s,
        )  # fmt: skip
        write_result(result_path, status=status.value, failure_reason=reason, message=message)
        log.info("job %s: %s%s%s", job_id, status.value, f" ({reason})" if reason else "",
                 f": {message}" if message else "")  # fmt: skip
        return EXIT_DONE

    store = {"sessions": sessions, "job_id": job_id, "folder": folder,
             "db_retry_s": settings.db_retry_s, "store": objects}  # fmt: skip
    try:
        cost_matrix = cost_matrix_file(
            job.spec, owner_id=job.owner_id, sessions=sessions, settings=settings
        )
        student_init = student_init_file(
            job.spec, owner_id=job.owner_id, sessions=sessions, settings=settings
        )
    except InvalidUploadError as error:
        return finish(JobStatus.failed, FailureReason.invalid_input, str(error))
    try:
        result = run_job(
            job.spec, out_dir=folder, teacher_path=teacher, data_root=settings.dataset_root,
            cache_dir=settings.cache_dir, on_stage=on_stage,
            callbacks=[PublishCheckpoint(objects, job_id, folder / CHECKPOINT_FILE), reporter,
                       EpochLog()],
            download=settings.download_datasets, cost_matrix_path=cost_matrix,
            student_init_path=student_init,
        )  # fmt: skip
    except Terminated:
        return _stopped(reporter, finish, result_path, "terminated while preparing",
                        sessions, settings, claimed_by)  # fmt: skip
    except Exception as error:
        traceback.print_exc()  # stderr: runner.err, the operators' side
        if reporter.stop_cause is not None:  # e.g. a torchrun peer that the SIGTERM ended
            return _stopped(reporter, finish, result_path, f"{type(error).__name__} on stopping",
                            sessions, settings, claimed_by)  # fmt: skip
        reason, message = classify_error(error, stage[0])
        store_artifacts(names=ARTIFACT_KINDS, **store)
        return finish(JobStatus.failed, reason, message)
    names = [*(p.name for p in result.artifacts.values()), "metrics.csv", "metrics.jsonl"]
    store_artifacts(names=names, **store)
    if result.stopped:
        return _stopped(reporter, finish, result_path,
                        f"stopped after epoch {len(result.history)}", sessions, settings,
                        claimed_by)  # fmt: skip
    (folder / CHECKPOINT_FILE).unlink(missing_ok=True)  # done: nothing to resume any more
    objects.delete("artifacts", storage.artifact_relpath(job_id, CHECKPOINT_FILE))
    metric = "COCO AP" if job.spec.get("task") == "detection" else "test top-1"
    summary = f"best {metric} {result.best_top1:.2f}% at epoch {result.best_epoch}"
    return finish(JobStatus.succeeded, None, summary)


def run_other_rank(
    spec: dict, *, folder: Path, teacher: Path | None, settings, student_init: Path | None = None
) -> int:
    """A rank > 0 of a torchrun job: trains its share of every batch and reports nothing
    (rank 0 runs the callbacks, writes the artifacts and finishes the job row)."""
    from wkd_core.pipeline import run_job

    threading.Thread(target=_exit_when_orphaned, args=(os.getppid(),), daemon=True).start()
    run_job(spec, out_dir=folder, teacher_path=teacher, data_root=settings.dataset_root,
            cache_dir=settings.cache_dir, student_init_path=student_init)  # fmt: skip
    return EXIT_DONE


def _exit_when_orphaned(parent: int, every_s: float = 1.0) -> None:
    """torchrun starts each rank in a session of its own: when the agent is killed, its ranks
    would train on unsupervised. A rank whose parent is gone exits at once."""
    while os.getppid() == parent:
        time.sleep(every_s)
    os._exit(EXIT_STOPPED)


def _stopped(
    reporter, finish, result_path: Path, what: str, sessions, settings: Settings, claimed_by
) -> int:
    """A stop is a cancel only if the user asked for one. An orphaned runner (its worker
    died) hands the job back; otherwise the supervisor decides."""
    if reporter.stop_cause == "cancel" or reporter.cancel_requested():
        return finish(JobStatus.cancelled, None, f"cancelled by request ({what})")
    if reporter.stop_cause == "orphaned" and claimed_by is not None:
        handed = retry_db(
            sessions, lambda session: claims.hand_back_job(
                session, job_id=reporter.job_id, worker_id=claimed_by),
            what=f"job {reporter.job_id}: hand back", budget_s=settings.db_retry_s,
        )  # fmt: skip
        if handed:
            log.info("job %s: its worker is gone; handed back to the queue (%s)",
                     reporter.job_id, what)  # fmt: skip
    write_result(result_path, status="stopped", message=f"{what} ({reporter.stop_cause})")
    return EXIT_STOPPED


def standby() -> int:
    """``--standby``: import the heavy modules now, then run the job that arrives on stdin.

    The supervisor keeps one such process ready between jobs (:mod:`worker.standby`), so a
    job does not wait for Python and torch to start. Importing torch does not initialise
    CUDA; nothing here touches the device before the job. The order is one JSON line
    ``{"job_id", "result", "teacher", "log"}``; end of input (the supervisor is gone) exits.
    Its stdout goes to ``log`` (the user's runner.log), its stderr to ``runner.err`` beside.
    """
    import wkd_core.pipeline  # noqa: F401  (the slow part of a start: torch, torchvision …)

    line = sys.stdin.readline()
    if not line.strip():
        return EXIT_DONE
    order = json.loads(line)
    err_path = Path(order["log"]).with_name(ERR_FILE)
    for fd, path in ((1, order["log"]), (2, err_path)):  # print → runner.log, tracebacks → err
        opened = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
        os.dup2(opened, fd)
        os.close(opened)
    teacher = Path(order["teacher"]) if order.get("teacher") else None
    return run(order["job_id"], result_path=Path(order["result"]), teacher=teacher)


class _NoTraceback(logging.Formatter):
    """The user's log: the message line only; tracebacks are for the operators' stream."""

    def format(self, record: logging.LogRecord) -> str:
        record = logging.makeLogRecord({**record.__dict__, "exc_info": None, "exc_text": None})
        return super().format(record)


def setup_logging() -> None:
    """INFO lines to stdout (runner.log) without tracebacks; warnings with them to stderr."""
    user = logging.StreamHandler(sys.stdout)
    user.setFormatter(_NoTraceback("%(asctime)s %(levelname)s %(message)s"))
    operators = logging.StreamHandler(sys.stderr)
    operators.setLevel(logging.WARNING)
    operators.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s %(message)s"))
    logging.basicConfig(level=logging.INFO, handlers=[user, operators], force=True)
    # Libraries that log their own progress at INFO (the ONNX exporter's optimiser passes)
    # would bury the job's lines in runner.log: theirs start at WARNING.
    for name in ("onnxscript", "onnx_ir", "torch.onnx", "torch._dynamo", "torch.export"):
        logging.getLogger(name).setLevel(logging.WARNING)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m worker.runner", description=__doc__)
    parser.add_argument("job_id", nargs="?")
    parser.add_argument("--result", type=Path, help="verdict file to write")
    parser.add_argument("--teacher", type=Path, default=None, help="resolved teacher weights")
    parser.add_argument("--standby", action="store_true", help="wait for the job on stdin")
    args = parser.parse_args(argv)
    setup_logging()
    if args.standby:
        return standby()
    if args.job_id is None or args.result is None:
        parser.error("JOB_ID and --result are required without --standby")
    return run(args.job_id, result_path=args.result, teacher=args.teacher)


if __name__ == "__main__":
    sys.exit(main())
