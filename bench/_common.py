"""Shared helpers of the benchmarks: options, device sync, interleaved timing, tables, JSON.

Every benchmark takes the same options (``--device cpu|cuda[:i]``, ``--quick``,
``--json PATH``); :func:`base_parser` builds them. Timings that are compared with each other
are taken round-robin (:func:`interleaved_times`), so that a burst of load on a shared
machine hits every contender alike, and are summarised by their median.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import torch


def base_parser(description: str, *, quick_help: str) -> argparse.ArgumentParser:
    """An ``ArgumentParser`` with the common ``--device``, ``--quick`` and ``--json`` options."""
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--device", default="cpu", help="cpu or cuda[:i]")
    parser.add_argument("--quick", action="store_true", help=quick_help)
    parser.add_argument("--json", type=Path, help="also write the figures to this JSON file")
    return parser


def synchronize(device: torch.device) -> None:
    """Wait for the device's queued work (CUDA kernels run asynchronously)."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timed(fn: Callable[[], Any], device: torch.device) -> float:
    """Wall seconds of one ``fn()`` call, device work included."""
    synchronize(device)
    start = time.perf_counter()
    fn()
    synchronize(device)
    return time.perf_counter() - start


def interleaved_times(
    fns: Mapping[str, Callable[[], Any]],
    *,
    device: torch.device,
    rounds: int,
    warmup: int = 1,
    before: Callable[[str], None] | None = None,
) -> dict[str, list[float]]:
    """Per-name wall times of ``rounds`` calls each, taken round-robin.

    Each of the ``warmup`` untimed rounds and each timed round calls every function once;
    the order rotates by one position per round so that no contender always runs first (or
    right after the same neighbour).

    Args:
        fns: name → zero-argument callable (one training step, one run …).
        device: where the callables run (CUDA is synchronised around each call).
        rounds: timed calls per name.
        warmup: untimed rounds first (lazy initialisation, allocator, caches).
        before: called untimed with the name before every call (e.g. a fresh model).

    Returns:
        name → list of ``rounds`` seconds, in call order.
    """
    names = list(fns)
    times: dict[str, list[float]] = {name: [] for name in names}
    for r in range(warmup + rounds):
        shift = r % len(names)
        for name in names[shift:] + names[:shift]:
            if before is not None:
                before(name)
            seconds = timed(fns[name], device)
            if r >= warmup:
                times[name].append(seconds)
    return times


def summarize(times: Sequence[float]) -> dict[str, float]:
    """Median, min, max and the interquartile range (as a fraction of the median) of times."""
    q1, _, q3 = statistics.quantiles(times, n=4) if len(times) > 1 else (times[0],) * 3
    med = statistics.median(times)
    return {
        "median_s": med,
        "min_s": min(times),
        "max_s": max(times),
        "iqr_rel": (q3 - q1) / med if med > 0 else 0.0,
        "n": len(times),
    }


def environment(device: torch.device) -> dict[str, Any]:
    """What the figures depend on: versions, threads, CPU / GPU, load when the run started."""
    env: dict[str, Any] = {
        "device": str(device),
        "torch": torch.__version__,
        "python": platform.python_version(),
        "cpu_count": os.cpu_count(),
        "threads": torch.get_num_threads(),
        "machine": platform.machine(),
    }
    if hasattr(os, "getloadavg"):
        env["loadavg_start"] = [round(x, 2) for x in os.getloadavg()]
    if device.type == "cuda":
        env["gpu"] = torch.cuda.get_device_name(device)
    return env


def format_table(headers: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    """A plain-text table: first column left-aligned, the others right-aligned."""
    cells = [[str(h) for h in headers], *[[str(c) for c in row] for row in rows]]
    widths = [max(len(row[i]) for row in cells) for i in range(len(headers))]

    def line(row: list[str]) -> str:
        first = row[0].ljust(widths[0])
        return "  ".join([first, *(c.rjust(w) for c, w in zip(row[1:], widths[1:], strict=True))])

    rule = "-" * len(line(cells[0]))
    return "\n".join([line(cells[0]), rule, *(line(row) for row in cells[1:])])


def write_json(path: Path | None, report: Mapping[str, Any]) -> None:
    """Write ``report`` as indented JSON to ``path`` (nothing when ``path`` is None)."""
    if path is not None:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(report, indent=2) + "\n")
