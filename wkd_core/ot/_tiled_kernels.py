"""Triton kernels of :mod:`wkd_core.ot.sinkhorn_tiled` (imported only where Triton runs).

Module-level so that the kernels can call the shared ``matvec`` helper (Triton resolves a
jitted function's callees in its module's globals). Whether they run compiled or in Triton's
interpreter is fixed when this module is first imported (``TRITON_INTERPRET``).
"""

import triton
import triton.language as tl

__all__ = [
    "col_adjoint_kernel", "grad_kernel", "prologue_kernel", "row_adjoint_kernel",
    "scale_kernel", "transport_kernel",
]  # fmt: skip


@triton.jit
def matvec(x_ptr, m_ptr, stride_mk, stride_mn, rows, cols, B, C, BM: tl.constexpr,
           BN: tl.constexpr, BK: tl.constexpr, PRECISION: tl.constexpr):  # fmt: skip
    """(BM, BN) tile of X @ M: X is (B, C) row-major, M[k, n] at k·stride_mk + n·stride_mn.

    PRECISION "ieee" multiplies in float32 with FMAs; "tf32x3" uses tensor cores on three
    TF32 pieces (≈ float32 accuracy, checked on the GPU by bench/wkd_l_kernels.py)."""
    acc = tl.zeros([BM, BN], dtype=tl.float32)
    row_ok = rows[:, None] < B
    col_ok = cols[None, :] < C
    for k0 in range(0, C, BK):
        ks = k0 + tl.arange(0, BK)
        x = tl.load(x_ptr + rows[:, None] * C + ks[None, :],
                    mask=row_ok & (ks[None, :] < C), other=0.0)  # fmt: skip
        m = tl.load(m_ptr + ks[:, None] * stride_mk + cols[None, :] * stride_mn,
                    mask=(ks[:, None] < C) & col_ok, other=0.0)  # fmt: skip
        acc += tl.dot(x, m, input_precision=PRECISION)
    return acc


@triton.jit
def prologue_kernel(
    zs_ptr, zt_ptr, tgt_ptr, lt_ptr, pt_ptr, a_ptr, b_ptr, u_ptr,
    C, inv_t, u_init, BLOCK: tl.constexpr,
):  # fmt: skip
    """Per sample: L_t, softmax(z_T)_y, the masked softmaxes a, b and u_0."""
    row = tl.program_id(0)
    offs = tl.arange(0, BLOCK)
    valid = offs < C
    y = tl.load(tgt_ptr + row)
    keep = valid & (offs != y)
    is_y = offs == y
    zs = tl.load(zs_ptr + row * C + offs, mask=valid, other=0.0)
    zt = tl.load(zt_ptr + row * C + offs, mask=valid, other=0.0)
    neg = float("-inf")
    zs_v = tl.where(valid, zs, neg)
    m_s = tl.max(zs_v, 0)
    lse_s = m_s + tl.log(tl.sum(tl.exp(zs_v - m_s), 0))
    zt_v = tl.where(valid, zt, neg)
    e_t = tl.exp(zt_v - tl.max(zt_v, 0))
    pt_y = tl.sum(tl.where(is_y, e_t, 0.0), 0) / tl.sum(e_t, 0)
    zs_y = tl.sum(tl.where(is_y, zs, 0.0), 0)
    xs = tl.where(keep, zs * inv_t, neg)
    es = tl.exp(xs - tl.max(xs, 0))
    xt = tl.where(keep, zt * inv_t, neg)
    et = tl.exp(xt - tl.max(xt, 0))
    tl.store(lt_ptr + row, -pt_y * (zs_y - lse_s))
    tl.store(pt_ptr + row, pt_y)
    tl.store(a_ptr + row * C + offs, es / tl.sum(es, 0), mask=valid)
    tl.store(b_ptr + row * C + offs, et / tl.sum(et, 0), mask=valid)
    tl.store(u_ptr + row * C + offs, tl.where(keep, u_init, 0.0), mask=valid)


@triton.jit
def scale_kernel(
    x_ptr, m_ptr, stride_mk, stride_mn, num_ptr, den_ptr, out_ptr, B, C, stab,
    BM: tl.constexpr, BN: tl.constexpr, BK: tl.constexpr, PRECISION: tl.constexpr,
):  # fmt: skip
    """One half-iteration: den = X @ M + δ (saved), out = num / den."""
    rows = tl.program_id(0) * BM + tl.arange(0, BM)
    cols = tl.program_id(1) * BN + tl.arange(0, BN)
    acc = matvec(x_ptr, m_ptr, stride_mk, stride_mn, rows, cols, B, C, BM, BN, BK, PRECISION)
    at = rows[:, None] * C + cols[None, :]
    ok = (rows[:, None] < B) & (cols[None, :] < C)
    den = acc + stab
    num = tl.load(num_ptr + at, mask=ok, other=0.0)
    tl.store(den_ptr + at, den, mask=ok)
    tl.store(out_ptr + at, tl.math.div_rn(num, den), mask=ok)


@triton.jit
def transport_kernel(
    v_ptr, w_ptr, u_ptr, part_ptr, B, C, NB,
    BM: tl.constexpr, BN: tl.constexpr, BK: tl.constexpr, PRECISION: tl.constexpr,
):  # fmt: skip
    """Partial sums of WD = Σ_i u_i (W v)_i over this tile's rows i: part[b, tile]."""
    rows = tl.program_id(0) * BM + tl.arange(0, BM)
    cols = tl.program_id(1) * BN + tl.arange(0, BN)
    acc = matvec(v_ptr, w_ptr, 1, C, rows, cols, B, C, BM, BN, BK, PRECISION)  # (W v) at cols
    ok = (rows[:, None] < B) & (cols[None, :] < C)
    u = tl.load(u_ptr + rows[:, None] * C + cols[None, :], mask=ok, other=0.0)
    tl.store(part_ptr + rows * NB + tl.program_id(1), tl.sum(u * acc, 1), mask=rows < B)


@triton.jit
def row_adjoint_kernel(
    x_ptr, m_ptr, g_ptr, a_ptr, r_ptr, abar_ptr, rbar_ptr, B, C,
    SCALE: tl.constexpr, ACCUM: tl.constexpr,
    BM: tl.constexpr, BN: tl.constexpr, BK: tl.constexpr, PRECISION: tl.constexpr,
):  # fmt: skip
    """ū = M x (times g per sample if SCALE); ā (+)= ū / r; r̄ = −ū u / r with u = a / r."""
    rows = tl.program_id(0) * BM + tl.arange(0, BM)
    cols = tl.program_id(1) * BN + tl.arange(0, BN)
    u_bar = matvec(x_ptr, m_ptr, 1, C, rows, cols, B, C, BM, BN, BK, PRECISION)  # rows of M · x
    if SCALE:
        u_bar = tl.load(g_ptr + rows, mask=rows < B, other=0.0)[:, None] * u_bar
    at = rows[:, None] * C + cols[None, :]
    ok = (rows[:, None] < B) & (cols[None, :] < C)
    r = tl.load(r_ptr + at, mask=ok, other=1.0)
    a_bar = tl.math.div_rn(u_bar, r)
    if ACCUM:
        a_bar = tl.load(abar_ptr + at, mask=ok, other=0.0) + a_bar
    u = tl.math.div_rn(tl.load(a_ptr + at, mask=ok, other=0.0), r)
    tl.store(abar_ptr + at, a_bar, mask=ok)
    tl.store(rbar_ptr + at, -tl.math.div_rn(u_bar * u, r), mask=ok)


@triton.jit
def col_adjoint_kernel(
    x_ptr, k_ptr, u_ptr, w_ptr, g_ptr, b_ptr, s_ptr, sbar_ptr, B, C,
    FIRST: tl.constexpr, BM: tl.constexpr, BN: tl.constexpr, BK: tl.constexpr,
    PRECISION: tl.constexpr,
):  # fmt: skip
    """v̄ = Kᵀ x (+ g Wᵀ u_N if FIRST); s̄ = −v̄ v / s with v = b / s."""
    rows = tl.program_id(0) * BM + tl.arange(0, BM)
    cols = tl.program_id(1) * BN + tl.arange(0, BN)
    v_bar = matvec(x_ptr, k_ptr, C, 1, rows, cols, B, C, BM, BN, BK, PRECISION)
    if FIRST:
        g = tl.load(g_ptr + rows, mask=rows < B, other=0.0)[:, None]
        v_bar = g * matvec(u_ptr, w_ptr, C, 1, rows, cols, B, C, BM, BN, BK, PRECISION) + v_bar
    at = rows[:, None] * C + cols[None, :]
    ok = (rows[:, None] < B) & (cols[None, :] < C)
    s = tl.load(s_ptr + at, mask=ok, other=1.0)
    v = tl.math.div_rn(tl.load(b_ptr + at, mask=ok, other=0.0), s)
    tl.store(sbar_ptr + at, -tl.math.div_rn(v_bar * v, s), mask=ok)


@triton.jit
def grad_kernel(
    zs_ptr, tgt_ptr, a_ptr, abar_ptr, pt_ptr, glt_ptr, gz_ptr, C, inv_t,
    BLOCK: tl.constexpr,
):  # fmt: skip
    """∂z_S = a ⊙ (ā − ⟨a, ā⟩) / T + g_t · p_T,y · (softmax(z_S) − e_y)."""
    row = tl.program_id(0)
    offs = tl.arange(0, BLOCK)
    valid = offs < C
    y = tl.load(tgt_ptr + row)
    a = tl.load(a_ptr + row * C + offs, mask=valid, other=0.0)
    a_bar = tl.load(abar_ptr + row * C + offs, mask=valid, other=0.0)
    grad = a * (a_bar - tl.sum(a * a_bar, 0)) * inv_t  # 0 at y (a_y = 0)
    zs = tl.load(zs_ptr + row * C + offs, mask=valid, other=float("-inf"))
    e_s = tl.exp(zs - tl.max(zs, 0))
    p_s = e_s / tl.sum(e_s, 0)
    g_t = tl.load(glt_ptr + row)
    pt_y = tl.load(pt_ptr + row)
    grad += g_t * pt_y * (p_s - tl.where(offs == y, 1.0, 0.0))
    tl.store(gz_ptr + row * C + offs, grad, mask=valid)
