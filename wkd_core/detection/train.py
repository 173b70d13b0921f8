"""The detection training loop: epochs of SGD on the detector's (+ distillation) losses, then
COCO evaluation, one curve row per epoch.

It follows the classification ``fit`` (same :class:`~wkd_core.train.TrainConfig`, callbacks,
metric files, per-epoch checkpoint and resume) with detection's differences:

- batches are lists of images and target dicts; the distiller returns only loss terms;
- the learning rate is the step schedule of ``TrainConfig`` times a linear warm-up over the
  first ``warmup_iters`` iterations from ``warmup_factor`` (detectron2's default recipe: 1000
  iterations from 0.001);
- the epoch's row (:class:`~wkd_core.train.EpochMetrics`) carries the COCO metrics of the
  student: ``test_top1`` = AP (%, IoU .50:.95), ``test_top5`` = AP50 (%), and
  ``loss_terms["coco_AP75" | "coco_APs" | "coco_APm" | "coco_APl"]`` (% , −100 where the
  size range has no object); ``train_top1`` is the RoI head's accuracy on its sampled RoIs
  (%); ``test_loss`` is not computed (0.0). The job's curve is therefore AP by epoch, and
  "best" is the best AP.

Single process (no DistributedDataParallel for detection yet).
"""

from __future__ import annotations

import time
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import torch
from torch import Tensor
from torch.utils.data import DataLoader, Dataset

from wkd_core.data.loaders import EpochSampler, mix_seed, set_loader_epoch
from wkd_core.detection.data import detection_collate
from wkd_core.detection.distill import DetectionDistiller
from wkd_core.detection.evaluate import coco_evaluate
from wkd_core.train import Callback, EpochMetrics, FitResult, StopTraining, TrainConfig
from wkd_core.train.callbacks import TrainState
from wkd_core.train.checkpoint import (
    CHECKPOINT_NAME,
    capture_rng_state,
    load_checkpoint,
    restore_rng_state,
    save_atomic,
    seed_everything,
)
from wkd_core.train.metrics import best_of, summed
from wkd_core.train.schedules import step_lr
from wkd_core.train.trainer import call_hooks

__all__ = ["detection_loaders", "fit_detection", "warmup_lr"]


def detection_loaders(
    train_set: Dataset, test_set: Dataset, *, batch_size: int, num_workers: int = 0, seed: int = 0
) -> tuple[DataLoader, DataLoader]:
    """Shuffled training batches fixed by (seed, epoch) and ordered evaluation batches."""
    common: dict[str, Any] = {"num_workers": num_workers, "collate_fn": detection_collate}
    train = DataLoader(
        train_set,
        batch_size=batch_size,
        sampler=EpochSampler(train_set, seed=seed),
        generator=torch.Generator().manual_seed(mix_seed(seed, 0, 0)),
        **common,
    )
    test = DataLoader(
        test_set,
        batch_size=batch_size,
        shuffle=False,
        generator=torch.Generator().manual_seed(mix_seed(seed, 1, 0)),
        **common,
    )
    return train, test


def warmup_lr(lr: float, iteration: int, *, warmup_iters: int, warmup_factor: float) -> float:
    """``lr · (f + (1 − f)·i/W)`` for the 0-based iteration ``i < W``, then ``lr``."""
    if iteration >= warmup_iters:
        return lr
    alpha = iteration / warmup_iters
    return lr * (warmup_factor * (1 - alpha) + alpha)


def fit_detection(
    distiller: DetectionDistiller,
    train_loader: DataLoader,
    test_loader: DataLoader,
    *,
    config: TrainConfig,
    callbacks: Iterable[Callback] = (),
    device: str | torch.device = "cpu",
    warmup_iters: int = 1000,
    warmup_factor: float = 0.001,
) -> FitResult:
    """Train ``distiller.student`` for ``config.epochs`` epochs, COCO-evaluating after each.

    Returns:
        :class:`FitResult` whose ``best_top1`` / ``last_top1`` are the best and last AP (%).
    """
    device = torch.device(device)
    distiller.to(device)
    params = list(distiller.trainable_parameters())
    optimizer = torch.optim.SGD(
        params,
        lr=config.lr,
        momentum=config.momentum,
        weight_decay=config.weight_decay,
        nesterov=config.nesterov,
    )
    amp = device.type == "cuda" and config.amp in (True, "auto")
    scaler = torch.amp.GradScaler(device.type, enabled=amp)
    state = TrainState(distiller, optimizer, scaler, config, device)  # type: ignore[arg-type]
    hooks = list(callbacks)
    if not _resume(state):
        seed_everything(config.seed)
    stopped = call_hooks(hooks, "on_fit_start", state)
    for epoch in range(state.start_epoch, config.epochs + 1):
        if stopped:
            break
        state.epoch = epoch
        start = time.perf_counter()
        set_loader_epoch(train_loader, epoch, seed=config.seed)
        try:
            train = _train_epoch(state, train_loader, hooks, amp, warmup_iters, warmup_factor)
        except StopTraining:
            stopped = True
            break
        coco = {
            k: 100.0 * v
            for k, v in coco_evaluate(distiller.student, test_loader, device=device).items()
        }
        lr = step_lr(
            epoch, base_lr=config.lr, milestones=config.lr_milestones, gamma=config.lr_gamma
        )
        metrics = EpochMetrics(
            epoch=epoch,
            lr=lr,
            train_loss=train.pop("loss"),
            train_top1=train.pop("roi_top1"),
            test_top1=coco["AP"],
            test_top5=coco["AP50"],
            test_loss=0.0,
            loss_terms={**train, **{f"coco_{k}": coco[k] for k in ("AP75", "APs", "APm", "APl")}},
            seconds=time.perf_counter() - start,
        )
        state.history.append(metrics)
        state.best_top1, state.best_epoch = best_of(state.history)
        if config.checkpoint_dir is not None:
            _save(state)
        stopped = call_hooks(hooks, "on_epoch_end", state, metrics) or stopped
    last = state.history[-1].test_top1 if state.history else 0.0
    stopped = stopped and len(state.history) < config.epochs
    result = FitResult(state.best_top1, state.best_epoch, last, list(state.history), stopped)
    call_hooks(hooks, "on_fit_end", state, result)
    return result


def _train_epoch(
    state: TrainState,
    loader: DataLoader,
    hooks: list[Callback],
    amp: bool,
    warmup_iters: int,
    warmup_factor: float,
) -> dict[str, float]:
    """One pass; returns ``{"loss", "roi_top1", <term>…}`` means over the epoch's batches."""
    distiller, optimizer, config, device = (
        state.distiller,
        state.optimizer,
        state.config,
        state.device,
    )
    distiller.train()
    base = step_lr(
        state.epoch, base_lr=config.lr, milestones=config.lr_milestones, gamma=config.lr_gamma
    )
    sums: dict[str, float] = {}
    correct = count = 0
    num_batches = len(loader)
    for i, (images, targets) in enumerate(loader):
        iteration = (state.epoch - 1) * num_batches + i
        for group in optimizer.param_groups:
            group["lr"] = warmup_lr(
                base, iteration, warmup_iters=warmup_iters, warmup_factor=warmup_factor
            )
        images = [img.to(device, non_blocking=True) for img in images]
        targets = [_to(t, device) for t in targets]
        with torch.autocast(device.type, dtype=torch.float16, enabled=amp):
            losses = distiller(images, targets)
        loss = summed(losses)
        optimizer.zero_grad(set_to_none=True)
        state.scaler.scale(loss).backward()
        if config.grad_clip_norm is not None:
            state.scaler.unscale_(optimizer)
            torch.nn.utils.clip_grad_norm_(
                list(distiller.trainable_parameters()), config.grad_clip_norm
            )
        state.scaler.step(optimizer)
        state.scaler.update()
        for name, value in {"loss": loss, **losses}.items():
            sums[name] = sums.get(name, 0.0) + float(value.detach())
        logits, labels = distiller.last_rois
        correct += int((logits.argmax(1) == labels).sum())
        count += int(labels.numel())
        due = (i + 1) % config.log_every == 0 or i + 1 == num_batches
        running = {k: v / (i + 1) for k, v in sums.items()} if due else None
        if call_hooks(hooks, "on_batch_end", state, i, num_batches, running):
            raise StopTraining
    means = {k: v / max(num_batches, 1) for k, v in sums.items()}
    return {**means, "roi_top1": 100.0 * correct / max(count, 1)}


def _to(target: dict[str, Any], device: torch.device) -> dict[str, Any]:
    return {k: v.to(device) if isinstance(v, Tensor) else v for k, v in target.items()}


def _trainable_state(distiller: DetectionDistiller) -> dict[str, Tensor]:
    return {k: v for k, v in distiller.state_dict().items() if not k.startswith("teacher.")}


def _save(state: TrainState) -> Path:
    payload = {
        "format": 1,
        "task": "detection",
        "epoch": state.epoch,
        "distiller": _trainable_state(state.distiller),
        "optimizer": state.optimizer.state_dict(),
        "scaler": state.scaler.state_dict(),
        "history": [m.to_dict() for m in state.history],
        "best_top1": state.best_top1,
        "best_epoch": state.best_epoch,
        "rng": [capture_rng_state()],
        "config": state.config.to_dict(),
    }
    return save_atomic(payload, Path(state.config.checkpoint_dir) / CHECKPOINT_NAME)


def _resume(state: TrainState) -> bool:
    """Restore from ``checkpoint_dir/checkpoint.pt`` (``resume=True``) or a given file."""
    config = state.config
    if config.resume in (False, None):
        return False
    path = (
        Path(config.checkpoint_dir or ".") / CHECKPOINT_NAME
        if config.resume is True
        else Path(config.resume)
    )
    if not path.exists():
        if config.resume is True:
            return False
        raise FileNotFoundError(f"checkpoint to resume from not found: {path}")
    ckpt = load_checkpoint(path)
    saved, current = ckpt["distiller"], _trainable_state(state.distiller)
    if saved.keys() != current.keys() or any(saved[k].shape != current[k].shape for k in saved):
        raise ValueError(f"checkpoint {path} does not match the detection distiller")
    state.distiller.load_state_dict(saved, strict=False)
    state.optimizer.load_state_dict(ckpt["optimizer"])
    if ckpt["scaler"] and state.scaler.is_enabled():
        state.scaler.load_state_dict(ckpt["scaler"])
    state.history = [EpochMetrics.from_dict(row) for row in ckpt["history"]]
    state.best_top1, state.best_epoch = ckpt["best_top1"], ckpt["best_epoch"]
    state.start_epoch = ckpt["epoch"] + 1
    restore_rng_state(ckpt["rng"][0])
    return True
