"""Worker paths no other test runs: a teacher taken from an earlier job's student, the
supervisor's ``lost`` outcome, the kill after the SIGTERM grace, heartbeat writes that fail,
the runner skipping a finished job, and the cold start when the spare runner has died."""

from __future__ import annotations

import subprocess
import sys
import threading
from types import SimpleNamespace

import pytest
from sqlalchemy.exc import OperationalError
from worker_helpers import get_job, insert_job, make_settings, runner_pids, tiny_spec, wait_for

from service import crud, storage
from service.tables import JobStatus
from worker.supervisor import TeacherUnavailableError, resolve_teacher, supervise_job


@pytest.fixture
def settings(sqlite_url, tmp_path):
    return make_settings(sqlite_url, tmp_path)


def unreachable_sessions():
    """A session factory whose every use fails as a database that went away does."""
    raise OperationalError("SELECT 1", {}, Exception("connection refused"))


def test_teacher_from_an_earlier_jobs_student(settings, sessions, owner):
    source = insert_job(sessions, owner, tiny_spec())
    body = tiny_spec(method="kd", teacher={"arch": "resnet8", "job_id": source})
    pupil_id = insert_job(sessions, owner, body)
    with sessions() as session:
        pupil = crud.get_job(session, pupil_id)
        with pytest.raises(TeacherUnavailableError, match="no succeeded student"):
            resolve_teacher(session, pupil, settings)  # the source has not finished
        crud.claim_job(session, job_id=source, worker_id="w")
        crud.finish_job(session, job_id=source, status=JobStatus.succeeded)
        with pytest.raises(TeacherUnavailableError, match=r"has no student\.safetensors"):
            resolve_teacher(session, pupil, settings)
        weights = storage.job_dir(settings.artifact_dir, source) / "student.safetensors"
        weights.write_bytes(b"weights")
        crud.add_artifact(session, job_id=source, name="student.safetensors", kind="weights",
                          size=7, sha256="0" * 64,
                          path=storage.artifact_relpath(source, "student.safetensors"))  # fmt: skip
        assert resolve_teacher(session, pupil, settings) == weights.resolve()
        weights.unlink()
        with pytest.raises(TeacherUnavailableError, match="missing on the server"):
            resolve_teacher(session, pupil, settings)


def test_a_claim_taken_away_ends_as_lost(settings, sessions, owner):
    job_id = insert_job(sessions, owner, tiny_spec(training={"epochs": 200}))
    outcome: list = []
    thread = threading.Thread(
        target=lambda: outcome.append(supervise_job(job_id, settings=settings))
    )
    thread.start()
    wait_for(lambda: runner_pids(job_id), timeout=60, what="the runner")
    with sessions() as session:  # what a reaper does when it gives the job to another worker
        session.query(type(get_job(sessions, job_id))).filter_by(id=job_id).update(
            {"worker_id": "another-worker"}
        )
        session.commit()
    thread.join(timeout=90)
    assert outcome[0].status == "lost"
    assert get_job(sessions, job_id).worker_id == "another-worker"  # its row left alone
    assert runner_pids(job_id) == []


def test_a_runner_ignoring_sigterm_is_killed_after_the_grace(settings, sessions, owner):
    from worker.watch import Watch

    job_id = insert_job(sessions, owner, tiny_spec())
    with sessions() as session:
        crud.claim_job(session, job_id=job_id, worker_id="w")
        crud.request_cancel(session, job_id=job_id)
    stubborn = subprocess.Popen(
        [sys.executable, "-c", "import signal, time; signal.signal(signal.SIGTERM, "
         "signal.SIG_IGN); print('ready', flush=True); time.sleep(120)"],
        stdout=subprocess.PIPE, start_new_session=True,
    )  # fmt: skip
    assert stubborn.stdout.readline() == b"ready\n"  # its handler is in place
    watch = Watch(stubborn, job_id, "w", sessions, settings, poll_s=0.1, kill_grace_s=1.0)
    assert watch.run() == -9 and watch.stop_reason == "cancel"


def test_heartbeat_writes_that_fail_are_skipped(settings, sessions, owner):
    from worker.reporting import DatabaseReporter
    from worker.watch import Watch

    watch = Watch(None, "job_x", "w", unreachable_sessions, settings, 0.1, 1.0)
    assert watch._poll(beat=True) is None and watch._outage.down
    reporter = DatabaseReporter("job_x", unreachable_sessions, heartbeat_s=1e-6, poll_s=0)
    reporter.on_batch_end(SimpleNamespace(epoch=1), 0, 10, None)  # no exception
    assert reporter.stop_cause is None


def test_the_runner_skips_a_finished_job(settings, sessions, owner):
    from worker.common import settings_env
    from worker.verdict import read_verdict

    job_id = insert_job(sessions, owner, tiny_spec())
    with sessions() as session:
        crud.request_cancel(session, job_id=job_id)  # queued → cancelled
    result = storage.job_dir(settings.artifact_dir, job_id) / "r.json"
    run = subprocess.run([sys.executable, "-m", "worker.runner", job_id, "--result", str(result)],
                         env=settings_env(settings), capture_output=True, timeout=120)  # fmt: skip
    assert run.returncode == 0, run.stderr[-2000:]
    assert read_verdict(result)["status"] == "skipped"
    assert get_job(sessions, job_id).status == JobStatus.cancelled


def test_a_dead_spare_means_a_cold_start(settings, sessions, owner):
    from worker.standby import standby

    job_id = insert_job(sessions, owner, tiny_spec(training={"epochs": 1}))
    try:
        standby.start(settings)
        standby._process.kill()
        standby._process.wait()
        outcome = supervise_job(job_id, settings=settings, warm=True)
        assert outcome.status == "succeeded", outcome
        assert get_job(sessions, job_id).progress_epoch == 1
    finally:
        standby.stop()


def test_messages_name_server_folders_without_their_paths(settings):
    from worker.verdict import redact_paths

    missing = settings.dataset_root.absolute() / "cifar10" / "train"
    message = f"could not prepare the job: FileNotFoundError: [Errno 2] '{missing}' and " \
              f"/usr/lib/python3.11/site-packages/torch/serialization.py"  # fmt: skip
    assert redact_paths(message, settings) == (
        "could not prepare the job: FileNotFoundError: [Errno 2] '<datasets>/cifar10/train' "
        "and serialization.py"
    )
    assert redact_paths("epoch 3/40, 1.5 s", settings) == "epoch 3/40, 1.5 s"
