"""The trainer's configuration (:class:`TrainConfig`) and the helpers that read it: AMP,
autocast dtype and the batch regularisers (label smoothing, mixup, cutmix)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch

from wkd_core.train.mixing import BatchMixer


@dataclass
class TrainConfig:
    """Optimisation and bookkeeping settings of ``fit`` (defaults: CIFAR-100, RN32x4→RN8x4).

    Attributes:
        epochs: number of epochs E (epochs are numbered 1…E).
        lr, lr_milestones, lr_gamma: ``lr · gamma^{#milestones < epoch}`` (``step_lr``).
        lr_schedule: ``"step"`` (the milestones above) or ``"cosine"`` (from ``lr`` down to
            ``min_lr`` over the E epochs, timm's), set per epoch.
        warmup_epochs, warmup_lr: a linear warm-up from ``warmup_lr`` over the first epochs
            (0: none); see ``wkd_core.train.schedules.epoch_lr``.
        optimizer: ``"sgd"`` or ``"adamw"`` (``wkd_core.train.optim``).
        momentum, nesterov: SGD settings. betas, eps: AdamW settings.
        weight_decay: on every trainable parameter, or, with ``decay_bias_and_norm=False``,
            not on biases and other parameters of at most one dimension (timm's groups).
        label_smoothing, mixup_alpha, cutmix_alpha, mixup_prob, mixup_switch_prob: the
            batch regularisers of ``wkd_core.train.mixing`` (all off by default); they need
            ``num_classes``, the width of the soft targets.
        amp: ``"auto"`` (on for CUDA), True (on, any device: CPU autocast too) or False.
        amp_dtype: the eager step's autocast dtype, ``"float16"`` (with the GradScaler, as
            the authors) or ``"bfloat16"`` (no scaler).
        fast: the captured step (``wkd_core.train.fast``): ``"auto"`` = on for a
            single-process CUDA run, True, or False (the eager reference loop). It trains
            in bf16 autocast where ``amp`` is on and the GPU has bf16, else float32.
        seed: seeds the global RNGs (plus the rank under DDP) at the start of a fresh run.
        checkpoint_dir: where ``checkpoint.pt`` is written after every epoch (None: never).
        resume: True resumes from ``checkpoint_dir/checkpoint.pt`` when it exists; a path
            resumes from that file (which must exist); False starts afresh.
        log_every: batches between the running means passed to ``on_batch_end``.
        grad_clip_norm: clip the global gradient norm to this value (None: no clipping).
        deterministic: ``cudnn.deterministic=True, benchmark=False`` (as the authors' seed).
    """

    epochs: int = 240
    lr: float = 0.05
    lr_milestones: Sequence[int] = (150, 180, 210)
    lr_gamma: float = 0.1
    lr_schedule: str = "step"
    min_lr: float = 0.0
    warmup_epochs: int = 0
    warmup_lr: float = 0.0
    optimizer: str = "sgd"
    momentum: float = 0.9
    weight_decay: float = 5e-4
    nesterov: bool = True
    betas: Sequence[float] = (0.9, 0.999)
    eps: float = 1e-8
    decay_bias_and_norm: bool = True
    label_smoothing: float = 0.0
    mixup_alpha: float = 0.0
    cutmix_alpha: float = 0.0
    mixup_prob: float = 1.0
    mixup_switch_prob: float = 0.5
    num_classes: int | None = None
    amp: bool | str = "auto"
    amp_dtype: str = "float16"
    fast: bool | str = "auto"
    seed: int = 0
    checkpoint_dir: str | Path | None = None
    resume: bool | str | Path = False
    log_every: int = 50
    grad_clip_norm: float | None = None
    deterministic: bool = False

    def to_dict(self) -> dict[str, Any]:
        """Plain values only (paths as strings), as stored in a checkpoint."""
        out = asdict(self)
        out["lr_milestones"] = list(self.lr_milestones)
        out["betas"] = list(self.betas)
        for key in ("checkpoint_dir", "resume"):
            if isinstance(out[key], Path):
                out[key] = str(out[key])
        return out


def amp_enabled(amp: bool | str, device: torch.device) -> bool:
    """AMP is on when ``amp`` is True, or ``"auto"`` on CUDA."""
    if amp not in (True, False, "auto"):
        raise ValueError(f"amp must be True, False or 'auto', got {amp!r}")
    return amp is True or (amp == "auto" and device.type == "cuda")


def autocast_dtype(name: str) -> torch.dtype:
    """``"float16"`` / ``"bfloat16"`` → the torch dtype."""
    dtypes = {"float16": torch.float16, "bfloat16": torch.bfloat16}
    if name not in dtypes:
        raise ValueError(f"amp_dtype must be one of {sorted(dtypes)}, got {name!r}")
    return dtypes[name]


def batch_mixer(config: TrainConfig) -> BatchMixer | None:
    """The label smoothing / mixup / cutmix of ``config``, or ``None`` when all are off."""
    if not (config.label_smoothing > 0 or config.mixup_alpha > 0 or config.cutmix_alpha > 0):
        return None
    if config.num_classes is None:
        raise ValueError("label smoothing, mixup and cutmix need TrainConfig.num_classes")
    return BatchMixer(
        config.num_classes, label_smoothing=config.label_smoothing,
        mixup_alpha=config.mixup_alpha, cutmix_alpha=config.cutmix_alpha,
        prob=config.mixup_prob, switch_prob=config.mixup_switch_prob,
    )  # fmt: skip
