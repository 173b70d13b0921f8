r"""WKD-F's ablation "how to model distributions": the same statistics, other dissimilarities.

The paper's Table 2 (ImageNet ResNet34→ResNet18) keeps the WKD-F pipeline (last-stage maps,
student projector, per-channel statistics over the spatial positions of each grid cell) and
swaps the dissimilarity between the per-channel distributions of teacher (T) and student (S):

==================  ===========================================================  ======
``divergence``      per channel, summed over channels                            top-1
==================  ===========================================================  ======
``gaussian_wd``     γ(μ_T − μ_S)² + (σ_T − σ_S)²  (W2² of 1-D Gaussians; WKD-F)   72.50
``gaussian_kl``     KL(N_T ‖ N_S) = log(σ_S/σ_T) + [σ_T² + γ(μ_T−μ_S)²]/(2σ_S²) − ½  71.75
``gaussian_sym_kl`` KL(N_T ‖ N_S) + KL(N_S ‖ N_T)  (Jeffreys)                      71.93
``laplace_kl``      KL(L_T ‖ L_S) = log(b_S/b_T) + |Δμ|/b_S + (b_T/b_S)e^{−|Δμ|/b_T} − 1  71.38
``exponential_kl``  KL(E_T ‖ E_S) = log(θ_S/θ_T) + θ_T/θ_S − 1  (θ = scale = mean)  70.14
``pmf_wd``          W1 between per-channel histograms (non-parametric PMFs)        71.57
==================  ===========================================================  ======

Choices the paper does not state, made here and documented in ``docs/results.md``:

* KL is taken from the teacher to the student, KL(P_T ‖ P_S), the direction of Hinton's KD.
* Parameters are fitted by moments, so every family sees the same two numbers per channel:
  μ = mean over positions, σ = sqrt(unbiased variance + eps) (the WKD-F estimate); the
  Laplace scale is b = σ/√2 (variance 2b²); the exponential scale is θ = max(mean, 0) + eps
  (the features are post-ReLU, so non-negative, on every released pair).
* γ (``MEAN_COV_RATIO``) weights the mean term where the divergence separates one
  (``gaussian_wd``, ``gaussian_kl``, ``gaussian_sym_kl``); the others have no separate mean
  term and take γ = 1 (a different γ raises ``ValueError``, never silently ignored).
* ``pmf_wd``: per (sample, channel, cell), ``bins`` equally spaced centres spanning the
  common range of both maps' values (range detached); each value splits its unit mass
  linearly between its two nearest centres (differentiable, and it keeps the mean); the
  1-D W1 is ``Δ · Σ_k |CDF_T(k) − CDF_S(k)|``.

Normalisation is that of WKD-F: the sum over channels and cells, divided by B·g².

Reference: Lv, Yang, Li, "Wasserstein Distance Rivals Kullback-Leibler Divergence for
Knowledge Distillation", NeurIPS 2024, Table 2 (ablation of WKD-F); closed forms of the KL
divergences: e.g. Gil, Alajaji, Linder, "Rényi divergence measures for commonly used
univariate continuous distributions", Information Sciences 2013.
"""

from __future__ import annotations

import math
import numbers

import torch
from torch import Tensor, nn

from wkd_core.losses._checks import autocast_off, loss_dtype
from wkd_core.losses.wkd_feature import (
    check_feature_maps,
    check_feature_options,
    check_grid_fits,
    grid_cells,
    wkd_feature_loss,
)

__all__ = [
    "DIVERGENCES",
    "FeatureDivergenceLoss",
    "exponential_kl",
    "feature_divergence_loss",
    "gaussian_kl",
    "gaussian_sym_kl",
    "histogram_w1",
    "laplace_kl",
    "soft_histogram",
]

DIVERGENCES = (
    "gaussian_wd",
    "gaussian_kl",
    "gaussian_sym_kl",
    "laplace_kl",
    "exponential_kl",
    "pmf_wd",
)
_SEPARABLE = ("gaussian_wd", "gaussian_kl", "gaussian_sym_kl")
# Those whose cells need a variance (at least 2 positions): all but the mean-only exponential
# and the histogram one.
NEEDS_VARIANCE = ("gaussian_wd", "gaussian_kl", "gaussian_sym_kl", "laplace_kl")
SEPARABLE = _SEPARABLE  # the divergences that take γ ≠ 1 (a mean term of their own)
DEFAULT_BINS = 32  # pmf_wd's histogram bins


# ---- closed forms on parameters (elementwise, any shape) ---------------------------------------


def gaussian_kl(
    mean_t: Tensor, std_t: Tensor, mean_s: Tensor, std_s: Tensor, *, mean_weight: float = 1.0
) -> Tensor:
    """KL(N(μ_T, σ_T²) ‖ N(μ_S, σ_S²)), elementwise; ``mean_weight`` (γ) scales (μ_T − μ_S)²."""
    var_s = std_s.pow(2)
    quad = std_t.pow(2) + mean_weight * (mean_t - mean_s).pow(2)
    return torch.log(std_s / std_t) + quad / (2.0 * var_s) - 0.5


def gaussian_sym_kl(
    mean_t: Tensor, std_t: Tensor, mean_s: Tensor, std_s: Tensor, *, mean_weight: float = 1.0
) -> Tensor:
    """Jeffreys divergence KL(N_T ‖ N_S) + KL(N_S ‖ N_T), elementwise."""
    forward = gaussian_kl(mean_t, std_t, mean_s, std_s, mean_weight=mean_weight)
    return forward + gaussian_kl(mean_s, std_s, mean_t, std_t, mean_weight=mean_weight)


def laplace_kl(loc_t: Tensor, scale_t: Tensor, loc_s: Tensor, scale_s: Tensor) -> Tensor:
    """KL(Laplace(μ_T, b_T) ‖ Laplace(μ_S, b_S)), elementwise (scales b > 0)."""
    gap = (loc_t - loc_s).abs()
    ratio = scale_t / scale_s
    return -torch.log(ratio) + gap / scale_s + ratio * torch.exp(-gap / scale_t) - 1.0


def exponential_kl(scale_t: Tensor, scale_s: Tensor) -> Tensor:
    """KL(Exp(scale θ_T) ‖ Exp(scale θ_S)) = log(θ_S/θ_T) + θ_T/θ_S − 1, elementwise."""
    ratio = scale_t / scale_s
    return ratio - torch.log(ratio) - 1.0


# ---- the non-parametric probability mass function ----------------------------------------------


def soft_histogram(values: Tensor, lo: Tensor, hi: Tensor, *, bins: int) -> Tensor:
    """(…, n) values → (…, bins) PMF on ``bins`` centres equally spaced over [lo, hi].

    Each value gives its mass 1/n to its two nearest centres in proportion to proximity
    (linear binning), so the PMF's mean equals the values' mean and gradients reach the values.
    ``lo`` / ``hi`` are (…,) and treated as constants.
    """
    width = ((hi - lo) / (bins - 1)).clamp_min(torch.finfo(values.dtype).eps).unsqueeze(-1)
    position = ((values - lo.unsqueeze(-1)) / width).clamp(0, bins - 1)  # in [0, bins-1]
    left = position.detach().floor().clamp(max=bins - 2)
    frac = position - left  # weight of the right neighbour
    pmf = values.new_zeros(*values.shape[:-1], bins)
    share = 1.0 / values.shape[-1]
    pmf = pmf.scatter_add(-1, left.long(), (1.0 - frac) * share)
    return pmf.scatter_add(-1, left.long() + 1, frac * share)


def histogram_w1(pmf_t: Tensor, pmf_s: Tensor, width: Tensor) -> Tensor:
    """W1 between PMFs on the same equally spaced centres: ``Δ · Σ_k |CDF_T − CDF_S|``.

    Args:
        pmf_t: (…, K) teacher PMF.
        pmf_s: (…, K) student PMF.
        width: (…,) spacing Δ of the centres.
    """
    gap = (pmf_t.cumsum(-1) - pmf_s.cumsum(-1))[..., :-1].abs().sum(-1)
    return width * gap


# ---- the loss --------------------------------------------------------------------------------


def check_divergence_options(
    *, divergence: str, gamma: float, grid: int, eps: float, bins: int
) -> None:
    """The hyper-parameter checks of :func:`feature_divergence_loss` that need no features
    (also run by :class:`FeatureDivergenceLoss` at construction)."""
    if divergence not in DIVERGENCES:
        raise ValueError(f"divergence must be one of {DIVERGENCES}, got {divergence!r}")
    if gamma != 1.0 and divergence not in _SEPARABLE:
        raise ValueError(f"divergence {divergence!r} has no separate mean term: gamma must be 1")
    check_feature_options(gamma=gamma, grid=grid, eps=eps, covariance="diag")
    if divergence == "pmf_wd":
        if isinstance(bins, bool) or not isinstance(bins, numbers.Integral):
            raise TypeError(f"bins must be an int, got {type(bins).__name__} {bins!r}")
        if bins < 2:
            raise ValueError(f"bins must be >= 2 (a histogram needs two centres), got {bins}")


def feature_divergence_loss(
    feat_student: Tensor,
    feat_teacher: Tensor,
    *,
    divergence: str = "gaussian_wd",
    gamma: float = 1.0,
    grid: int = 1,
    eps: float = 1e-5,
    bins: int = DEFAULT_BINS,
) -> Tensor:
    """``(1 / (B·g²)) Σ_{b, cell, c} D(P_T[b, c, cell], P_S[b, c, cell])`` for one dissimilarity.

    ``gaussian_wd`` is exactly :func:`wkd_core.losses.wkd_feature_loss` (the method); the
    others are the paper's ablation (see the module docstring for each formula).

    Args:
        feat_student: (B, C, H, W) student features (after any projector).
        feat_teacher: (B, C, H, W) teacher features.
        divergence: one of :data:`DIVERGENCES`.
        gamma: γ, weight of the mean term (only where the divergence has one).
        grid: g, statistics per cell of a g×g adaptive-pooling grid.
        eps: added to the variances (and to the exponential scale).
        bins: histogram centres of ``pmf_wd``, ≥ 2.

    Returns:
        Scalar loss, float32 (float64 kept), computed with autocast off.
    """
    check_divergence_options(divergence=divergence, gamma=gamma, grid=grid, eps=eps, bins=bins)
    if divergence == "gaussian_wd":
        return wkd_feature_loss(feat_student, feat_teacher, gamma=gamma, grid=grid, eps=eps)
    check_feature_maps(feat_student, feat_teacher)
    batch, _, height, width = feat_student.shape
    check_grid_fits(grid, height, width, cells_of_two=divergence in NEEDS_VARIANCE)
    dtype = loss_dtype(feat_student)
    with autocast_off(feat_student.device.type):
        feat_s, feat_t = feat_student.to(dtype), feat_teacher.to(dtype)
        total = feat_s.new_zeros(())
        for r0, r1 in grid_cells(height, grid):
            for c0, c1 in grid_cells(width, grid):
                cell_s = feat_s[:, :, r0:r1, c0:c1].flatten(2)  # (B, C, n)
                cell_t = feat_t[:, :, r0:r1, c0:c1].flatten(2)
                total = (
                    total
                    + _cell_divergence(
                        cell_t, cell_s, divergence, gamma=gamma, eps=eps, bins=bins
                    ).sum()
                )
        return total / (batch * grid * grid)


def _cell_divergence(
    cell_t: Tensor, cell_s: Tensor, divergence: str, *, gamma: float, eps: float, bins: int
) -> Tensor:
    """(B, C) dissimilarities of (B, C, n) cells."""
    if divergence == "pmf_wd":
        lo = torch.minimum(cell_t.amin(-1), cell_s.amin(-1)).detach()
        hi = torch.maximum(cell_t.amax(-1), cell_s.amax(-1)).detach()
        pmf_t = soft_histogram(cell_t, lo, hi, bins=bins)
        pmf_s = soft_histogram(cell_s, lo, hi, bins=bins)
        return histogram_w1(pmf_t, pmf_s, (hi - lo) / (bins - 1))
    if divergence == "exponential_kl":
        scale_t = cell_t.mean(-1).clamp_min(0) + eps
        return exponential_kl(scale_t, cell_s.mean(-1).clamp_min(0) + eps)
    mean_t, mean_s = cell_t.mean(-1), cell_s.mean(-1)
    std_t = torch.sqrt(cell_t.var(-1) + eps)  # unbiased, as WKD-F
    std_s = torch.sqrt(cell_s.var(-1) + eps)
    if divergence == "gaussian_kl":
        return gaussian_kl(mean_t, std_t, mean_s, std_s, mean_weight=gamma)
    if divergence == "gaussian_sym_kl":
        return gaussian_sym_kl(mean_t, std_t, mean_s, std_s, mean_weight=gamma)
    return laplace_kl(mean_t, std_t / math.sqrt(2.0), mean_s, std_s / math.sqrt(2.0))


class FeatureDivergenceLoss(nn.Module):
    """Module form of :func:`feature_divergence_loss`."""

    def __init__(
        self,
        *,
        divergence: str = "gaussian_wd",
        gamma: float = 1.0,
        grid: int = 1,
        eps: float = 1e-5,
        bins: int = DEFAULT_BINS,
    ) -> None:
        super().__init__()
        check_divergence_options(divergence=divergence, gamma=gamma, grid=grid, eps=eps, bins=bins)
        self.divergence, self.gamma, self.grid, self.eps, self.bins = (
            divergence, gamma, grid, eps, bins
        )  # fmt: skip

    def forward(self, feat_student: Tensor, feat_teacher: Tensor) -> Tensor:
        return feature_divergence_loss(
            feat_student,
            feat_teacher,
            divergence=self.divergence,
            gamma=self.gamma,
            grid=self.grid,
            eps=self.eps,
            bins=self.bins,
        )

    def extra_repr(self) -> str:
        return f"divergence={self.divergence!r}, gamma={self.gamma}, grid={self.grid}"
