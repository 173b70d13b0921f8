"""Sinkhorn solvers against POT, an independent numpy loop, their marginals and gradcheck."""

from __future__ import annotations

import numpy as np
import ot
import pytest
import torch

from wkd_core.ot import sinkhorn, sinkhorn_log, sinkhorn_shared


def _problem(seed: int, batch: int, n: int, m: int, scale: float = 1.0):
    gen = np.random.default_rng(seed)
    a = gen.random((batch, n)) + 0.1
    b = gen.random((batch, m)) + 0.1
    a /= a.sum(1, keepdims=True)
    b /= b.sum(1, keepdims=True)
    cost = gen.random((batch, n, m)) * scale
    return a, b, cost


def _authors_loop(a, b, cost, eps, n_iter, stab=1e-8):
    """The WKD authors' plain loop, written out per problem in numpy."""
    plans = []
    for ai, bi, ci in zip(a, b, cost, strict=True):
        kernel = np.exp(-ci / eps)
        u = np.ones(len(ai)) / len(ai)
        for _ in range(n_iter):
            v = bi / (kernel.T @ u + stab)
            u = ai / (kernel @ v + stab)
        plans.append(u[:, None] * kernel * v[None, :])
    return np.stack(plans)


@pytest.mark.parametrize("n_iter", [1, 3, 10])
def test_plain_matches_authors_loop_iteration_by_iteration(n_iter):
    a, b, cost = _problem(0, 3, 6, 5)
    res = sinkhorn(*map(torch.from_numpy, (a, b, cost)), eps=0.05, n_iter=n_iter)
    np.testing.assert_allclose(
        res.plan.numpy(), _authors_loop(a, b, cost, 0.05, n_iter), rtol=1e-12
    )
    np.testing.assert_allclose(res.transport_cost.numpy(), (res.plan.numpy() * cost).sum((1, 2)))
    assert res.n_iter == n_iter


@pytest.mark.parametrize("n_iter", [1, 7, 10])
def test_shared_matches_authors_loop(n_iter):
    a, b, cost = _problem(1, 4, 7, 6)
    shared = np.broadcast_to(cost[0], cost.shape)
    res = sinkhorn_shared(
        torch.from_numpy(a), torch.from_numpy(b), torch.from_numpy(cost[0]), eps=0.05, n_iter=n_iter
    )
    expected = _authors_loop(a, b, shared, 0.05, n_iter)
    assert res.plan is None
    np.testing.assert_allclose(
        res.transport_cost.numpy(), (expected * shared).sum((1, 2)), rtol=1e-12
    )
    kernel = np.exp(-cost[0] / 0.05)
    plan = res.u.numpy()[:, :, None] * kernel * res.v.numpy()[:, None, :]
    np.testing.assert_allclose(plan, expected, rtol=1e-12)


@pytest.mark.parametrize("n_iter", [1, 5, 20])
def test_plain_matches_pot_at_same_iterations(n_iter):
    # POT's sinkhorn_knopp: u0 = 1/n, v then u, no guards -> our solver with stabilizer=0.
    a, b, cost = _problem(2, 3, 8, 6, scale=0.5)
    res = sinkhorn(*map(torch.from_numpy, (a, b, cost)), eps=0.1, n_iter=n_iter, stabilizer=0.0)
    for k in range(3):
        expected = ot.sinkhorn(
            a[k], b[k], cost[k], 0.1, method="sinkhorn", numItermax=n_iter, stopThr=0.0, warn=False
        )
        np.testing.assert_allclose(res.plan[k].numpy(), expected, rtol=1e-10, atol=1e-15)


def test_plain_with_guards_converges_to_pot():
    a, b, cost = _problem(3, 2, 6, 6, scale=0.5)
    res = sinkhorn(*map(torch.from_numpy, (a, b, cost)), eps=0.1, n_iter=2000)
    for k in range(2):
        expected = ot.sinkhorn(a[k], b[k], cost[k], 0.1, numItermax=5000, stopThr=1e-14)
        np.testing.assert_allclose(res.plan[k].numpy(), expected, rtol=1e-6, atol=1e-12)


@pytest.mark.parametrize("n_iter", [1, 10, 50])
def test_log_matches_pot_sinkhorn_log(n_iter):
    a, b, cost = _problem(4, 3, 5, 7)
    res = sinkhorn_log(*map(torch.from_numpy, (a, b, cost)), eps=0.05, n_iter=n_iter)
    for k in range(3):
        expected = ot.bregman.sinkhorn_log(
            a[k], b[k], cost[k], 0.05, numItermax=n_iter, stopThr=0.0, warn=False
        )
        np.testing.assert_allclose(res.plan[k].numpy(), expected, rtol=1e-10, atol=1e-15)


def test_log_handles_tiny_eps_where_plain_underflows():
    a, b, cost = _problem(5, 1, 6, 6)
    eps = 1e-3  # exp(-cost/eps) underflows to 0 in float64 for cost > ~0.71
    res = sinkhorn_log(*map(torch.from_numpy, (a, b, cost)), eps=eps, n_iter=300)
    expected = ot.bregman.sinkhorn_log(
        a[0], b[0], cost[0], eps, numItermax=300, stopThr=0.0, warn=False
    )
    assert torch.isfinite(res.plan).all()
    np.testing.assert_allclose(res.plan[0].numpy(), expected, rtol=1e-8, atol=1e-14)


def test_log_tolerance_stops_early_with_small_marginal_error():
    a, b, cost = map(torch.from_numpy, _problem(6, 2, 6, 6))
    res = sinkhorn_log(a, b, cost, eps=0.1, n_iter=5000, tol=1e-9)
    assert res.n_iter < 5000
    assert (res.plan.sum(1) - b).abs().sum(-1).max() < 1e-9
    torch.testing.assert_close(res.plan.sum(2), a, rtol=1e-12, atol=1e-12)


def test_marginals():
    a, b, cost = map(torch.from_numpy, _problem(7, 3, 9, 9))
    # u is updated last: rows exact after any number of iterations, up to the guard's
    # relative error 1e-8 / (K v)_i.
    exact = sinkhorn(a, b, cost, eps=0.05, n_iter=3, stabilizer=0.0)
    torch.testing.assert_close(exact.plan.sum(2), a, rtol=1e-13, atol=0)
    short = sinkhorn(a, b, cost, eps=0.05, n_iter=3)
    torch.testing.assert_close(short.plan.sum(2), a, rtol=1e-5, atol=0)
    # columns converge.
    long = sinkhorn(a, b, cost, eps=0.2, n_iter=2000, stabilizer=0.0)
    torch.testing.assert_close(long.plan.sum(1), b, rtol=1e-10, atol=0)
    shared = sinkhorn_shared(a, b, cost[0], eps=0.05, n_iter=3, stabilizer=0.0)
    plan = shared.u[:, :, None] * torch.exp(-cost[0] / 0.05) * shared.v[:, None, :]
    torch.testing.assert_close(plan.sum(2), a, rtol=1e-13, atol=0)


def test_zero_mass_rows_and_columns_stay_zero_in_shared_solver():
    a, b, cost = map(torch.from_numpy, _problem(8, 2, 5, 5))
    a, b = a.clone(), b.clone()
    a[:, 2], b[:, 2] = 0.0, 0.0
    a, b = a / a.sum(1, keepdim=True), b / b.sum(1, keepdim=True)
    u0 = torch.full_like(a, 0.25)
    u0[:, 2] = 0.0
    res = sinkhorn_shared(a, b, cost[0], eps=0.05, n_iter=10, u0=u0)
    assert (res.u[:, 2] == 0).all() and (res.v[:, 2] == 0).all()


def test_gradcheck_plain_shared_and_log():
    a, b, cost = (t.requires_grad_() for t in map(torch.from_numpy, _problem(9, 2, 4, 3)))

    def plain(a, b, c):
        return sinkhorn(a, b, c, eps=0.1, n_iter=5).transport_cost

    def shared(a, b, c):
        return sinkhorn_shared(a, b, c[0], eps=0.1, n_iter=5).transport_cost

    def log(a, b, c):
        return sinkhorn_log(a, b, c, eps=0.1, n_iter=5).transport_cost

    for fn in (plain, shared, log):
        assert torch.autograd.gradcheck(fn, (a, b, cost))


def test_shape_errors():
    a, b, cost = map(torch.from_numpy, _problem(10, 2, 4, 3))
    with pytest.raises(ValueError, match="do not fit"):
        sinkhorn(a, b[:, :2], cost, eps=0.1)
    with pytest.raises(ValueError, match="eps"):
        sinkhorn(a, b, cost, eps=0.0)
    with pytest.raises(ValueError, match="sinkhorn_shared"):
        sinkhorn_shared(a, b, cost, eps=0.1)
    with pytest.raises(ValueError, match="n_iter"):
        sinkhorn_log(a, b, cost, eps=0.1, n_iter=0)
