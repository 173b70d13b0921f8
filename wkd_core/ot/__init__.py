"""Optimal-transport solvers used by the WKD losses (torch only, batched, differentiable)."""

from wkd_core.ot.gaussian import bures_wasserstein, diag_gaussian_w2
from wkd_core.ot.sinkhorn import SinkhornResult, sinkhorn, sinkhorn_log, sinkhorn_shared

__all__ = [
    "SinkhornResult",
    "bures_wasserstein",
    "diag_gaussian_w2",
    "sinkhorn",
    "sinkhorn_log",
    "sinkhorn_shared",
]
