r"""WKD-L's shared-kernel Sinkhorn for large C: blocked Triton matrix-vector products.

The same computation as :mod:`wkd_core.ot.sinkhorn_fused` (and so as the plain solver,
``wkd_logit_terms(..., solver="plain")``) for C too large to hold the (C, C) kernel ``K`` in
one program's registers. Every half-iteration is one launch of a (B, C) × (C, C) product with
its elementwise step fused in:

.. math::
    s_k = K^\top u_{k-1} + \delta,\; v_k = b / s_k,\qquad r_k = K v_k + \delta,\; u_k = a / r_k,

on a grid of (BM samples) × (BN output classes) tiles. A program walks the reduction
dimension in BK-wide steps, loading a (BM, BK) slice of the input vectors and a (BK, BN)
slice of ``K`` (or ``Kᵀ``, by strides) and accumulating with a float32 ``tl.dot``
(``input_precision="ieee"``: no TF32), then divides and stores ``v`` (or ``u``) and the
denominator. ``WD = Σ_i u_i (W v)_i`` with ``W = K∘C`` is one more launch (per-tile partial
sums, added by PyTorch in a fixed order), and a per-sample prologue computes the masked
softmaxes, ``u_0`` and the target term ``L_t``. The backward pass runs the adjoint of the
unrolled iterations (the formulas of :mod:`wkd_core.ot.sinkhorn_fused`) with the same blocked
products: ``v̄_k = Kᵀ r̄_k (+ g Wᵀ u_N)`` with ``s̄_k = −v̄_k v_k / s_k`` fused in, then
``ū_{k−1} = K s̄_k`` with ``ā += ū/r``, ``r̄ = −ū u / r`` fused in, and a per-sample softmax
adjoint. Forward: 2N + 2 launches, backward 2N + 1.

Why this layout (B = 256, C = 1000, N = 10): each half-iteration is 0.5 GFLOP and needs all
of the previous vector, so it is split over the whole GPU (8 × 16 = 128 tiles of 32 × 64)
and each ``K`` tile read from L2 serves BM samples. A kernel that keeps a block of samples in
one program for all iterations would save the launches but use only B/BM SMs and re-read
the 4 MB ``K`` per program per half-iteration (compute- or L2-bound at ≈ 1 ms per
direction), and a persistent kernel with a grid-wide barrier cannot run in Triton's
interpreter, where programs run one after another (and the tests could not check it).

Cost: the 4N products of a forward+backward at (256, 1000) are 10 G multiply-adds; an H100
does ≈ 31 T float32 FMAs per second, so ≈ 0.33 ms at peak, and 0.6 ms needs about half of
it. ``Tiles(..., precision="tf32x3")`` runs the products on tensor cores instead (three
TF32 products per float32 one, ≈ 2⁻²² relative error each); whether that keeps the 1e-6
parity with the plain solver is measured on the GPU (``bench/wkd_l_kernels.py``), and the
default stays ``"ieee"``.

Divisions are IEEE round-to-nearest (``div_rn``) like PyTorch's; the result equals the plain
solver up to the order of the float32 sums (≈1e-7 relative; tested to 1e-6).

Reference: Lv, Yang, Li, NeurIPS 2024, §3.1; Cuturi, NeurIPS 2013 (scaling iterations).
"""

from __future__ import annotations

import functools
from typing import NamedTuple

import torch
from torch import Tensor

__all__ = ["STABILIZER", "TILED_MAX_CLASSES", "Tiles", "default_tiles", "tiled_wkd_logit"]

STABILIZER = 1e-8
# The per-sample prologue and gradient kernels hold one row of C floats per program.
TILED_MAX_CLASSES = 4096


class Tiles(NamedTuple):
    """Launch shape of the blocked products: BM samples × BN classes, reduction step BK,
    warps per program, and the ``tl.dot`` input precision (``"ieee"``: float32 FMAs, the
    default; ``"tf32x3"``: tensor cores on three TF32 pieces, for measurement on a GPU)."""

    bm: int
    bn: int
    bk: int
    num_warps: int = 4
    precision: str = "ieee"

    def launch(self) -> dict:
        """The kernels' tile keywords."""
        return {"BM": self.bm, "BN": self.bn, "BK": self.bk, "PRECISION": self.precision,
                "num_warps": self.num_warps}  # fmt: skip


def default_tiles(batch: int, num_classes: int) -> Tiles:
    """≈ one tile per SM of an H100 (132) where the problem allows: (256, 1000) → 8 × 16."""
    bm = 32 if batch >= 128 else 16
    bn = 64
    if -(-batch // bm) * -(-num_classes // bn) < 128:
        bn = 32
    return Tiles(bm, bn, 32)


@functools.cache
def _kernels(interpret: bool) -> dict:  # `interpret` is a cache key only: jit reads the env
    from wkd_core.ot import _tiled_kernels as k

    return {
        "prologue": k.prologue_kernel, "scale": k.scale_kernel, "transport": k.transport_kernel,
        "row_adjoint": k.row_adjoint_kernel, "col_adjoint": k.col_adjoint_kernel,
        "grad": k.grad_kernel,
    }  # fmt: skip


def _row_config(num_classes: int) -> dict[str, int]:
    import triton

    block = max(triton.next_power_of_2(num_classes), 16)
    return {"BLOCK": block, "num_warps": 4 if block <= 1024 else 8}


class _TiledWKDLogit(torch.autograd.Function):
    """Autograd wrapper: (z_S, z_T, y, K, K∘C) → per-sample (L_t, WD), both (B,)."""

    @staticmethod
    def forward(ctx, z_s, z_t, target, kernel, weighted, temperature, n_iter, tiles, interpret):
        batch, num_classes = z_s.shape
        kernels = _kernels(interpret)
        new = z_s.new_empty
        lt, pt = new(batch), new(batch)
        a, b, u, v = (new(batch, num_classes) for _ in range(4))
        r, s = new(n_iter, batch, num_classes), new(n_iter, batch, num_classes)
        kernels["prologue"][(batch,)](
            z_s, z_t, target, lt, pt, a, b, u,
            num_classes, 1.0 / temperature, 1.0 / (num_classes - 1), **_row_config(num_classes),
        )  # fmt: skip
        grid = (-(-batch // tiles.bm), -(-num_classes // tiles.bn))
        cfg = tiles.launch()
        scale = kernels["scale"][grid]
        for k in range(n_iter):
            scale(u, kernel, num_classes, 1, b, s[k], v, batch, num_classes, STABILIZER, **cfg)
            scale(v, kernel, 1, num_classes, a, r[k], u, batch, num_classes, STABILIZER, **cfg)
        partial = new(batch, grid[1])
        kernels["transport"][grid](v, weighted, u, partial, batch, num_classes, grid[1], **cfg)
        ctx.save_for_backward(z_s, target, kernel, weighted, pt, a, b, u, v, r, s)
        ctx.temperature, ctx.n_iter = temperature, n_iter
        ctx.tiles, ctx.interpret = tiles, interpret
        return lt, partial.sum(1)

    @staticmethod
    def backward(ctx, grad_lt, grad_wd):
        z_s, target, kernel, weighted, pt, a, b, u_last, v_last, r, s = ctx.saved_tensors
        batch, num_classes = z_s.shape
        kernels, tiles, n_iter = _kernels(ctx.interpret), ctx.tiles, ctx.n_iter
        grad_lt = torch.zeros_like(pt) if grad_lt is None else grad_lt.contiguous()
        grad_wd = torch.zeros_like(pt) if grad_wd is None else grad_wd.contiguous()
        grid = (-(-batch // tiles.bm), -(-num_classes // tiles.bn))
        cfg = tiles.launch()
        a_bar, r_bar, s_bar = (torch.empty_like(z_s) for _ in range(3))
        row, col = kernels["row_adjoint"][grid], kernels["col_adjoint"][grid]
        # ū_N = g W v_N, then ā = ū_N / r_N and r̄_N
        row(v_last, weighted, grad_wd, a, r[n_iter - 1], a_bar, r_bar, batch, num_classes,
            SCALE=True, ACCUM=False, **cfg)  # fmt: skip
        for k in reversed(range(n_iter)):
            # v̄_k = Kᵀ r̄_k (+ g Wᵀ u_N at k = N) → s̄_k
            col(r_bar, kernel, u_last, weighted, grad_wd, b, s[k], s_bar, batch, num_classes,
                FIRST=k == n_iter - 1, **cfg)  # fmt: skip
            if k > 0:  # ū_{k−1} = K s̄_k → ā, r̄_{k−1} (ū_0 is not needed)
                row(s_bar, kernel, grad_wd, a, r[k - 1], a_bar, r_bar, batch, num_classes,
                    SCALE=False, ACCUM=True, **cfg)  # fmt: skip
        grad = torch.empty_like(z_s)
        kernels["grad"][(batch,)](
            z_s, target, a, a_bar, pt, grad_lt, grad, num_classes, 1.0 / ctx.temperature,
            **_row_config(num_classes),
        )  # fmt: skip
        return grad, None, None, None, None, None, None, None, None


def tiled_wkd_logit(
    z_s: Tensor,
    z_t: Tensor,
    target: Tensor,
    kernel: Tensor,
    weighted: Tensor,
    *,
    temperature: float,
    n_iter: int,
    tiles: Tiles | None = None,
    interpret: bool = False,
) -> tuple[Tensor, Tensor]:
    """Per-sample ``(L_t (B,), WD (B,))`` from the blocked kernels.

    Args:
        z_s: (B, C) contiguous float32 student logits (gradient flows).
        z_t: (B, C) contiguous float32 teacher logits (no gradient).
        target: (B,) int64 class indices.
        kernel: (C, C) contiguous ``K = exp(−C/ε)``.
        weighted: (C, C) contiguous ``K∘C``.
        temperature, n_iter: T and the fixed iteration count.
        tiles: tile sizes; default :func:`default_tiles`. Any BM, BN, BK ≥ 16 (powers of
            two) give the same numbers up to float32 summation order.
        interpret: whether Triton runs in its interpreter (a cache key for the kernels).
    """
    batch, num_classes = z_s.shape
    tiles = default_tiles(batch, num_classes) if tiles is None else tiles
    return _TiledWKDLogit.apply(
        z_s, z_t, target, kernel, weighted, temperature, n_iter, tiles, interpret
    )
