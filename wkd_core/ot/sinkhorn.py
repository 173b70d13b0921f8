r"""Entropic optimal transport by Sinkhorn iterations, batched and differentiable.

Three solvers of the same problem

.. math::
    \min_{P \ge 0,\; P\mathbf 1 = a,\; P^\top \mathbf 1 = b}
        \langle P, C\rangle - \varepsilon H(P),
    \qquad P = \operatorname{diag}(u)\, K \operatorname{diag}(v),\quad K = e^{-C/\varepsilon},

all with the update order of the WKD authors' code (and of POT's ``sinkhorn_knopp``): each
iteration first ``v = b / (Kᵀu)`` then ``u = a / (K v)``, so after the last iteration the row
marginals are exact and the column marginals approximate.

- :func:`sinkhorn`: plain scaling with the authors' ``+ stabilizer`` guards (default 1e-8),
  batched over any leading dimensions of ``(…, n, m)`` costs.
- :func:`sinkhorn_shared`: the same iterations when every problem of a batch shares one
  ``(n, m)`` cost: each iteration is a ``(B, n) × (n, m)`` matrix product and the plan is never
  materialised (the WKD-L hot path, DESIGN.md §4).
- :func:`sinkhorn_log`: log-domain iterations (stable for small ε), optional tolerance.

Gradients flow through every iteration (plain autograd, "unrolled"), as in the authors' code.

Reference: M. Cuturi, "Sinkhorn Distances", NeurIPS 2013; G. Peyré and M. Cuturi,
"Computational Optimal Transport", 2019, §4.2 (scaling) and Remark 4.23 (log domain).
"""

from __future__ import annotations

import math
import numbers
from dataclasses import dataclass

import torch
from torch import Tensor

__all__ = ["SinkhornResult", "sinkhorn", "sinkhorn_log", "sinkhorn_shared"]


@dataclass(frozen=True)
class SinkhornResult:
    """What a Sinkhorn solver returns.

    Attributes:
        plan: (…, n, m) transport plan ``diag(u) K diag(v)``, or ``None`` when not formed.
        u: (…, n) row scaling; for :func:`sinkhorn_log` its logarithm.
        v: (…, m) column scaling; for :func:`sinkhorn_log` its logarithm.
        n_iter: iterations actually run.
        transport_cost: (…,) ``Σ_ij P_ij C_ij`` (no entropy term).
    """

    plan: Tensor | None
    u: Tensor
    v: Tensor
    n_iter: int
    transport_cost: Tensor


def _check(a: Tensor, b: Tensor, cost: Tensor, eps: float, n_iter: int) -> None:
    """Cheap Python checks (no device sync): types, shapes, ε > 0, integer n_iter ≥ 1."""
    for name, value in (("a", a), ("b", b), ("cost", cost)):
        if not isinstance(value, Tensor):
            raise TypeError(f"{name} must be a torch.Tensor, got {type(value).__name__}")
    if cost.dim() < 2:
        raise ValueError(f"cost must have at least 2 dims (…, n, m), got shape {tuple(cost.shape)}")
    n, m = cost.shape[-2:]
    if a.dim() < 1 or b.dim() < 1 or a.shape[-1] != n or b.shape[-1] != m:
        raise ValueError(
            f"marginals of sizes a: {tuple(a.shape)}, b: {tuple(b.shape)} do not fit "
            f"a cost of shape {tuple(cost.shape)}"
        )
    if n == 0 or m == 0:
        raise ValueError(f"cost of shape {tuple(cost.shape)} is empty: need n >= 1 and m >= 1")
    if not eps > 0:
        raise ValueError(f"eps must be > 0, got {eps}")
    if isinstance(n_iter, bool) or not isinstance(n_iter, numbers.Integral):
        raise TypeError(f"n_iter must be an int, got {type(n_iter).__name__} {n_iter!r}")
    if n_iter < 1:
        raise ValueError(f"n_iter must be >= 1, got {n_iter}")


def check_stabilizer(stabilizer: float) -> None:
    """The denominators' guard δ must be ≥ 0 (a negative one can divide by zero or flip signs)."""
    if not stabilizer >= 0:  # also False for NaN
        raise ValueError(f"stabilizer must be >= 0, got {stabilizer}")


def check_u0(
    u0: Tensor | None, a: Tensor, *, name: str = "u0", batch: tuple = (), like_a: bool = False
) -> None:
    """``u0`` is a tensor (…, n) with a's last size n whose batch dims broadcast against a's
    (and ``batch``, the cost's); with ``like_a`` it must broadcast to a's shape itself."""
    if u0 is None:
        return
    if not isinstance(u0, Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(u0).__name__}")
    ok = u0.dim() >= 1 and u0.shape[-1] == a.shape[-1]
    if ok:
        try:
            shape = torch.broadcast_shapes(u0.shape[:-1], a.shape[:-1], batch)
        except RuntimeError:
            ok = False
        else:
            ok = not like_a or shape == a.shape[:-1]
    if not ok:
        raise ValueError(
            f"{name} of shape {tuple(u0.shape)} does not fit the row marginals a of shape "
            f"{tuple(a.shape)}: it must be (…, n) like a"
        )


def check_shared(
    a: Tensor,
    b: Tensor,
    cost: Tensor,
    eps: float,
    n_iter: int,
    *,
    name: str,
    u0: Tensor | None = None,
    stabilizer: float = 0.0,
) -> None:
    """The checks of :func:`sinkhorn_shared` (and of its explicit-adjoint twin): a (B, n),
    b (B, m), cost (n, m), ε > 0, integer n_iter ≥ 1, u0 (B, n) (or broadcasting to it),
    stabilizer ≥ 0."""
    _check(a, b, cost, eps, n_iter)
    if cost.dim() != 2 or a.dim() != 2 or b.dim() != 2 or a.shape[0] != b.shape[0]:
        raise ValueError(
            f"{name} wants a (B, n), b (B, m), cost (n, m); got {tuple(a.shape)}, "
            f"{tuple(b.shape)}, {tuple(cost.shape)}"
        )
    check_stabilizer(stabilizer)
    check_u0(u0, a, like_a=True)


def common_dtype(a: Tensor, b: Tensor) -> torch.dtype:
    """The marginals' dtype (their promotion): the cost and u0 are cast to it."""
    return torch.promote_types(a.dtype, b.dtype)


def shared_operands(
    a: Tensor, b: Tensor, cost: Tensor, *, eps: float, u0: Tensor | None
) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor]:
    """What the shared-cost solvers iterate on, in the marginals' dtype: ``a``, ``b``,
    ``K = exp(-C/ε)`` (n, m), ``W = K∘C`` (``Σ_ij P_ij C_ij = uᵀ W v``) and the first u,
    (B, n): ``u0`` expanded to a's shape, or ``1/n``."""
    dtype = common_dtype(a, b)
    a, b, cost = a.to(dtype), b.to(dtype), cost.to(dtype)
    kernel = torch.exp(-cost / eps)
    weighted = kernel * cost
    if u0 is None:
        return a, b, kernel, weighted, torch.full_like(a, 1.0 / a.shape[-1])
    u = u0.to(dtype)
    return a, b, kernel, weighted, u if u.shape == a.shape else u.expand_as(a)


def sinkhorn(
    a: Tensor,
    b: Tensor,
    cost: Tensor,
    *,
    eps: float,
    n_iter: int = 10,
    u0: Tensor | None = None,
    stabilizer: float = 1e-8,
) -> SinkhornResult:
    """Plain Sinkhorn scaling with the WKD authors' update order and guards.

    ``u ← u0`` (default ``1/n``); ``n_iter`` times: ``v = b / (Kᵀu + s)``, ``u = a / (K v + s)``
    with ``s = stabilizer``. Underflows in ``K`` when ``C/ε`` exceeds ~87 in float32: use
    :func:`sinkhorn_log` there.

    Args:
        a: (…, n) row marginals (source, the student in WKD-L).
        b: (…, m) column marginals (target, the teacher in WKD-L).
        cost: (…, n, m) ground cost, broadcast against the marginals' batch dims.
        eps: entropic regularisation ε in ``K = exp(-C/ε)``.
        n_iter: fixed number of iterations (no convergence test).
        u0: (…, n) initial row scaling; default ``1/n`` everywhere.
        stabilizer: added to both denominators, ≥ 0 (the authors' ``1e-8``; 0 for textbook).

    The cost must be ≥ 0 (not checked: that would read its values, a device sync; a
    negative cost gives NaN or negative transport costs). The cost and ``u0`` are cast to the
    marginals' dtype (a float32 cost with float64 marginals gives float64 results).

    Returns:
        :class:`SinkhornResult` with the plan.
    """
    _check(a, b, cost, eps, n_iter)
    check_stabilizer(stabilizer)
    check_u0(u0, a, batch=cost.shape[:-2])
    dtype = common_dtype(a, b)
    a, b, cost = a.to(dtype), b.to(dtype), cost.to(dtype)
    u0 = None if u0 is None else u0.to(dtype)
    kernel = torch.exp(-cost / eps)  # (…, n, m)
    u = torch.full_like(a, 1.0 / a.shape[-1]) if u0 is None else u0
    v = b
    for _ in range(n_iter):
        v = b / ((u.unsqueeze(-2) @ kernel).squeeze(-2) + stabilizer)  # Kᵀu: (…, m)
        u = a / ((kernel @ v.unsqueeze(-1)).squeeze(-1) + stabilizer)  # K v: (…, n)
    plan = u.unsqueeze(-1) * kernel * v.unsqueeze(-2)  # (…, n, m)
    return SinkhornResult(plan, u, v, n_iter, (plan * cost).sum((-2, -1)))


def sinkhorn_shared(
    a: Tensor,
    b: Tensor,
    cost: Tensor,
    *,
    eps: float,
    n_iter: int = 10,
    u0: Tensor | None = None,
    stabilizer: float = 1e-8,
) -> SinkhornResult:
    """:func:`sinkhorn` for a batch of problems that share one cost, without forming plans.

    Same iterations and guards as :func:`sinkhorn` with ``cost`` broadcast over the batch, but
    each step is one GEMM (``Kᵀu`` for all rows is ``u @ K``) and the transport cost is
    ``Σ_b uᵀ (K∘C) v``: memory O(n·m + B·(n+m)) instead of O(B·n·m).

    Zero mass is allowed: with ``a_i = 0`` and ``u0_i = 0`` row i of every plan stays zero, and
    ``b_j = 0`` gives ``v_j = 0`` after the first step. This is how WKD-L drops the target class
    per sample while sharing one C×C kernel.

    Args:
        a: (B, n) row marginals.
        b: (B, m) column marginals.
        cost: (n, m) ground cost shared by the batch.
        eps: entropic regularisation ε.
        n_iter: fixed number of iterations.
        u0: (B, n) initial row scaling (or a shape broadcasting to it); default ``1/n``.
        stabilizer: added to both denominators, ≥ 0 (the authors' ``1e-8``).

    The cost must be ≥ 0 (not checked: that would read its values, a device sync; a
    negative cost gives NaN or negative transport costs). The cost and ``u0`` are cast to the
    marginals' dtype.

    Returns:
        :class:`SinkhornResult` with ``plan=None`` and ``transport_cost`` of shape (B,).
    """
    check_shared(a, b, cost, eps, n_iter, name="sinkhorn_shared", u0=u0, stabilizer=stabilizer)
    a, b, kernel, weighted, u = shared_operands(a, b, cost, eps=eps, u0=u0)
    kernel_t = kernel.t()  # a view: `v @ kernel_t` is K v for every row
    for _ in range(n_iter):
        v = b / (u @ kernel + stabilizer)  # (B, m)
        u = a / (v @ kernel_t + stabilizer)  # (B, n)
    transport = ((u @ weighted) * v).sum(-1)  # (B,)
    return SinkhornResult(None, u, v, n_iter, transport)


def sinkhorn_log(
    a: Tensor,
    b: Tensor,
    cost: Tensor,
    *,
    eps: float,
    n_iter: int = 1000,
    tol: float | None = None,
    log_marginals: bool = False,
    log_u0: Tensor | None = None,
) -> SinkhornResult:
    """Log-domain Sinkhorn (POT's ``sinkhorn_log`` iterations, batched).

    With ``f = log u``, ``g = log v`` and ``M = -C/ε``: ``g = log b - LSE_i(M_ij + f_i)``, then
    ``f = log a - LSE_j(M_ij + g_j)``. Any constant start gives the same plans as the plain
    solver started at a constant (a constant factor on u is absorbed by v); we start at
    ``f = -log n`` like :func:`sinkhorn`. Never underflows, but each step touches (…, n, m).

    Args:
        a: (…, n) row marginals (or their logs, see ``log_marginals``); zeros allowed.
        b: (…, m) column marginals (or their logs).
        cost: (…, n, m) ground cost.
        eps: entropic regularisation ε.
        n_iter: maximum number of iterations.
        tol: stop once the largest L1 column-marginal error in the batch is below ``tol``
            (> 0; checked each iteration; one device sync per check). ``None`` runs ``n_iter``.
        log_marginals: ``a`` and ``b`` are log-probabilities. Pass logs when some masses are
            exactly zero and gradients are needed: ``log(0)`` has an infinite derivative.
        log_u0: (…, n) initial ``f``; default ``-log n``. Use ``-inf`` where a row must
            stay out of the first column update (as a zero ``u0`` in :func:`sinkhorn`).

    The cost must be ≥ 0 (not checked: that would read its values, a device sync).

    Returns:
        :class:`SinkhornResult` whose ``u``, ``v`` are the log-scalings ``f``, ``g``.
    """
    _check(a, b, cost, eps, n_iter)
    if tol is not None and not tol > 0:  # also refuses NaN, which never stops
        raise ValueError(f"tol must be > 0, got {tol}")
    check_u0(log_u0, a, name="log_u0", batch=cost.shape[:-2])
    log_a, log_b = (a, b) if log_marginals else (torch.log(a), torch.log(b))
    scaled = -cost / eps  # (…, n, m)
    f = torch.full_like(log_a, -math.log(a.shape[-1])) if log_u0 is None else log_u0
    g = log_b
    done = n_iter
    for it in range(1, n_iter + 1):
        g = log_b - torch.logsumexp(scaled + f.unsqueeze(-1), dim=-2)  # (…, m)
        f = log_a - torch.logsumexp(scaled + g.unsqueeze(-2), dim=-1)  # (…, n)
        if tol is not None:
            with torch.no_grad():
                col = torch.exp(scaled + f.unsqueeze(-1) + g.unsqueeze(-2)).sum(-2)
                err = (col - log_b.exp()).abs().sum(-1).max()
            if err.item() < tol:
                done = it
                break
    plan = torch.exp(scaled + f.unsqueeze(-1) + g.unsqueeze(-2))  # (…, n, m)
    return SinkhornResult(plan, f, g, done, (plan * cost).sum((-2, -1)))
