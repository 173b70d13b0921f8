"""The trainer's configuration (:class:`TrainConfig`) and the helpers that read it: AMP,
autocast dtype and the batch regularisers (label smoothing, mixup, cutmix)."""

from __future__ import annotations

import math
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

    def __post_init__(self) -> None:
        """Refuse settings that would train silently wrong (a negative clip norm ascends the
        gradient, label smoothing ≥ 1 makes negative targets) or fail deep in the loop."""
        errors = [message for name, ok, message in self._checks() if not ok]
        if errors:
            raise ValueError("invalid TrainConfig: " + "; ".join(errors))

    def _checks(self) -> list[tuple[str, bool, str]]:
        def number(value: Any) -> bool:
            return isinstance(value, (int, float)) and not isinstance(value, bool) and (
                math.isfinite(value))  # fmt: skip

        def integer(value: Any) -> bool:
            return isinstance(value, int) and not isinstance(value, bool)

        def at_least(name: str, low: float, *, strict: bool = False) -> tuple[str, bool, str]:
            value = getattr(self, name)
            ok = number(value) and (value > low if strict else value >= low)
            return name, ok, f"{name} must be {'>' if strict else '>='} {low:g}, got {value!r}"

        def fraction(name: str, *, below_one: bool = False) -> tuple[str, bool, str]:
            value = getattr(self, name)
            ok = number(value) and value >= 0 and (value < 1 if below_one else value <= 1)
            bound = "[0, 1)" if below_one else "[0, 1]"
            return name, ok, f"{name} must be in {bound}, got {value!r}"

        milestones = list(self.lr_milestones)
        betas = list(self.betas)
        return [
            ("epochs", integer(self.epochs) and self.epochs >= 1,
             f"epochs must be an integer >= 1, got {self.epochs!r}"),
            at_least("lr", 0, strict=True), at_least("lr_gamma", 0, strict=True),
            at_least("min_lr", 0), at_least("warmup_lr", 0), at_least("momentum", 0),
            at_least("weight_decay", 0), at_least("eps", 0, strict=True),
            at_least("mixup_alpha", 0), at_least("cutmix_alpha", 0),
            ("warmup_epochs", integer(self.warmup_epochs) and self.warmup_epochs >= 0,
             f"warmup_epochs must be an integer >= 0, got {self.warmup_epochs!r}"),
            ("lr_milestones", all(integer(m) and m >= 1 for m in milestones),
             f"lr_milestones must be integers >= 1, got {milestones!r}"),
            ("betas", len(betas) == 2 and all(number(b) and 0 <= b < 1 for b in betas),
             f"betas must be two numbers in [0, 1), got {betas!r}"),
            fraction("label_smoothing", below_one=True), fraction("mixup_prob"),
            fraction("mixup_switch_prob"),
            ("num_classes", self.num_classes is None or (
                integer(self.num_classes) and self.num_classes >= 2),
             f"num_classes must be an integer >= 2, got {self.num_classes!r}"),
            ("log_every", integer(self.log_every) and self.log_every >= 1,
             f"log_every must be an integer >= 1, got {self.log_every!r}"),
            ("grad_clip_norm", self.grad_clip_norm is None or (
                number(self.grad_clip_norm) and self.grad_clip_norm > 0),
             f"grad_clip_norm must be > 0 (or None: no clipping), got {self.grad_clip_norm!r}"),
        ]  # fmt: skip

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
