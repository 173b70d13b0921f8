r"""The shared-kernel Sinkhorn of :func:`~wkd_core.ot.sinkhorn.sinkhorn_shared` with a
hand-written backward pass: the same GEMMs, fewer kernel launches.

Forward, the plain solver's iterations and transport cost (DESIGN.md §4), each
half-iteration one GEMM with the stabiliser as its bias and one division:

.. math::
    s_k = u_{k-1} K + \delta,\; v_k = b / s_k,\qquad r_k = v_k K^\top + \delta,\;
    u_k = a / r_k \quad (k = 1…N),\qquad T = \big((u_N W) \odot v_N\big)\mathbf 1,
    \; W = K \circ C,

with row vectors ``u, v, a, b`` of shape (B, n) / (B, m). Backward, the adjoint of the
unrolled iterations (reverse mode, exact: the gradient autograd would give, no re-solve),
for an upstream gradient ``g`` of shape (B,):

.. math::
    \bar u_N = g \odot v_N W^\top,\quad \bar v_N = g \odot u_N W;\qquad
    \text{for } k = N…1:\; q_k = \bar u_k / r_k,\; \bar a \mathrel{+}= q_k,\;
    \bar v_k = [k{=}N]\,\bar v_N - (q_k \odot u_k) K,\\
    \bar b \mathrel{+}= \bar v_k / s_k,\quad \bar u_{k-1} = -(\bar v_k \odot v_k / s_k) K^\top .

Why: autograd replays each iteration's ``matmul``, ``add`` and ``div`` with their generic
backward formulas and sums ``a``'s gradient once per use. Here an iteration is 4 forward
launches (2 GEMMs with the stabiliser as a bias epilogue, 2 divisions) and at most 6 backward
ones (2 GEMMs, 4 element-wise), and ``ā`` is one sum over a buffer at the end; PyTorch's CPU
profiler counts 144 non-GEMM operator calls for the plain solver's forward+backward at
(64, 100), N = 10, and 94 for this one, around the same 41 GEMMs. On a GPU at
(B, C) = (256, 1000) the GEMMs are ≈ 10 G multiply-adds per forward+backward; the launches
between them are what this removes (``bench/wkd_l_kernels.py``, variant ``adjoint``;
docs/benchmarks.md). Every tensor keeps a static shape, so a CUDA graph captures it.

The cost (and so ``K`` and ``W``) and ``u0`` are constants here: no gradient reaches them
(WKD-L's cost is a buffer). Same float operations as the plain solver up to the order of
the bias addition inside a GEMM and of the gradient's sums, so in float32 the two agree to
≈ 1e-7 relative in the transport cost and 1e-8 – 1e-6 in the gradient, each as far from a
float64 reference as the other (``tests/wkd_core/test_sinkhorn_adjoint.py``).

Reference: Lv, Yang, Li, NeurIPS 2024, §3.1; Cuturi, NeurIPS 2013 (scaling iterations);
Peyré and Cuturi, "Computational Optimal Transport", §9.1 (differentiating the Sinkhorn
iterates).
"""

from __future__ import annotations

import torch
from torch import Tensor
from torch.autograd.function import once_differentiable

from wkd_core.ot.sinkhorn import check_shared, shared_operands

__all__ = ["sinkhorn_shared_transport"]


class _SharedSinkhornTransport(torch.autograd.Function):
    """(a, b, u0, K, W) → T: the transport cost per problem, with the explicit adjoint."""

    @staticmethod
    def forward(ctx, a, b, u0, kernel, weighted, n_iter, stabilizer):
        kernel_t = kernel.t()
        # A 1-D bias lets cuBLASLt add the stabiliser in the GEMM's epilogue (one launch).
        bias_m = kernel.new_full((kernel.shape[1],), stabilizer)
        bias_n = kernel.new_full((kernel.shape[0],), stabilizer)
        u, saved = u0, []
        for _ in range(n_iter):
            s = torch.addmm(bias_m, u, kernel)  # (B, m): Kᵀu + δ for every row
            v = b / s
            r = torch.addmm(bias_n, v, kernel_t)  # (B, n): K v + δ
            u = a / r
            saved += [u, v, r, s]
        uw = u @ weighted  # (B, m)
        ctx.n_iter = n_iter
        ctx.save_for_backward(kernel, weighted, uw, *saved)
        return (uw * v).sum(-1)

    @staticmethod
    @once_differentiable  # the saved iterates carry no graph: refuse a double backward
    def backward(ctx, grad):
        kernel, weighted, uw, *saved = ctx.saved_tensors
        n_iter = ctx.n_iter
        need_a, need_b = ctx.needs_input_grad[:2]
        u_n, v_n = saved[-4], saved[-3]
        g = grad.unsqueeze(-1)  # (B, 1)
        grad_u = g * (v_n @ weighted.t())  # ū_N: (B, n)
        grad_v_last = g * uw  # v̄_N from T: (B, m)
        quotients = u_n.new_empty((n_iter, *u_n.shape))  # q_k = ū_k / r_k; ā = Σ_k q_k
        grad_b = torch.zeros_like(v_n) if need_b else None
        for k in range(n_iter - 1, -1, -1):
            u, v, r, s = saved[4 * k : 4 * k + 4]
            q = torch.div(grad_u, r, out=quotients[k])
            # minus v̄_k: (q ⊙ u) K, less v̄_N at the last iteration (one GEMM either way)
            neg_grad_v = (
                torch.addmm(grad_v_last, q * u, kernel, beta=-1)
                if k == n_iter - 1
                else (q * u) @ kernel
            )
            if grad_b is not None:
                grad_b.sub_(neg_grad_v / s)
            if k > 0:  # u0 is a constant: its adjoint is not needed
                grad_u = (neg_grad_v * v).div_(s) @ kernel.t()
        grad_a = quotients.sum(0) if need_a else None
        return grad_a, grad_b, None, None, None, None, None


def sinkhorn_shared_transport(
    a: Tensor,
    b: Tensor,
    cost: Tensor,
    *,
    eps: float,
    n_iter: int = 10,
    u0: Tensor | None = None,
    stabilizer: float = 1e-8,
) -> Tensor:
    """``sinkhorn_shared(a, b, cost, …).transport_cost`` with the explicit adjoint backward.

    Args:
        a: (B, n) row marginals (the student in WKD-L; gets a gradient).
        b: (B, m) column marginals (the teacher; gets a gradient if it requires one).
        cost: (n, m) ground cost shared by the batch; a constant (no gradient reaches it).
        eps: entropic regularisation ε in ``K = exp(-C/ε)``.
        n_iter: fixed number of iterations, ≥ 1.
        u0: (B, n) initial row scaling (or a shape broadcasting to it), a constant; default
            ``1/n``.
        stabilizer: added to both denominators, ≥ 0 (the authors' ``1e-8``).

    The cost must be ≥ 0 (not checked: that would read its values, a device sync). The cost,
    ``b`` and ``u0`` are cast to the marginals' dtype.

    Returns:
        (B,) transport cost ``Σ_ij P_ij C_ij`` of each problem.
    """
    check_shared(
        a, b, cost, eps, n_iter, name="sinkhorn_shared_transport", u0=u0, stabilizer=stabilizer
    )
    if cost.requires_grad or (u0 is not None and u0.requires_grad):
        raise ValueError("sinkhorn_shared_transport treats cost and u0 as constants: detach them")
    a, b, kernel, weighted, u = shared_operands(a, b, cost, eps=eps, u0=u0)
    return _SharedSinkhornTransport.apply(a, b, u, kernel, weighted, n_iter, stabilizer)
