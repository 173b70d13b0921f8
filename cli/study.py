"""``wkd study``: methods × seeds on one teacher, student and dataset, and their summary.

* ``wkd study run FILE`` runs every job of the study here, one after the other, into
  ``<out>/<method>-seed<k>/`` with one interrelation cache for all of them (so WKD-L and
  WKD-LF compute the matrix once), then prints the summary and writes ``study.json``.
* ``wkd study submit FILE --url URL`` sends it to a service (``POST /studies``) and prints the
  study id; ``--wait`` follows it to the end.
* ``wkd study status ID --url URL`` prints a service study's jobs and summary.
* ``wkd study list --url URL`` lists the key's studies.

The service commands use :mod:`wkd_client`; URL and key come from ``--url`` / ``--key`` or
``WKD_URL`` / ``WKD_API_KEY``, and an error is one line, as for ``wkd submit``.

FILE is the ``POST /studies`` body as YAML (``service/studies.py``); locally the teacher may be
a ``path`` (or a name registered by ``wkd teachers import``).
"""

from __future__ import annotations

import argparse
import json
import re
from pathlib import Path
from typing import Any

from cli.inputs import load_mapping_file, positive_seconds, require_json
from cli.remote import handled


def load_study(path: str) -> dict[str, Any]:
    return load_mapping_file(path, "a study file (the POST /studies body)")


def fmt(stat: dict[str, Any]) -> str:
    if stat["mean"] is None:
        return "-"
    std = f" ± {stat['std']:.2f}" if stat["std"] is not None else ""
    return f"{stat['mean']:.2f}{std}"


def delta(value: float | None) -> str:
    return "-" if value is None else f"{value:+.2f}"


def format_summary(summary: list[dict[str, Any]]) -> str:
    """One line per method: runs, best and last top-1 (mean ± std), Δ to KD."""
    rows = [("method", "runs", "best top-1", "last top-1", "Δbest vs KD", "Δlast vs KD")]
    for row in summary:
        rows.append((
            row["method"], str(row["best_top1"]["n"]), fmt(row["best_top1"]),
            fmt(row["last_top1"]), delta(row["delta_vs_kd"]["best_top1"]),
            delta(row["delta_vs_kd"]["last_top1"]),
        ))  # fmt: skip
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    return "\n".join("  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip()
                     for r in rows)  # fmt: skip


def summarize(results: dict[str, list[tuple[float, float]]]) -> list[dict[str, Any]]:
    """The service's summary rows from local (best, last) results per method."""
    from service.studies import add_deltas, mean_std

    summary = [
        {"method": method, "best_top1": mean_std([b for b, _ in runs]),
         "last_top1": mean_std([last for _, last in runs])}
        for method, runs in results.items()
    ]  # fmt: skip
    add_deltas(summary)
    return summary


def run_local(args: argparse.Namespace) -> int:
    """``wkd study run FILE``: every job here, one shared interrelation cache."""
    from cli.commands import registered_teacher
    from service.spec import validate_job_spec
    from service.studies import StudySpec, job_bodies
    from wkd_core.pipeline import run_job

    data = load_study(args.file)
    teacher = data.get("teacher") or {}
    if isinstance(teacher, dict) and isinstance(teacher.get("path"), str):  # else: the spec says
        teacher = dict(teacher)
        teacher.update(registered_teacher(teacher["path"]))
        data["teacher"] = teacher
    study = StudySpec.model_validate(data)
    specs = [(m, s, validate_job_spec(body).to_stored()) for m, s, body in job_bodies(study)]
    out = Path(args.out or Path("runs") / re.sub(r"[^A-Za-z0-9_.-]+", "_", Path(args.file).stem))
    results: dict[str, list[tuple[float, float]]] = {m: [] for m in study.methods}
    jobs = []
    for method, seed, spec in specs:
        folder = out / f"{method}-seed{seed}"
        print(f"[{len(jobs) + 1}/{len(specs)}] {method} seed {seed} → {folder}", flush=True)
        teacher_path = (spec.get("teacher") or {}).get("path")
        result = run_job(
            spec, out_dir=folder, teacher_path=Path(teacher_path) if teacher_path else None,
            data_root=Path(args.data_root) if args.data_root else None,
            cache_dir=out / ".ir-cache", device=args.device, download=args.download,
        )  # fmt: skip
        results[method].append((result.best_top1, result.last_top1))
        jobs.append({"method": method, "seed": seed, "folder": str(folder),
                     "best_top1": result.best_top1, "last_top1": result.last_top1})  # fmt: skip
    summary = summarize(results)
    (out / "study.json").write_text(
        json.dumps({"spec": study.model_dump(mode="json"), "jobs": jobs, "summary": summary},
                   indent=2)
    )  # fmt: skip
    print(format_summary(summary))
    print(f"study written to {out / 'study.json'}")
    return 0


def submit(args: argparse.Namespace) -> int:
    """``wkd study submit FILE``: POST /studies (then follow it with ``--wait``)."""
    from cli.remote import make_client

    with make_client(args) as service:
        study = service.submit_study(require_json(load_study(args.file), args.file))
    print(f"study {study.id}: {len(study.jobs)} jobs queued")
    if args.wait:
        args.study_id = study.id
        return status(args)
    return 0


def status(args: argparse.Namespace) -> int:
    """``wkd study status ID``: the jobs and the summary (``--wait``: until every job ended)."""
    from cli.remote import make_client

    with make_client(args) as service:
        if getattr(args, "wait", False):
            study = service.wait_study(args.study_id, poll=args.poll)
        else:
            study = service.get_study(args.study_id)
    for job in study.jobs:
        best = "-" if job.best_top1 is None else f"{job.best_top1:.2f}"
        print(f"{job.id}  {job.method:<8} seed {job.seed}  {job.status:<10} {best}")
    print(f"status: {study.status}; interrelations shared: {study.interrelations['shared']}")
    print(format_summary([row.model_dump() for row in study.summary]))
    return 0


def list_studies(args: argparse.Namespace) -> int:
    """``wkd study list``: the key's studies, newest first, one line each."""
    from cli.remote import make_client

    with make_client(args) as service:
        items = list(service.iter_studies(limit=args.limit))
    for item in items:
        done = sum(n for state, n in item.job_states.items()
                   if state in ("succeeded", "failed", "cancelled"))  # fmt: skip
        print(f"{item.id}  {item.status:<22} {item.teacher_arch or '?'} → {item.student_arch}  "
              f"{item.dataset}  {','.join(item.methods)} × seeds {item.seeds}  "
              f"{done}/{item.jobs} jobs ended")  # fmt: skip
    if not items:
        print("no studies")
    return 0


def add_parser(sub: argparse._SubParsersAction) -> None:
    """``wkd study run|submit|status``."""
    study = sub.add_parser("study", help="methods × seeds on one teacher/student/dataset")
    study_sub = study.add_subparsers(dest="study_command", required=True)
    run = study_sub.add_parser("run", help="run every job of a study file here")
    run.add_argument("file", help="YAML: the POST /studies body (teacher.path allowed)")
    run.add_argument("--out", default=None, help="default: runs/<file stem>")
    run.add_argument("--data-root", default=None)
    run.add_argument("--device", default="auto")
    run.add_argument("--download", action="store_true", help="fetch CIFAR into --data-root")
    run.set_defaults(handler=run_local)
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--url", default=None, help="service URL (default: $WKD_URL or "
                        "http://127.0.0.1:8000)")  # fmt: skip
    common.add_argument("--key", default=None, help="API key (default: $WKD_API_KEY)")
    for name, handler in (("submit", submit), ("status", status)):
        cmd = study_sub.add_parser(name, parents=[common], help=f"{name} a study on a service")
        cmd.add_argument("file" if name == "submit" else "study_id")
        cmd.add_argument("--wait", action="store_true", help="poll until every job has ended")
        cmd.add_argument("--poll", type=positive_seconds, default=5.0,
                         help="seconds between polls")  # fmt: skip
        cmd.set_defaults(handler=handled(handler))
    listing = study_sub.add_parser("list", parents=[common], help="your studies on a service")
    listing.add_argument("--limit", type=int, default=20, help="at most this many (default 20)")
    listing.set_defaults(handler=handled(list_studies))
