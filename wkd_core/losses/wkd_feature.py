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
import numbers

import torch
from torch import Tensor, nn

from wkd_core.losses._checks import autocast_off, check_count, check_tensor, loss_dtype
from wkd_core.ot.gaussian import bures_wasserstein, diag_w2

__all__ = ["WKDFeatureLoss", "grid_cells", "grid_positions", "wkd_feature_loss"]

_COVARIANCES = ("diag", "full")


def grid_cells(size: int, grid: int) -> list[tuple[int, int]]:
    """The ``grid`` intervals ``[floor(i·size/g), ceil((i+1)·size/g))`` adaptive pooling uses.

    They overlap when ``grid`` does not divide ``size``: 7 with g=4 gives
    [0,2), [1,4), [3,6), [5,7).
    """
    return [(i * size // grid, math.ceil((i + 1) * size / grid)) for i in range(grid)]


def check_feature_options(*, gamma: float, grid: int, eps: float, covariance: str) -> None:
    """The hyper-parameter checks of :func:`wkd_feature_loss` that need no features (also run
    by :class:`WKDFeatureLoss` at construction): an int grid ≥ 1, a finite γ, a finite ε ≥ 0
    (``"diag"``) or ε > 0 (``"full"``: the covariance must stay positive definite)."""
    if covariance not in _COVARIANCES:
        raise ValueError(f"covariance must be one of {_COVARIANCES}, got {covariance!r}")
    check_count(grid=grid)
    if isinstance(gamma, numbers.Real) and not math.isfinite(gamma):
        raise ValueError(f"gamma must be finite, got {gamma}")
    if isinstance(eps, bool) or not isinstance(eps, numbers.Real):
        raise TypeError(f"eps must be a real number, got {type(eps).__name__}")
    if not math.isfinite(eps):
        raise ValueError(f"eps must be finite, got {eps}")
    if covariance == "full" and not eps > 0:
        raise ValueError(
            f"eps must be > 0 with covariance='full' (it keeps the sample covariance positive "
            f"definite), got {eps}"
        )
    if not eps >= 0:
        raise ValueError(f"eps must be >= 0 (it is added to the variances), got {eps}")


def check_grid_fits(grid: int, height: int, width: int, *, cells_of_two: bool = True) -> None:
    """A g×g grid on an H×W map: g ≤ min(H, W), and with ``cells_of_two`` every cell of ≥ 2
    positions (the Gaussians' unbiased variance). The WKD-F distiller checks it when it is
    built (the map's size is known then), so a job fails while preparing, not at its first
    batch."""
    if not 1 <= grid <= min(height, width):
        raise ValueError(f"grid must be in [1, {min(height, width)}] for a {height}x{width} map")
    if not cells_of_two:
        return
    rows, cols = grid_cells(height, grid), grid_cells(width, grid)
    if min(hi - lo for lo, hi in rows) * min(hi - lo for lo, hi in cols) < 2:
        raise ValueError(f"grid {grid} leaves single-position cells on a {height}x{width} map")


def check_feature_maps(feat_student: Tensor, feat_teacher: Tensor) -> None:
    """Both (B, C, H, W) tensors of one shape, with B ≥ 1."""
    check_tensor(feat_student=feat_student, feat_teacher=feat_teacher)
    if feat_student.dim() != 4 or feat_student.shape != feat_teacher.shape:
        raise ValueError(
            "feat_student and feat_teacher must both be (B, C, H, W) of the same shape, got "
            f"{tuple(feat_student.shape)} and {tuple(feat_teacher.shape)}"
        )
    if feat_student.shape[0] == 0:
        raise ValueError("feat_student is an empty batch (B=0): the batch-mean loss is undefined")


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
        eps: added to the variances; ≥ 0 (``"diag"``) or > 0 (``"full"``).
        covariance: ``"diag"`` or ``"full"``.

    Returns:
        Scalar loss.
    """
    check_feature_maps(feat_student, feat_teacher)
    check_feature_options(gamma=gamma, grid=grid, eps=eps, covariance=covariance)
    batch, _, height, width = feat_student.shape
    check_grid_fits(grid, height, width)

    term = _diag_term if covariance == "diag" else _full_term
    dtype = loss_dtype(feat_student)
    with autocast_off(feat_student.device.type):
        cells_s, weight = grid_positions(feat_student.to(dtype), grid)
        cells_t, _ = grid_positions(feat_teacher.to(dtype), grid)
        return term(cells_s, cells_t, weight, gamma, eps).sum() / (batch * grid * grid)


def grid_positions(feat: Tensor, grid: int) -> tuple[Tensor, Tensor | None]:
    """The positions of every cell of :func:`grid_cells`, gathered in one pass.

    Args:
        feat: (B, C, H, W) feature map.
        grid: g.

    Returns:
        ``(cells, weight)``: cells (B, g², C, L), row-major over the g×g cells, with L the
        largest cell's position count; weight (g², 1, L), 1 at a cell's real positions and 0
        at padding, or ``None`` when g divides H and W (every cell then has L positions and
        ``cells`` is a plain reshape).
    """
    batch, channels, height, width = feat.shape
    if height % grid == 0 and width % grid == 0:
        h, w = height // grid, width // grid
        cells = feat.reshape(batch, channels, grid, h, grid, w).permute(0, 2, 4, 1, 3, 5)
        return cells.reshape(batch, grid * grid, channels, h * w), None
    rows, row_ok = _cell_index(height, grid, feat.device)  # (g, h)
    cols, col_ok = _cell_index(width, grid, feat.device)  # (g, w)
    h, w = rows.shape[1], cols.shape[1]
    picked = feat.index_select(2, rows.flatten()).index_select(3, cols.flatten())
    cells = picked.reshape(batch, channels, grid, h, grid, w).permute(0, 2, 4, 1, 3, 5)
    weight = (row_ok[:, None, :, None] & col_ok[None, :, None, :]).to(feat.dtype)
    return cells.reshape(batch, grid * grid, channels, h * w), weight.reshape(grid * grid, 1, h * w)


def _cell_index(size: int, grid: int, device: torch.device) -> tuple[Tensor, Tensor]:
    """(g, n) indices of each cell's positions, padded with its last one, and their mask.

    Built from ``arange`` on the device (no host copy, so it can run inside a CUDA graph
    capture); the cells are those of :func:`grid_cells`.
    """
    longest = max(hi - lo for lo, hi in grid_cells(size, grid))
    cell = torch.arange(grid, device=device)
    lo = cell * size // grid
    hi = ((cell + 1) * size + grid - 1) // grid  # ceil((i + 1)·size / g)
    index = lo[:, None] + torch.arange(longest, device=device)[None, :]
    inside = index < hi[:, None]
    return torch.minimum(index, hi[:, None] - 1), inside


def _cell_moments(cells: Tensor, weight: Tensor | None) -> tuple[Tensor, Tensor, Tensor | float]:
    """Per-cell mean (B, g², C), centred positions (zero at padding) and count − 1
    (a float when every cell has the same count, else (g², 1))."""
    if weight is None:
        mean = cells.mean(-1)
        return mean, cells - mean.unsqueeze(-1), cells.shape[-1] - 1.0
    count = weight.sum(-1)  # (g², 1)
    mean = (cells * weight).sum(-1) / count
    return mean, (cells - mean.unsqueeze(-1)) * weight, count - 1


def _diag_term(
    cells_s: Tensor, cells_t: Tensor, weight: Tensor | None, gamma: float, eps: float
) -> Tensor:
    """(B, g²) diagonal-Gaussian W2² (mean term weighted) of (B, g², C, L) cells."""
    stats = []
    for cells in (cells_s, cells_t):
        if weight is None:  # torch's own mean and unbiased variance, as per cell before
            stats.append((cells.mean(-1), torch.sqrt(cells.var(dim=-1) + eps)))
        else:
            mean, centred, dof = _cell_moments(cells, weight)
            stats.append((mean, torch.sqrt(centred.square().sum(-1) / dof + eps)))
    (mean_s, std_s), (mean_t, std_t) = stats
    return diag_w2(mean_s, std_s, mean_t, std_t, mean_weight=gamma)


def _full_term(
    cells_s: Tensor, cells_t: Tensor, weight: Tensor | None, gamma: float, eps: float
) -> Tensor:
    """(B, g²) full-covariance W2² (mean term weighted) of (B, g², C, L) cells."""
    mean_s, centred_s, dof = _cell_moments(cells_s, weight)
    mean_t, centred_t, _ = _cell_moments(cells_t, weight)
    return bures_wasserstein(
        mean_s,
        _covariance(centred_s, dof, eps),
        mean_t,
        _covariance(centred_t, dof, eps),
        mean_weight=gamma,
    )


def _covariance(centred: Tensor, dof: Tensor | float, eps: float) -> Tensor:
    """(B, g², C, C) unbiased covariance over positions, plus eps·I."""
    dof = dof if isinstance(dof, float) else dof.unsqueeze(-1)  # (g², 1, 1)
    cov = centred @ centred.transpose(-1, -2) / dof
    return cov + eps * torch.eye(centred.shape[-2], dtype=centred.dtype, device=centred.device)


class WKDFeatureLoss(nn.Module):
    """Module form of :func:`wkd_feature_loss`."""

    def __init__(
        self, *, gamma: float = 1.0, grid: int = 1, eps: float = 1e-5, covariance: str = "diag"
    ) -> None:
        super().__init__()
        check_feature_options(gamma=gamma, grid=grid, eps=eps, covariance=covariance)
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
