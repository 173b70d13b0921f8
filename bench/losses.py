"""Benchmark: WKD-L on one shared C×C kernel against the per-sample (B, C−1, C−1) formulation.

Prints, for (B, C) = (64, 100) and (256, 1000), the forward+backward time (median over
repeats) and peak memory of

- ``wkd_l``: :func:`wkd_core.losses.wkd_logit_loss` (shared kernel, DESIGN.md §4);
- ``per_sample``: the authors' formulation, written out below as their code does it (repeat
  the cost B times, boolean-mask the target row and column, bmm Sinkhorn on B×(C−1)×(C−1));
- ``wkd_l_fused``: the same loss with the fused Triton Sinkhorn (where it runs: CUDA, C ≤ 128),
  with its relative difference to ``wkd_l`` in loss and gradient;
- ``kd`` and ``dkd`` for scale,

then the ratios and the relative difference between the two WKD-L losses (float32, same inputs).

How things are measured (per size, the shared-kernel loss then KD then DKD run in one fresh
subprocess, and the per-sample loss in another, sequentially):
- peak memory, CPU: the growth of the process's peak resident set size (``VmHWM``, reset
  through ``/proc/self/clear_refs``) during the *first* forward+backward, over the resident
  size just before it (the inputs exist already). The child runs with glibc's
  ``MALLOC_MMAP_THRESHOLD_=65536``, so every buffer of 64 KiB or more is its own mapping,
  returned on free: resident size then tracks live tensors instead of heap fragmentation
  (which otherwise adds several MiB per Sinkhorn iteration). Lazy initialisation of the first
  call counts too (it falls on ``wkd_l``, measured first in its process), so small
  footprints are if anything over-estimated. Falls back to
  ``ru_maxrss`` where ``clear_refs`` is not writable.
- peak memory, CUDA: ``torch.cuda.max_memory_allocated`` minus the allocation before the call.
- time: after that first call, ``repeats`` timed forward+backward calls (CUDA: synchronised),
  median reported. The mmap threshold costs some page faults for the 1 MiB tensors of
  ``wkd_l`` at C=1000 (the per-sample tensors are mapped anyway), which only under-states
  the speed-up. With ``--quick`` the per-sample method at C=1000 (tens of seconds) is timed by
  that first call alone (``repeats`` 0 in the JSON).
- threads: on CPU each child uses one torch thread unless ``--threads`` says otherwise. The
  machines are shared: with other jobs running, every intra-op parallel region waits at a
  barrier for a descheduled thread, and many small ops (the shared-kernel loss) suffer far
  more than a few huge memory-bound ones, so multi-thread figures then measure the
  scheduler. ``--threads 0`` keeps torch's default. The load average is printed with the
  table: the figures are ratios measured in one run because the CPUs are shared.

Usage: ``python bench/losses.py [--device cpu|cuda] [--quick] [--json PATH] [--threads N]``.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from wkd_core.losses import dkd_loss, kd_loss, sharpen_cost, wkd_logit_loss
from wkd_core.ot.sinkhorn_fused import fused_available

CASES = ((64, 100), (256, 1000))
TEMPERATURE, EPS, N_ITER = 4.0, 0.05, 10


def per_sample_wkd_logit(z_s, z_t, target, cost, *, temperature, eps=EPS, n_iter=N_ITER):
    """The authors' WKD-L: per-sample (C−1)×(C−1) costs by repeat + boolean mask, bmm Sinkhorn."""
    batch, num_classes = z_s.shape
    z_t = z_t.detach()
    p_t = F.softmax(z_t, dim=1).gather(1, target[:, None])
    loss_t = -(p_t * F.log_softmax(z_s, dim=1).gather(1, target[:, None])).mean()
    keep = torch.ones_like(z_s, dtype=torch.bool).scatter_(1, target[:, None], False)
    s_nt = F.softmax(z_s[keep].view(batch, -1) / temperature, dim=1)
    t_nt = F.softmax(z_t[keep].view(batch, -1) / temperature, dim=1)
    pair = keep[:, :, None] & keep[:, None, :]
    cost_b = cost.repeat(batch, 1, 1)[pair].view(batch, num_classes - 1, num_classes - 1)
    cost_b = torch.relu(cost_b) + 1e-8  # the authors re-apply this per call
    kernel = torch.exp(-cost_b / eps)
    u = torch.ones(batch, num_classes - 1, 1, dtype=z_s.dtype, device=z_s.device)
    u = u / (num_classes - 1)
    for _ in range(n_iter):
        v = t_nt[:, :, None] / (torch.bmm(kernel.transpose(1, 2), u) + 1e-8)
        u = s_nt[:, :, None] / (torch.bmm(kernel, v) + 1e-8)
    plan = u * kernel * v.transpose(1, 2)
    return loss_t + (plan * cost_b).sum((1, 2)).mean()


def make_inputs(batch: int, num_classes: int, device: torch.device, seed: int = 0):
    """Random logits and a cost shaped like a real one (CKA distances 0.45-0.9)."""
    gen = torch.Generator().manual_seed(seed)
    z_s = 3.0 * torch.randn(batch, num_classes, generator=gen)
    z_t = 3.0 * torch.randn(batch, num_classes, generator=gen)
    target = torch.randint(0, num_classes, (batch,), generator=gen)
    dist = 0.45 + 0.45 * torch.rand(num_classes, num_classes, generator=gen)
    dist = 0.5 * (dist + dist.T)
    dist.fill_diagonal_(0.0)
    cost = sharpen_cost(dist)
    return (
        z_s.to(device).requires_grad_(),
        z_t.to(device),
        target.to(device),
        cost.to(device),
    )


def loss_fn(method: str):
    if method == "wkd_l":
        return lambda s, t, y, c: wkd_logit_loss(s, t, y, c, temperature=TEMPERATURE)
    if method == "wkd_l_fused":  # the same loss, one Triton kernel per direction (C <= 128)
        return lambda s, t, y, c: wkd_logit_loss(
            s, t, y, c, temperature=TEMPERATURE, solver="fused"
        )
    if method == "per_sample":
        return lambda s, t, y, c: per_sample_wkd_logit(s, t, y, c, temperature=TEMPERATURE)
    if method == "kd":
        return lambda s, t, y, c: kd_loss(s, t, temperature=TEMPERATURE)
    return lambda s, t, y, c: dkd_loss(s, t, y, alpha=1.0, beta=8.0, temperature=TEMPERATURE)


class PeakMemory:
    """Peak memory growth over a block (see the module docstring for the method)."""

    def __init__(self, device: torch.device) -> None:
        self.device, self.peak_bytes, self.how = device, 0, ""

    def __enter__(self) -> PeakMemory:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            torch.cuda.reset_peak_memory_stats(self.device)
            self._base = torch.cuda.memory_allocated(self.device)
            self.how = "cuda max_memory_allocated"
            return self
        try:
            Path("/proc/self/clear_refs").write_text("5")
            self.how = "VmHWM growth (clear_refs)"
        except OSError:
            self.how = "ru_maxrss growth (no clear_refs: may under-read)"
        self._base = _status_kib("VmRSS") * 1024
        return self

    def __exit__(self, *exc) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            self.peak_bytes = torch.cuda.max_memory_allocated(self.device) - self._base
        elif self.how.startswith("VmHWM"):
            self.peak_bytes = _status_kib("VmHWM") * 1024 - self._base
        else:
            self.peak_bytes = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 - self._base


def _status_kib(field: str) -> int:
    match = re.search(rf"^{field}:\s+(\d+) kB", Path("/proc/self/status").read_text(), re.M)
    return int(match.group(1)) if match else 0


def run_child(methods: list[str], batch: int, num_classes: int, device: str, quick: bool):
    """Methods one after the other in this fresh process: first-call memory, then times."""
    dev = torch.device(device)
    inputs = make_inputs(batch, num_classes, dev)
    results = []
    for method in methods:
        fn, repeats = loss_fn(method), repeats_for(method, num_classes, quick)

        def step(fn=fn) -> float:
            inputs[0].grad = None
            loss = fn(*inputs)
            loss.backward()
            if dev.type == "cuda":
                torch.cuda.synchronize(dev)
            return loss.item()

        start = time.perf_counter()
        with PeakMemory(dev) as mem:
            loss = step()
        times = [time.perf_counter() - start] if repeats == 0 else []
        for _ in range(repeats):
            start = time.perf_counter()
            step()
            times.append(time.perf_counter() - start)
        extra = fused_parity(inputs) if method == "wkd_l_fused" else {}
        results.append(
            {
                **extra,
                "method": method,
                "batch": batch,
                "num_classes": num_classes,
                "loss": loss,
                "peak_bytes": mem.peak_bytes,
                "memory_method": mem.how,
                "seconds": statistics.median(times),
                "repeats": repeats,
            }
        )
    return results


def fused_parity(inputs) -> dict[str, float]:
    """Relative differences of loss and gradient, fused vs plain solver, same inputs."""
    out = []
    for method in ("wkd_l", "wkd_l_fused"):
        inputs[0].grad = None
        loss = loss_fn(method)(*inputs)
        loss.backward()
        out.append((loss.item(), inputs[0].grad.clone()))
    (ref, g_ref), (got, g_got) = out
    return {"loss_rel_vs_plain": abs(got - ref) / abs(ref),
            "grad_rel_vs_plain": ((g_got - g_ref).norm() / g_ref.norm()).item()}  # fmt: skip


def repeats_for(method: str, num_classes: int, quick: bool) -> int:
    if method == "per_sample" and num_classes >= 1000:
        return 0 if quick else 3
    if num_classes >= 1000:
        return 3 if quick else 10
    return 5 if quick else 30


def run_all(device: str, quick: bool, threads: int | None) -> dict:
    env = {**os.environ, "MALLOC_MMAP_THRESHOLD_": "65536"}
    if threads is None and not device.startswith("cuda"):
        threads = 1
    if threads:
        env["WKD_BENCH_THREADS"] = str(threads)
    results = []
    for batch, num_classes in CASES:
        # The two WKD-L implementations each get a fresh process; KD and DKD (small, for
        # scale) follow the shared-kernel one, which keeps --quick under a minute.
        first = ["wkd_l", "kd", "dkd"]
        if fused_available(num_classes, device):
            first.insert(1, "wkd_l_fused")
        for methods in (first, ["per_sample"]):
            args = [",".join(methods), str(batch), str(num_classes), device, str(int(quick))]
            out = subprocess.run(
                [sys.executable, __file__, "--child", *args],
                check=True,
                capture_output=True,
                text=True,
                env=env,
            )
            results.extend(json.loads(out.stdout.strip().splitlines()[-1]))
    summary = []
    for batch, num_classes in CASES:
        row = {r["method"]: r for r in results if r["batch"] == batch}
        ours, ref = row["wkd_l"], row["per_sample"]
        summary.append(
            {
                "batch": batch,
                "num_classes": num_classes,
                "speedup": ref["seconds"] / ours["seconds"],
                "memory_ratio": ref["peak_bytes"] / max(ours["peak_bytes"], 1),
                "loss_rel_diff": abs(ours["loss"] - ref["loss"]) / abs(ref["loss"]),
            }
        )
    return {
        "device": device,
        "quick": quick,
        "torch": torch.__version__,
        "threads": threads or torch.get_num_threads(),
        "load_average": os.getloadavg(),
        "results": results,
        "summary": summary,
    }


def print_table(report: dict) -> None:
    load = ", ".join(f"{x:.1f}" for x in report["load_average"])
    print(
        f"device={report['device']} torch={report['torch']} threads={report['threads']} "
        f"quick={report['quick']} load average after the run: {load}"
    )
    print("time: forward+backward, median; peak: memory growth during the first call")
    header = f"{'B':>4} {'C':>5} {'method':<11} {'time ms':>10} {'peak MiB':>10} {'loss':>12}"
    print(header)
    print("-" * len(header))
    for r in report["results"]:
        print(
            f"{r['batch']:>4} {r['num_classes']:>5} {r['method']:<11} "
            f"{1e3 * r['seconds']:>10.2f} {r['peak_bytes'] / 2**20:>10.2f} {r['loss']:>12.7f}"
        )
    print()
    print(f"{'B':>4} {'C':>5} {'speed-up':>9} {'memory ratio':>13} {'loss rel diff':>14}")
    for s in report["summary"]:
        print(
            f"{s['batch']:>4} {s['num_classes']:>5} {s['speedup']:>8.1f}x "
            f"{s['memory_ratio']:>12.1f}x {s['loss_rel_diff']:>14.2e}"
        )
    print(f"memory measured as: {report['results'][0]['memory_method']}")
    for r in report["results"]:
        if "loss_rel_vs_plain" in r:
            print(f"fused vs plain at ({r['batch']}, {r['num_classes']}): loss "
                  f"{r['loss_rel_vs_plain']:.1e}, gradient "
                  f"{r['grad_rel_vs_plain']:.1e} relative")  # fmt: skip


def main(argv: list[str] | None = None) -> None:
    argv = sys.argv[1:] if argv is None else argv
    if argv and argv[0] == "--child":
        methods, batch, num_classes, device, quick = argv[1:]
        if os.environ.get("WKD_BENCH_THREADS"):
            torch.set_num_threads(int(os.environ["WKD_BENCH_THREADS"]))
        results = run_child(methods.split(","), int(batch), int(num_classes), device, quick == "1")
        print(json.dumps(results))
        return
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cpu", help="cpu or cuda[:i]")
    parser.add_argument("--quick", action="store_true", help="fewer repeats (< 1 min on CPU)")
    parser.add_argument("--json", type=Path, help="also write the figures to this JSON file")
    parser.add_argument(
        "--threads", type=int, help="torch threads per child (CPU default 1; 0: torch default)"
    )
    args = parser.parse_args(argv)
    report = run_all(args.device, args.quick, args.threads)
    print_table(report)
    if args.json:
        args.json.write_text(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
