r"""Closed-form 2-Wasserstein distances between Gaussians (the WKD-F ground truth).

.. math::
    W_2^2\big(\mathcal N(\mu_s, \Sigma_s), \mathcal N(\mu_t, \Sigma_t)\big)
      = \lVert \mu_s - \mu_t \rVert^2
      + \operatorname{tr}\big(\Sigma_s + \Sigma_t
        - 2 (\Sigma_s^{1/2} \Sigma_t \Sigma_s^{1/2})^{1/2}\big)

The second term is the squared Bures metric. For diagonal covariances it reduces to
``Σ_k (σ_s,k − σ_t,k)²``: the difference of *standard deviations*, which is why WKD-F matches
stds, not variances.

Reference: G. Peyré and M. Cuturi, "Computational Optimal Transport", 2019, Remark 2.31;
Lv, Yang and Li, "Wasserstein Distance Rivals Kullback-Leibler Divergence for Knowledge
Distillation", NeurIPS 2024, Eq. for D_WD(N_T, N_S).
"""

from __future__ import annotations

import torch
from torch import Tensor

__all__ = ["bures_wasserstein", "diag_gaussian_w2"]


def diag_gaussian_w2(
    mean_s: Tensor, std_s: Tensor, mean_t: Tensor, std_t: Tensor, *, mean_weight: float = 1.0
) -> Tensor:
    """Squared W2 between diagonal Gaussians, optionally re-weighting the mean term.

    ``γ·Σ_k (μ_s,k − μ_t,k)² + Σ_k (σ_s,k − σ_t,k)²`` over the last dim; γ = 1 is exactly W2².

    Args:
        mean_s: (…, d) source means.
        std_s: (…, d) source standard deviations (not variances).
        mean_t: (…, d) target means.
        std_t: (…, d) target standard deviations.
        mean_weight: γ, the WKD-F ``MEAN_COV_RATIO``.

    Returns:
        (…,) the weighted squared distance per Gaussian pair.
    """
    return mean_weight * (mean_s - mean_t).pow(2).sum(-1) + (std_s - std_t).pow(2).sum(-1)


def bures_wasserstein(
    mean_s: Tensor, cov_s: Tensor, mean_t: Tensor, cov_t: Tensor, *, mean_weight: float = 1.0
) -> Tensor:
    """Squared W2 between full-covariance Gaussians (mean term weighted by γ).

    The cross term ``tr (Σ_s^{1/2} Σ_t Σ_s^{1/2})^{1/2}`` is computed as ``Σ_k sqrt(λ_k)``
    with ``λ = eigvalsh(Lᵀ Σ_t L)`` and ``Σ_s = L Lᵀ`` (Cholesky): ``Lᵀ Σ_t L`` has the
    eigenvalues of ``Σ_s Σ_t``. This avoids a matrix square root, whose eigenvector gradient
    divides by eigenvalue gaps and is NaN for the repeated eigenvalues of rank-deficient
    sample covariances plus ``eps·I``; eigenvalue-only gradients have no such term.

    Args:
        mean_s: (…, d) source means.
        cov_s: (…, d, d) source covariances, positive definite (Cholesky must succeed).
        mean_t: (…, d) target means.
        cov_t: (…, d, d) target covariances, positive semi-definite.
        mean_weight: γ; 1 gives the squared 2-Wasserstein distance.

    Returns:
        (…,) the weighted squared distance.
    """
    chol = torch.linalg.cholesky(cov_s)  # (…, d, d)
    inner = chol.transpose(-2, -1) @ cov_t @ chol  # (…, d, d), symmetric PSD
    inner = 0.5 * (inner + inner.transpose(-2, -1))
    eig = torch.linalg.eigvalsh(inner).clamp_min(torch.finfo(inner.dtype).tiny)
    trace = torch.diagonal(cov_s, dim1=-2, dim2=-1).sum(-1)
    trace = trace + torch.diagonal(cov_t, dim1=-2, dim2=-1).sum(-1)
    bures = trace - 2.0 * eig.sqrt().sum(-1)
    return mean_weight * (mean_s - mean_t).pow(2).sum(-1) + bures
