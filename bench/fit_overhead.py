"""Benchmark part: ``fit`` against a hand-written loop (part 2 of ``bench/train_step.py``).

``wkd_core.train.fit`` (vanilla distiller, ``build_loaders``, no checkpoint directory) against
a minimal PyTorch loop (nesterov SGD; forward, cross-entropy, backward, step; an accuracy pass
over the validation set after each epoch) on the same resnet8x4 initial weights and the same
synthetic CIFAR-shaped tensors, same batch, epochs and number of steps; the two alternate,
model construction untimed. Overhead = median(fit) / median(loop) − 1; target ≤ 5 %.
"""

from __future__ import annotations

import statistics
import sys
from typing import Any

import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader, TensorDataset

from bench._common import format_table, interleaved_times, summarize
from wkd_core.data import build_loaders, create_dataset
from wkd_core.distillers import create_distiller
from wkd_core.models import create_model
from wkd_core.train import TrainConfig, fit

FIT_TARGET = 0.05  # max relative overhead of fit over the hand-written loop
FIT_MODEL, FIT_BATCH, FIT_TRAIN, FIT_VAL, FIT_EPOCHS = "resnet8x4", 64, 320, 128, 2
FIT_SGD = {"lr": 0.05, "momentum": 0.9, "weight_decay": 5e-4, "nesterov": True}


def tensor_dataset(split: str, length: int) -> TensorDataset:
    """The synthetic CIFAR-shaped set, materialised once (loading then costs nothing)."""
    data = create_dataset("synthetic", split=split, shape="cifar", length=length)
    images, labels = zip(*(data[i] for i in range(length)), strict=True)
    return TensorDataset(torch.stack(images), torch.tensor(labels))


def hand_written_loop(model, train_set, val_set, *, device: torch.device) -> float:
    """The minimal PyTorch loop ``fit`` is compared with; returns the last accuracy (%)."""
    optimizer = torch.optim.SGD(model.parameters(), **FIT_SGD)
    train_loader = DataLoader(train_set, batch_size=FIT_BATCH, shuffle=True)
    val_loader = DataLoader(val_set, batch_size=FIT_BATCH)
    accuracy = 0.0
    for _ in range(FIT_EPOCHS):
        model.train()
        for images, labels in train_loader:
            images, labels = images.to(device), labels.to(device)
            loss = F.cross_entropy(model(images), labels)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
        model.eval()
        correct = 0
        with torch.no_grad():
            for images, labels in val_loader:
                logits = model(images.to(device))
                correct += (logits.argmax(1) == labels.to(device)).sum().item()
        accuracy = 100.0 * correct / len(val_set)
    return accuracy


def bench_fit(device: torch.device, quick: bool) -> dict[str, Any]:
    """Interleaved wall times of ``fit`` and of :func:`hand_written_loop`; the overhead."""
    train_set, val_set = tensor_dataset("train", FIT_TRAIN), tensor_dataset("test", FIT_VAL)
    torch.manual_seed(0)
    init = create_model(FIT_MODEL, num_classes=100).state_dict()
    # the eager fit (fast=False): this part measures the loop's bookkeeping, not the graph
    config = TrainConfig(epochs=FIT_EPOCHS, **FIT_SGD, amp="auto", fast=False, checkpoint_dir=None)
    fresh: dict[str, Any] = {}

    def prepare(name: str) -> None:  # untimed: a fresh model with the same initial weights
        model = create_model(FIT_MODEL, num_classes=100)
        model.load_state_dict(init)
        if name == "fit":
            fresh["distiller"] = create_distiller("vanilla", student=model)
            fresh["loaders"] = build_loaders(
                train_set, val_set, batch_size=FIT_BATCH, distributed=False
            )
        else:
            fresh["model"] = model.to(device)

    def run_fit() -> None:
        fit(fresh["distiller"], *fresh["loaders"], config=config, device=device)

    def run_loop() -> None:
        hand_written_loop(fresh["model"], train_set, val_set, device=device)

    warmup, rounds = (1, 4) if quick else (1, 9)
    print(f"[fit] {FIT_MODEL}, {FIT_EPOCHS} epochs x {FIT_TRAIN // FIT_BATCH} steps: "
          f"{warmup} warm-up + {rounds} timed rounds ...", file=sys.stderr, flush=True)  # fmt: skip
    times = interleaved_times(
        {"fit": run_fit, "hand_written": run_loop},
        device=device,
        rounds=rounds,
        warmup=warmup,
        before=prepare,
    )
    stats = {name: summarize(t) for name, t in times.items()}
    per_round = [f / h for f, h in zip(times["fit"], times["hand_written"], strict=True)]
    overhead = stats["fit"]["median_s"] / stats["hand_written"]["median_s"] - 1.0
    return {
        "model": FIT_MODEL,
        "batch": FIT_BATCH,
        "train_samples": FIT_TRAIN,
        "val_samples": FIT_VAL,
        "epochs": FIT_EPOCHS,
        "steps": FIT_EPOCHS * -(-FIT_TRAIN // FIT_BATCH),
        "rounds": rounds,
        "fit": {**stats["fit"], "times_s": times["fit"]},
        "hand_written": {**stats["hand_written"], "times_s": times["hand_written"]},
        "overhead": overhead,
        "overhead_median_of_round_ratios": statistics.median(per_round) - 1.0,
        "target": FIT_TARGET,
        "meets_target": overhead <= FIT_TARGET,
    }


def print_fit_report(fr: dict[str, Any] | None) -> None:
    """The fit-vs-loop table of :func:`bench_fit`'s result (nothing for ``None``)."""
    if fr is None:
        return
    print(f"\nfit vs hand-written loop: {fr['model']}, {fr['epochs']} epochs, {fr['steps']} "
          f"steps of {fr['batch']}, median of {fr['rounds']} alternating rounds")  # fmt: skip
    rows = [
        [name, f"{fr[name]['median_s']:.3f}", f"{fr[name]['iqr_rel']:.1%}"]
        for name in ("hand_written", "fit")
    ]
    print(format_table(["loop", "seconds", "IQR"], rows))
    verdict = "ok" if fr["meets_target"] else "MISSED"
    print(f"overhead = {fr['overhead']:+.1%} (median of per-round ratios "
          f"{fr['overhead_median_of_round_ratios']:+.1%}); target <= {FIT_TARGET:.0%}: "
          f"{verdict}")  # fmt: skip
