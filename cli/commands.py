"""Handlers of the ``wkd`` sub-commands; each imports its heavy dependencies lazily."""

from __future__ import annotations

import argparse
import contextlib
import json
import re
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from cli.inputs import deep_merge, load_mapping_file, parse_overrides


def resolve_cli_spec(data: dict[str, Any]) -> dict[str, Any]:
    """Validate a CLI job (paths allowed) and fill it from its preset: the pipeline's dict.

    On the command line the task follows from a detection dataset named explicitly (the API
    asks for ``task: detection``).
    """
    from service import catalog
    from service.spec import validate_job_spec

    dataset = data.get("dataset")
    dataset = dataset.get("name") if isinstance(dataset, dict) else None
    info = catalog.DATASETS.get(dataset) if isinstance(dataset, str) else None
    if "task" not in data and info is not None and info.input_kind == "detection":
        data = {**data, "task": "detection"}
    return validate_job_spec(data).to_stored()


def default_out_dir(spec: dict[str, Any]) -> Path:
    student = spec["student"]["arch"]
    tag = f"{spec['method']}-{spec['dataset']['name']}-{student}-seed{spec['training']['seed']}"
    return Path("runs") / re.sub(r"[^A-Za-z0-9_.-]+", "_", tag)


def run_spec(spec: dict[str, Any], args: argparse.Namespace, teacher: str | None) -> int:
    """Run the pipeline with a progress bar, then print the curve table and the outputs."""
    from wkd_core.pipeline import run_job
    from wkd_core.train import ProgressBar

    out_dir = Path(args.out) if args.out else default_out_dir(spec)
    callbacks = [] if args.no_progress else [ProgressBar()]
    with removed_if_left_empty(out_dir):
        result = run_job(
            spec,
            out_dir=out_dir,
            teacher_path=Path(teacher) if teacher else None,
            data_root=Path(args.data_root) if args.data_root else None,
            cache_dir=Path(args.cache_dir) if args.cache_dir else out_dir.parent / ".ir-cache",
            callbacks=callbacks,
            device=args.device,
            download=args.download,
        )
    if not result.is_main:  # under torchrun, rank 0 reports for everyone
        return 0
    detection = spec.get("task") == "detection"
    print(format_detection_curve(result.history) if detection else format_curve(result.history))
    metric = "AP" if detection else "top-1"
    print(
        f"best {metric} {result.best_top1:.2f}% (epoch {result.best_epoch}), "
        f"last {metric} {result.last_top1:.2f}%" + (" (stopped early)" if result.stopped else "")
    )
    init = _manifest(out_dir).get("student_init")
    if init:  # what the initial weights loaded, and the keys they did not match
        print(f"student init ({init['layout']}): {init['loaded']} tensors loaded, "
              f"{init['num_missing']} missing, {init['num_unexpected']} unexpected"
              " (listed in manifest.json)")  # fmt: skip
    print(f"student weights: {result.artifacts['student.safetensors']} (last epoch)")
    if "student_best.safetensors" in result.artifacts:
        print(f"best-epoch weights: {result.artifacts['student_best.safetensors']}")
    if "model_card.md" in result.artifacts:
        print(f"verified ONNX: {out_dir}/student_{{best,last}}.onnx; card: model_card.md")
    print(f"outputs in {out_dir}")
    return 0


def _manifest(out_dir: Path) -> dict[str, Any]:
    path = out_dir / "manifest.json"
    return json.loads(path.read_text()) if path.is_file() else {}


@contextlib.contextmanager
def removed_if_left_empty(folder: Path) -> Iterator[None]:
    """Remove ``folder`` again if it did not exist and a failing run left it empty."""
    existed = folder.exists()
    try:
        yield
    except BaseException:
        if not existed and folder.is_dir() and not any(folder.iterdir()):
            folder.rmdir()
        raise


def format_curve(history: list[Any]) -> str:
    """The per-epoch curve as a fixed-width table."""
    header = (
        f"{'epoch':>5} {'lr':>9} {'train loss':>10} {'train top1':>10} "
        f"{'test top1':>9} {'test top5':>9} {'test loss':>9}"
    )
    rows = [
        f"{m.epoch:>5} {m.lr:>9.5f} {m.train_loss:>10.4f} {m.train_top1:>10.2f} "
        f"{m.test_top1:>9.2f} {m.test_top5:>9.2f} {m.test_loss:>9.4f}"
        for m in history
    ]
    return "\n".join([header, *rows])


def format_detection_curve(history: list[Any]) -> str:
    """A detection job's curve: COCO AP, AP50, AP75 (%) and the RoI accuracy by epoch."""
    header = (
        f"{'epoch':>5} {'lr':>9} {'train loss':>10} {'roi top1':>8} "
        f"{'AP':>6} {'AP50':>6} {'AP75':>6}"
    )
    rows = [
        f"{m.epoch:>5} {m.lr:>9.5f} {m.train_loss:>10.4f} {m.train_top1:>8.2f} "
        f"{m.test_top1:>6.2f} {m.test_top5:>6.2f} {m.loss_terms.get('coco_AP75', 0.0):>6.2f}"
        for m in history
    ]
    return "\n".join([header, *rows])


def train(args: argparse.Namespace) -> int:
    training = {
        "epochs": args.epochs,
        "batch_size": args.batch_size,
        "lr": args.lr,
        "seed": args.seed,
    }
    data: dict[str, Any] = {
        "method": "vanilla",
        "student": {"arch": args.arch},
        "dataset": {"name": args.dataset},
        "training": {k: v for k, v in training.items() if v is not None},
    }
    if args.train_subset_per_class is not None:
        data["dataset"]["train_subset_per_class"] = args.train_subset_per_class
    data = with_student_init(data, args)
    spec = resolve_cli_spec(deep_merge(data, parse_overrides(args.overrides)))
    return run_spec(spec, args, teacher=None)


def with_student_init(data: dict[str, Any], args: argparse.Namespace) -> dict[str, Any]:
    """``--student-init PATH`` as the spec's ``student.init.path``."""
    if not getattr(args, "student_init", None):
        return data
    return deep_merge(data, {"student": {"init": {"path": args.student_init}}})


def distill(args: argparse.Namespace) -> int:
    data = load_mapping_file(args.job, "a job file (the JobSpec)") if args.job else {}
    flags = {
        "preset": args.preset,
        "method": args.method,
        "student": {"arch": args.student} if args.student else None,
        "dataset": {"name": args.dataset} if args.dataset else None,
    }
    data = deep_merge(data, {k: v for k, v in flags.items() if v is not None})
    teacher = data.get("teacher") or {}
    if not isinstance(teacher, dict):
        raise ValueError(f"teacher: fields (arch, path), not {teacher!r}")
    teacher = dict(teacher)
    if args.teacher:
        teacher["path"] = args.teacher
        teacher.update(registered_teacher(args.teacher))
    if args.teacher_arch:
        teacher["arch"] = args.teacher_arch
    if teacher:
        data["teacher"] = teacher
    data = with_student_init(data, args)
    spec = resolve_cli_spec(deep_merge(data, parse_overrides(args.overrides)))
    teacher_path = (spec.get("teacher") or {}).get("path")
    if spec["method"] != "vanilla" and not teacher_path and not spec.get("generations"):
        raise ValueError("a teacher checkpoint is required: pass --teacher PATH")
    return run_spec(spec, args, teacher=teacher_path)


def registered_teacher(name: str) -> dict[str, str]:
    """``{"path", "arch"}`` of a teacher registered by ``wkd teachers import``, else ``{}``."""
    from cli.teachers import resolve_registered

    if Path(name).exists():
        return {}
    record = resolve_registered(name)
    return {"path": record["path"], "arch": record["arch"]} if record else {}


def interrelations(args: argparse.Namespace) -> int:
    import torch

    from wkd_core.data import create_dataset, dataset_info
    from wkd_core.ir import compute_distance
    from wkd_core.job_parts import resolve_device
    from wkd_core.models import create_model, load_checkpoint_into

    device = resolve_device(args.device)
    out = Path(args.out) if args.out else default_ir_path(args)
    if out.is_dir():  # before the work, not after it
        raise ValueError(f"--out {out}: a folder; give the file to write (e.g. {out}/ir.pt)")
    out.parent.mkdir(parents=True, exist_ok=True)
    num_classes = dataset_info(args.dataset).num_classes
    options = {"train_subset_per_class": args.train_subset_per_class}
    dataset = create_dataset(
        args.dataset,
        split="train",
        root=args.data_root,
        train=False,
        download=args.download,
        **{k: v for k, v in options.items() if v is not None},
    )
    teacher = create_model(args.arch, num_classes=num_classes)
    load_checkpoint_into(teacher, args.teacher)
    distance = compute_distance(
        teacher,
        dataset,
        options={
            "source": args.source,
            "kernel": args.kernel,
            "feature": args.feature,
            "max_per_class": args.max_per_class,
        },
        device=device,
    )
    torch.save(distance, out)
    off_diag = 1 - distance[~torch.eye(len(distance), dtype=torch.bool)]
    print(
        f"wrote {out}: {tuple(distance.shape)} D = 1 - IR; off-diagonal IR mean "
        f"{off_diag.mean():.3f} [{off_diag.min():.3f}, {off_diag.max():.3f}]"
    )
    return 0


def default_ir_path(args: argparse.Namespace) -> Path:
    """``runs/ir/<dataset>-<arch>-<source>[_<kernel>].pt``: beside the runs, not in the cwd."""
    source = args.source if args.source != "cka" else f"cka_{args.kernel}"
    return Path("runs") / "ir" / f"{args.dataset}-{args.arch}-{source}.pt"


def listing(args: argparse.Namespace) -> int:
    from service import catalog

    tables = {
        "models": catalog.ARCHITECTURES,
        "datasets": catalog.DATASETS,
        "methods": catalog.METHODS,
    }
    if args.what == "presets":
        from cli.ablations import format_ablations
        from cli.listing import preset_table

        print(preset_table())
        print(format_ablations())
        return 0
    print("\n".join(sorted(tables[args.what])))
    return 0


def serve(args: argparse.Namespace) -> int:
    from cli.serve import serve as run_server

    return run_server(host=args.host, port=args.port, data_dir=args.data_dir)


def create_key(args: argparse.Namespace) -> int:
    from cli.keys import create_key as make_key

    key = make_key(args.name, data_dir=args.data_dir, database_url=args.database_url,
                   report=lambda line: print(line, file=sys.stderr))  # fmt: skip
    print(key)
    return 0


def list_keys(args: argparse.Namespace) -> int:
    from cli.keys import format_keys
    from cli.keys import list_keys as keys

    print(format_keys(keys(data_dir=args.data_dir, database_url=args.database_url)))
    return 0


def revoke_key(args: argparse.Namespace) -> int:
    from cli.keys import revoke_key as revoke

    key_id, was_active = revoke(args.key, data_dir=args.data_dir, database_url=args.database_url)
    print(f"revoked {key_id}" if was_active else f"{key_id} was already revoked")
    return 0
