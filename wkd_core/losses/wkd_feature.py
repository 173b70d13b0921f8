"""WKD-F: feature distillation with the closed-form Wasserstein distance between Gaussians.

Each (sample, grid cell) of a (B, C, H, W) feature map is modelled as a Gaussian over the C
channels, estimated from the cell's spatial positions. The authors use diagonal covariances
(per-channel mean and std); a full-covariance option is given for detection-style uses
(the authors' advice in github.com/JiamingLv/WKD/issues/5).

Reference: J. Lv, H. Yang, P. Li, "Wasserstein Distance Rivals Kullback-Leibler Divergence
for Knowledge Distillation", NeurIPS 2024, §3.2 (WKD-F); the authors' code
``mdistiller/distillers/WKD.py`` (``wkd_feature_loss``, ``adaptive_avg_std_pool2d``).
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from wkd_core.losses._checks import autocast_off, loss_dtype
from wkd_core.ot.gaussian import bures_wasserstein, diag_gaussian_w2

__all__ = ["WKDFeatureLoss", "grid_cells", "wkd_feature_loss"]

_COVARIANCES = ("diag", "full")


def grid_cells(size: int, grid: int) -> list[tuple[int, int]]:
    """The ``grid`` intervals ``[floor(i·size/g), ceil((i+1)·size/g))`` adaptive pooling uses.

    They overlap when ``grid`` does not divide ``size``: 7 with g=4 gives
    [0,2), [1,4), [3,6), [5,7).
    """
    return [(i * size // grid, math.ceil((i + 1) * size / grid)) for i in range(grid)]


def wkd_feature_loss(
    feat_student: Tensor,
    feat_teacher: Tensor,
    *,
    gamma: float = 1.0,
    grid: int = 1,
    eps: float = 1e-5,
    covariance: str = "diag",
) -> Tensor:
    """``(1 / (B·g²)) Σ_{b, cell} [ γ ‖μ_S − μ_T‖² + Bures²(Σ_S, Σ_T) ]``.

    With ``covariance="diag"`` (the authors'): per channel, ``μ`` is the mean over the cell's
    positions and ``σ = sqrt(unbiased variance + eps)``, and the Bures term is
    ``Σ_c (σ_S − σ_T)²``; γ = 1 gives exactly W2². With ``"full"``: the C×C unbiased sample
    covariance over the cell's positions plus ``eps·I``, and the full Bures term.
    The teacher is not detached here (the distiller runs it under ``no_grad``). Computed in
    float32 (float64 kept) with autocast off, as in the authors' code.

    Args:
        feat_student: (B, C, H, W) student features (after any projector).
        feat_teacher: (B, C, H, W) teacher features.
        gamma: γ, weight of the mean term (``MEAN_COV_RATIO``).
        grid: g, the map is split into g×g cells placed as adaptive average pooling does.
            Every cell needs at least 2 positions (unbiased variance).
        eps: added to the variances.
        covariance: ``"diag"`` or ``"full"``.

    Returns:
        Scalar loss.
    """
    if feat_student.dim() != 4 or feat_student.shape != feat_teacher.shape:
        raise ValueError(
            "feat_student and feat_teacher must both be (B, C, H, W) of the same shape, got "
            f"{tuple(feat_student.shape)} and {tuple(feat_teacher.shape)}"
        )
    if covariance not in _COVARIANCES:
        raise ValueError(f"covariance must be one of {_COVARIANCES}, got {covariance!r}")
    batch, _, height, width = feat_student.shape
    if not 1 <= grid <= min(height, width):
        raise ValueError(f"grid must be in [1, {min(height, width)}] for a {height}x{width} map")
    rows, cols = grid_cells(height, grid), grid_cells(width, grid)
    if min(hi - lo for lo, hi in rows) * min(hi - lo for lo, hi in cols) < 2:
        raise ValueError(f"grid {grid} leaves single-position cells on a {height}x{width} map")

    term = _diag_term if covariance == "diag" else _full_term
    dtype = loss_dtype(feat_student)
    with autocast_off(feat_student.device.type):
        feat_student, feat_teacher = feat_student.to(dtype), feat_teacher.to(dtype)
        total = feat_student.new_zeros(())
        for r0, r1 in rows:
            for c0, c1 in cols:
                cell_s = feat_student[:, :, r0:r1, c0:c1].flatten(2)  # (B, C, n)
                cell_t = feat_teacher[:, :, r0:r1, c0:c1].flatten(2)
                total = total + term(cell_s, cell_t, gamma, eps).sum()
        return total / (batch * grid * grid)


def _diag_term(cell_s: Tensor, cell_t: Tensor, gamma: float, eps: float) -> Tensor:
    """(B,) diagonal-Gaussian W2² (mean term weighted) of (B, C, n) cells."""
    std_s = torch.sqrt(cell_s.var(dim=2) + eps)  # unbiased, (B, C)
    std_t = torch.sqrt(cell_t.var(dim=2) + eps)
    return diag_gaussian_w2(cell_s.mean(2), std_s, cell_t.mean(2), std_t, mean_weight=gamma)


def _full_term(cell_s: Tensor, cell_t: Tensor, gamma: float, eps: float) -> Tensor:
    """(B,) full-covariance W2² (mean term weighted) of (B, C, n) cells."""
    mean_s, mean_t = cell_s.mean(2), cell_t.mean(2)  # (B, C)
    return bures_wasserstein(
        mean_s,
        _covariance(cell_s, mean_s, eps),
        mean_t,
        _covariance(cell_t, mean_t, eps),
        mean_weight=gamma,
    )


def _covariance(cell: Tensor, mean: Tensor, eps: float) -> Tensor:
    """(B, C, C) unbiased covariance over positions, plus eps·I."""
    centred = cell - mean.unsqueeze(2)  # (B, C, n)
    cov = centred @ centred.transpose(1, 2) / (cell.shape[2] - 1)
    return cov + eps * torch.eye(cell.shape[1], dtype=cell.dtype, device=cell.device)


class WKDFeatureLoss(nn.Module):
    """Module form of :func:`wkd_feature_loss`."""

    def __init__(
        self, *, gamma: float = 1.0, grid: int = 1, eps: float = 1e-5, covariance: str = "diag"
    ) -> None:
        super().__init__()
        if covariance not in _COVARIANCES:
            raise ValueError(f"covariance must be one of {_COVARIANCES}, got {covariance!r}")
        self.gamma, self.grid, self.eps, self.covariance = gamma, grid, eps, covariance

    def forward(self, feat_student: Tensor, feat_teacher: Tensor) -> Tensor:
        return wkd_feature_loss(
            feat_student,
            feat_teacher,
            gamma=self.gamma,
            grid=self.grid,
            eps=self.eps,
            covariance=self.covariance,
        )

    def extra_repr(self) -> str:
        return (
            f"gamma={self.gamma}, grid={self.grid}, eps={self.eps}, covariance={self.covariance!r}"
        )
