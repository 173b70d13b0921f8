"""How a job's processes start: one runner, or torchrun with one runner per GPU.

A job with ``training.gpus`` = N > 1 is started as::

    python -m torch.distributed.run --standalone --nproc_per_node N -m worker.runner JOB_ID …

torchrun gives every process RANK, LOCAL_RANK and WORLD_SIZE; ``wkd_core.train.fit`` joins
the process group (NCCL on CUDA, gloo on CPU), puts rank r on ``cuda:r`` of the devices the
worker's container sees, wraps the distiller in DistributedDataParallel and splits the global
batch over the processes. Rank 0 alone reports to the database and writes the artifacts
(``worker.runner``). ``--standalone`` makes torchrun pick a free local port for its
rendezvous, so several jobs on one host never collide; nothing listens beyond the host.

Before the processes start, :func:`restore_checkpoint` puts the job's last epoch checkpoint
in its local folder when the object store is remote (the earlier epochs may have run on
another host), so that every rank resumes from the same file.
"""

from __future__ import annotations

import logging
import subprocess
import sys
from pathlib import Path

from service import objectstore, routing, storage
from service.settings import Settings
from worker.common import settings_env
from worker.store import worker_store

log = logging.getLogger(__name__)

CHECKPOINT_FILE = "checkpoint.pt"
ERR_FILE = "runner.err"  # the runner's stderr: tracebacks for operators, never an artifact


class TooManyGpusError(ValueError):
    """The job asks for more GPUs than this worker has."""


def runner_command(
    job_id: str, *, gpus: int, result: Path, teacher: Path | None, worker_gpus: int
) -> list[str]:
    """The command line of a job's runner process(es)."""
    if gpus > worker_gpus:
        raise TooManyGpusError(f"the job asks for {gpus} GPUs; this worker has {worker_gpus}")
    command = ["-m", "worker.runner", job_id, "--result", str(result)]
    if teacher is not None:
        command += ["--teacher", str(teacher)]
    if gpus == 1:
        return [sys.executable, *command]
    return [sys.executable, "-m", "torch.distributed.run", "--standalone",
            "--nproc_per_node", str(gpus), *command]  # fmt: skip


def start_runner(
    job_id: str, settings: Settings, *, spec: dict, result: Path, teacher: Path | None, log: Path
) -> subprocess.Popen:
    """Start the job cold, in its own session (process group): its stdout (the user's
    ``runner.log``) appended to ``log``, its stderr (tracebacks, for operators) to
    ``runner.err`` beside it."""
    command = runner_command(job_id, gpus=routing.spec_gpus(spec), result=result,
                             teacher=teacher, worker_gpus=settings.worker_gpus)  # fmt: skip
    with open(log, "ab") as log_file, open(log.with_name(ERR_FILE), "ab") as err_file:
        return subprocess.Popen(
            command, stdout=log_file, stderr=err_file, stdin=subprocess.DEVNULL,
            env=settings_env(settings), start_new_session=True,
        )  # fmt: skip


def restore_checkpoint(settings: Settings, job_id: str, folder: Path) -> bool:
    """With a remote store, replace the local ``checkpoint.pt`` by the stored one (if any);
    returns whether there is one to resume from."""
    store = worker_store(settings)
    local = folder / CHECKPOINT_FILE
    if store.is_local:
        return local.is_file()
    local.unlink(missing_ok=True)
    try:
        store.fetch("artifacts", storage.artifact_relpath(job_id, CHECKPOINT_FILE), local)
    except objectstore.MissingObjectError:
        return False
    log.info("job %s: resuming from the stored %s", job_id, CHECKPOINT_FILE)
    return True
