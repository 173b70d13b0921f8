"""Label smoothing, mixup and cutmix: the batch-level regularisers of OFA-KD's recipe.

They follow timm's ``Mixup`` (``mode="batch"``), which OFA-KD's ``train.py`` builds from
``--mixup``, ``--cutmix``, ``--mixup-prob``, ``--mixup-switch-prob`` and ``--smoothing``:

* with probability ``prob`` a batch is mixed, else left alone (λ = 1); when both alphas are
  positive, cutmix is chosen with probability ``switch_prob``, else mixup;
* **mixup** (Zhang et al., ICLR 2018): ``x ← λ·x + (1 − λ)·flip(x)`` with λ ~ Beta(α, α),
  ``flip`` reversing the batch order (sample b is paired with sample B − 1 − b);
* **cutmix** (Yun et al., ICCV 2019): λ ~ Beta(α, α); a box of sides ``⌊H√(1−λ)⌋`` by
  ``⌊W√(1−λ)⌋`` centred at a uniform pixel, clipped to the image, is pasted from ``flip(x)``
  and λ becomes the uncovered fraction ``1 − box area / (H·W)``;
* **targets** become (B, C) probabilities ``λ·s(y) + (1 − λ)·s(flip(y))`` with the smoothed
  one-hot ``s(y) = (1 − ε)·onehot(y) + ε/C`` (ε = ``label_smoothing``). Cross-entropy against
  them is linear in the target, so with λ = 1 it equals
  ``F.cross_entropy(logits, y, label_smoothing=ε)``.

How distillation sees a mixed batch: the distiller gets the mixed images, so **the teacher
sees the same mixed images as the student**; the cross-entropy terms take the soft targets
(``F.cross_entropy`` accepts class probabilities); terms that need one class per sample
(DKD's target mask, WKD-L's target term and non-target distribution) take
:func:`hard_labels`, the most probable class of the soft target, as OFA-KD's ``dkd.py``
does (``label.max(1)[1]``). The training accuracy counts against the same hard labels.

The draws come from a NumPy generator the trainer re-seeds from (seed, epoch, rank) at the
start of every epoch, so a resumed run mixes its batches as an uninterrupted one.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import NamedTuple

import numpy as np
import torch
from torch import Tensor


def smoothed_one_hot(targets: Tensor, num_classes: int, smoothing: float = 0.0) -> Tensor:
    """(B,) labels → (B, C) float32 ``(1 − ε)·onehot + ε/C`` (timm's ``one_hot`` targets)."""
    off = smoothing / num_classes
    out = torch.full((targets.shape[0], num_classes), off, device=targets.device)
    return out.scatter_(1, targets.long()[:, None], 1.0 - smoothing + off)


def hard_labels(targets: Tensor) -> Tensor:
    """(B,) labels as they are; (B, C) soft targets → their most probable class, (B,)."""
    return targets if targets.dim() == 1 else targets.argmax(dim=1)


class Box(NamedTuple):
    """Rows ``top:bottom`` and columns ``left:right`` of a cutmix box."""

    top: int
    bottom: int
    left: int
    right: int

    def area(self) -> int:
        return (self.bottom - self.top) * (self.right - self.left)


class MixDraw(NamedTuple):
    """One batch's draw: ``kind`` ("none", "mixup" or "cutmix"), the final λ, the box."""

    kind: str
    lam: float
    box: Box | None = None


def cutmix_box(height: int, width: int, lam: float, rng: np.random.Generator) -> Box:
    """The box of cutmix for a drawn λ: sides ``⌊H√(1−λ)⌋``, ``⌊W√(1−λ)⌋``, a uniform centre,
    half-sides ``⌊side/2⌋`` on each side, clipped to the image (timm's ``rand_bbox``)."""
    ratio = math.sqrt(1.0 - lam)
    cut_h, cut_w = int(height * ratio), int(width * ratio)
    cy, cx = int(rng.integers(0, height)), int(rng.integers(0, width))
    return Box(
        max(cy - cut_h // 2, 0),
        min(cy + cut_h // 2, height),
        max(cx - cut_w // 2, 0),
        min(cx + cut_w // 2, width),
    )


@dataclass
class BatchMixer:
    """Turns a batch of (images, labels) into (mixed images, soft targets) (module doc).

    Args:
        num_classes: C, the width of the soft targets.
        label_smoothing: ε in [0, 1).
        mixup_alpha, cutmix_alpha: Beta parameters; 0 disables that kind.
        prob: probability that a batch is mixed at all.
        switch_prob: probability of cutmix when both kinds are enabled.
    """

    num_classes: int
    label_smoothing: float = 0.0
    mixup_alpha: float = 0.0
    cutmix_alpha: float = 0.0
    prob: float = 1.0
    switch_prob: float = 0.5
    rng: np.random.Generator = field(default_factory=lambda: np.random.default_rng(0))

    @property
    def mixing(self) -> bool:
        return self.mixup_alpha > 0 or self.cutmix_alpha > 0

    def reseed(self, seed: int) -> None:
        self.rng = np.random.default_rng(seed)

    def draw(self, height: int, width: int) -> MixDraw:
        """Whether and how to mix the next batch (timm's ``_params_per_batch`` order)."""
        if not self.mixing or self.rng.random() >= self.prob:
            return MixDraw("none", 1.0)
        use_cutmix = self.mixup_alpha <= 0
        if self.mixup_alpha > 0 and self.cutmix_alpha > 0:
            use_cutmix = bool(self.rng.random() < self.switch_prob)
        alpha = self.cutmix_alpha if use_cutmix else self.mixup_alpha
        lam = float(self.rng.beta(alpha, alpha))
        if not use_cutmix:
            return MixDraw("mixup", lam)
        box = cutmix_box(height, width, lam, self.rng)
        return MixDraw("cutmix", 1.0 - box.area() / (height * width), box)

    def __call__(self, images: Tensor, targets: Tensor) -> tuple[Tensor, Tensor]:
        """(B, c, H, W) images, (B,) labels → mixed images (a new tensor), (B, C) targets."""
        draw = self.draw(images.shape[-2], images.shape[-1])
        return mix(images, targets, draw, self.num_classes, self.label_smoothing)


def mix(
    images: Tensor, targets: Tensor, draw: MixDraw, num_classes: int, smoothing: float = 0.0
) -> tuple[Tensor, Tensor]:
    """Apply one :class:`MixDraw` to a batch; the targets become soft (module doc)."""
    soft = smoothed_one_hot(targets, num_classes, smoothing)
    if draw.kind == "none":
        return images, soft
    partner = images.flip(0)
    if draw.kind == "mixup":
        mixed = images * draw.lam + partner * (1.0 - draw.lam)
    else:
        assert draw.box is not None
        top, bottom, left, right = draw.box
        mixed = images.clone()
        mixed[..., top:bottom, left:right] = partner[..., top:bottom, left:right]
    return mixed, soft * draw.lam + soft.flip(0) * (1.0 - draw.lam)
