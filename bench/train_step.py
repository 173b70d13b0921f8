"""Benchmark: the training step of every method, and ``fit`` against a hand-written loop.

Part 1, training step. For each teacher→student pair

- ``resnet32x4 → resnet8x4``, batch 64 of 3×32×32, 100 classes, the ``cifar100/*`` presets;
- ``tv_resnet34 → tv_resnet18``, batch 32 of 3×224×224, 1000 classes, the ``imagenet/*``
  presets,

it times one training step (forward of student and frozen teacher, the method's losses, their
sum, backward, SGD step: exactly what ``wkd_core.train.trainer.train_one_epoch`` does per
batch, AMP included on CUDA) of vanilla, KD, DKD, WKD-L, WKD-F and WKD-LF and reports each
median as a ratio to KD's. Each method has its own copy of the same initial student and its
preset's hyper-parameters and optimizer; WKD-L gets a random symmetric C×C distance with zero
diagonal (the cost's values do not change the work); WKD-F's projector is probed at the
pair's image size. The methods run round-robin (order rotated each round) after warm-up
rounds, so load on a shared machine hits all of them alike. Targets: WKD-L ≤ 1.05× KD and
WKD-F ≤ 1.10× KD (the authors report WKD-L at about 1.3× KD).

Part 2, ``fit`` overhead. ``wkd_core.train.fit`` (vanilla distiller, ``build_loaders``, no
checkpoint directory) against a minimal PyTorch loop (nesterov SGD; forward, cross-entropy,
backward, step; an accuracy pass over the validation set after each epoch) on the same
resnet8x4 initial weights and the same synthetic CIFAR-shaped tensors, same batch, epochs
and number of steps; the two alternate, model construction untimed.
Overhead = median(fit) / median(loop) − 1; target ≤ 5 %.

Usage: ``python bench/train_step.py [--device cpu|cuda] [--quick] [--json PATH]``.
"""

from __future__ import annotations

import copy
import statistics
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench._common import (
    base_parser,
    environment,
    format_table,
    interleaved_times,
    summarize,
    write_json,
)
from bench.fit_overhead import bench_fit, print_fit_report
from wkd_core.distillers import create_distiller
from wkd_core.models import create_model
from wkd_core.presets import get_preset
from wkd_core.train import TrainConfig
from wkd_core.train.metrics import summed
from wkd_core.train.trainer import amp_enabled, make_optimizer

METHODS = ("vanilla", "kd", "dkd", "wkd_l", "wkd_f", "wkd_lf")
TARGETS = {"wkd_l": 1.05, "wkd_f": 1.10}  # max ratio to KD


@dataclass(frozen=True)
class Pair:
    """A teacher→student pair, its input shape and its presets' prefix."""

    dataset: str  # preset dataset: "cifar100" or "imagenet"
    teacher: str
    student: str
    batch: int
    image_size: int
    num_classes: int
    # (warm-up rounds, timed rounds), quick and full
    rounds_quick: tuple[int, int]
    rounds_full: tuple[int, int]

    @property
    def name(self) -> str:
        return f"{self.teacher}->{self.student}"


PAIRS = (
    Pair("cifar100", "resnet32x4", "resnet8x4", 64, 32, 100, (1, 5), (2, 16)),
    Pair("imagenet", "tv_resnet34", "tv_resnet18", 32, 224, 1000, (1, 3), (1, 8)),
)


def random_distance(num_classes: int, generator: torch.Generator) -> torch.Tensor:
    """A random symmetric (C, C) distance in [0, 1) with a zero diagonal."""
    dist = torch.rand(num_classes, num_classes, generator=generator)
    dist = 0.5 * (dist + dist.T)
    return dist.fill_diagonal_(0.0)


def method_setup(pair: Pair, method: str, generator: torch.Generator) -> tuple[dict, Any]:
    """(distiller keyword arguments, training recipe) of ``method`` on ``pair``'s preset.

    Vanilla has no preset: CE weight 1 and the WKD-L preset's solver.
    """
    base = f"{pair.dataset}/{{}}/{pair.teacher}_{pair.student}"
    if method == "vanilla":
        return {}, get_preset(base.format("wkd_l")).training
    preset = get_preset(base.format(method))
    params = dict(preset.params)
    if "wkd_logit_weight" in params:
        params["distance"] = random_distance(pair.num_classes, generator)
    if "projector" in params:
        params["input_size"] = (pair.image_size, pair.image_size)
    return params, preset.training


def make_step(pair: Pair, method: str, teacher, student_init, device, generator, batch):
    """A zero-argument closure running one training step of ``method`` on ``batch``."""
    params, recipe = method_setup(pair, method, generator)
    student = copy.deepcopy(student_init)
    teacher = None if method == "vanilla" else teacher
    distiller = create_distiller(method, student=student, teacher=teacher, **params).to(device)
    distiller.train()
    config = TrainConfig(
        epochs=recipe.epochs,
        lr=recipe.lr,
        momentum=recipe.momentum,
        weight_decay=recipe.weight_decay,
        nesterov=recipe.nesterov,
    )
    optimizer = make_optimizer(distiller, config)
    amp = amp_enabled("auto", device)
    scaler = torch.amp.GradScaler(device.type, enabled=amp)
    images, targets = batch

    def step() -> None:  # the body of train_one_epoch's loop, without the bookkeeping
        with torch.autocast(device.type, dtype=torch.float16, enabled=amp):
            out = distiller(images, targets, epoch=1, total_epochs=recipe.epochs)
        loss = summed(out.losses)
        optimizer.zero_grad(set_to_none=True)
        scaler.scale(loss).backward()
        scaler.step(optimizer)
        scaler.update()

    return step


def paired_ratio(times: list[float], reference: list[float]) -> float:
    """Median over rounds of time / reference time in the same round."""
    return statistics.median(t / r for t, r in zip(times, reference, strict=True))


class Replay(nn.Module):
    """Stands in for a model: returns fixed logits and features, whatever the input.

    With leaf tensors that require grad on the student side, a distiller's forward + backward
    through a pair of replays costs exactly its loss head (losses, projector, their backward).
    """

    def __init__(self, logits: Tensor, feats: dict) -> None:
        super().__init__()
        self.logits, self.feats = logits, feats

    def forward(self, images: Tensor) -> Tensor:
        return self.logits

    def forward_features(self, images: Tensor) -> tuple[Tensor, dict]:
        return self.logits, self.feats


def replay_of(model: nn.Module, images: Tensor, *, trainable: bool) -> Replay:
    """A :class:`Replay` of ``model``'s real outputs on ``images`` (leaves if ``trainable``)."""
    model.train(trainable)
    with torch.no_grad():
        logits, feats = model.forward_features(images)
    leaf = (lambda t: t.detach().requires_grad_()) if trainable else (lambda t: t.detach())
    feats = {k: [leaf(f) for f in v] if isinstance(v, list) else leaf(v) for k, v in feats.items()}
    return Replay(leaf(logits), feats)


def bench_head(pair, teacher, student_init, device, generator, batch, quick) -> dict[str, Any]:
    """Interleaved forward + backward times of each method's loss head alone.

    The head is everything the methods do differently on top of the shared student and
    teacher forwards: the loss terms, WKD-F's projector, and their backward.
    """
    images, targets = batch
    student_replay = replay_of(copy.deepcopy(student_init).to(device), images, trainable=True)
    teacher_replay = replay_of(teacher, images, trainable=False)
    heads = {}
    for method in METHODS:
        params, recipe = method_setup(pair, method, generator)
        t = None if method == "vanilla" else teacher_replay
        distiller = create_distiller(method, student=student_replay, teacher=t, **params)
        heads[method] = _head_closure(distiller.to(device).train(), images, targets, recipe)
    warmup, rounds = (2, 20) if quick else (3, 60)
    times = interleaved_times(heads, device=device, rounds=rounds, warmup=warmup)
    return {m: summarize(t) for m, t in times.items()}


def _head_closure(distiller, images: Tensor, targets: Tensor, recipe) -> Callable[[], None]:
    amp = amp_enabled("auto", images.device)

    def head() -> None:
        with torch.autocast(images.device.type, dtype=torch.float16, enabled=amp):
            out = distiller(images, targets, epoch=1, total_epochs=recipe.epochs)
        summed(out.losses).backward()

    return head


def bench_pair(pair: Pair, device: torch.device, quick: bool) -> dict[str, Any]:
    """Interleaved step times of every method on ``pair``; medians and ratios to KD."""
    generator = torch.Generator().manual_seed(0)
    torch.manual_seed(0)
    teacher = create_model(pair.teacher, num_classes=pair.num_classes).to(device)
    student_init = create_model(pair.student, num_classes=pair.num_classes)
    s = pair.image_size
    images = torch.randn(pair.batch, 3, s, s, generator=generator).to(device)
    targets = torch.randint(pair.num_classes, (pair.batch,), generator=generator).to(device)
    steps = {
        m: make_step(pair, m, teacher, student_init, device, generator, (images, targets))
        for m in METHODS
    }
    warmup, rounds = pair.rounds_quick if quick else pair.rounds_full
    print(f"[{pair.name}] batch {pair.batch}: {warmup} warm-up + {rounds} timed rounds ...",
          file=sys.stderr, flush=True)  # fmt: skip
    times = interleaved_times(steps, device=device, rounds=rounds, warmup=warmup)
    stats = {m: summarize(t) for m, t in times.items()}
    kd = stats["kd"]["median_s"]
    methods = {
        m: {
            **stats[m],
            "ratio_to_kd": stats[m]["median_s"] / kd,
            "ratio_to_kd_paired": paired_ratio(times[m], times["kd"]),
            "times_s": times[m],
        }
        for m in METHODS
    }
    checks = {m: methods[m]["ratio_to_kd"] <= limit for m, limit in TARGETS.items()}
    head = bench_head(pair, teacher, student_init, device, generator, (images, targets), quick)
    for m in METHODS[1:]:  # KD's step plus m's extra head cost (vanilla lacks the teacher)
        extra = head[m]["median_s"] - head["kd"]["median_s"]
        methods[m]["head_extra_vs_kd_s"] = extra
        methods[m]["ratio_to_kd_from_head"] = 1.0 + extra / kd
    return {
        "pair": pair.name,
        "batch": pair.batch,
        "image_size": pair.image_size,
        "num_classes": pair.num_classes,
        "warmup_rounds": warmup,
        "rounds": rounds,
        "methods": methods,
        "loss_head": head,
        "targets": TARGETS,
        "meets_targets": checks,
    }


# ---- report ----------------------------------------------------------------------------------


def print_report(report: dict[str, Any]) -> None:
    env = report["environment"]
    print(
        f"device={env['device']} torch={env['torch']} threads={env['threads']} "
        f"quick={report['quick']} load={env.get('loadavg_start')}"
    )
    for res in report["train_step"] or ():
        print(f"\nTraining step, {res['pair']}, batch {res['batch']} "
              f"({res['image_size']}x{res['image_size']}, {res['num_classes']} classes), "
              f"median of {res['rounds']} interleaved rounds")  # fmt: skip
        rows = []
        for m, r in res["methods"].items():
            limit = TARGETS.get(m)
            verdict = "" if limit is None else ("ok" if r["ratio_to_kd"] <= limit else "MISSED")
            rows.append([m, f"{1e3 * r['median_s']:.1f}", f"{r['iqr_rel']:.1%}",
                         f"{r['ratio_to_kd']:.3f}", f"{r['ratio_to_kd_paired']:.3f}",
                         f"{1e3 * res['loss_head'][m]['median_s']:.1f}",
                         f"{r['ratio_to_kd_from_head']:.3f}" if m != "vanilla" else "-",
                         f"<= {limit:.2f}" if limit else "", verdict])  # fmt: skip
        headers = ["method", "ms/step", "IQR", "x KD", "paired", "head ms", "KD+head", "target"]
        print(format_table([*headers, ""], rows))
    print_fit_report(report["fit"])


def main(argv: list[str] | None = None) -> None:
    parser = base_parser(__doc__.splitlines()[0], quick_help="fewer rounds (a few minutes)")
    parser.add_argument(
        "--threads", type=int, help="torch intra-op threads (default: torch's own choice)"
    )
    parser.add_argument("--skip-fit", action="store_true", help="only the training steps")
    parser.add_argument("--skip-steps", action="store_true", help="only fit vs the loop")
    args = parser.parse_args(argv)
    device = torch.device(args.device)
    if args.threads:
        torch.set_num_threads(args.threads)  # this process only: a benchmark, not the library
    report: dict[str, Any] = {"quick": args.quick, "environment": environment(device)}
    report["train_step"], report["fit"] = [], None
    if not args.skip_steps:
        report["train_step"] = [bench_pair(pair, device, args.quick) for pair in PAIRS]
    report["fit"] = None if args.skip_fit else bench_fit(device, args.quick)
    print_report(report)
    write_json(args.json, report)


if __name__ == "__main__":
    main()
