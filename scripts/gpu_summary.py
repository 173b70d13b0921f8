"""One table of the issue-9 GPU targets from the JSON files ``scripts/gpu_check.sh`` wrote.

Usage: ``python scripts/gpu_summary.py OUT_DIR`` (prints Markdown). A missing file (a stage
that failed or ran out of time) shows as "not measured".
"""

from __future__ import annotations

import json
import sys
from pathlib import Path


def load(out: Path, name: str) -> dict | None:
    path = out / f"{name}.json"
    return json.loads(path.read_text()) if path.exists() else None


def ok(value: float | None, limit: float) -> str:
    if value is None:
        return "not measured"
    return "met" if value <= limit else "missed"


def rows(out: Path) -> list[tuple[str, str, str, str]]:
    table: list[tuple[str, str, str, str]] = []
    fast = load(out, "fast_step")
    pairs = {p["pair"]: p["methods"] for p in fast["pairs"]} if fast else {}
    cifar = pairs.get("resnet32x4->resnet8x4")
    kd_ms = cifar["kd"]["fast_ms"] if cifar else None
    eager_kd = (
        f", eager {cifar['kd']['eager_ms']:.1f} ms" if cifar and cifar["kd"]["eager_ms"] else ""
    )
    table.append(("KD step, resnet32x4→resnet8x4, b64", "≤ 4 ms",
                  f"{kd_ms:.2f} ms{eager_kd}" if kd_ms else "-", ok(kd_ms, 4.0)))  # fmt: skip
    for pair in ("resnet32x4->resnet8x4", "tv_resnet34->tv_resnet18"):
        methods = pairs.get(pair)
        for m, limit in (("wkd_l", 1.05), ("wkd_f", 1.10), ("wkd_lf", 1.15)):
            r = methods[m]["fast_ratio_to_kd"] if methods else None
            got = f"{r:.2f}× ({methods[m]['fast_ms']:.2f} ms)" if methods else "-"
            table.append((f"{m.upper().replace('_', '-')} / KD, {pair}", f"≤ {limit}×", got,
                          ok(r, limit)))  # fmt: skip
    if fast:
        for m, p in fast["parity"].items():
            table.append((f"parity {m}: captured fp32 vs eager, 4 steps", "documented",
                          f"loss {p['loss_rel']:.1e}, weights {p['weights_rel']:.1e}",
                          "graph" if p["captured"] else "NO GRAPH"))  # fmt: skip
    kernels = load(out, "wkd_l_kernels")
    if kernels:
        table.extend(kernel_rows(kernels))
    losses = load(out, "losses")
    for batch, classes, limit in ((64, 100, 0.1), (256, 1000, 0.6)) if losses else ():
        best, name, parity = None, "-", ""
        for r in losses["results"] if losses else []:
            if (r["batch"], r["num_classes"]) == (batch, classes) and r["method"].startswith(
                "wkd_l"
            ):
                ms = 1e3 * r["seconds"]
                if best is None or ms < best:
                    best, name = ms, r["method"]
                if "loss_rel_vs_plain" in r:
                    parity = (f"; fused vs plain: loss {r['loss_rel_vs_plain']:.0e}, "
                              f"grad {r['grad_rel_vs_plain']:.0e}")  # fmt: skip
        got = f"{best:.3f} ms ({name}){parity}" if best is not None else "-"
        table.append((f"WKD-L loss fwd+bwd fp32 ({batch}, {classes})", f"≤ {limit} ms", got,
                      ok(best, limit)))  # fmt: skip
    epoch = load(out, "epoch")
    for m in ("kd", "wkd_l"):
        r = epoch["methods"][m] if epoch else None
        got = f"{r['epoch_s']:.2f} s vs steps {r['steps_s']:.2f} s" if r else "-"
        table.append((f"CIFAR-100 epoch / its steps, {m}", "≤ 1.2", got + (
            f" = {r['ratio']:.2f}" if r else ""), ok(r["ratio"] if r else None, 1.2)))  # fmt: skip
    r = epoch["methods"]["wkd_l"] if epoch else None
    table.append(("240 epochs WKD-L (from epoch time)", "≤ 20 min",
                  f"{r['paper_run_min']:.1f} min" if r else "-",
                  ok(r["paper_run_min"] if r else None, 20.0)))  # fmt: skip
    table.extend(latency_rows(load(out, "latency")))
    jobs = load(out, "jobs")
    if jobs:
        per = ", ".join(f"K={k}: {v['jobs_per_hour']:.0f}/h" for k, v in jobs["per_k"].items())
        table.append(("jobs per hour, small CIFAR WKD-L jobs", "measured", per,
                      f"best K = {jobs['best_k']}"))  # fmt: skip
    else:
        table.append(("jobs per hour", "measured", "-", "not measured"))
    return table


# The paper's latency table, as [KO] summarises it (reference/wkd-method.md §5.4): the
# table's own milliseconds are not available to us, only these ratios to KD.
PAPER_LATENCY_RATIO = {"wkd_l": "≈ 1.3× (paper)", "wkd_f": "≈ 1.0× (paper)"}


def latency_rows(report: dict | None) -> list[tuple[str, str, str, str]]:
    """Issue 11's latency table from ``bench/latency.py``: ms per batch and × KD per method."""
    if report is None:
        return [("latency table, ImageNet R34→R18", "measured", "-", "not measured")]
    where = f"b{report['batch']}, {report['image_size']}²"
    kd = report["methods"]["kd"]["median_s"]
    table = []
    for name, m in report["methods"].items():
        got = f"{m['median_s'] * 1e3:.1f} ms, {m['median_s'] / kd:.2f}× KD"
        label = f"latency {name.upper().replace('_', '-')}, R34→R18 {where}"
        table.append((label, PAPER_LATENCY_RATIO.get(name, "measured"), got, "measured"))
    return table


def kernel_rows(report: dict) -> list[tuple[str, str, str, str]]:
    """WKD-L loss rows from ``bench/wkd_l_kernels.py``: times (eager, in a graph) and parity."""
    table = []
    for case in report["cases"]:
        b, c, limit = case["batch"], case["num_classes"], case["target_ms"]
        v, parity = case["variants"], case["parity"]

        def ms(name: str, key: str, v: dict = v) -> str:
            value = v.get(name, {}).get(key)
            return "-" if value is None else f"{value:.3f}"

        # the solver the fast training step uses at this C (older reports: the fused one)
        fast_name = case.get("fast_step_solver", "fused")
        fast = v.get(fast_name, {})
        got = (f"fast step's {fast_name} {ms(fast_name, 'eager_ms')} eager / "
               f"{ms(fast_name, 'graph_ms')} graph; "
               f"plain {ms('plain', 'eager_ms')} / {ms('plain', 'graph_ms')}; "
               f"KD {ms('kd', 'eager_ms')} / {ms('kd', 'graph_ms')}")  # fmt: skip
        for name in ("adjoint", "fused", "register", "tiled"):
            if name == fast_name:
                continue
            if name in v:
                got += f"; {name} {ms(name, 'eager_ms')} / {ms(name, 'graph_ms')}"
        for t in case.get("tile_sweep", []):
            shape = "x".join(map(str, t["tiles"][:4])) + f" {t['tiles'][4]}"
            if "graph_ms" in t:
                got += (f"; tiles {shape}: {t['graph_ms']:.3f} graph, vs plain grad "
                        f"{t['grad_rel_vs_plain']:.0e}")  # fmt: skip
            else:
                got += f"; tiles {shape}: FAILED"
        for name, error in case.get("failed", {}).items():
            got += f"; {name} FAILED: {error[:120]}"
        eager, graph = fast.get("eager_ms"), fast.get("graph_ms")
        if limit is None or eager is None:
            status = "not measured" if eager is None else "-"
        elif eager <= limit:
            status = "met"
        else:
            status = "met in a graph" if graph is not None and graph <= limit else "missed"
        table.append((f"WKD-L loss fwd+bwd fp32 ({b}, {c}), ms", f"≤ {limit} ms" if limit else "-",
                      got, status))  # fmt: skip
        for name in ("adjoint", "fused", "register", "tiled"):
            p = parity.get(name)
            if p:
                worst = max(p["loss_rel_vs_plain"], p["grad_rel_vs_plain"])
                table.append((f"{name} vs plain solver ({b}, {c}), same device", "≤ 1e-6",
                              f"loss {p['loss_rel_vs_plain']:.1e}, grad "
                              f"{p['grad_rel_vs_plain']:.1e} (vs fp64: grad "
                              f"{p['grad_rel_vs_float64']:.1e}, plain's "
                              f"{parity['plain']['grad_rel_vs_float64']:.1e})",
                              "met" if worst <= 1e-6 else "missed"))  # fmt: skip
    return table


def main() -> None:
    out = Path(sys.argv[1])
    env = (out / "env.txt").read_text().strip() if (out / "env.txt").exists() else "?"
    print(f"Device and software: {' | '.join(env.splitlines())}\n")
    print("| measure | target | measured | status |\n|---|---|---|---|")
    for row in rows(out):
        print("| " + " | ".join(row) + " |")
    stages = out / "stages.txt"
    if stages.exists():
        print("\nstages: " + "; ".join(stages.read_text().split("\n")).strip("; "))


if __name__ == "__main__":
    main()
