"""The ``wkd`` commands for a running service, on top of :mod:`wkd_client` (no torch):
``submit``, ``status``, ``watch``, ``jobs``, ``cancel``, ``download``, ``upload-teacher``.

The server URL and API key come from ``--url`` / ``--key`` or ``WKD_URL`` / ``WKD_API_KEY``
(default URL ``http://127.0.0.1:8000``). A failed request prints one line,
``wkd: error: …``, and exits with status 2; ``watch`` (and ``submit --watch``) exit 0 when the
job succeeded and 1 when it failed or was cancelled.
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import sys
from collections.abc import Callable
from pathlib import Path
from typing import IO, Any

import yaml

EXIT_JOB_FAILED = 1
EXIT_ERROR = 2


def add_commands(sub: argparse._SubParsersAction) -> None:
    """Register the service commands on the ``wkd`` sub-parser collection."""
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--url", default=None, help="service URL (default: $WKD_URL or "
                        "http://127.0.0.1:8000)")  # fmt: skip
    common.add_argument("--key", default=None, help="API key (default: $WKD_API_KEY)")

    submit = sub.add_parser("submit", parents=[common], help="submit a job to a running service")
    submit.add_argument("job", nargs="?", help="YAML job file (the JobSpec of POST /jobs)")
    submit.add_argument("--preset", help="a released configuration (see `wkd list presets`)")
    submit.add_argument("--method", help="vanilla, kd, dkd, wkd_l, wkd_f, wkd_lf")
    submit.add_argument("--teacher-checkpoint", help="id of an uploaded teacher (ck_…)")
    submit.add_argument("--teacher-job", help="use the student of this earlier job as teacher")
    submit.add_argument("--student", help="student architecture")
    init = submit.add_mutually_exclusive_group()
    init.add_argument(
        "--student-init-checkpoint",
        metavar="CK_ID",
        help="start the student from an uploaded checkpoint (ck_…)",
    )
    init.add_argument(
        "--student-init-job",
        metavar="JOB_ID",
        help="start the student from this earlier job's student",
    )
    submit.add_argument("--backbone-only", action="store_true", help="of the student's initial "
                        "weights, load only the backbone (all but the classifier; a detector's "
                        "backbone)")  # fmt: skip
    submit.add_argument("--dataset", help="dataset name")
    submit.add_argument("--set", dest="overrides", action="append", default=[],
                        metavar="KEY=VALUE", help="override a spec field, e.g. "
                        "--set training.epochs=2")  # fmt: skip
    submit.add_argument("--idempotency-key", help="resubmitting with it returns the same job")
    submit.add_argument("--watch", action="store_true", help="then follow it like `wkd watch`")
    submit.set_defaults(handler=handled(cmd_submit))

    status = sub.add_parser("status", parents=[common], help="a job's state, progress and curve")
    status.add_argument("job_id")
    status.add_argument("--json", action="store_true", help="print the job document as JSON")
    status.set_defaults(handler=handled(cmd_status))

    watch = sub.add_parser("watch", parents=[common], help="follow a job live until it ends")
    watch.add_argument("job_id")
    watch.set_defaults(handler=handled(cmd_watch))

    jobs = sub.add_parser("jobs", parents=[common], help="list your jobs, newest first")
    jobs.add_argument("--status", help="only jobs in this state")
    jobs.add_argument("--limit", type=int, default=20, help="at most this many (default 20)")
    jobs.set_defaults(handler=handled(cmd_jobs))

    cancel = sub.add_parser("cancel", parents=[common], help="cancel a job")
    cancel.add_argument("job_id")
    cancel.set_defaults(handler=handled(cmd_cancel))

    download = sub.add_parser("download", parents=[common], help="download a job's artifacts")
    download.add_argument("job_id")
    download.add_argument("names", nargs="*", help="artifact names (default: all of them)")
    download.add_argument("--out", default=".", help="folder to write into (default: .)")
    download.set_defaults(handler=handled(cmd_download))

    upload = sub.add_parser("upload-teacher", parents=[common], help="upload teacher weights")
    upload.add_argument("file", help=".pth, .pt or .safetensors")
    upload.add_argument("--arch", required=True, help="the teacher's architecture")
    upload.add_argument("--num-classes", type=int, required=True)
    upload.set_defaults(handler=handled(cmd_upload_teacher))


def handled(handler: Callable[[argparse.Namespace], int]) -> Callable[[argparse.Namespace], int]:
    """Client errors and unreadable job files become one line on stderr and status 2."""

    @functools.wraps(handler)
    def run(args: argparse.Namespace) -> int:
        from wkd_client import WkdError

        try:
            return handler(args)
        except (WkdError, OSError, ValueError, yaml.YAMLError) as error:
            print(f"wkd: error: {' '.join(str(error).split())}", file=sys.stderr)
            return EXIT_ERROR

    return run


def make_client(args: argparse.Namespace):
    from wkd_client import Client

    key = args.key or os.environ.get("WKD_API_KEY")
    if not key:
        raise ValueError("no API key: pass --key or set WKD_API_KEY (see `wkd keys create`)")
    return Client(args.url, key)


# ------------------------------------------------------------------------- submit
def job_body(args: argparse.Namespace) -> dict[str, Any]:
    """The ``POST /jobs`` body from the YAML file, the flags and the ``--set`` overrides."""
    from cli.inputs import deep_merge, load_mapping_file, parse_overrides, require_json

    data = load_mapping_file(args.job, "a job file (the JobSpec)") if args.job else {}
    teacher = {k: v for k, v in (("checkpoint_id", args.teacher_checkpoint),
                                 ("job_id", args.teacher_job)) if v}  # fmt: skip
    student = _student_flags(args)
    if student and set(student.get("init", {})) & set(_INIT_SOURCES):
        data = _without_init_source(data)  # the flag's source replaces the file's
    flags = {
        "preset": args.preset,
        "method": args.method,
        "teacher": teacher or None,
        "student": student,
        "dataset": {"name": args.dataset} if args.dataset else None,
    }
    data = deep_merge(data, {k: v for k, v in flags.items() if v is not None})
    data = deep_merge(data, parse_overrides(args.overrides))
    if not data:
        raise ValueError("nothing to submit: give a YAML job file, --preset or fields")
    spec_student = data.get("student")
    init = spec_student.get("init") if isinstance(spec_student, dict) else None
    if args.backbone_only and not (isinstance(init, dict) and set(init) & set(_INIT_SOURCES)):
        raise ValueError("--backbone-only needs --student-init-checkpoint or --student-init-job "
                         "(or a student.init in the job file)")  # fmt: skip
    return require_json(data, "the job")


_INIT_SOURCES = ("checkpoint_id", "job_id", "path")  # StudentInitSpec's, exactly one


def _student_flags(args: argparse.Namespace) -> dict[str, Any] | None:
    """``student`` of the flags: ``arch`` and ``init`` (``{checkpoint_id | job_id,
    backbone_only}``), ``None`` when no flag names either."""
    init = {k: v for k, v in (("checkpoint_id", args.student_init_checkpoint),
                              ("job_id", args.student_init_job)) if v}  # fmt: skip
    if args.backbone_only:
        init["backbone_only"] = True
    student: dict[str, Any] = {"arch": args.student} if args.student else {}
    if init:
        student["init"] = init
    return student or None


def _without_init_source(data: dict[str, Any]) -> dict[str, Any]:
    """``data`` with no source in its ``student.init`` (``backbone_only`` is kept)."""
    student = data.get("student")
    if not (isinstance(student, dict) and isinstance(student.get("init"), dict)):
        return data
    init = {k: v for k, v in student["init"].items() if k not in _INIT_SOURCES}
    return {**data, "student": {**student, "init": init}}


def cmd_submit(args: argparse.Namespace) -> int:
    body = job_body(args)
    with make_client(args) as client:
        job = client.submit(body, idempotency_key=args.idempotency_key)
        print(job.id)
        print(f"{job.status}: {describe_spec(job.spec)}", file=sys.stderr)
        if args.watch:
            return follow(client, job.id, sys.stdout)
    return 0


# ------------------------------------------------------------------ status / jobs
def describe_spec(spec: dict[str, Any]) -> str:
    """``kd resnet32x4 → resnet8x4 on cifar100, 240 epochs``"""
    teacher = (spec.get("teacher") or {}).get("arch")
    student = (spec.get("student") or {}).get("arch")
    dataset = (spec.get("dataset") or {}).get("name")
    epochs = (spec.get("training") or {}).get("epochs", "?")
    return f"{describe(spec.get('method'), teacher, student, dataset)}, {epochs} epochs"


def describe(method: str | None, teacher: str | None, student: str | None,
             dataset: str | None) -> str:  # fmt: skip
    arrow = f"{teacher} → {student or '?'}" if teacher else (student or "?")
    return f"{method or '?'} {arrow} on {dataset or '?'}"


def progress_text(progress) -> str:
    text = f"epoch {progress.epoch}/{progress.total}"
    if progress.batch and progress.batches and progress.epoch < progress.total:
        text += f", batch {progress.batch}/{progress.batches} of epoch {progress.epoch + 1}"
    return text


def cmd_status(args: argparse.Namespace) -> int:
    from cli.textchart import bar_chart

    with make_client(args) as client:
        job = client.get_job(args.job_id)
    if args.json:
        print(job.model_dump_json(indent=2))
        return 0
    print(f"{job.id}  {job.status}  {describe_spec(job.spec)}")
    print(f"progress: {progress_text(job.progress)}")
    if job.best_top1 is not None:
        print(f"best top-1 {job.best_top1:.2f}% (epoch {job.best_epoch}), "
              f"last {job.last_top1:.2f}%")  # fmt: skip
    if job.failure_reason or job.message:
        print(f"message: {' '.join(filter(None, [job.failure_reason, job.message]))}")
    if job.curve:
        print(bar_chart([m.test_top1 for m in job.curve], label="test top-1 (%)"))
        print(curve_table(job.curve))
    for artifact in job.artifacts:
        print(f"artifact: {artifact.name} ({artifact.size} bytes)")
    return 0


def curve_table(curve) -> str:
    header = f"{'epoch':>5} {'lr':>9} {'train loss':>10} {'test top1':>9} {'test loss':>9}"
    rows = [f"{m.epoch:>5} {m.lr:>9.5f} {m.train_loss:>10.4f} {m.test_top1:>9.2f} "
            f"{m.test_loss:>9.4f}" for m in curve]  # fmt: skip
    return "\n".join([header, *rows])


def cmd_jobs(args: argparse.Namespace) -> int:
    with make_client(args) as client:
        jobs = list(client.iter_jobs(status=args.status, limit=args.limit))
    print(f"{'id':<29} {'status':<10} {'progress':>9} {'best':>6}  {'created':<16}  job")
    for job in jobs:
        best = f"{job.best_top1:.2f}" if job.best_top1 is not None else "-"
        created = job.created_at.astimezone().strftime("%Y-%m-%d %H:%M")
        done = f"{job.progress.epoch}/{job.progress.total}"
        what = describe(job.method, job.teacher_arch, job.student_arch, job.dataset)
        print(f"{job.id:<29} {job.status:<10} {done:>9} {best:>6}  {created:<16}  {what}")
    if not jobs:
        print("(no jobs)")
    return 0


# -------------------------------------------------------------------------- watch
class Watcher:
    """Renders a job's events: epoch lines and, on a terminal, a progress bar redrawn in
    place; at the end the curve as a small bar chart."""

    def __init__(self, out: IO[str], total: int) -> None:
        self.out = out
        self.tty = out.isatty()
        self.total = total
        self.top1: list[float] = []
        self.status = "queued"
        self.progress = {"epoch": 0, "total": total, "batch": 0, "batches": 0}
        self._bar_shown = False

    def __call__(self, event) -> None:
        data = event.data
        if event.event == "state":
            self.status = data["status"]
            self.progress = data["progress"]
            self._line(f"state: {self.status}" + (f" ({data['message']})"
                                                  if data.get("message") else ""))  # fmt: skip
        elif event.event == "epoch":
            self.top1.append(data["test_top1"])
            self.progress = {**self.progress, "epoch": data["epoch"], "batch": 0}
            self._line(f"epoch {data['epoch']:>4}/{data['total']}  train loss "
                       f"{data['train_loss']:.4f}  test top-1 {data['test_top1']:6.2f}%  "
                       f"test loss {data['test_loss']:.4f}  ({data['seconds']:.1f} s)")  # fmt: skip
        elif event.event == "progress":
            self.progress = data
        self._bar()

    def _line(self, text: str) -> None:
        self._clear_bar()
        print(text, file=self.out, flush=True)

    def _bar(self) -> None:
        if not self.tty:
            return
        from cli.textchart import progress_bar
        from wkd_client import Progress

        progress = Progress.model_validate(self.progress)
        self._clear_bar()
        text = f"{progress_bar(progress.fraction)}  {progress_text(progress)}  {self.status}"
        self.out.write(text)
        self.out.flush()
        self._bar_shown = True

    def _clear_bar(self) -> None:
        if self._bar_shown:
            self.out.write("\r\x1b[2K")
            self._bar_shown = False

    def finish(self, job) -> None:
        from cli.textchart import bar_chart

        self._clear_bar()
        top1 = [m.test_top1 for m in job.curve] or self.top1
        if top1:
            print(bar_chart(top1, label="test top-1 (%)"), file=self.out)
        summary = f"{job.id} {job.status}"
        if job.best_top1 is not None:
            summary += f": best top-1 {job.best_top1:.2f}% at epoch {job.best_epoch}"
        if job.failure_reason or job.message:
            summary += f" ({' '.join(filter(None, [job.failure_reason, job.message]))})"
        print(summary, file=self.out, flush=True)


def follow(client, job_id: str, out: IO[str]) -> int:
    """Follow ``job_id`` until it ends; 0 if it succeeded, else 1."""
    job = client.get_job(job_id)
    watcher = Watcher(out, job.progress.total)
    job = client.wait(job_id, on_event=watcher)
    watcher.finish(job)
    return 0 if job.status == "succeeded" else EXIT_JOB_FAILED


def cmd_watch(args: argparse.Namespace) -> int:
    with make_client(args) as client:
        return follow(client, args.job_id, sys.stdout)


# ---------------------------------------------------------- cancel / files
def cmd_cancel(args: argparse.Namespace) -> int:
    with make_client(args) as client:
        job = client.cancel(args.job_id)
    print(f"{job.id} {job.status}")
    return 0


def cmd_download(args: argparse.Namespace) -> int:
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    with make_client(args) as client:
        available = [a.name for a in client.artifacts(args.job_id)]
        missing = sorted(set(args.names) - set(available))
        if missing:
            raise ValueError(f"job {args.job_id} has no artifact {', '.join(missing)} "
                             f"(it has: {', '.join(available) or 'none yet'})")  # fmt: skip
        for name in args.names or available:
            print(client.download(args.job_id, name, out))
    return 0


def cmd_upload_teacher(args: argparse.Namespace) -> int:
    with make_client(args) as client:
        checkpoint = client.upload_checkpoint(
            args.file, arch=args.arch, num_classes=args.num_classes
        )
    print(checkpoint.id)
    print(json.dumps({"arch": checkpoint.arch, "num_classes": checkpoint.num_classes,
                      "sha256": checkpoint.sha256, "size": checkpoint.size}),
          file=sys.stderr)  # fmt: skip
    return 0
