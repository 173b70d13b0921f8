"""Distillation losses: KD, DKD, WKD-L, WKD-F, and the category interrelations behind WKD-L.

Each loss is a pure function of tensors plus a thin ``nn.Module``; the OT solvers they use
live in :mod:`wkd_core.ot`.
"""

from wkd_core.losses.dkd import DKDLoss, dkd_loss
from wkd_core.losses.feature_divergences import (
    DIVERGENCES,
    FeatureDivergenceLoss,
    feature_divergence_loss,
)
from wkd_core.losses.interrelations import (
    IR_METHODS,
    ClassFeatureBank,
    centroid_cosine_distance,
    cka_distance_matrix,
    classifier_cosine_distance,
    distance_matrix,
    kernel_cka,
    linear_cka,
    load_distance_matrix,
    save_distance_matrix,
)
from wkd_core.losses.kd import KDLoss, kd_loss
from wkd_core.losses.wkd_feature import WKDFeatureLoss, grid_cells, wkd_feature_loss
from wkd_core.losses.wkd_logit import (
    WKDLogitLoss,
    WKDLogitTerms,
    sharpen_cost,
    wkd_logit_loss,
    wkd_logit_terms,
)

__all__ = [
    "DIVERGENCES",
    "IR_METHODS",
    "ClassFeatureBank",
    "DKDLoss",
    "FeatureDivergenceLoss",
    "KDLoss",
    "WKDFeatureLoss",
    "WKDLogitLoss",
    "WKDLogitTerms",
    "centroid_cosine_distance",
    "cka_distance_matrix",
    "classifier_cosine_distance",
    "distance_matrix",
    "dkd_loss",
    "feature_divergence_loss",
    "grid_cells",
    "kd_loss",
    "kernel_cka",
    "linear_cka",
    "load_distance_matrix",
    "save_distance_matrix",
    "sharpen_cost",
    "wkd_feature_loss",
    "wkd_logit_loss",
    "wkd_logit_terms",
]
