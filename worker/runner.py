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
cancel, or the supervisor died): the job row is left for the supervisor or the reaper.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import signal
import sys
import traceback
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from service import crud, storage
from service.settings import get_settings
from service.tables import FailureReason, JobStatus
from worker.common import SessionFactory, session_factory
from worker.uploads import InvalidUploadError, cost_matrix_file

log = logging.getLogger("worker.runner")

EXIT_DONE = 0  # the runner wrote its verdict (whatever it was)
EXIT_STOPPED = 3  # stopped without a verdict: the supervisor or the reaper decides

ARTIFACT_KINDS = {
    "student.safetensors": "weights",
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
}
CHECKPOINT_FILE = "checkpoint.pt"


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
    if stage == "preparing" and isinstance(error, ValueError | LookupError | OSError):
        return FailureReason.invalid_input, f"could not prepare the job: {text}"
    return FailureReason.internal, f"internal error while {stage}: {text}"


def store_artifacts(
    sessions: SessionFactory, *, job_id: str, folder: Path, names: Iterable[str]
) -> list[str]:
    """Register the job's files that exist in ``folder``; returns the names stored."""
    stored = []
    for name in sorted(set(names)):
        path = folder / name
        if name not in ARTIFACT_KINDS or not path.is_file():
            continue
        with sessions() as session:
            crud.add_artifact(
                session, job_id=job_id, name=name, kind=ARTIFACT_KINDS[name],
                size=path.stat().st_size, sha256=storage.file_sha256(path),
                path=storage.artifact_relpath(job_id, name),
            )  # fmt: skip
        stored.append(name)
    return stored


def write_result(path: Path, **result: Any) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(result))
    os.replace(tmp, path)


def run(job_id: str, *, result_path: Path, teacher: Path | None) -> int:
    """Run one claimed job to its end; returns the process exit status."""
    from wkd_core.pipeline import run_job
    from worker.reporting import DatabaseReporter, Terminated

    settings = get_settings()
    sessions = session_factory(settings)
    with sessions() as session:
        job = crud.get_job(session, job_id)
    if job is None or job.is_terminal:
        write_result(result_path, status="skipped", message="job is gone or already finished")
        return EXIT_DONE
    folder = storage.job_dir(settings.artifact_dir, job_id)
    reporter = DatabaseReporter(job_id, sessions, heartbeat_s=settings.heartbeat_seconds)
    signal.signal(signal.SIGTERM, reporter.on_sigterm)
    stage = ["preparing"]

    def on_stage(name: str) -> None:
        stage[0] = name
        if name == "running":
            with sessions() as session:
                crud.set_running(session, job_id=job_id)

    def finish(status: JobStatus, reason: FailureReason | None = None, message=None) -> int:
        with sessions() as session:
            crud.finish_job(
                session, job_id=job_id, status=status, failure_reason=reason, message=message
            )
        write_result(result_path, status=status.value, failure_reason=reason, message=message)
        return EXIT_DONE

    try:
        cost_matrix = cost_matrix_file(
            job.spec, owner_id=job.owner_id, sessions=sessions, settings=settings
        )
    except InvalidUploadError as error:
        return finish(JobStatus.failed, FailureReason.invalid_input, str(error))
    try:
        result = run_job(
            job.spec, out_dir=folder, teacher_path=teacher, data_root=settings.dataset_root,
            cache_dir=settings.cache_dir, callbacks=[reporter], on_stage=on_stage,
            download=settings.download_datasets, cost_matrix_path=cost_matrix,
        )  # fmt: skip
    except Terminated:
        return _stopped(reporter, finish, result_path, "terminated while preparing")
    except Exception as error:
        traceback.print_exc()
        reason, message = classify_error(error, stage[0])
        store_artifacts(sessions, job_id=job_id, folder=folder, names=ARTIFACT_KINDS)
        return finish(JobStatus.failed, reason, message)
    names = [*(p.name for p in result.artifacts.values()), "metrics.csv", "metrics.jsonl"]
    store_artifacts(sessions, job_id=job_id, folder=folder, names=names)
    if result.stopped:
        return _stopped(reporter, finish, result_path, f"stopped after epoch {len(result.history)}")
    (folder / CHECKPOINT_FILE).unlink(missing_ok=True)  # done: nothing to resume any more
    summary = f"best test top-1 {result.best_top1:.2f}% at epoch {result.best_epoch}"
    return finish(JobStatus.succeeded, None, summary)


def _stopped(reporter, finish, result_path: Path, what: str) -> int:
    """A stop is a cancel only if the user asked for one; otherwise leave the verdict open."""
    if reporter.stop_cause == "cancel" or reporter.cancel_requested():
        return finish(JobStatus.cancelled, None, f"cancelled by request ({what})")
    write_result(result_path, status="stopped", message=f"{what} ({reporter.stop_cause})")
    return EXIT_STOPPED


def standby() -> int:
    """``--standby``: import the heavy modules now, then run the job that arrives on stdin.

    The supervisor keeps one such process ready between jobs (:mod:`worker.standby`), so a
    job does not wait for Python and torch to start. Importing torch does not initialise
    CUDA; nothing here touches the device before the job. The order is one JSON line
    ``{"job_id", "result", "teacher", "log"}``; end of input (the supervisor is gone) exits.
    """
    import wkd_core.pipeline  # noqa: F401  (the slow part of a start: torch, torchvision …)

    line = sys.stdin.readline()
    if not line.strip():
        return EXIT_DONE
    order = json.loads(line)
    log_fd = os.open(order["log"], os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
    for fd in (1, 2):  # from now on, print and tracebacks go to the job's runner.log
        os.dup2(log_fd, fd)
    os.close(log_fd)
    teacher = Path(order["teacher"]) if order.get("teacher") else None
    return run(order["job_id"], result_path=Path(order["result"]), teacher=teacher)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m worker.runner", description=__doc__)
    parser.add_argument("job_id", nargs="?")
    parser.add_argument("--result", type=Path, help="verdict file to write")
    parser.add_argument("--teacher", type=Path, default=None, help="resolved teacher weights")
    parser.add_argument("--standby", action="store_true", help="wait for the job on stdin")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    if args.standby:
        return standby()
    if args.job_id is None or args.result is None:
        parser.error("JOB_ID and --result are required without --standby")
    return run(args.job_id, result_path=args.result, teacher=args.teacher)


if __name__ == "__main__":
    sys.exit(main())
