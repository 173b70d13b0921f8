"""WKD-L: the shared-kernel loss equals the authors' per-sample (B, C−1, C−1) formulation."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from wkd_core.losses import WKDLogitLoss, sharpen_cost, wkd_logit_loss, wkd_logit_terms


def per_sample_reference(
    z_s, z_t, target, cost, *, temperature, eps=0.05, n_iter=10, weight=1.0, guard=1e-8
):
    """The authors' code, mirrored: drop the target row/column per sample, bmm Sinkhorn."""
    batch, num_classes = z_s.shape
    z_t = z_t.detach()
    p_t = F.softmax(z_t, dim=1).gather(1, target[:, None])
    loss_t = -(p_t * F.log_softmax(z_s, dim=1).gather(1, target[:, None])).mean()
    keep = torch.ones_like(z_s, dtype=torch.bool).scatter_(1, target[:, None], False)
    s_nt = F.softmax(z_s[keep].view(batch, -1) / temperature, dim=1)  # (B, C-1)
    t_nt = F.softmax(z_t[keep].view(batch, -1) / temperature, dim=1)
    pair = keep[:, :, None] & keep[:, None, :]  # (B, C, C)
    cost_b = cost.repeat(batch, 1, 1)[pair].view(batch, num_classes - 1, num_classes - 1)
    cost_b = torch.relu(cost_b)  # the authors' relu + 1e-8 is already inside `cost`
    kernel = torch.exp(-cost_b / eps)
    u = torch.ones(batch, num_classes - 1, 1, dtype=z_s.dtype) / (num_classes - 1)
    for _ in range(n_iter):
        v = t_nt[:, :, None] / (torch.bmm(kernel.transpose(1, 2), u) + guard)
        u = s_nt[:, :, None] / (torch.bmm(kernel, v) + guard)
    plan = u * kernel * v.transpose(1, 2)
    return loss_t + weight * (plan * cost_b).sum((1, 2)).mean()


def _inputs(seed, batch, num_classes, *, kappa=1.0, dtype=torch.float64, spread=3.0):
    gen = torch.Generator().manual_seed(seed)
    z_s = (spread * torch.randn(batch, num_classes, generator=gen, dtype=dtype)).requires_grad_()
    z_t = (spread * torch.randn(batch, num_classes, generator=gen, dtype=dtype)).requires_grad_()
    target = torch.randint(0, num_classes, (batch,), generator=gen)
    dist = torch.rand(num_classes, num_classes, generator=gen, dtype=dtype)
    dist = 0.5 * (dist + dist.T)
    dist.fill_diagonal_(0.0)
    return z_s, z_t, target, sharpen_cost(dist, kappa=kappa)


@pytest.mark.parametrize(
    ("batch", "num_classes", "temperature", "kappa", "eps", "n_iter"),
    [
        (1, 2, 1.0, 1.0, 0.05, 10),
        (5, 3, 4.0, 1.0, 0.05, 10),
        (8, 10, 8.0, 1.0, 0.05, 10),
        (16, 100, 6.0, 1.0, 0.05, 10),
        (4, 100, 2.0, 2.0, 0.1, 3),
        (2, 1000, 2.0, 2.0, 0.05, 10),
    ],
)
def test_shared_kernel_equals_per_sample_loss_and_gradients(
    batch, num_classes, temperature, kappa, eps, n_iter
):
    z_s, z_t, target, cost = _inputs(batch * num_classes, batch, num_classes, kappa=kappa)
    kw = dict(temperature=temperature, eps=eps, n_iter=n_iter, weight=7.0)
    ours = wkd_logit_loss(z_s, z_t, target, cost, **kw)
    (g_ours,) = torch.autograd.grad(ours, z_s)
    ref = per_sample_reference(z_s, z_t, target, cost, **kw)
    (g_ref,) = torch.autograd.grad(ref, z_s)
    torch.testing.assert_close(ours, ref, rtol=1e-12, atol=0)
    torch.testing.assert_close(g_ours, g_ref, rtol=1e-9, atol=1e-14)


def test_float32_matches_float64_reference():
    z_s, z_t, target, cost = _inputs(0, 16, 100)
    ref = per_sample_reference(z_s, z_t, target, cost, temperature=4.0)
    ours = wkd_logit_loss(z_s.float(), z_t.float(), target, cost.float(), temperature=4.0)
    assert ours.dtype == torch.float32
    assert abs(ours.item() - ref.item()) <= 1e-5 * abs(ref.item())


def test_target_term_by_hand_and_teacher_detached():
    z_s, z_t, target, cost = _inputs(1, 6, 5)
    loss = wkd_logit_loss(z_s, z_t, target, cost, temperature=2.0, weight=0.0)
    s, t, y = z_s.detach().numpy(), z_t.detach().numpy(), target.numpy()
    p_t = np.exp(t) / np.exp(t).sum(1, keepdims=True)
    log_p_s = s - np.log(np.exp(s).sum(1, keepdims=True))
    rows = np.arange(len(y))
    assert loss.item() == pytest.approx(-(p_t[rows, y] * log_p_s[rows, y]).mean(), rel=1e-12)
    full = wkd_logit_loss(z_s, z_t, target, cost, temperature=2.0, weight=3.0)
    terms = wkd_logit_terms(z_s, z_t, target, cost, temperature=2.0)
    torch.testing.assert_close(terms.target, loss, rtol=0, atol=0)
    torch.testing.assert_close(terms.target + 3.0 * terms.transport, full, rtol=0, atol=0)
    full.backward()
    assert z_t.grad is None
    assert torch.isfinite(z_s.grad).all()


def test_soft_labels_reduce_to_argmax_and_int32_labels_work():
    z_s, z_t, target, cost = _inputs(2, 4, 7)
    soft = F.one_hot(target, 7).double() * 0.8 + 0.02
    hard = wkd_logit_loss(z_s, z_t, target, cost, temperature=4.0)
    torch.testing.assert_close(wkd_logit_loss(z_s, z_t, soft, cost, temperature=4.0), hard)
    int32 = wkd_logit_loss(z_s, z_t, target.int(), cost, temperature=4.0)
    torch.testing.assert_close(int32, hard)


def test_gradcheck_float64():
    z_s, z_t, target, cost = _inputs(3, 3, 6)
    assert torch.autograd.gradcheck(
        lambda z: wkd_logit_loss(z, z_t, target, cost, temperature=2.0, weight=5.0), (z_s,)
    )


def test_log_solver_agrees_and_converges():
    z_s, z_t, target, cost = _inputs(4, 5, 20)
    log = wkd_logit_loss(z_s, z_t, target, cost, temperature=4.0, solver="log")
    # the same iterations as the per-sample plain loop without its +1e-8 guards
    unguarded = per_sample_reference(z_s, z_t, target, cost, temperature=4.0, guard=0.0)
    torch.testing.assert_close(log, unguarded, rtol=1e-12, atol=0)
    (grad,) = torch.autograd.grad(log, z_s)
    assert torch.isfinite(grad).all()
    converged = wkd_logit_loss(
        z_s, z_t, target, cost, temperature=4.0, solver="log", n_iter=100_000, tol=1e-12
    )
    long_plain = per_sample_reference(
        z_s, z_t, target, cost, temperature=4.0, n_iter=3000, guard=0.0
    )
    torch.testing.assert_close(converged, long_plain, rtol=1e-9, atol=0)


def test_autocast_does_not_change_the_result():
    z_s, z_t, target, cost = _inputs(5, 4, 10, dtype=torch.float32)
    eager = wkd_logit_loss(z_s, z_t, target, cost, temperature=4.0)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        autocast = wkd_logit_loss(z_s, z_t, target, cost, temperature=4.0)
    assert autocast.dtype == torch.float32
    torch.testing.assert_close(autocast, eager)


def test_module_holds_cost_as_buffer():
    z_s, z_t, target, cost = _inputs(6, 4, 10)
    dist = -torch.log1p(-(cost - 1e-8).clamp(max=1 - 1e-12))  # invert the sharpening
    module = WKDLogitLoss.from_distance(dist, kappa=1.0, temperature=4.0, weight=2.0)
    assert "cost" in dict(module.named_buffers())
    assert "cost" not in module.state_dict()
    assert module.double().cost.dtype == torch.float64
    expected = wkd_logit_loss(z_s, z_t, target, cost, temperature=4.0, weight=2.0)
    torch.testing.assert_close(module(z_s, z_t, target), expected)
    half = wkd_logit_loss(z_s, z_t, target, cost, temperature=4.0, weight=1.0)
    torch.testing.assert_close(module(z_s, z_t, target, weight=1.0), half)


def test_sharpen_cost_formula():
    dist = torch.tensor([[0.0, 0.5], [0.5, 0.0]], dtype=torch.float64)
    expected = np.array([[1e-8, 1 - np.exp(-1.0) + 1e-8], [1 - np.exp(-1.0) + 1e-8, 1e-8]])
    np.testing.assert_allclose(sharpen_cost(dist, kappa=2.0).numpy(), expected, rtol=1e-15)


def test_bad_inputs_raise_value_error():
    z_s, z_t, target, cost = _inputs(7, 4, 10)
    cases = [
        (z_s, z_t[:, :9], target, cost, "logits_teacher shape"),
        (z_s[0], z_t, target, cost, r"\(B, C\)"),
        (z_s, z_t, target[:3], cost, "target"),
        (z_s, z_t, target.double(), cost, "integer"),
        (z_s, z_t, target, cost[:9, :9], r"cost must be \(10, 10\)"),
        (z_s[:, :1], z_t[:, :1], target, cost[:1, :1], "at least 2 classes"),
    ]
    for s, t, y, c, message in cases:
        with pytest.raises(ValueError, match=message):
            wkd_logit_loss(s, t, y, c, temperature=4.0)
    with pytest.raises(ValueError, match="temperature"):
        wkd_logit_loss(z_s, z_t, target, cost, temperature=0.0)
    with pytest.raises(ValueError, match="solver"):
        wkd_logit_loss(z_s, z_t, target, cost, temperature=1.0, solver="exact")
    with pytest.raises(ValueError, match="labels"):
        wkd_logit_loss(z_s, z_t, target + 10, cost, temperature=1.0, validate=True)
    nan = z_s.detach().clone()
    nan[0, 0] = float("nan")
    with pytest.raises(ValueError, match="NaN"):
        wkd_logit_loss(nan, z_t, target, cost, temperature=1.0, validate=True)
    with pytest.raises(ValueError, match="square"):
        WKDLogitLoss(cost[:, :9], temperature=1.0)
