"""Benchmark: the captured fast step against the eager trainer step, every method, two pairs.

For each pair of ``bench/train_step.py`` (resnet32x4→resnet8x4, batch 64, 32×32, 100 classes;
tv_resnet34→tv_resnet18, batch 32, 224×224, 1000 classes) and each method it times, round
robin in one run, the eager step (``bench/train_step.py``'s: fp16 autocast + GradScaler on
CUDA, what ``train_one_epoch`` does per batch) and the fast step
(:class:`wkd_core.train.fast.CapturedStep`: one CUDA graph per step, bf16, channels_last,
cudnn.benchmark, WKD-L's fused Sinkhorn), and prints medians, the speed-up and each fast
method's ratio to fast KD against the issue's targets (KD ≤ 4 ms on the CIFAR pair on an
H100; WKD-L ≤ 1.05×, WKD-F ≤ 1.10×, WKD-LF ≤ 1.15× KD).

Parity (same run): from the same initial weights, four float32 steps of the captured step and
of the eager loop (``train_one_epoch``) on the same four batches: the relative differences of
the epoch-mean losses and of the final weights (one vector), for KD and WKD-L.

On a CPU the "fast" step is the same code without a graph (so ≈ 1×): the script runs there
to prove it works; the speed figures mean something on CUDA only.

Usage: ``python bench/fast_step.py [--device cpu|cuda] [--quick] [--json PATH] [--pairs N]
[--methods kd,wkd_l,...] [--no-eager] [--no-parity]`` (the last three shorten the run:
``scripts/gpu_check.sh --targets`` times the fast step of KD and the WKD methods only).
"""

from __future__ import annotations

import copy
import sys
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench._common import base_parser, environment, format_table, interleaved_times, summarize
from bench._common import write_json as write_report
from bench.train_step import METHODS, PAIRS, make_step, method_setup
from wkd_core.distillers import create_distiller
from wkd_core.models import create_model
from wkd_core.train import TrainConfig
from wkd_core.train.fast import CapturedStep, fast_precision, train_epoch_fast
from wkd_core.train.trainer import make_optimizer, train_one_epoch

TARGETS = {"wkd_l": 1.05, "wkd_f": 1.10, "wkd_lf": 1.15}  # fast ratio to fast KD
KD_TARGET_MS = 4.0  # CIFAR pair, H100


def fast_distiller(pair, method, teacher, student_init, device, generator):
    params, recipe = method_setup(pair, method, generator)
    teacher = None if method == "vanilla" else copy.deepcopy(teacher)
    distiller = create_distiller(
        method, student=copy.deepcopy(student_init), teacher=teacher, **params
    ).to(device)
    if device.type == "cuda":
        distiller.to(memory_format=torch.channels_last)
    distiller.fast_kernels(True)
    distiller.train()
    config = TrainConfig(epochs=recipe.epochs, lr=recipe.lr, momentum=recipe.momentum,
                         weight_decay=recipe.weight_decay, nesterov=recipe.nesterov)  # fmt: skip
    return distiller, make_optimizer(distiller, config), recipe


def make_fast_step(pair, method, teacher, student_init, device, generator, batch):
    """A zero-argument closure running one captured step of ``method`` on ``batch``."""
    distiller, optimizer, recipe = fast_distiller(
        pair, method, teacher, student_init, device, generator
    )
    step = CapturedStep(
        distiller, optimizer, total_epochs=recipe.epochs,
        precision=fast_precision("auto", device), channels_last=device.type == "cuda",
    )  # fmt: skip
    step.start_epoch(1, recipe.lr)
    images, targets = batch
    return lambda: step(images, targets)


def bench_pair(
    pair, device: torch.device, quick: bool, methods=METHODS, eager: bool = True
) -> dict[str, Any]:
    generator = torch.Generator().manual_seed(0)
    torch.manual_seed(0)
    teacher = create_model(pair.teacher, num_classes=pair.num_classes).to(device)
    student_init = create_model(pair.student, num_classes=pair.num_classes)
    s = pair.image_size
    images = torch.randn(pair.batch, 3, s, s, generator=generator).to(device)
    targets = torch.randint(pair.num_classes, (pair.batch,), generator=generator).to(device)
    batch = (images, targets)
    fns = {}
    for m in methods:
        if eager:
            fns[f"eager/{m}"] = make_step(pair, m, teacher, student_init, device, generator, batch)
        fns[f"fast/{m}"] = make_fast_step(pair, m, teacher, student_init, device, generator, batch)
    warmup, rounds = (5, 10) if quick else (5, 30)  # ≥ 4 warm-ups: the capture happens there
    print(f"[{pair.name}] {warmup} warm-up + {rounds} timed rounds ...", file=sys.stderr,
          flush=True)  # fmt: skip
    times = interleaved_times(fns, device=device, rounds=rounds, warmup=warmup)
    stats = {name: summarize(t) for name, t in times.items()}
    kd_fast = stats["fast/kd"]["median_s"]
    rows = {}
    for m in methods:
        fast = stats[f"fast/{m}"]["median_s"]
        slow = stats[f"eager/{m}"]["median_s"] if eager else None
        rows[m] = {"eager_ms": 1e3 * slow if slow else None, "fast_ms": 1e3 * fast,
                   "speedup": slow / fast if slow else None,
                   "fast_ratio_to_kd": fast / kd_fast, "target": TARGETS.get(m)}  # fmt: skip
    return {"pair": pair.name, "batch": pair.batch, "methods": rows}


def parity(device: torch.device, method: str, steps: int = 4) -> dict[str, float]:
    """Captured float32 step vs the eager loop on the same batches (see the module doc)."""
    pair = PAIRS[0]
    generator = torch.Generator().manual_seed(1)
    torch.manual_seed(1)
    teacher = create_model(pair.teacher, num_classes=pair.num_classes).to(device)
    student_init = create_model(pair.student, num_classes=pair.num_classes)
    data = [
        (torch.randn(pair.batch, 3, 32, 32, generator=generator).to(device),
         torch.randint(pair.num_classes, (pair.batch,), generator=generator).to(device))
        for _ in range(steps)
    ]  # fmt: skip
    state = torch.get_rng_state()
    ref, ref_opt, recipe = fast_distiller(pair, method, teacher, student_init, device,
                                          torch.Generator().manual_seed(2))  # fmt: skip
    ref.fast_kernels(False)
    torch.set_rng_state(state)
    got, got_opt, _ = fast_distiller(pair, method, teacher, student_init, device,
                                     torch.Generator().manual_seed(2))  # fmt: skip
    scaler = torch.amp.GradScaler(device.type, enabled=False)
    means = train_one_epoch(ref, data, ref_opt, scaler, epoch=1, total_epochs=recipe.epochs,
                            device=device)  # fmt: skip
    step = CapturedStep(got, got_opt, total_epochs=recipe.epochs, precision=None,
                        channels_last=device.type == "cuda", warmup=1)  # fmt: skip
    sums, names = train_epoch_fast(step, data, epoch=1, lr=recipe.lr, device=device)
    count = sums[1].item()
    fast_means = dict(zip(["loss", *names], (sums[2:] / count).tolist(), strict=True))

    def flat(d):
        return torch.cat([v.double().flatten() for v in d.trainable_state_dict().values()
                          if v.is_floating_point()])  # fmt: skip

    w_ref, w_got = flat(ref), flat(got)
    return {
        "loss_rel": max(abs(fast_means[k] - means[k]) / abs(means[k]) for k in fast_means),
        "weights_rel": ((w_got - w_ref).norm() / w_ref.norm()).item(),
        "captured": step.graph is not None,
    }


def main(argv: list[str] | None = None) -> None:
    parser = base_parser(__doc__.splitlines()[0], quick_help="fewer rounds")
    parser.add_argument("--pairs", type=int, default=len(PAIRS), help="first N pairs only")
    parser.add_argument("--methods", default=",".join(METHODS),
                        help="comma-separated methods to time (kd is always added)")  # fmt: skip
    parser.add_argument("--no-eager", action="store_true", help="time the fast step only")
    parser.add_argument("--no-parity", action="store_true", help="skip the parity check")
    args = parser.parse_args(argv)
    methods = [m for m in METHODS if m == "kd" or m in args.methods.split(",")]
    unknown = set(args.methods.split(",")) - set(METHODS)
    if unknown:
        parser.error(f"unknown methods {sorted(unknown)}; choose from {METHODS}")
    device = torch.device(args.device)
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True
    report: dict[str, Any] = {"environment": environment(device), "pairs": [], "parity": {}}
    if not args.no_parity:
        report["parity"] = {m: parity(device, m) for m in ("kd", "wkd_l")}
    for pair in PAIRS[: args.pairs]:
        report["pairs"].append(bench_pair(pair, device, args.quick, methods, not args.no_eager))
        write_report(args.json, report)  # after every pair: a later failure keeps the rest
    print_report(report)


def print_report(report: dict[str, Any]) -> None:
    env = report["environment"]
    print(f"device={env['device']} {env.get('gpu', '')} torch={env['torch']}")
    for p in report["pairs"]:
        print(f"\n{p['pair']}, batch {p['batch']}: step medians (ms), one run")
        rows = [
            [m, f"{r['eager_ms']:.2f}" if r["eager_ms"] else "-", f"{r['fast_ms']:.2f}",
             f"{r['speedup']:.1f}x" if r["speedup"] else "-",
             f"{r['fast_ratio_to_kd']:.2f}", f"<= {r['target']}" if r["target"] else ""]
            for m, r in p["methods"].items()
        ]  # fmt: skip
        print(format_table(["method", "eager", "fast", "speed-up", "fast/KD", "target"], rows))
    print("\nparity, captured float32 step vs eager loop, 4 steps (relative):")
    for m, r in report["parity"].items():
        print(f"  {m}: losses {r['loss_rel']:.1e}, weights {r['weights_rel']:.1e}, "
              f"graph captured: {r['captured']}")  # fmt: skip


if __name__ == "__main__":
    main()
