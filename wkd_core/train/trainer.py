"""The training loop: ``fit`` = epochs of ``train_one_epoch`` + ``evaluate`` + checkpoint.

The default recipe is the one WKD inherits from mdistiller (wkd-method.md §4): SGD with
Nesterov momentum over the distiller's trainable parameters (weight decay on all of them, BN
included), a step learning rate set at the start of every 1-based epoch, AMP on CUDA with a
GradScaler and the loss terms summed in float32 outside autocast, evaluation after every
epoch, and the best test top-1 over epochs reported with the last one. Progress, metric
files and cancellation are callbacks (``wkd_core.train.callbacks``).

OFA-KD's recipe (the CNN↔Transformer presets) adds options, all off by default: AdamW
(``wkd_core.train.optim``), no weight decay on biases and norms, a cosine learning rate
after a linear warm-up (``wkd_core.train.schedules.epoch_lr``, still set per epoch), and
label smoothing, mixup and cutmix (``wkd_core.train.mixing``: the batch is mixed on the
device before the distiller sees it, so the teacher sees the mixed images too).

Two steps compute the same thing: the eager loop below (the reference, and the CPU path) and
the captured one of ``wkd_core.train.fast`` (``fast``: one CUDA graph per step, bf16,
channels_last, device-side schedules), chosen by ``TrainConfig.fast``.

Resuming: with ``checkpoint_dir`` set, a checkpoint is written atomically after every epoch
(trainable weights, optimizer, scaler, history, best, RNG states); the loaders' order and
worker seeds depend only on (seed, epoch), so a resumed run reaches the same weights and
metrics as an uninterrupted one.
"""

from __future__ import annotations

import time
import warnings
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.utils.data import DataLoader

from wkd_core.data.loaders import mix_seed, set_loader_epoch
from wkd_core.distillers.base import Distiller
from wkd_core.train import distributed
from wkd_core.train.callbacks import Callback, StopTraining, TrainState
from wkd_core.train.checkpoint import seed_everything
from wkd_core.train.config import TrainConfig, amp_enabled, autocast_dtype, batch_mixer
from wkd_core.train.distributed import DistContext
from wkd_core.train.fast import (
    CapturedStep,
    fast_blockers,
    fast_enabled,
    fast_precision,
    train_epoch_fast,
)
from wkd_core.train.metrics import EpochMetrics, FitResult, best_of, summed, topk_correct
from wkd_core.train.mixing import BatchMixer, hard_labels
from wkd_core.train.optim import make_optimizer
from wkd_core.train.resume import resume_state, save_checkpoint
from wkd_core.train.schedules import epoch_lr

__all__ = [
    "TrainConfig",
    "amp_enabled",
    "autocast_dtype",
    "batch_mixer",
    "evaluate",
    "fit",
    "make_optimizer",
    "train_one_epoch",
]


BatchHook = Callable[[int, int, dict[str, float] | None], None]


def train_one_epoch(
    model: nn.Module,
    loader: DataLoader,
    optimizer: torch.optim.Optimizer,
    scaler: torch.amp.GradScaler,
    *,
    epoch: int,
    total_epochs: int,
    device: torch.device,
    amp: bool = False,
    amp_dtype: torch.dtype = torch.float16,
    grad_clip_norm: float | None = None,
    log_every: int = 50,
    on_batch: BatchHook | None = None,
    ctx: DistContext | None = None,
    mixer: BatchMixer | None = None,
) -> dict[str, float]:
    """One pass over ``loader``; returns ``{"loss", "top1", <each loss term>}`` epoch means.

    ``model`` is the distiller, possibly wrapped in DistributedDataParallel; ``amp`` runs
    the forward under autocast to ``amp_dtype`` (the scaler is enabled for float16). Running sums
    stay on the device; the host reads them only every ``log_every`` batches (to hand the
    running means to ``on_batch``) and at the end of the epoch. ``mixer`` turns each batch
    into mixed images and soft targets before the forward (``wkd_core.train.mixing``).
    """
    model.train()
    params = [p for group in optimizer.param_groups for p in group["params"]]
    names: list[str] = []  # the loss terms, in the distiller's order
    acc = torch.float32 if device.type == "mps" else torch.float64  # exact counts, sums
    sums = torch.zeros(2, device=device, dtype=acc)  # [correct, count, Σ b·loss, Σ b·term…]
    num_batches = len(loader)
    for i, (images, targets) in enumerate(loader):
        images = images.to(device, non_blocking=True)
        targets = targets.to(device, non_blocking=True)
        if mixer is not None:
            images, targets = mixer(images, targets)
        with torch.autocast(device.type, dtype=amp_dtype, enabled=amp):
            out = model(images, targets, epoch=epoch, total_epochs=total_epochs)
        loss = summed(out.losses)  # float32, outside autocast: scaled, not cast down
        optimizer.zero_grad(set_to_none=True)
        scaler.scale(loss).backward()
        if grad_clip_norm is not None:
            scaler.unscale_(optimizer)  # clip the true gradients, not the scaled ones
            nn.utils.clip_grad_norm_(params, grad_clip_norm)
        scaler.step(optimizer)
        scaler.update()
        with torch.no_grad():  # a few device ops per step, no host sync
            if not names:
                names = list(out.losses)
                sums = torch.zeros(3 + len(names), device=device, dtype=acc)
            b = targets.shape[0]
            sums[0] += (out.logits.argmax(dim=1) == hard_labels(targets)).sum()
            sums[1] += b
            sums[2:] += (
                torch.stack([loss.detach(), *(v.detach().float() for v in out.losses.values())]) * b
            )
        if on_batch is not None:
            due = (i + 1) % log_every == 0 or i + 1 == num_batches
            on_batch(i, num_batches, _train_means(sums, names, None) if due else None)
    return _train_means(sums, names, ctx)


def _train_means(sums: Tensor, names: list[str], ctx: DistContext | None) -> dict[str, float]:
    """Device sums → ``{"top1", "loss", <term>…}`` means (one host sync, summed over DDP)."""
    if ctx is not None:
        sums = distributed.all_reduce_sum(sums.clone(), ctx)
    correct, count, *totals = sums.tolist()
    count = max(count, 1.0)
    means = dict(zip(["loss", *names], [t / count for t in totals], strict=False))
    return {"top1": 100.0 * correct / count, **means}


@torch.no_grad()
def evaluate(
    distiller: Distiller,
    loader: DataLoader,
    *,
    device: torch.device,
    amp: bool = False,
    amp_dtype: torch.dtype = torch.float16,
    channels_last: bool = False,
    ctx: DistContext | None = None,
) -> dict[str, float]:
    """Student accuracy and loss on ``loader``: ``{"top1", "top5", "loss"}``.

    Uses ``distiller.forward_test`` in eval mode; top-5 is top-min(5, C); ``loss`` is the mean
    cross-entropy (float32). Under DDP each process evaluates its shard and the sums are
    added, so every sample counts once.
    """
    distiller.eval()
    sums = torch.zeros(4, device=device)  # count, loss, top-1 hits, top-5 hits
    for images, targets in loader:
        images = images.to(device, non_blocking=True)
        targets = targets.to(device, non_blocking=True)
        if channels_last:
            images = images.contiguous(memory_format=torch.channels_last)
        with torch.autocast(device.type, dtype=amp_dtype, enabled=amp):
            logits = distiller.forward_test(images)
        logits = logits.float()
        top1, top5 = topk_correct(logits, targets, (1, 5))
        sums[0] += targets.shape[0]
        sums[1] += F.cross_entropy(logits, targets, reduction="sum")
        sums[2] += top1
        sums[3] += top5
    if ctx is not None:
        distributed.all_reduce_sum(sums, ctx)
    count, loss, hit1, hit5 = sums.tolist()
    count = max(count, 1.0)
    return {"top1": 100.0 * hit1 / count, "top5": 100.0 * hit5 / count, "loss": loss / count}


def _require_batches(train_loader: DataLoader) -> None:
    """An empty training loader (no sample, or fewer than one batch with ``drop_last``)
    would end the first epoch with no mean to report: say so first."""
    try:
        batches = len(train_loader)
    except TypeError:  # an iterable dataset without a length: trust it
        return
    if batches == 0:
        raise ValueError("the training loader yields no batch (an empty dataset, or fewer "
                         "samples than one batch with drop_last)")  # fmt: skip


def fit(
    distiller: Distiller,
    train_loader: DataLoader,
    val_loader: DataLoader,
    *,
    config: TrainConfig,
    callbacks: Iterable[Callback] = (),
    device: str | torch.device = "cpu",
) -> FitResult:
    """Train ``distiller`` for ``config.epochs`` epochs, evaluating after each one.

    Under ``torchrun`` the process group is joined, the distiller is wrapped in
    DistributedDataParallel, metrics are summed over processes, and only rank 0 runs the
    callbacks and writes checkpoints. ``wkd_core.data.build_loaders`` shards the data from
    torchrun's environment and splits the global batch over the processes.

    Args:
        distiller: the method (student, frozen teacher, extra modules).
        train_loader, val_loader: loaders of (images, labels) batches.
        config: see :class:`TrainConfig`.
        callbacks: hooks called in order (see ``wkd_core.train.callbacks``).
        device: ``"cpu"``, ``"cuda"``, ``"cuda:1"`` …

    Returns:
        :class:`FitResult` with the best and last test top-1 and one row per epoch;
        ``stopped=True`` when a callback raised :class:`StopTraining`.
    """
    _require_batches(train_loader)
    ctx = distributed.setup(device)
    device = ctx.device
    fast = fast_enabled(config.fast, device, distributed=ctx.enabled)
    if fast and fast_blockers(config):  # options the captured step lacks: train eagerly
        if config.fast is True:
            reasons = ", ".join(fast_blockers(config))
            message = f"the fast step does not support {reasons}: training eagerly"
            warnings.warn(message, stacklevel=2)
        fast = False
    distiller.to(device)
    if fast and device.type == "cuda":
        distiller.to(memory_format=torch.channels_last)  # before the optimizer sees them
    distiller.fast_kernels(fast)
    model = distributed.wrap(distiller, ctx)
    amp = amp_enabled(config.amp, device) and not fast
    amp_dtype = autocast_dtype(config.amp_dtype)
    optimizer = make_optimizer(distiller, config)
    scaler = torch.amp.GradScaler(device.type, enabled=amp and amp_dtype == torch.float16)
    state = TrainState(distiller, optimizer, scaler, config, device)
    state.rank, state.world_size = ctx.rank, ctx.world_size
    hooks = list(callbacks) if ctx.is_main else []
    if config.deterministic:
        torch.backends.cudnn.deterministic, torch.backends.cudnn.benchmark = True, False
    elif fast and device.type == "cuda":
        torch.backends.cudnn.benchmark = True
    if not resume_state(state, ctx):
        seed_everything(config.seed + ctx.rank)
    precision = fast_precision(config.amp, device) if fast else (amp_dtype if amp else None)
    step = None
    if fast:  # after resuming: the optimizer's momentum buffers are the step's
        step = CapturedStep(
            distiller, optimizer, total_epochs=config.epochs, precision=precision,
            channels_last=device.type == "cuda", grad_clip_norm=config.grad_clip_norm,
            label_smoothing=config.label_smoothing, num_classes=config.num_classes,
        )  # fmt: skip
    run = _EpochRunner(model, train_loader, val_loader, state, hooks, ctx, precision, step)
    run.mixer = None if fast else batch_mixer(config)

    stopped = call_hooks(hooks, "on_fit_start", state)
    for epoch in range(state.start_epoch, config.epochs + 1):
        if distributed.any_process(stopped, ctx):
            break
        state.epoch = epoch
        metrics, stopped = run.epoch()
        if metrics is None:  # stopped mid-epoch: the last checkpoint stays the resume point
            break
        state.history.append(metrics)
        state.best_top1, state.best_epoch = best_of(state.history)
        if config.checkpoint_dir is not None:
            save_checkpoint(state, ctx)
        stopped = call_hooks(hooks, "on_epoch_end", state, metrics) or stopped
    stopped = distributed.any_process(stopped, ctx) and len(state.history) < config.epochs
    last = state.history[-1].test_top1 if state.history else 0.0
    result = FitResult(state.best_top1, state.best_epoch, last, list(state.history), stopped)
    call_hooks(hooks, "on_fit_end", state, result)
    return result


@dataclass
class _EpochRunner:
    """Train and evaluate one epoch with the eager step or the captured one (``step``)."""

    model: nn.Module
    train_loader: Iterable
    val_loader: Iterable
    state: TrainState
    hooks: list[Callback]
    ctx: DistContext
    precision: torch.dtype | None  # autocast dtype, None: float32
    step: CapturedStep | None
    mixer: BatchMixer | None = None  # label smoothing / mixup / cutmix of the eager step
    pending: bool = False  # a callback asked to stop at the end of this epoch

    def epoch(self) -> tuple[EpochMetrics | None, bool]:
        """(metrics, stop requested); (None, True) if a callback stopped it midway."""
        state, ctx = self.state, self.ctx
        config, epoch, start = state.config, state.epoch, time.perf_counter()
        lr = epoch_lr(
            epoch, schedule=config.lr_schedule, base_lr=config.lr, epochs=config.epochs,
            milestones=config.lr_milestones, gamma=config.lr_gamma, min_lr=config.min_lr,
            warmup_epochs=config.warmup_epochs, warmup_lr=config.warmup_lr,
        )  # fmt: skip
        for group in state.optimizer.param_groups:
            group["lr"] = lr
        set_loader_epoch(self.train_loader, epoch, seed=config.seed, rank=ctx.rank)
        if self.mixer is not None:  # the epoch's draws depend only on (seed, epoch, rank)
            self.mixer.reseed(mix_seed(config.seed, epoch, ctx.rank, 4))
        self.pending = False
        try:
            train = self._train(epoch, lr)
        except StopTraining:
            return None, True
        amp = self.precision is not None
        test = evaluate(
            state.distiller, self.val_loader, device=state.device, amp=amp,
            amp_dtype=self.precision or torch.float16, ctx=ctx,
            channels_last=self.step is not None and self.step.channels_last,
        )  # fmt: skip
        loss, top1 = train.pop("loss"), train.pop("top1")
        metrics = EpochMetrics(
            epoch=epoch, lr=lr, train_loss=loss, train_top1=top1, test_top1=test["top1"],
            test_top5=test["top5"], test_loss=test["loss"], loss_terms=train,
            seconds=time.perf_counter() - start,
        )  # fmt: skip
        return metrics, self.pending

    def _train(self, epoch: int, lr: float) -> dict[str, float]:
        state, config = self.state, self.state.config
        if self.step is not None:
            sums, names = train_epoch_fast(
                self.step, self.train_loader, epoch=epoch, lr=lr, device=state.device,
                log_every=config.log_every,
                on_batch=lambda i, n, due: self._on_batch(
                    i, n, _train_means(*self.step.means(), None) if due else None
                ),
            )  # fmt: skip
            return _train_means(sums, names, None)
        return train_one_epoch(
            self.model, self.train_loader, state.optimizer, state.scaler, epoch=epoch,
            total_epochs=config.epochs, device=state.device, amp=self.precision is not None,
            amp_dtype=self.precision or torch.float16, grad_clip_norm=config.grad_clip_norm,
            log_every=config.log_every, on_batch=self._on_batch, ctx=self.ctx,
            mixer=self.mixer,
        )  # fmt: skip

    def _on_batch(self, i: int, n: int, running: dict[str, float] | None) -> None:
        # Without DDP a stop takes effect at once; with DDP all processes must agree first,
        # which they do where the running means are synchronised anyway.
        terms = None if running is None else {k: running[k] for k in running if k != "top1"}
        stop = call_hooks(self.hooks, "on_batch_end", self.state, i, n, terms)
        self.pending = stop or self.pending
        if (running is not None or not self.ctx.enabled) and distributed.any_process(
            self.pending, self.ctx
        ):
            raise StopTraining


def call_hooks(hooks: list[Callback], name: str, *args: Any) -> bool:
    """Run hook ``name`` of every callback; True if one raised StopTraining."""
    stop = False
    for hook in hooks:
        try:
            getattr(hook, name)(*args)
        except StopTraining:
            stop = True
    return stop
