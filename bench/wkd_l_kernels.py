"""Benchmark: the WKD-L loss forward+backward, plain solver against the adjoint and fused ones.

For each (B, C) (default (64, 100) and (256, 1000); float32, T = 4, ε = 0.05, 10 iterations,
the inputs of ``bench/losses.py``), in one process:

- variants: ``plain`` (the GEMM solver, :func:`wkd_core.ot.sinkhorn.sinkhorn_shared`),
  ``adjoint`` (the same GEMMs with the hand-written backward, ``solver="adjoint"``),
  ``fused`` (``solver="fused"``: the register kernel for C ≤ 128, the blocked kernels above),
  ``register`` and ``tiled`` forced (where they run), and ``kd`` for scale;
- eager: median wall time of one synchronised forward+backward, round robin;
- graph (CUDA only): the same forward+backward captured in one ``torch.cuda.CUDAGraph``,
  mean time per replay over back-to-back replays (what it costs inside a captured step);
- fast: the variant the fast training step uses at this C (``fast_logit_solver``);
- parity: each variant against the plain solver (float32, same inputs) and against the
  plain solver in float64: relative difference of the loss and of the gradient (one vector);
- tile sweep (C > 128, CUDA): graph time and parity of the blocked kernels for a few launch
  shapes, float32 FMAs (``ieee``) and tensor cores on three TF32 pieces (``tf32x3``).

On a CPU with ``TRITON_INTERPRET=1`` the fused kernels run in Triton's interpreter: use small
``--cases`` there, to check the script (its times mean nothing).

Usage: ``python bench/wkd_l_kernels.py [--device cpu|cuda] [--quick] [--json PATH]
[--cases 64x100,256x1000] [--tiles 16x64x32x4,32x64x32x4:tf32x3,...] [--rounds N]``.
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench._common import base_parser, environment, format_table, interleaved_times, summarize
from bench._common import write_json as write_report
from bench.losses import EPS, N_ITER, TEMPERATURE, make_inputs
from wkd_core.distillers.wkd import fast_logit_solver
from wkd_core.losses import kd_loss, wkd_logit_loss
from wkd_core.ot.sinkhorn_fused import REGISTER_MAX_CLASSES, fused_available, fused_wkd_logit
from wkd_core.ot.sinkhorn_tiled import Tiles, default_tiles

TARGETS_MS = {(64, 100): 0.1, (256, 1000): 0.6}
PARITY_VARIANTS = ("adjoint", "fused", "register", "tiled")  # each checked against "plain"
DEFAULT_SWEEP = (
    Tiles(16, 64, 32),
    Tiles(32, 64, 32, 4, "tf32x3"),
    Tiles(64, 64, 32, 4, "tf32x3"),
)


def variants(num_classes: int, device: torch.device) -> dict[str, Callable]:
    """name → loss(z_s, z_t, y, cost) for every variant that runs here."""

    def kernel(kind: str, tiles: Tiles | None = None) -> Callable:
        def loss(s, t, y, c):
            lt, wd = fused_wkd_logit(s, t, y, c, temperature=TEMPERATURE, eps=EPS,
                                     n_iter=N_ITER, kernel=kind, tiles=tiles)  # fmt: skip
            return lt.mean() + wd.mean()  # = wkd_logit_loss(..., weight=1)

        return loss

    fns: dict[str, Callable] = {
        "plain": lambda s, t, y, c: wkd_logit_loss(s, t, y, c, temperature=TEMPERATURE),
        "adjoint": lambda s, t, y, c: wkd_logit_loss(
            s, t, y, c, temperature=TEMPERATURE, solver="adjoint"
        ),
        "kd": lambda s, t, y, c: kd_loss(s, t, temperature=TEMPERATURE),
    }
    if fused_available(num_classes, device):
        fns["fused"] = lambda s, t, y, c: wkd_logit_loss(
            s, t, y, c, temperature=TEMPERATURE, solver="fused"
        )
        if num_classes <= REGISTER_MAX_CLASSES:
            fns["register"] = kernel("register")
        fns["tiled"] = kernel("tiled")
    return fns


def step_of(fn: Callable, inputs) -> Callable[[], None]:
    """One forward+backward of ``fn`` on ``inputs`` (the student logits get the gradient)."""

    def step() -> None:
        inputs[0].grad = None
        fn(*inputs).backward()

    return step


def graph_ms(step: Callable[[], None], device: torch.device, replays: int) -> float:
    """Mean ms per replay of ``step`` captured in one CUDA graph (warm-up on a side stream)."""
    stream = torch.cuda.Stream(device)
    stream.wait_stream(torch.cuda.current_stream(device))
    with torch.cuda.stream(stream):
        for _ in range(3):
            step()
    torch.cuda.current_stream(device).wait_stream(stream)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        step()
    graph.replay()
    torch.cuda.synchronize(device)
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    start.record()
    for _ in range(replays):
        graph.replay()
    end.record()
    torch.cuda.synchronize(device)
    return start.elapsed_time(end) / replays


def parity(fns: dict[str, Callable], inputs) -> dict[str, dict[str, float]]:
    """Each variant vs the plain solver in float32 and in float64 (relative)."""
    z_s, z_t, target, cost = inputs

    def run(fn, z, t, c):
        z = z.detach().clone().requires_grad_()
        loss = fn(z, t, target, c)
        (grad,) = torch.autograd.grad(loss, z)
        return loss.item(), grad.double()

    plain = run(fns["plain"], z_s, z_t, cost)
    ref64 = run(fns["plain"], z_s.double(), z_t.double(), cost.double())
    out = {}
    for name in PARITY_VARIANTS:
        if name not in fns:
            continue
        loss, grad = run(fns[name], z_s, z_t, cost)
        out[name] = {
            "loss_rel_vs_plain": abs(loss - plain[0]) / abs(plain[0]),
            "grad_rel_vs_plain": ((grad - plain[1]).norm() / plain[1].norm()).item(),
            "loss_rel_vs_float64": abs(loss - ref64[0]) / abs(ref64[0]),
            "grad_rel_vs_float64": ((grad - ref64[1]).norm() / ref64[1].norm()).item(),
        }
    out["plain"] = {
        "loss_rel_vs_float64": abs(plain[0] - ref64[0]) / abs(ref64[0]),
        "grad_rel_vs_float64": ((plain[1] - ref64[1]).norm() / ref64[1].norm()).item(),
    }
    return out


def sweep(
    inputs, tiles: list[Tiles], device: torch.device, replays: int, rows: list[dict], save
) -> None:
    """Graph ms and parity with the plain solver of the blocked kernels for each launch
    shape (the default one first), appended to ``rows``; ``save()`` after each."""
    batch, num_classes = inputs[0].shape
    for t in [default_tiles(batch, num_classes), *tiles]:

        def loss(s, y_t, y, c, t=t):
            lt, wd = fused_wkd_logit(s, y_t, y, c, temperature=TEMPERATURE, eps=EPS,
                                     n_iter=N_ITER, kernel="tiled", tiles=t)  # fmt: skip
            return lt.mean() + wd.mean()

        try:
            ms = graph_ms(step_of(loss, inputs), device, replays)
            check = parity({"plain": variants(num_classes, device)["plain"], "tiled": loss}, inputs)
        except Exception as exc:  # a launch shape that does not compile must not end the run
            rows.append({"tiles": list(t), "error": f"{type(exc).__name__}: {exc}"[:300]})
        else:
            rows.append({"tiles": list(t), "graph_ms": ms, **check["tiled"]})
        save()


def bench_case(batch, num_classes, device, rounds, tiles, report, save) -> None:
    """Times and parity of every variant at (B, C), appended to ``report["cases"]``, then
    (C > 128, CUDA) the launch-shape sweep; ``save()`` whenever something was added."""
    inputs = make_inputs(batch, num_classes, device)
    fns, failed = variants(num_classes, device), {}
    for name, fn in list(fns.items()):  # compile first; a variant that fails is reported
        try:
            step_of(fn, inputs)()
        except Exception as exc:
            failed[name] = f"{type(exc).__name__}: {exc}"[:300]
            if name == "plain":
                raise
            del fns[name]
    steps = {name: step_of(fn, inputs) for name, fn in fns.items()}
    quick = rounds < 30
    print(f"[{batch}x{num_classes}] {', '.join(fns)}: {rounds} rounds", file=sys.stderr)
    times = interleaved_times(steps, device=device, rounds=rounds, warmup=2)
    rows: dict[str, dict[str, Any]] = {}
    for name in fns:
        rows[name] = {"eager_ms": 1e3 * summarize(times[name])["median_s"], "graph_ms": None}
        if device.type == "cuda":
            try:
                rows[name]["graph_ms"] = graph_ms(steps[name], device, 30 if quick else 100)
            except Exception as exc:  # reported, and the other variants still run
                rows[name]["graph_error"] = f"{type(exc).__name__}: {exc}"[:300]
    case = {
        "batch": batch,
        "num_classes": num_classes,
        "variants": rows,
        "parity": parity(fns, inputs),
        "target_ms": TARGETS_MS.get((batch, num_classes)),
        "fast_step_solver": fast_logit_solver(num_classes, device),
        "failed": failed,
        "tile_sweep": [],
    }
    report["cases"].append(case)
    save()
    if device.type == "cuda" and "tiled" in fns and num_classes > REGISTER_MAX_CLASSES:
        sweep(inputs, tiles, device, 30 if quick else 100, case["tile_sweep"], save)


def parse_cases(text: str) -> list[tuple[int, int]]:
    return [tuple(int(x) for x in case.split("x")) for case in text.split(",")]  # type: ignore[misc]


def parse_tiles(text: str) -> list[Tiles]:
    """``BMxBNxBKxWARPS[:precision],...`` → launch shapes."""
    out = []
    for item in filter(None, text.split(",")):
        shape, _, precision = item.partition(":")
        out.append(Tiles(*(int(x) for x in shape.split("x")), precision or "ieee"))
    return out


def tiles_name(t: list | Tiles) -> str:
    return "x".join(map(str, t[:4])) + ("" if t[4] == "ieee" else f":{t[4]}")


def main(argv: list[str] | None = None) -> None:
    parser = base_parser(__doc__.splitlines()[0], quick_help="fewer rounds and replays")
    parser.add_argument("--cases", default="64x100,256x1000", help="BxC,BxC,...")
    parser.add_argument(
        "--tiles",
        default=",".join(tiles_name(t) for t in DEFAULT_SWEEP),
        help="launch shapes BMxBNxBKxWARPS[:tf32x3] to sweep at C > 128 on CUDA ('' for none)",
    )
    parser.add_argument("--rounds", type=int, help="timed eager rounds (default 30; --quick 10)")
    args = parser.parse_args(argv)
    rounds = args.rounds or (10 if args.quick else 30)
    device = torch.device(args.device)
    report: dict[str, Any] = {"environment": environment(device), "cases": []}

    def save() -> None:  # after every step: a stage stopped by its time limit keeps the rest
        write_report(args.json, report)

    for batch, num_classes in parse_cases(args.cases):
        bench_case(batch, num_classes, device, rounds, parse_tiles(args.tiles), report, save)
    print_report(report)


def _ms(value: float | None) -> str:
    return "-" if value is None else f"{value:.3f}"


def print_report(report: dict[str, Any]) -> None:
    env = report["environment"]
    print(f"device={env['device']} {env.get('gpu', '')} torch={env['torch']}")
    for case in report["cases"]:
        b, c = case["batch"], case["num_classes"]
        print(f"\nWKD-L loss fwd+bwd, fp32, (B, C) = ({b}, {c}); target {case['target_ms']} ms; "
              f"the fast step uses {case['fast_step_solver']}")  # fmt: skip
        rows = []
        for name, r in case["variants"].items():
            p = case["parity"].get(name, {})
            rows.append([
                name, _ms(r["eager_ms"]), _ms(r["graph_ms"]),
                f"{p['loss_rel_vs_plain']:.1e}" if "loss_rel_vs_plain" in p else "",
                f"{p['grad_rel_vs_plain']:.1e}" if "grad_rel_vs_plain" in p else "",
                f"{p['grad_rel_vs_float64']:.1e}" if "grad_rel_vs_float64" in p else "",
            ])  # fmt: skip
        print(format_table(["variant", "eager ms", "graph ms", "loss vs plain",
                            "grad vs plain", "grad vs fp64"], rows))  # fmt: skip
        for name, error in case["failed"].items():
            print(f"  {name} FAILED: {error}")
        for t in case.get("tile_sweep", []):
            if "graph_ms" in t:
                got = (f"{t['graph_ms']:.3f} ms in a graph; vs plain: loss "
                       f"{t['loss_rel_vs_plain']:.1e}, "
                       f"grad {t['grad_rel_vs_plain']:.1e}")  # fmt: skip
            else:
                got = t["error"]
            print(f"  tiles {tiles_name(t['tiles'])}: {got}")


if __name__ == "__main__":
    main()
