"""The explicit-adjoint shared-kernel Sinkhorn (``solver="adjoint"``) computes what the plain
autograd solver computes: the same transport costs and gradients, checked against the plain
solver in float32 and float64, against finite differences (``gradcheck``) and against a
float64 reference; and the fast step picks it where the register kernel does not run."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from wkd_core.distillers.wkd import WKDL
from wkd_core.losses import sharpen_cost, wkd_logit_terms
from wkd_core.ot import sinkhorn_shared
from wkd_core.ot.sinkhorn_adjoint import sinkhorn_shared_transport
from wkd_core.ot.sinkhorn_fused import REGISTER_MAX_CLASSES


def _marginals(gen, batch, size, dtype, *, drop=None):
    """(B, size) probability rows from random logits; ``drop`` (B,) indices get zero mass."""
    logits = 3 * torch.randn(batch, size, generator=gen, dtype=dtype)
    if drop is not None:
        logits = logits.scatter(1, drop.unsqueeze(1), float("-inf"))
    return logits, torch.softmax(logits, dim=1)


def _shared_problem(seed, batch, n, m, dtype=torch.float32):
    """Student-like rows a (with a dropped class and a zero u0 there), teacher rows b, cost."""
    gen = torch.Generator().manual_seed(seed)
    drop = torch.randint(0, min(n, m), (batch,), generator=gen)
    logits_a, _ = _marginals(gen, batch, n, dtype, drop=drop)
    _, b = _marginals(gen, batch, m, dtype, drop=drop)
    cost = sharpen_cost(torch.rand(n, m, generator=gen, dtype=dtype)) if n == m else None
    if cost is None:  # sharpen_cost wants a square matrix; any positive cost will do
        cost = 0.05 + torch.rand(n, m, generator=gen, dtype=dtype)
    u0 = torch.full((batch, n), 1.0 / (n - 1), dtype=dtype)
    u0 = u0.scatter(1, drop.unsqueeze(1), 0.0)
    upstream = torch.randn(batch, generator=gen, dtype=dtype)  # distinct weight per problem
    return logits_a, b, cost, u0, upstream


def _transport_and_grads(solver, logits_a, b, cost, u0, upstream, n_iter=10):
    """Transport per problem and the gradients of ⟨upstream, T⟩ for the logits of a and b."""
    logits_a = logits_a.clone().requires_grad_()
    b = b.clone().requires_grad_()
    a = torch.softmax(logits_a, dim=1)
    if solver == "plain":
        transport = sinkhorn_shared(a, b, cost, eps=0.05, n_iter=n_iter, u0=u0).transport_cost
    else:
        transport = sinkhorn_shared_transport(a, b, cost, eps=0.05, n_iter=n_iter, u0=u0)
    (transport * upstream).sum().backward()
    return transport.detach(), logits_a.grad, b.grad


def _rel(x, ref):
    return ((x.double() - ref.double()).norm() / ref.double().norm()).item()


@pytest.mark.parametrize(
    ("batch", "n", "m", "n_iter"),
    [(8, 10, 10, 10), (64, 100, 100, 10), (5, 300, 300, 10), (7, 20, 33, 4), (3, 12, 12, 1)],
)
def test_adjoint_equals_the_plain_solver_in_float32(batch, n, m, n_iter):
    problem = _shared_problem(0, batch, n, m)
    plain = _transport_and_grads("plain", *problem, n_iter=n_iter)
    adjoint = _transport_and_grads("adjoint", *problem, n_iter=n_iter)
    reference = _transport_and_grads(
        "plain", *(t.double() for t in problem), n_iter=n_iter
    )  # float64
    assert _rel(adjoint[0], plain[0]) < 1e-6
    assert _rel(adjoint[1], plain[1]) < 2e-6  # the student side, WKD-L's gradient
    # Against float64, each gradient is no worse than the plain solver's own float32 error
    # (b's raw gradient is the worse conditioned: both solvers are 1e-6 to 8e-6 from it).
    for got, want, ref in zip(adjoint[1:], plain[1:], reference[1:], strict=True):
        assert _rel(got, ref) < 3 * _rel(want, ref) + 1e-6


def test_adjoint_equals_the_plain_solver_in_float64():
    problem = _shared_problem(1, 16, 50, 40, torch.float64)
    plain = _transport_and_grads("plain", *problem)
    adjoint = _transport_and_grads("adjoint", *problem)
    for got, want in zip(adjoint, plain, strict=True):
        assert _rel(got, want) < 1e-12


def test_adjoint_gradients_match_finite_differences():
    gen = torch.Generator().manual_seed(2)
    a = torch.softmax(torch.randn(3, 6, generator=gen, dtype=torch.float64), 1)
    b = torch.softmax(torch.randn(3, 5, generator=gen, dtype=torch.float64), 1)
    cost = 0.1 + torch.rand(6, 5, generator=gen, dtype=torch.float64)

    def transport(a, b):
        return sinkhorn_shared_transport(a, b, cost, eps=0.2, n_iter=3)

    assert torch.autograd.gradcheck(transport, (a.requires_grad_(), b.requires_grad_()))


def test_only_the_gradients_asked_for_are_computed():
    logits_a, b, cost, u0, _ = _shared_problem(3, 4, 12, 12)
    a = torch.softmax(logits_a, 1).requires_grad_()
    (grad_a,) = torch.autograd.grad(sinkhorn_shared_transport(a, b, cost, eps=0.05, u0=u0).sum(), a)
    expected = torch.autograd.grad(
        sinkhorn_shared(a, b, cost, eps=0.05, u0=u0).transport_cost.sum(), a
    )[0]
    assert _rel(grad_a, expected) < 1e-6


def test_refusals():
    a = torch.softmax(torch.randn(2, 4), 1).requires_grad_()
    b = torch.softmax(torch.randn(2, 4), 1)
    cost = torch.rand(4, 4)
    with pytest.raises(ValueError, match="constants"):
        sinkhorn_shared_transport(a, b, cost.requires_grad_(), eps=0.1)
    with pytest.raises(ValueError, match=r"wants a \(B, n\)"):
        sinkhorn_shared_transport(a, b, torch.rand(2, 4, 4), eps=0.1)
    with pytest.raises(ValueError, match="do not fit"):
        sinkhorn_shared_transport(a, b, torch.rand(4, 5), eps=0.1)
    with pytest.raises(ValueError, match="eps"):
        sinkhorn_shared_transport(a, b, torch.rand(4, 4), eps=0.0)
    # No silent second derivative: the saved iterates carry no graph.
    transport = sinkhorn_shared_transport(a, b, torch.rand(4, 4), eps=0.1)
    upstream = torch.ones(2, requires_grad=True)
    (grad,) = torch.autograd.grad(transport, a, grad_outputs=upstream, create_graph=True)
    with pytest.raises(RuntimeError, match="once_differentiable"):
        grad.sum().backward()


@pytest.mark.parametrize(("batch", "num_classes"), [(16, 10), (6, 100), (4, 257)])
def test_wkd_logit_terms_adjoint_equals_plain(batch, num_classes):
    gen = torch.Generator().manual_seed(4)
    z_s = 3 * torch.randn(batch, num_classes, generator=gen)
    z_t = 3 * torch.randn(batch, num_classes, generator=gen)
    target = torch.randint(0, num_classes, (batch,), generator=gen)
    cost = sharpen_cost(torch.rand(num_classes, num_classes, generator=gen))

    def run(solver):
        z = z_s.clone().requires_grad_()
        terms = wkd_logit_terms(z, z_t, target, cost, temperature=4.0, solver=solver)
        (0.7 * terms.target + 3.0 * terms.transport).backward()
        return terms.target.detach(), terms.transport.detach(), z.grad

    plain, adjoint = run("plain"), run("adjoint")
    assert torch.equal(adjoint[0], plain[0])  # L_t does not touch the solver
    assert _rel(adjoint[1], plain[1]) < 1e-6
    assert _rel(adjoint[2], plain[2]) < 1e-6
    assert torch.isfinite(adjoint[2]).all()
    assert (adjoint[2].sum(1).abs() < 1e-5).all()  # a softmax's gradient sums to zero per row


@pytest.mark.parametrize(
    ("classes", "interpret", "solver"),
    [
        (10, "1", "fused"),  # Triton runs (here: its interpreter): the register kernel
        (REGISTER_MAX_CLASSES + 2, "1", "adjoint"),  # above it: cuBLAS products
        (10, "0", "adjoint"),  # no Triton device: the adjoint GEMM solver
    ],
)
def test_the_fast_step_picks_the_register_kernel_else_the_adjoint(
    monkeypatch, classes, interpret, solver
):
    """Above the register kernel's C the plain solver's GEMMs were measured faster on the GPU
    than the blocked Triton kernel (docs/benchmarks.md): the fast step keeps cuBLAS there,
    with the hand-written backward; the blocked kernel stays opt-in (``solver="fused"``)."""
    pytest.importorskip("triton")
    monkeypatch.setenv("TRITON_INTERPRET", interpret)
    torch.manual_seed(0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(12, classes))
    teacher = nn.Sequential(nn.Flatten(), nn.Linear(12, classes))
    distiller = WKDL(model, teacher, cost=torch.rand(classes, classes))
    assert distiller.solver == "plain"
    distiller.fast_kernels(True)
    assert distiller.solver == solver
    distiller.fast_kernels(False)
    assert distiller.solver == "plain"
