r"""Category interrelations (IR) and the distance matrix D = 1 − IR that WKD-L's cost is built on.

The authors' recipe: pass the training split through the teacher (test transform), keep per
class a matrix X_i (n, d) of features whose rows are samples (every spatial position of the
last-stage map on CIFAR; the logits on ImageNet), cut every class to the smallest count, pair
rows of different classes row by row, and take linear CKA between classes:

.. math::
    \mathrm{IR}(i, j) = \frac{\lVert \bar X_j^\top \bar X_i \rVert_F^2}
        {\lVert \bar X_i^\top \bar X_i \rVert_F \, \lVert \bar X_j^\top \bar X_j \rVert_F},
    \qquad \bar X = X - \mathbf 1 \bar x^\top \text{ (column-centred)}.

Ablation variants (the paper's Table 1): polynomial- and RBF-kernel CKA, cosine similarity of
the teacher's classifier weight rows, cosine similarity of class centroids.

Reference: S. Kornblith et al., "Similarity of Neural Network Representations Revisited",
ICML 2019 (CKA); J. Lv, H. Yang, P. Li, NeurIPS 2024, §3.1; the authors'
``tools/generate_cost_matrix.py`` (``linear_CKA_precenter``).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

from wkd_core.losses.distance_files import (  # the files of the matrices built here
    check_distance_matrix,
    load_distance_matrix,
    save_distance_matrix,
)

__all__ = [
    "IR_METHODS",
    "ClassFeatureBank",
    "centroid_cosine_distance",
    "check_distance_matrix",
    "cka_distance_matrix",
    "classifier_cosine_distance",
    "distance_matrix",
    "kernel_cka",
    "linear_cka",
    "load_distance_matrix",
    "save_distance_matrix",
]

IR_METHODS = ("linear_cka", "poly_cka", "rbf_cka", "classifier_cosine", "centroid_cosine")
_KERNELS = ("linear", "poly", "rbf")
# The keyword options each kernel takes (anything else is refused, not silently ignored).
_KERNEL_OPTIONS = {"linear": (), "poly": ("degree", "coef0"), "rbf": ("threshold",)}


def linear_cka(x: Tensor, y: Tensor) -> Tensor:
    """Linear CKA between two representations of the same n samples (rows paired).

    Args:
        x: (n, d1) features, rows are samples.
        y: (n, d2) features of the same samples.

    Returns:
        Scalar in [0, 1]; invariant to orthogonal transforms and isotropic scaling of x or y.
    """
    _check_pair(x, y)
    xc, yc = x - x.mean(0), y - y.mean(0)
    hsic = (yc.T @ xc).pow(2).sum()
    return hsic / ((xc.T @ xc).norm() * (yc.T @ yc).norm())


def kernel_cka(x: Tensor, y: Tensor, *, kernel: str = "linear", **kernel_kw: float) -> Tensor:
    """CKA with a linear, polynomial or RBF kernel, from centred n×n Gram matrices.

    ``CKA = ⟨H K_x H, H K_y H⟩_F / (‖H K_x H‖_F ‖H K_y H‖_F)`` with ``H = I − 11ᵀ/n``.
    Polynomial: ``(⟨x, y⟩/d + coef0)^degree`` (defaults coef0=1, degree=3, as scikit-learn).
    RBF: ``exp(−‖x − y‖² / (2·threshold²·median‖x − y‖²))`` (Kornblith's median heuristic).

    Args:
        x: (n, d1) features, rows are samples.
        y: (n, d2) features of the same samples.
        kernel: ``"linear"``, ``"poly"`` or ``"rbf"``.
        **kernel_kw: ``degree``/``coef0`` (poly) or ``threshold`` > 0 (rbf); any other
            option raises ``ValueError``.

    Returns:
        Scalar CKA.
    """
    _check_pair(x, y)
    gram = _gram_fn(kernel, kernel_kw)
    gx, gy = gram(x), gram(y)
    return (gx * gy).sum() / (gx.norm() * gy.norm())


def cka_distance_matrix(
    features: Sequence[Tensor], *, kernel: str = "linear", block: int = 64, **kernel_kw: float
) -> Tensor:
    """``D = 1 − CKA`` between every pair of classes (C×C, symmetric, zero diagonal).

    Every class is cut to the smallest row count and rows are paired by position. For the
    linear kernel the cheaper of two exact routes is taken:

    - n ≤ d: ``HSIC(i, j) = ⟨X̄_i X̄_iᵀ, X̄_j X̄_jᵀ⟩_F``: per-class n×n Grams, then a GEMM over
      blocks of ``block`` classes (memory O(block·n²), time O(C·n²·d·C/block + C²·n²));
    - n > d (e.g. CIFAR, 32,000 positions × 256 channels): ``HSIC(i, j) = ‖X̄_jᵀ X̄_i‖_F²`` from
      the d×d cross products, one (d, n)×(n, d) GEMM per pair (time O(C²·n·d²/2), memory
      one centred copy of the truncated features).

    Polynomial and RBF kernels always use the n×n Gram route, so cap n (``max_per_class``).

    Args:
        features: C tensors (n_i, d), rows are samples.
        kernel: ``"linear"``, ``"poly"`` or ``"rbf"``.
        block: classes per Gram block.
        **kernel_kw: see :func:`kernel_cka`.

    Returns:
        (C, C) distance matrix, dtype of the features.
    """
    _check_kernel(kernel, kernel_kw)
    xs = _stack_truncated(features)  # (C, n, d)
    _, n, d = xs.shape
    if kernel == "linear" and n > d:
        xs -= xs.mean(1, keepdim=True)  # in place: xs is already a fresh copy
        hsic = _cross_hsic(xs)
    else:
        hsic = _gram_hsic(xs, _gram_fn(kernel, kernel_kw), block)
    norms = hsic.diagonal().clamp_min(torch.finfo(hsic.dtype).tiny).sqrt()
    return _finish(1.0 - hsic / (norms[:, None] * norms[None, :]))


def classifier_cosine_distance(weight: Tensor) -> Tensor:
    """``D = 1 − cos(w_i, w_j)`` between rows of the teacher's classifier weight (C, d)."""
    if weight.dim() != 2:
        raise ValueError(f"classifier weight must be (C, d), got {tuple(weight.shape)}")
    return _cosine_distance(weight)


def centroid_cosine_distance(features: Sequence[Tensor]) -> Tensor:
    """``D = 1 − cos(m_i, m_j)`` between class centroids (mean rows, all rows of each class)."""
    if not features:
        raise ValueError("need the features of at least one class")
    return _cosine_distance(torch.stack([f.mean(0) for f in features]))


def distance_matrix(
    method: str,
    *,
    features: Sequence[Tensor] | None = None,
    classifier_weight: Tensor | None = None,
    **kw: float,
) -> Tensor:
    """Dispatch on ``method`` in :data:`IR_METHODS`; returns (C, C) ``D = 1 − similarity``.

    ``**kw`` are the kernel options of the CKA methods (see :func:`kernel_cka`); the cosine
    methods take none.
    """
    if method in ("classifier_cosine", "centroid_cosine") and kw:
        raise ValueError(f"method {method!r} takes no options, got {sorted(kw)}")
    if method == "classifier_cosine":
        if classifier_weight is None:
            raise ValueError("method 'classifier_cosine' needs classifier_weight")
        return classifier_cosine_distance(classifier_weight)
    if method not in IR_METHODS:
        raise ValueError(f"unknown IR method {method!r}; known: {', '.join(IR_METHODS)}")
    if features is None:
        raise ValueError(f"method {method!r} needs per-class features")
    if method == "centroid_cosine":
        return centroid_cosine_distance(features)
    return cka_distance_matrix(features, kernel=method.removesuffix("_cka"), **kw)


class ClassFeatureBank:
    """Streams (features, labels) batches and keeps at most ``max_per_class`` rows per class.

    A (B, d) batch adds one row per sample; a (B, d, H, W) map adds H·W rows per sample
    (positions as samples, row-major, image by image: the authors' CIFAR recipe). Rows are
    kept in arrival order, which fixes the row pairing of CKA. Set ``max_per_class`` so that
    C·max_per_class·d numbers fit in memory (ImageNet need not be held whole).

    Args:
        num_classes: C.
        max_per_class: row cap per class (``None``: keep everything).
        device: where rows are stored.
        dtype: storage dtype (float64 for exact CKA on CPU, float32 to halve memory).
    """

    def __init__(
        self,
        num_classes: int,
        *,
        max_per_class: int | None = None,
        device: torch.device | str = "cpu",
        dtype: torch.dtype = torch.float32,
    ) -> None:
        if num_classes < 1 or (max_per_class is not None and max_per_class < 1):
            raise ValueError("num_classes and max_per_class must be >= 1")
        self.num_classes, self.max_per_class = num_classes, max_per_class
        self.device, self.dtype = torch.device(device), dtype
        self._chunks: list[list[Tensor]] = [[] for _ in range(num_classes)]
        self._counts = [0] * num_classes

    @property
    def counts(self) -> list[int]:
        """Rows held per class."""
        return list(self._counts)

    def update(self, features: Tensor, labels: Tensor) -> None:
        """Add a batch: ``features`` (B, d) or (B, d, H, W), ``labels`` (B,) class indices."""
        if features.dim() == 4:
            per_sample = features.flatten(2).transpose(1, 2)  # (B, H·W, d)
        elif features.dim() == 2:
            per_sample = features.unsqueeze(1)  # (B, 1, d)
        else:
            raise ValueError(f"features must be (B, d) or (B, d, H, W), got {features.dim()}-D")
        if labels.shape != (features.shape[0],):
            raise ValueError(f"labels must be ({features.shape[0]},), got {tuple(labels.shape)}")
        per_sample = per_sample.detach().to(device=self.device, dtype=self.dtype)
        labels = labels.detach().to(self.device)
        for cls in labels.unique().tolist():
            if not 0 <= cls < self.num_classes:
                raise ValueError(f"label {cls} outside [0, {self.num_classes})")
            room = self._room(cls)
            if room:
                rows = per_sample[labels == cls].flatten(0, 1)[:room]  # (≤room, d)
                self._chunks[cls].append(rows)
                self._counts[cls] += rows.shape[0]

    def class_features(self) -> list[Tensor]:
        """Per class, the (n_c, d) rows in arrival order."""
        if min(self._counts) == 0:
            empty = [c for c, n in enumerate(self._counts) if n == 0][:10]
            raise ValueError(f"no rows for classes {empty} (and maybe more)")
        return [torch.cat(chunks) for chunks in self._chunks]

    def distance_matrix(self, method: str = "linear_cka", **kw: float) -> Tensor:
        """:func:`distance_matrix` on the rows held (not ``classifier_cosine``)."""
        return distance_matrix(method, features=self.class_features(), **kw)

    def _room(self, cls: int) -> int:
        if self.max_per_class is None:
            return 1 << 62
        return self.max_per_class - self._counts[cls]


def _check_pair(x: Tensor, y: Tensor) -> None:
    if x.dim() != 2 or y.dim() != 2 or x.shape[0] != y.shape[0] or x.shape[0] < 2:
        raise ValueError(
            f"x and y must be (n, d) with the same n >= 2, got {tuple(x.shape)}, {tuple(y.shape)}"
        )


def _stack_truncated(features: Sequence[Tensor]) -> Tensor:
    """C tensors (n_i, d) → (C, n, d) with n = min n_i (rows paired by position)."""
    if len(features) < 1 or any(f.dim() != 2 for f in features):
        raise ValueError("features must be a non-empty sequence of (n_i, d) tensors")
    if len({f.shape[1] for f in features}) != 1:
        raise ValueError("all classes must have the same feature dimension d")
    n = min(f.shape[0] for f in features)
    if n < 2:
        raise ValueError("every class needs at least 2 rows")
    return torch.stack([f[:n] for f in features])


def _check_kernel(kernel: str, kw: dict[str, float]) -> None:
    """A known kernel, only its own options, and a threshold > 0 (0 gives NaN)."""
    if kernel not in _KERNELS:
        raise ValueError(f"kernel must be one of {_KERNELS}, got {kernel!r}")
    unknown = sorted(set(kw) - set(_KERNEL_OPTIONS[kernel]))
    if unknown:
        allowed = ", ".join(_KERNEL_OPTIONS[kernel]) or "none"
        raise ValueError(
            f"unknown option(s) {unknown} for kernel {kernel!r} (its options: {allowed})"
        )
    threshold = kw.get("threshold", 1.0)
    if not (threshold > 0 and threshold < float("inf")):  # also refuses NaN
        raise ValueError(f"threshold must be finite and > 0, got {threshold}")


def _gram_fn(kernel: str, kw: dict[str, float]) -> Callable[[Tensor], Tensor]:
    """(…, n, d) → (…, n, n) centred Gram ``H K H`` for the named kernel."""
    _check_kernel(kernel, kw)

    def gram(x: Tensor) -> Tensor:
        if kernel == "linear":
            xc = x - x.mean(-2, keepdim=True)
            return xc @ xc.transpose(-2, -1)  # H X Xᵀ H
        dots = x @ x.transpose(-2, -1)
        if kernel == "poly":
            k = (dots / x.shape[-1] + kw.get("coef0", 1.0)).pow(kw.get("degree", 3))
        else:
            sq_norms = dots.diagonal(dim1=-2, dim2=-1)
            sq_dist = (sq_norms.unsqueeze(-1) + sq_norms.unsqueeze(-2) - 2 * dots).clamp_min(0)
            median = _median(sq_dist.flatten(-2))  # (…,)
            scale = 2 * kw.get("threshold", 1.0) ** 2 * median
            k = torch.exp(-sq_dist / scale[..., None, None])
        k = k - k.mean(-1, keepdim=True)  # H K H: centre rows and columns
        return k - k.mean(-2, keepdim=True)

    return gram


def _median(values: Tensor) -> Tensor:
    """numpy's median (mean of the two middle values) along the last dim."""
    ordered = values.sort(-1).values
    count = ordered.shape[-1]
    return 0.5 * (ordered[..., (count - 1) // 2] + ordered[..., count // 2])


def _gram_hsic(xs: Tensor, gram: Callable[[Tensor], Tensor], block: int) -> Tensor:
    """HSIC(i, j) = ⟨G_i, G_j⟩_F for (C, n, d) features, Grams built block by block."""
    num_classes = xs.shape[0]
    hsic = xs.new_empty(num_classes, num_classes)
    for i0 in range(0, num_classes, block):
        gi = gram(xs[i0 : i0 + block]).flatten(1)  # (bi, n²)
        for j0 in range(i0, num_classes, block):
            gj = gi if j0 == i0 else gram(xs[j0 : j0 + block]).flatten(1)
            tile = gi @ gj.T  # (bi, bj)
            hsic[i0 : i0 + tile.shape[0], j0 : j0 + tile.shape[1]] = tile
            hsic[j0 : j0 + tile.shape[1], i0 : i0 + tile.shape[0]] = tile.T
    return hsic


def _cross_hsic(xcs: Tensor) -> Tensor:
    """HSIC(i, j) = ‖X̄_jᵀ X̄_i‖_F² for centred (C, n, d) features, from d×d cross products.

    One (d, n)×(n, d) product per pair i ≤ j: no copy of the features beyond ``xcs``.
    """
    num_classes = xcs.shape[0]
    hsic = xcs.new_empty(num_classes, num_classes)
    for i in range(num_classes):
        xi_t = xcs[i].T  # (d, n)
        for j in range(i, num_classes):
            hsic[i, j] = hsic[j, i] = (xi_t @ xcs[j]).pow(2).sum()
    return hsic


def _cosine_distance(rows: Tensor) -> Tensor:
    unit = F.normalize(rows, dim=1)
    return _finish(1.0 - unit @ unit.T)


def _finish(distance: Tensor) -> Tensor:
    """Exact symmetry, zero diagonal and no negative round-off."""
    distance = (0.5 * (distance + distance.T)).clamp_min(0.0)
    return distance.fill_diagonal_(0.0)
