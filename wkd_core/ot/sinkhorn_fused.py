r"""WKD-L's shared-kernel Sinkhorn fused into one Triton kernel per direction.

The same computation as ``wkd_logit_terms(..., solver="plain")`` (the authors' plain scaling,
DESIGN.md §4) for one sample per Triton program, with the whole (C, C) kernel held in
registers for all iterations:

.. math::
    a = \operatorname{softmax}_{\setminus y}(z_S/T),\quad
    b = \operatorname{softmax}_{\setminus y}(z_T/T),\quad u_0 = \tfrac{1}{C-1}\,[i \ne y],\\
    s_k = K^\top u_{k-1} + \delta,\; v_k = b / s_k,\quad r_k = K v_k + \delta,\; u_k = a / r_k
    \quad (k = 1…N),\\
    \mathrm{WD} = u_N^\top (K \circ C)\, v_N,\qquad
    L_t = -\operatorname{softmax}(z_T)_y \log\operatorname{softmax}(z_S)_y .

Forward: one launch computes both per-sample terms (B,) and keeps the denominators
``r_k, s_k`` (2·N·B·C floats). Backward: one launch runs the adjoint of the unrolled
iterations (reverse mode, exact, no re-solve):

.. math::
    \bar u_N = g\,W v_N,\; \bar v_N = g\,W^\top u_N;\quad\text{for } k = N…1:\;
    \bar a \mathrel{+}= \bar u_k / r_k,\; \bar r_k = -\bar u_k u_k / r_k,\;
    \bar v_k \mathrel{+}= K^\top \bar r_k,\; \bar s_k = -\bar v_k v_k / s_k,\;
    \bar u_{k-1} = K \bar s_k,

then the softmax adjoint ``∂z_S = a ⊙ (ā − ⟨a, ā⟩) / T`` plus the target term's. The teacher
side gets no gradient (it is detached in WKD-L). Divisions are IEEE round-to-nearest
(``div_rn``) like PyTorch's, so the result equals the plain solver's up to the order of the
float32 sums (≈1e-7 relative; tested to 1e-6).

This register kernel serves C ≤ :data:`REGISTER_MAX_CLASSES` (the kernel tile lives in
registers); larger C, up to :data:`FUSED_MAX_CLASSES`, runs the blocked kernels of
:mod:`wkd_core.ot.sinkhorn_tiled` (one launch per half-iteration, the same numbers).
:func:`fused_wkd_logit` picks between them. Limits: float32, CUDA, or any device under
``TRITON_INTERPRET=1`` (how the tests run it on a CPU).

Reference: Lv, Yang, Li, NeurIPS 2024, §3.1; Cuturi, NeurIPS 2013 (scaling iterations).
"""

from __future__ import annotations

import functools
import importlib.util
import os

import torch
from torch import Tensor

from wkd_core.ot.sinkhorn_tiled import STABILIZER, TILED_MAX_CLASSES, Tiles, tiled_wkd_logit

__all__ = ["FUSED_MAX_CLASSES", "REGISTER_MAX_CLASSES", "fused_available", "fused_wkd_logit"]

REGISTER_MAX_CLASSES = 128  # the register kernel; the blocked kernels above it
FUSED_MAX_CLASSES = TILED_MAX_CLASSES
_KERNELS = ("auto", "register", "tiled")


def _interpreting() -> bool:
    return os.environ.get("TRITON_INTERPRET", "0") not in ("", "0")


def fused_available(num_classes: int, device: torch.device | str) -> bool:
    """True where :func:`fused_wkd_logit` runs: Triton present, C small enough, CUDA (or the
    Triton interpreter, ``TRITON_INTERPRET=1``, on any device)."""
    device = torch.device(device)
    if not 2 <= num_classes <= FUSED_MAX_CLASSES:
        return False
    if importlib.util.find_spec("triton") is None:
        return False
    return device.type == "cuda" or _interpreting()


@functools.cache
def _kernels(interpret: bool):  # `interpret` is a cache key only: jit reads the env
    import triton
    import triton.language as tl

    @triton.jit
    def forward_kernel(
        zs_ptr, zt_ptr, tgt_ptr, k_ptr, w_ptr,  # inputs
        lt_ptr, wd_ptr, pt_ptr, a_ptr, b_ptr, r_ptr, s_ptr,  # outputs and saved state
        B, C, inv_t, u_init, stab,
        N_ITER: tl.constexpr, BLOCK: tl.constexpr,
    ):  # fmt: skip
        row = tl.program_id(0)
        offs = tl.arange(0, BLOCK)
        valid = offs < C
        y = tl.load(tgt_ptr + row)
        keep = valid & (offs != y)
        is_y = offs == y
        zs = tl.load(zs_ptr + row * C + offs, mask=valid, other=0.0)
        zt = tl.load(zt_ptr + row * C + offs, mask=valid, other=0.0)
        neg = float("-inf")
        # target term at T = 1: -softmax(z_T)_y · log_softmax(z_S)_y
        zs_v = tl.where(valid, zs, neg)
        m_s = tl.max(zs_v, 0)
        lse_s = m_s + tl.log(tl.sum(tl.exp(zs_v - m_s), 0))
        zt_v = tl.where(valid, zt, neg)
        e_t = tl.exp(zt_v - tl.max(zt_v, 0))
        pt_y = tl.sum(tl.where(is_y, e_t, 0.0), 0) / tl.sum(e_t, 0)
        zs_y = tl.sum(tl.where(is_y, zs, 0.0), 0)
        # non-target distributions at temperature T (target and padding get zero mass)
        xs = tl.where(keep, zs * inv_t, neg)
        es = tl.exp(xs - tl.max(xs, 0))
        a = es / tl.sum(es, 0)
        xt = tl.where(keep, zt * inv_t, neg)
        et = tl.exp(xt - tl.max(xt, 0))
        b = et / tl.sum(et, 0)
        cmask = valid[:, None] & valid[None, :]
        tile = offs[:, None] * C + offs[None, :]
        kern = tl.load(k_ptr + tile, mask=cmask, other=0.0)  # (BLOCK, BLOCK), rows i, cols j
        u = tl.where(keep, u_init, 0.0)
        v = tl.zeros([BLOCK], dtype=tl.float32)
        for k in range(N_ITER):
            s = tl.sum(kern * u[:, None], 0) + stab  # Kᵀu + δ
            v = tl.math.div_rn(b, s)
            r = tl.sum(kern * v[None, :], 1) + stab  # K v + δ
            u = tl.math.div_rn(a, r)
            tl.store(s_ptr + (k * B + row) * C + offs, s, mask=valid)
            tl.store(r_ptr + (k * B + row) * C + offs, r, mask=valid)
        weighted = tl.load(w_ptr + tile, mask=cmask, other=0.0)  # K∘C
        wd = tl.sum(u * tl.sum(weighted * v[None, :], 1), 0)
        tl.store(lt_ptr + row, -pt_y * (zs_y - lse_s))
        tl.store(wd_ptr + row, wd)
        tl.store(pt_ptr + row, pt_y)
        tl.store(a_ptr + row * C + offs, a, mask=valid)
        tl.store(b_ptr + row * C + offs, b, mask=valid)

    @triton.jit
    def backward_kernel(
        zs_ptr, tgt_ptr, k_ptr, w_ptr, pt_ptr, a_ptr, b_ptr, r_ptr, s_ptr,  # saved
        glt_ptr, gwd_ptr, gz_ptr,  # upstream gradients (B,), output (B, C)
        B, C, inv_t,
        N_ITER: tl.constexpr, BLOCK: tl.constexpr,
    ):  # fmt: skip
        row = tl.program_id(0)
        offs = tl.arange(0, BLOCK)
        valid = offs < C
        y = tl.load(tgt_ptr + row)
        a = tl.load(a_ptr + row * C + offs, mask=valid, other=0.0)
        b = tl.load(b_ptr + row * C + offs, mask=valid, other=0.0)
        g_t = tl.load(glt_ptr + row)
        g_w = tl.load(gwd_ptr + row)
        cmask = valid[:, None] & valid[None, :]
        tile = offs[:, None] * C + offs[None, :]
        last = ((N_ITER - 1) * B + row) * C + offs
        u = tl.math.div_rn(a, tl.load(r_ptr + last, mask=valid, other=1.0))
        v = tl.math.div_rn(b, tl.load(s_ptr + last, mask=valid, other=1.0))
        weighted = tl.load(w_ptr + tile, mask=cmask, other=0.0)
        u_bar = g_w * tl.sum(weighted * v[None, :], 1)  # ∂WD/∂u_N
        v_bar = g_w * tl.sum(weighted * u[:, None], 0)  # ∂WD/∂v_N
        kern = tl.load(k_ptr + tile, mask=cmask, other=0.0)
        a_bar = tl.zeros([BLOCK], dtype=tl.float32)
        for kk in range(N_ITER):
            at = ((N_ITER - 1 - kk) * B + row) * C + offs
            r = tl.load(r_ptr + at, mask=valid, other=1.0)
            s = tl.load(s_ptr + at, mask=valid, other=1.0)
            u = tl.math.div_rn(a, r)
            a_bar += tl.math.div_rn(u_bar, r)
            r_bar = -tl.math.div_rn(u_bar * u, r)
            v_bar += tl.sum(kern * r_bar[:, None], 0)
            v = tl.math.div_rn(b, s)
            s_bar = -tl.math.div_rn(v_bar * v, s)
            u_bar = tl.sum(kern * s_bar[None, :], 1)  # ∂/∂u_{k-1} (unused after k = 1)
            v_bar = tl.zeros([BLOCK], dtype=tl.float32)
        grad = a * (a_bar - tl.sum(a * a_bar, 0)) * inv_t  # softmax adjoint; 0 at y (a_y = 0)
        zs = tl.load(zs_ptr + row * C + offs, mask=valid, other=float("-inf"))
        e_s = tl.exp(zs - tl.max(zs, 0))
        p_s = e_s / tl.sum(e_s, 0)
        pt_y = tl.load(pt_ptr + row)
        grad += g_t * pt_y * (p_s - tl.where(offs == y, 1.0, 0.0))
        tl.store(gz_ptr + row * C + offs, grad, mask=valid)

    return forward_kernel, backward_kernel


def _launch_config(num_classes: int) -> dict[str, int]:
    import triton

    block = max(triton.next_power_of_2(num_classes), 16)
    # BLOCK 128: 32 warps keep the tile at 64 registers per thread. Measured on an H100, the
    # loss fwd+bwd at (64, 100) in a CUDA graph: 4 warps 0.24 ms, 8 warps 1.08 ms (255
    # registers + spills), 16 warps 0.27 ms, 32 warps 0.19 ms (docs/benchmarks.md).
    return {"BLOCK": block, "num_warps": 4 if block <= 64 else 32}


class _FusedWKDLogit(torch.autograd.Function):
    """Autograd wrapper: (z_S, z_T, y, K, K∘C) → per-sample (L_t, WD), both (B,)."""

    @staticmethod
    def forward(ctx, z_s, z_t, target, kernel, weighted, temperature, n_iter):
        batch, num_classes = z_s.shape
        forward_kernel, _ = _kernels(_interpreting())
        new = z_s.new_empty
        lt, wd, pt = new(batch), new(batch), new(batch)
        a, b = new(batch, num_classes), new(batch, num_classes)
        r, s = new(n_iter, batch, num_classes), new(n_iter, batch, num_classes)
        forward_kernel[(batch,)](
            z_s, z_t, target, kernel, weighted, lt, wd, pt, a, b, r, s,
            batch, num_classes, 1.0 / temperature, 1.0 / (num_classes - 1), STABILIZER,
            N_ITER=n_iter, **_launch_config(num_classes),
        )  # fmt: skip
        ctx.save_for_backward(z_s, target, kernel, weighted, pt, a, b, r, s)
        ctx.temperature, ctx.n_iter = temperature, n_iter
        return lt, wd

    @staticmethod
    def backward(ctx, grad_lt, grad_wd):
        z_s, target, kernel, weighted, pt, a, b, r, s = ctx.saved_tensors
        batch, num_classes = z_s.shape
        _, backward_kernel = _kernels(_interpreting())
        grad_lt = torch.zeros_like(pt) if grad_lt is None else grad_lt.contiguous()
        grad_wd = torch.zeros_like(pt) if grad_wd is None else grad_wd.contiguous()
        grad = torch.empty_like(z_s)
        backward_kernel[(batch,)](
            z_s, target, kernel, weighted, pt, a, b, r, s, grad_lt, grad_wd, grad,
            batch, num_classes, 1.0 / ctx.temperature,
            N_ITER=ctx.n_iter, **_launch_config(num_classes),
        )  # fmt: skip
        return grad, None, None, None, None, None, None


def fused_wkd_logit(
    z_s: Tensor,
    z_t: Tensor,
    target: Tensor,
    cost: Tensor,
    *,
    temperature: float,
    eps: float,
    n_iter: int,
    kernel: str = "auto",
    tiles: Tiles | None = None,
) -> tuple[Tensor, Tensor]:
    """Per-sample WKD-L terms ``(L_t (B,), WD (B,))`` from the fused Sinkhorn kernels.

    Args:
        z_s: (B, C) float32 student logits (gradient flows).
        z_t: (B, C) float32 teacher logits (treated as detached).
        target: (B,) int64 class indices.
        cost: (C, C) sharpened ground cost; ``K = exp(−C/ε)`` and ``K∘C`` are formed here
            with the same PyTorch ops as the plain solver.
        temperature, eps, n_iter: T, ε and the fixed iteration count.
        kernel: ``"register"`` (one program per sample, C ≤ :data:`REGISTER_MAX_CLASSES`),
            ``"tiled"`` (blocked products, :mod:`wkd_core.ot.sinkhorn_tiled`) or ``"auto"``
            (register kernel where it fits, else tiled).
        tiles: tile sizes of the tiled kernels (default
            :func:`wkd_core.ot.sinkhorn_tiled.default_tiles`).

    Returns:
        ``(L_t, WD)`` per sample; their batch means are the two WKD-L terms.
    """
    num_classes = z_s.shape[1]
    if z_s.dtype != torch.float32 or not fused_available(num_classes, z_s.device):
        raise ValueError(
            f"the fused solver needs float32 logits with 2 ≤ C ≤ {FUSED_MAX_CLASSES} on CUDA "
            f"(or TRITON_INTERPRET=1); got {z_s.dtype}, C={num_classes}, {z_s.device}"
        )
    if kernel not in _KERNELS:
        raise ValueError(f"kernel must be one of {_KERNELS}, got {kernel!r}")
    if kernel == "auto":
        kernel = "register" if num_classes <= REGISTER_MAX_CLASSES else "tiled"
    if kernel == "register" and num_classes > REGISTER_MAX_CLASSES:
        raise ValueError(f"the register kernel needs C ≤ {REGISTER_MAX_CLASSES}, got {num_classes}")
    cost = cost.to(device=z_s.device, dtype=torch.float32)
    k_mat = torch.exp(-cost / eps)
    weighted = (k_mat * cost).contiguous()
    args = (z_s.contiguous(), z_t.detach().contiguous(), target.contiguous(),
            k_mat.contiguous(), weighted)  # fmt: skip
    if kernel == "tiled":
        return tiled_wkd_logit(
            *args, temperature=float(temperature), n_iter=int(n_iter), tiles=tiles,
            interpret=_interpreting(),
        )  # fmt: skip
    return _FusedWKDLogit.apply(*args, float(temperature), int(n_iter))
