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


def _check_same_d(vectors: dict[str, Tensor], matrices: dict[str, Tensor]) -> None:
    """(…, d) vectors and (…, d, d) matrices, all of one d, batch dims broadcasting.

    Cheap Python checks: without them a d=2 mean broadcasts silently against a 3×3
    covariance, or (2, 1) means against (2, 3) stds.
    """
    for name, value in {**vectors, **matrices}.items():
        if not isinstance(value, Tensor):
            raise TypeError(f"{name} must be a torch.Tensor, got {type(value).__name__}")
    for name, value in vectors.items():
        if value.dim() < 1:
            raise ValueError(f"{name} must be (…, d), got a 0-d tensor")
    for name, value in matrices.items():
        if value.dim() < 2 or value.shape[-1] != value.shape[-2]:
            raise ValueError(f"{name} must be (…, d, d), got shape {tuple(value.shape)}")
    sizes = {name: v.shape[-1] for name, v in {**vectors, **matrices}.items()}
    if len(set(sizes.values())) != 1:
        shapes = ", ".join(f"{n} {tuple(v.shape)}" for n, v in {**vectors, **matrices}.items())
        raise ValueError(f"the Gaussians' dimension d differs between arguments: {shapes}")
    batches = [v.shape[:-1] for v in vectors.values()] + [m.shape[:-2] for m in matrices.values()]
    try:
        torch.broadcast_shapes(*batches)
    except RuntimeError:
        shapes = ", ".join(f"{n} {tuple(v.shape)}" for n, v in {**vectors, **matrices}.items())
        raise ValueError(f"the batch dims do not broadcast: {shapes}") from None


def diag_gaussian_w2(
    mean_s: Tensor, std_s: Tensor, mean_t: Tensor, std_t: Tensor, *, mean_weight: float = 1.0
) -> Tensor:
    """Squared W2 between diagonal Gaussians, optionally re-weighting the mean term.

    ``γ·Σ_k (μ_s,k − μ_t,k)² + Σ_k (σ_s,k − σ_t,k)²`` over the last dim; γ = 1 is exactly W2².
    Checks that all four share the last size d and that the stds are ≥ 0 (this reads their
    values: one device sync on a GPU; WKD-F, whose stds are square roots, skips it).

    Args:
        mean_s: (…, d) source means.
        std_s: (…, d) source standard deviations (not variances), ≥ 0.
        mean_t: (…, d) target means.
        std_t: (…, d) target standard deviations, ≥ 0.
        mean_weight: γ, the WKD-F ``MEAN_COV_RATIO``.

    Returns:
        (…,) the weighted squared distance per Gaussian pair.
    """
    _check_same_d({"mean_s": mean_s, "std_s": std_s, "mean_t": mean_t, "std_t": std_t}, {})
    for name, std in (("std_s", std_s), ("std_t", std_t)):
        if bool((std < 0).any()):
            raise ValueError(f"{name} must be >= 0 (standard deviations, not log-stds)")
    return diag_w2(mean_s, std_s, mean_t, std_t, mean_weight=mean_weight)


def diag_w2(
    mean_s: Tensor, std_s: Tensor, mean_t: Tensor, std_t: Tensor, *, mean_weight: float = 1.0
) -> Tensor:
    """:func:`diag_gaussian_w2` without its checks (the WKD-F hot path: no device sync)."""
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
        cov_t: (…, d, d) target covariances, positive semi-definite (not checked: that
            needs an eigen-decomposition).
        mean_weight: γ; 1 gives the squared 2-Wasserstein distance.

    Returns:
        (…,) the weighted squared distance.

    Raises:
        ValueError: the last sizes d differ, or ``cov_s`` is not positive definite.
    """
    _check_same_d({"mean_s": mean_s, "mean_t": mean_t}, {"cov_s": cov_s, "cov_t": cov_t})
    try:
        chol = torch.linalg.cholesky(cov_s)  # (…, d, d)
    except torch.linalg.LinAlgError as err:  # torch's own check (a sync it makes anyway)
        raise ValueError(
            "cov_s is not positive definite (its Cholesky factorisation failed); add eps·I "
            f"to the covariances: {str(err).splitlines()[0]}"
        ) from err
    inner = chol.transpose(-2, -1) @ cov_t @ chol  # (…, d, d), symmetric PSD
    inner = 0.5 * (inner + inner.transpose(-2, -1))
    eig = torch.linalg.eigvalsh(inner).clamp_min(torch.finfo(inner.dtype).tiny)
    trace = torch.diagonal(cov_s, dim1=-2, dim2=-1).sum(-1)
    trace = trace + torch.diagonal(cov_t, dim1=-2, dim2=-1).sum(-1)
    bures = trace - 2.0 * eig.sqrt().sum(-1)
    return mean_weight * (mean_s - mean_t).pow(2).sum(-1) + bures
