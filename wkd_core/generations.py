"""Self-distillation in generations: Born-Again Networks (BAN) with any distillation method.

Furlanello, Lipton, Tschannen, Itti, Anandkumar, "Born Again Neural Networks", ICML 2018:
teacher and student share one architecture; generation k is distilled from generation k−1.
The WKD paper (NeurIPS 2024, "Self-Knowledge Distillation") puts WKD-L in place of BAN's KL
term (ImageNet ResNet-18).

A job spec with ``generations: N`` (the ``wkd_core.pipeline.run_job`` entry point dispatches
here) runs:

* generation 0: the student architecture trained alone (``vanilla``, cross-entropy), or, when
  the spec names a teacher checkpoint, that checkpoint (of the same architecture; not retrained);
* generations 1…N: ``spec["method"]`` (``kd`` for classic BAN, ``wkd_l``, any method) with the
  previous generation's student as the frozen teacher, each a complete ``run_job`` in its own
  folder ``gen<k>/`` (its curve, manifest, weights; a finished folder is skipped on resume);
* the BAN ensembles: the test top-1 of the mean softmax of generations 0…k, for every k ≥ 1.

Top-level outputs: ``student.safetensors`` (the last generation), ``student-gen<k>.safetensors``
for every generation, one curve over all trained generations with consecutive epoch numbers
(``metrics.csv`` / ``metrics.jsonl`` / ``curves.png``: generation g's epoch e is epoch
g·E + e, E = ``training.epochs``; callbacks see the same numbers, so the service's per-epoch
rows never collide), and ``manifest.json`` with every generation's accuracies and the ensembles.
Generations run in one process (one device); torchrun is refused.
"""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import Any

import torch
from torch.utils.data import DataLoader

from wkd_core.artifacts import write_curves_png
from wkd_core.train import Callback, EpochMetrics, write_metrics

RunSingle = Callable[..., Any]  # wkd_core.pipeline.run_job, passed in (no import cycle)


class EpochOffset(Callback):
    """Forwards every hook to ``inner`` with ``offset`` added to the metrics' epoch."""

    def __init__(self, inner: Callback, offset: int) -> None:
        self.inner, self.offset = inner, offset

    def on_fit_start(self, state) -> None:
        self.inner.on_fit_start(state)

    def on_batch_end(self, state, batch_index, num_batches, loss_terms) -> None:
        self.inner.on_batch_end(state, batch_index, num_batches, loss_terms)

    def on_epoch_end(self, state, metrics: EpochMetrics) -> None:
        shifted = dataclasses.replace(metrics, epoch=metrics.epoch + self.offset)
        self.inner.on_epoch_end(state, shifted)

    def on_fit_end(self, state, result) -> None:
        self.inner.on_fit_end(state, result)

    def __getattr__(self, name: str) -> Any:  # stop_cause, on_sigterm … of the reporter
        return getattr(self.inner, name)


def generation_spec(spec: Mapping[str, Any], generation: int) -> dict[str, Any]:
    """The single-run spec of one generation (no ``generations`` key)."""
    single = {k: v for k, v in spec.items() if k != "generations"}
    arch = spec["student"]["arch"]
    if generation == 0:
        # trained alone with plain cross-entropy: the method's ce_weight weighs CE against its
        # distillation term (0.1 for KD, 0 for BAN's KD-only loss, which left generation 0
        # untrained), and generation 0 has no such term
        single.update(method="vanilla", params={"ce_weight": 1.0}, teacher=None)
        single.pop("interrelations", None)
    else:
        single["teacher"] = {"arch": arch}
    return single


def run_generations(
    spec: Mapping[str, Any],
    *,
    run_single: RunSingle,
    out_dir: Path,
    teacher_path: Path | None = None,
    callbacks: Iterable[Callback] = (),
    device: str | None = None,
    cost_matrix_path: Path | None = None,
    **run_options: Any,
) -> Any:
    """Run generation 0…N (see the module docstring); returns the pipeline's ``RunResult``.

    Args:
        spec: a resolved job spec with ``generations`` ≥ 1.
        run_single: ``wkd_core.pipeline.run_job``.
        out_dir: the job folder; generation k runs in ``out_dir / f"gen{k}"``.
        teacher_path: generation 0's weights; ``None`` trains generation 0.
        callbacks: hooks of every generation, with consecutive epoch numbers.
        device: as for ``run_job``.
        cost_matrix_path: an uploaded WKD-L cost matrix (``interrelations.source: file``),
            for generations 1…N (generation 0 trains alone).
        **run_options: ``data_root``, ``cache_dir``, ``on_stage`` … passed to ``run_job``.
    """
    if int(os.environ.get("WORLD_SIZE", "1")) > 1:
        raise ValueError("generations run in one process: torchrun is not supported for them")
    out_dir = Path(out_dir)
    epochs = int(spec["training"]["epochs"])
    callbacks = list(callbacks)
    students: list[Path] = [teacher_path] if teacher_path is not None else []
    summaries: list[dict[str, Any]] = []
    history: list[EpochMetrics] = []
    result = None
    first = 0 if teacher_path is None else 1
    for generation in range(first, int(spec["generations"]) + 1):
        folder = out_dir / f"gen{generation}"
        offset = (generation - first) * epochs
        result = _run_or_reuse(
            generation_spec(spec, generation),
            run_single,
            folder,
            teacher_path=students[-1] if generation > 0 else None,
            callbacks=[EpochOffset(cb, offset) for cb in callbacks],
            device=device,
            cost_matrix_path=cost_matrix_path if generation > 0 else None,
            **run_options,
        )
        history += [dataclasses.replace(m, epoch=m.epoch + offset) for m in result.history]
        if result.stopped:
            return dataclasses.replace(result, history=history)
        students.append(folder / "student.safetensors")
        summaries.append(_summary(generation, spec, result))
    assert result is not None
    ensembles = ensemble_accuracies(spec, students, device=device, **run_options)
    artifacts = _write_outputs(spec, out_dir, students, history, summaries, ensembles, first)
    best = max(history, key=lambda m: m.test_top1)
    return dataclasses.replace(
        result,
        best_top1=best.test_top1,
        best_epoch=best.epoch,
        history=history,
        artifacts={**result.artifacts, **artifacts},
    )


def _run_or_reuse(single, run_single, folder: Path, *, teacher_path, callbacks, device, **opts):
    """A finished generation (its manifest written) is read back instead of rerun."""
    manifest = folder / "manifest.json"
    if not manifest.exists():
        return run_single(
            single,
            out_dir=folder,
            teacher_path=teacher_path,
            callbacks=callbacks,
            device=device,
            **opts,
        )
    from wkd_core.pipeline import RunResult  # the pipeline imports this module lazily

    saved = json.loads(manifest.read_text())
    rows = [json.loads(line) for line in (folder / "metrics.jsonl").read_text().splitlines()]
    fields = {f.name for f in dataclasses.fields(EpochMetrics)}
    history = [EpochMetrics(**{k: v for k, v in row.items() if k in fields}) for row in rows]
    return RunResult(
        best_top1=saved["best_top1"],
        best_epoch=saved["best_epoch"],
        last_top1=saved["last_top1"],
        history=history,
        artifacts={p.name: p for p in folder.iterdir() if p.is_file()},
    )


def _summary(generation: int, spec: Mapping[str, Any], result: Any) -> dict[str, Any]:
    return {
        "generation": generation,
        "method": "vanilla" if generation == 0 else spec["method"],
        "best_top1": result.best_top1,
        "best_epoch": result.best_epoch,
        "last_top1": result.last_top1,
        "folder": f"gen{generation}",
    }


@torch.no_grad()
def ensemble_accuracies(
    spec: Mapping[str, Any], students: list[Path], *, device: str | None = None, **run_options
) -> list[dict[str, Any]]:
    """Test top-1 (%) of the mean softmax of generations 0…k, for k = 1…N (BAN's ensembles)."""
    from wkd_core.job_parts import build_datasets, num_classes_of, resolve_device
    from wkd_core.models import create_model, load_checkpoint_into

    torch_device = resolve_device(device)
    _, _, test_set = build_datasets(spec, run_options.get("data_root"))
    loader = DataLoader(test_set, batch_size=int(spec["training"]["batch_size"]), shuffle=False)
    labels = torch.cat([torch.as_tensor(y) for _, y in loader])
    probs = []
    for path in students:
        model = create_model(spec["student"]["arch"], num_classes=num_classes_of(spec))
        load_checkpoint_into(model, path)
        model.to(torch_device).eval()
        logits = torch.cat([model(x.to(torch_device)).float().cpu() for x, _ in loader])
        probs.append(logits.softmax(-1))
    out = []
    for k in range(1, len(students)):
        mean = torch.stack(probs[: k + 1]).mean(0)
        top1 = (mean.argmax(-1) == labels).float().mean().item() * 100
        out.append({"generations": list(range(k + 1)), "top1": top1})
    return out


def _write_outputs(spec, out_dir, students, history, summaries, ensembles, first):
    """Top-level weights per generation, the joined curve and the manifest."""
    artifacts: dict[str, Path] = {}
    for generation, path in enumerate(students):
        if generation < first:
            continue  # a user-supplied generation 0 is not an output of this job
        copy = out_dir / f"student-gen{generation}.safetensors"
        shutil.copyfile(path, copy)
        artifacts[copy.name] = copy
    last = out_dir / "student.safetensors"
    shutil.copyfile(students[-1], last)
    artifacts[last.name] = last
    artifacts.update({p.name: p for p in write_metrics(history, out_dir).values()})
    curves = write_curves_png(history, out_dir / "curves.png")
    manifest = out_dir / "manifest.json"
    summary = {
        "spec": dict(spec),
        "generations": summaries,
        "ensembles": ensembles,
        "epochs_per_generation": int(spec["training"]["epochs"]),
    }
    manifest.write_text(json.dumps(summary, indent=2, default=str))
    artifacts.update({curves.name: curves, manifest.name: manifest})
    return artifacts
