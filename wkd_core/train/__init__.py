"""Training: ``fit``, its configuration, schedules, callbacks, checkpoints and DDP helpers."""

from wkd_core.train.callbacks import (
    Callback,
    MetricsLogger,
    ProgressBar,
    StopTraining,
    TrainState,
    write_metrics,
)
from wkd_core.train.checkpoint import (
    CHECKPOINT_NAME,
    load_checkpoint,
    save_atomic,
    seed_everything,
)
from wkd_core.train.metrics import EpochMetrics, FitResult, topk_correct
from wkd_core.train.schedules import cosine_decay_factor, linear_warmup, step_lr
from wkd_core.train.trainer import TrainConfig, evaluate, fit, train_one_epoch

__all__ = [
    "CHECKPOINT_NAME",
    "Callback",
    "EpochMetrics",
    "FitResult",
    "MetricsLogger",
    "ProgressBar",
    "StopTraining",
    "TrainConfig",
    "TrainState",
    "cosine_decay_factor",
    "evaluate",
    "fit",
    "linear_warmup",
    "load_checkpoint",
    "save_atomic",
    "seed_everything",
    "step_lr",
    "topk_correct",
    "train_one_epoch",
    "write_metrics",
]
