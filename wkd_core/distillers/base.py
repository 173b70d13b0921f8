"""The distiller contract: a student, a frozen teacher, extra trainable modules, named losses.

Every method (vanilla, KD, DKD, WKD-L, WKD-F, WKD-LF) is a :class:`Distiller`. The trainer
only ever calls ``distiller(images, targets, epoch=..., total_epochs=...)`` and sums the
returned loss terms; evaluation calls :meth:`Distiller.forward_test`.
"""

from __future__ import annotations

import abc
from collections.abc import Iterator
from dataclasses import dataclass, field

import torch
from torch import Tensor, nn


@dataclass
class DistillOutput:
    """What one training forward returns.

    Attributes:
        logits: (B, C) student logits, for the training accuracy.
        losses: named scalar loss terms (``loss_ce``, ``loss_kd``, ``loss_wd`` …); the trainer
            back-propagates their sum and logs each one.
    """

    logits: Tensor
    losses: dict[str, Tensor] = field(default_factory=dict)

    @property
    def total(self) -> Tensor:
        return torch.stack([v.float() for v in self.losses.values()]).sum()


class Distiller(nn.Module, abc.ABC):
    """Base class: owns the student, an optional frozen teacher and extra trainable modules.

    The teacher has ``requires_grad_(False)``, stays in ``eval()`` whatever ``train()`` is
    called with, and subclasses run it under ``torch.no_grad()`` (see :meth:`teacher_forward`).
    Projectors and other trainable modules are ordinary submodules, so ``state_dict``,
    checkpoints and DistributedDataParallel pick them up with no further code.
    """

    def __init__(self, student: nn.Module, teacher: nn.Module | None = None) -> None:
        super().__init__()
        self.student = student
        self.teacher = teacher
        if teacher is not None:
            teacher.requires_grad_(False)
            teacher.eval()

    def train(self, mode: bool = True) -> Distiller:
        super().train(mode)
        if self.teacher is not None:
            self.teacher.eval()  # BN statistics of the teacher never move
        return self

    @abc.abstractmethod
    def forward(
        self, images: Tensor, targets: Tensor, *, epoch: int = 1, total_epochs: int = 1
    ) -> DistillOutput:
        """(B, 3, H, W) images, (B,) int64 labels → student logits and named loss terms.

        With label smoothing, mixup or cutmix (``wkd_core.train.mixing``) ``targets`` is a
        (B, C) float tensor of class probabilities instead: cross-entropy takes it as it is
        (``F.cross_entropy`` accepts probabilities), and a term that needs one class per
        sample uses ``wkd_core.train.mixing.hard_labels(targets)``.

        ``epoch`` is 1-based; methods whose loss weights follow a schedule (the WKD cosine
        decay, the DKD warm-up) compute them from ``epoch`` and ``total_epochs`` with the pure
        functions of ``wkd_core.train.schedules``. The captured step passes ``epoch`` as a
        0-dim float tensor on the device: use it only through those functions (no ``if``
        on its value, no ``int(epoch)``), so that the graph stays valid for every epoch.
        """

    def fast_kernels(self, enabled: bool) -> None:
        """Switch to fused kernels that compute the same losses (the fast training step).

        No-op by default; WKD-L / WKD-LF then use the fused Triton Sinkhorn where it runs
        (``wkd_core.ot.sinkhorn_fused``), else the explicit-adjoint GEMM solver
        (``wkd_core.ot.sinkhorn_adjoint``).
        """

    def forward_test(self, images: Tensor) -> Tensor:
        """(B, 3, H, W) images → (B, C) student logits."""
        return self.student(images)

    @torch.no_grad()
    def teacher_forward(self, images: Tensor) -> tuple[Tensor, dict]:
        """Teacher logits and features, without autograd."""
        assert self.teacher is not None, "this method needs a teacher"
        return self.teacher.forward_features(images)

    def trainable_parameters(self) -> Iterator[nn.Parameter]:
        """Student and extra modules: everything but the teacher (what the optimizer gets)."""
        for name, param in self.named_parameters():
            if not name.startswith("teacher.") and param.requires_grad:
                yield param

    def trainable_state_dict(self) -> dict[str, Tensor]:
        """State of everything except the teacher: what a resumable checkpoint stores."""
        return {k: v for k, v in self.state_dict().items() if not k.startswith("teacher.")}
