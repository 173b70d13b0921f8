"""The fast training step: forward, losses, backward and SGD replayed as one CUDA graph.

On a GPU an eager step of a small CIFAR network spends most of its time launching kernels
from Python (gpu-notes.md: 16 ms eager against 2.4 ms for the same step in one graph). The
:class:`CapturedStep` records the whole step once and replays it per batch:

* **static buffers**: each batch is copied into the images / labels tensors the graph reads;
  a batch of another shape (the last, partial one of an epoch) runs the same step eagerly;
* **per-epoch values live on the device**: the 1-based epoch and the learning rate are 0-dim
  tensors updated in place before each epoch; the distillers compute their loss weights from
  the epoch tensor (``wkd_core.train.schedules`` accepts tensors) and :func:`sgd_update_`
  scales by the lr tensor, so nothing the graph baked in changes between epochs;
* **the optimizer step inside the graph**: :func:`sgd_update_` is ``torch.optim.SGD``'s update
  (weight decay, momentum, Nesterov) on the optimizer's own momentum buffers, so checkpoints
  and resuming see one ordinary SGD state; the graph scales by the lr tensor, eager calls by
  the float (``p − lr·d`` rounds differently from ``p + (−lr)·d`` by one ulp, which ReLU
  kinks can amplify over steps: the CPU parity tests compare bit-compatible updates);
* **bf16 autocast** where the device supports it (no GradScaler: its inf check needs a host
  sync, which a graph cannot hold), float32 otherwise; ``channels_last`` images and weights;
  autocast's weight cache off (a graph must not keep casts from its capture);
* the running sums of accuracy and loss terms are accumulated on the device, in the graph;
* label smoothing turns the labels into soft targets inside the step (a pure function of the
  labels). The other options of OFA-KD's recipe are not in the captured step: AdamW, weight-
  decay groups and mixup / cutmix (host-side random draws per batch) make ``fit`` train
  eagerly (:func:`fast_blockers`); warm-up and the cosine schedule are per-epoch learning
  rates, which the step takes like the step schedule's.

Everywhere but CUDA (and under ``capture=False``) the very same ``_step`` runs eagerly, which
is how the CPU tests prove that the fast step computes what the reference loop computes.

Reference: PyTorch, "CUDA Graphs" (whole-network capture, warm-up on a side stream);
gpu-notes.md for the measurements that motivated it.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING

import torch
from torch import Tensor, nn

from wkd_core.distillers.base import Distiller
from wkd_core.train.metrics import summed
from wkd_core.train.mixing import smoothed_one_hot

if TYPE_CHECKING:
    from wkd_core.train.config import TrainConfig

__all__ = [
    "CapturedStep",
    "fast_blockers",
    "fast_enabled",
    "fast_precision",
    "sgd_update_",
    "train_epoch_fast",
]


def fast_enabled(fast: bool | str, device: torch.device, *, distributed: bool) -> bool:
    """``"auto"``: on for a single-process CUDA run; True: on (not under DDP); False: off."""
    if fast not in (True, False, "auto"):
        raise ValueError(f"fast must be True, False or 'auto', got {fast!r}")
    if fast is True and distributed:
        raise ValueError("the fast (captured) step runs on a single process; use fast=False")
    if fast == "auto":
        return device.type == "cuda" and not distributed
    return bool(fast)


def fast_blockers(config: TrainConfig) -> list[str]:
    """The options of ``config`` the captured step does not run (empty: it runs them all).

    ``fit`` then trains with the eager loop, which computes every option.
    """
    blockers = []
    if config.optimizer != "sgd":
        blockers.append(f"optimizer {config.optimizer!r}")
    if not config.decay_bias_and_norm:
        blockers.append("decay_bias_and_norm=False (two parameter groups)")
    if config.mixup_alpha > 0 or config.cutmix_alpha > 0:
        blockers.append("mixup / cutmix")
    return blockers


def fast_precision(amp: bool | str, device: torch.device) -> torch.dtype | None:
    """Autocast dtype of the fast step: bfloat16 or ``None`` (float32).

    CUDA: bf16 when ``amp`` is True or ``"auto"`` and the GPU supports it, else float32 (fp16
    would need the GradScaler). Elsewhere: bf16 only when ``amp`` is True (CPU autocast).
    """
    if amp is False:
        return None
    if device.type == "cuda":
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else None
    return torch.bfloat16 if amp is True else None


@torch.no_grad()
def sgd_update_(
    params: list[Tensor],
    grads: list[Tensor],
    buffers: list[Tensor | None],
    *,
    lr: Tensor | float,
    momentum: float,
    weight_decay: float,
    nesterov: bool,
    dampening: float = 0.0,
) -> list[Tensor | None]:
    """``torch.optim.SGD``'s update, in place, with ``lr`` possibly a device tensor.

    ``d = g + wd·p``; ``buf = momentum·buf + (1 − dampening)·d`` (``buf = d`` on the first
    step, when the buffer is None); ``d = d + momentum·buf`` (Nesterov) or ``d = buf``;
    ``p = p − lr·d``. Returns the (possibly new) momentum buffers, to be stored back in the
    optimizer's state.
    """
    grads = torch._foreach_add(grads, params, alpha=weight_decay) if weight_decay else grads
    buffers = list(buffers)
    if momentum:
        old = [i for i, b in enumerate(buffers) if b is not None]
        if old:
            olds = [buffers[i] for i in old]
            torch._foreach_mul_(olds, momentum)
            torch._foreach_add_(olds, [grads[i] for i in old], alpha=1.0 - dampening)
        for i, b in enumerate(buffers):
            if b is None:  # first step: buf = d (torch.optim.SGD)
                buffers[i] = grads[i].clone()
        nest = nesterov  # d = d + momentum·buf, or d = buf
        grads = torch._foreach_add(grads, buffers, alpha=momentum) if nest else list(buffers)
    if isinstance(lr, Tensor):
        torch._foreach_sub_(params, torch._foreach_mul(grads, lr))
    else:
        torch._foreach_add_(params, grads, alpha=-lr)
    return buffers


class CapturedStep:
    """One training step of ``distiller`` with ``optimizer``'s SGD, captured on CUDA.

    Call :meth:`start_epoch` before each epoch, then the object once per batch; read the
    epoch's means with :meth:`means`. The first ``warmup`` full-size batches run eagerly
    (on a side stream on CUDA: cuDNN autotuning, allocator, momentum buffers), the next one
    is captured and replayed, and every later full-size batch is one replay.

    Args:
        distiller: the method (not wrapped in DDP: the fast step is single-process).
        optimizer: a ``torch.optim.SGD`` over ``distiller.trainable_parameters()`` (one
            parameter group); its momentum buffers are the ones updated.
        total_epochs: E, for the distillers' schedules.
        precision: autocast dtype (``torch.bfloat16``) or ``None`` for float32.
        channels_last: feed images in channels_last (convert the distiller's weights too).
        grad_clip_norm: clip the global gradient norm inside the step (None: no clipping).
        capture: record a CUDA graph; default: on CUDA.
        warmup: eager full-size steps before the capture.
        label_smoothing, num_classes: the distiller gets smoothed one-hot targets of width
            ``num_classes`` (``wkd_core.train.mixing.smoothed_one_hot``) when ε > 0.
    """

    def __init__(
        self,
        distiller: Distiller,
        optimizer: torch.optim.Optimizer,
        *,
        total_epochs: int,
        precision: torch.dtype | None = None,
        channels_last: bool = False,
        grad_clip_norm: float | None = None,
        capture: bool | None = None,
        warmup: int = 3,
        label_smoothing: float = 0.0,
        num_classes: int | None = None,
    ) -> None:
        if not isinstance(optimizer, torch.optim.SGD) or len(optimizer.param_groups) != 1:
            raise ValueError("the fast step runs SGD with one parameter group")
        if label_smoothing > 0 and num_classes is None:
            raise ValueError("label smoothing needs num_classes")
        self.distiller, self.optimizer = distiller, optimizer
        self.label_smoothing, self.num_classes = label_smoothing, num_classes
        self.group = optimizer.param_groups[0]
        self.params: list[nn.Parameter] = list(self.group["params"])
        self.device = self.params[0].device
        self.total_epochs, self.precision = total_epochs, precision
        self.channels_last, self.grad_clip_norm = channels_last, grad_clip_norm
        self.capture = self.device.type == "cuda" if capture is None else capture
        self.warmup, self.warm_steps = warmup, 0
        self.epoch = torch.ones((), device=self.device)  # the 1-based epoch, as a float
        self.lr = torch.full((), float(self.group["lr"]), device=self.device)
        self.names: list[str] = []
        self.sums: Tensor | None = None  # [correct, count, Σ b·loss, Σ b·term…], float64
        self.graph: torch.cuda.CUDAGraph | None = None
        self.static: tuple[Tensor, Tensor] | None = None
        self._recording = False  # the graph reads the lr tensor; eager calls use the float

    def start_epoch(self, epoch: int, lr: float) -> None:
        """Set the epoch and learning rate (device tensors, in place) and clear the sums."""
        self.epoch.fill_(float(epoch))
        self.lr.fill_(lr)
        self.group["lr"] = lr  # what a checkpoint of the optimizer records
        if self.sums is not None:
            self.sums.zero_()

    def __call__(self, images: Tensor, targets: Tensor) -> None:
        """One SGD step on the batch (replayed when it has the captured shape)."""
        if self.channels_last and images.dim() == 4:
            images = images.contiguous(memory_format=torch.channels_last)
        if not self.capture:
            return self._step(images, targets)
        if self.static is not None and images.shape == self.static[0].shape:
            self.static[0].copy_(images, non_blocking=True)
            self.static[1].copy_(targets, non_blocking=True)
            assert self.graph is not None
            return self.graph.replay()
        if self.static is None and self.warm_steps >= self.warmup:
            return self._capture(images, targets)
        if self.static is None:
            self.warm_steps += 1
            return self._on_side_stream(images, targets)
        return self._step(images, targets)  # another shape: the last partial batch

    def means(self) -> tuple[Tensor, list[str]]:
        """The device sums of the epoch so far and the loss-term names."""
        assert self.sums is not None, "no step has run"
        return self.sums, self.names

    def _on_side_stream(self, images: Tensor, targets: Tensor) -> None:
        stream = torch.cuda.Stream(self.device)
        stream.wait_stream(torch.cuda.current_stream(self.device))
        with torch.cuda.stream(stream):
            self._step(images, targets)
        torch.cuda.current_stream(self.device).wait_stream(stream)

    def _capture(self, images: Tensor, targets: Tensor) -> None:
        self.static = (images.clone(), targets.clone())
        torch.cuda.synchronize(self.device)
        self.graph = torch.cuda.CUDAGraph()
        self._recording = True
        try:
            with torch.cuda.graph(self.graph):
                self._step(*self.static)
        finally:
            self._recording = False
        self.graph.replay()  # capturing records without running: now do this batch's step

    def _step(self, images: Tensor, targets: Tensor) -> None:
        for p in self.params:
            p.grad = None
        with torch.autocast(
            self.device.type,
            dtype=self.precision or torch.bfloat16,  # the dtype is unused when disabled
            enabled=self.precision is not None,
            cache_enabled=False,
        ):
            out = self.distiller(
                images, self._targets(targets), epoch=self.epoch, total_epochs=self.total_epochs
            )
        loss = summed(out.losses)  # float32, outside autocast
        loss.backward()
        live = [p for p in self.params if p.grad is not None]
        if self.grad_clip_norm is not None:
            nn.utils.clip_grad_norm_(live, self.grad_clip_norm, foreach=True)
        self._sgd(live)
        self._accumulate(out.logits, targets, loss, out.losses)

    def _targets(self, labels: Tensor) -> Tensor:
        """The labels, or their smoothed one-hot form (computed in the graph)."""
        if self.label_smoothing <= 0:
            return labels
        assert self.num_classes is not None
        return smoothed_one_hot(labels, self.num_classes, self.label_smoothing)

    def _sgd(self, live: list[nn.Parameter]) -> None:
        group, state = self.group, self.optimizer.state
        buffers = sgd_update_(
            live,
            [p.grad for p in live],
            [state[p].get("momentum_buffer") for p in live],
            # the same value; the float gives bit for bit torch.optim.SGD's update
            lr=self.lr if self._recording else float(group["lr"]),
            momentum=group["momentum"],
            weight_decay=group["weight_decay"],
            nesterov=group["nesterov"],
            dampening=group["dampening"],
        )
        if group["momentum"]:
            for p, buf in zip(live, buffers, strict=True):
                state[p]["momentum_buffer"] = buf

    @torch.no_grad()
    def _accumulate(self, logits: Tensor, targets: Tensor, loss: Tensor, terms: dict) -> None:
        if self.sums is None:
            self.names = list(terms)
            dtype = torch.float32 if self.device.type == "mps" else torch.float64
            self.sums = torch.zeros(3 + len(self.names), device=self.device, dtype=dtype)
        b = targets.shape[0]
        self.sums[0] += (logits.argmax(dim=1) == targets).sum()
        self.sums[1] += b
        values = torch.stack([loss.detach(), *(v.detach().float() for v in terms.values())])
        self.sums[2:] += values * b


def train_epoch_fast(
    step: CapturedStep,
    loader: Iterable,
    *,
    epoch: int,
    lr: float,
    device: torch.device,
    on_batch: Callable[[int, int, bool], None] | None = None,
    log_every: int = 50,
) -> tuple[Tensor, list[str]]:
    """One epoch of :class:`CapturedStep` over ``loader``; returns the device sums and names.

    ``on_batch(i, n, due)`` is called after every batch; ``due`` marks the batches where the
    caller may read the running sums (every ``log_every`` and the last), the only host syncs.
    """
    step.distiller.train()
    step.start_epoch(epoch, lr)
    num_batches = len(loader)  # type: ignore[arg-type]
    for i, (images, targets) in enumerate(loader):
        step(images.to(device, non_blocking=True), targets.to(device, non_blocking=True))
        if on_batch is not None:
            on_batch(i, num_batches, (i + 1) % log_every == 0 or i + 1 == num_batches)
    return step.means()
