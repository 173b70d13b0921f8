"""Memory-lean reverse pass of the unrolled shared-kernel Sinkhorn (exact, not implicit).

Autograd keeps about six (B, n) tensors per iteration. The iteration

    dv_t = u_{t-1} K + s,   v_t = b / dv_t,   du_t = v_t Kᵀ + s,   u_t = a / du_t

only needs the two denominators to be undone: ``u_t = a / du_t`` and ``v_t = b / dv_t`` are
recomputed elementwise in the reverse pass, which runs the same two GEMMs per iteration as
autograd would. Gradients flow to a, b and u0 (not to the cost: callers that need it use
autograd). The result is the gradient of the unrolled loop, bit for bit up to rounding.
"""

from __future__ import annotations

import torch
from torch import Tensor
from torch.autograd.function import once_differentiable


class SharedSinkhorn(torch.autograd.Function):
    """(a, b, u0, K, K∘C, n_iter, s) → (transport (B,), u_N (B, n), v_N (B, m))."""

    @staticmethod
    def forward(ctx, a, b, u0, kernel, weighted, n_iter, stabilizer):
        u, denoms_v, denoms_u = u0, [], []
        for _ in range(n_iter):
            dv = (u @ kernel).add_(stabilizer)  # (B, m)
            v = b / dv
            du = (v @ kernel.t()).add_(stabilizer)  # (B, n)
            u = a / du
            denoms_v.append(dv)
            denoms_u.append(du)
        transport = ((u @ weighted) * v).sum(-1)  # (B,)
        ctx.n_iter = n_iter
        ctx.save_for_backward(a, b, kernel, weighted, *denoms_v, *denoms_u)
        return transport, u, v

    @staticmethod
    @once_differentiable
    def backward(ctx, g_transport: Tensor, g_u: Tensor, g_v: Tensor):
        a, b, kernel, weighted, *denoms = ctx.saved_tensors
        n_iter = ctx.n_iter
        denoms_v, denoms_u = denoms[:n_iter], denoms[n_iter:]
        u, v = a / denoms_u[-1], b / denoms_v[-1]
        g = g_transport.unsqueeze(-1)  # (B, 1)
        gu = g * (v @ weighted.t())  # ∂/∂u_N of Σ_ij u_i (K∘C)_ij v_j
        gv = g * (u @ weighted)
        if g_u is not None:
            gu = gu + g_u
        if g_v is not None:
            gv = gv + g_v
        ga, gb = torch.zeros_like(a), torch.zeros_like(b)
        for t in reversed(range(n_iter)):
            du, dv = denoms_u[t], denoms_v[t]
            ga += gu / du  # u_t = a / du_t
            gv = gv - (gu * (a / du) / du) @ kernel  # through du_t = v_t Kᵀ + s
            gb += gv / dv  # v_t = b / dv_t
            gu = -(gv * (b / dv) / dv) @ kernel.t()  # through dv_t = u_{t-1} K + s
            gv = torch.zeros_like(gv)  # v_{t-1} feeds nothing after step t-1
        needs = ctx.needs_input_grad
        return (
            ga if needs[0] else None,
            gb if needs[1] else None,
            gu if needs[2] else None,
            None,
            None,
            None,
            None,
        )
