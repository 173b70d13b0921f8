"""WKD-F against POT's closed-form Gaussian W2 and hand-made maps with known cell statistics."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from ot.gaussian import bures_wasserstein_distance

from wkd_core.losses import WKDFeatureLoss, grid_cells, wkd_feature_loss
from wkd_core.losses.wkd_feature import grid_positions
from wkd_core.ot import bures_wasserstein, diag_gaussian_w2


def _maps(seed, shape, dtype=torch.float64):
    gen = torch.Generator().manual_seed(seed)
    s = torch.randn(shape, generator=gen, dtype=dtype)
    t = 2.0 * torch.randn(shape, generator=gen, dtype=dtype) + 0.5
    return s.requires_grad_(), t


def test_grid1_gamma1_equals_pot_bures_wasserstein_with_diagonal_covariances():
    f_s, f_t = _maps(0, (3, 5, 4, 6))
    loss = wkd_feature_loss(f_s, f_t, gamma=1.0, grid=1, eps=1e-5)
    s, t = f_s.detach().numpy().reshape(3, 5, -1), f_t.numpy().reshape(3, 5, -1)
    total = 0.0
    for b in range(3):
        cov_s = np.diag(s[b].var(1, ddof=1) + 1e-5)
        cov_t = np.diag(t[b].var(1, ddof=1) + 1e-5)
        w = bures_wasserstein_distance(s[b].mean(1), t[b].mean(1), cov_s, cov_t)
        total += float(w) ** 2
    assert loss.item() == pytest.approx(total / 3, rel=1e-10)


def test_gamma_weights_only_the_mean_term():
    f_s, f_t = _maps(1, (2, 3, 5, 5))
    s, t = f_s.detach().numpy().reshape(2, 3, -1), f_t.numpy().reshape(2, 3, -1)
    mean_term = ((s.mean(2) - t.mean(2)) ** 2).sum() / 2
    std = lambda x: np.sqrt(x.var(2, ddof=1) + 1e-5)  # noqa: E731
    std_term = ((std(s) - std(t)) ** 2).sum() / 2
    loss = wkd_feature_loss(f_s, f_t, gamma=4.0)
    assert loss.item() == pytest.approx(4.0 * mean_term + std_term, rel=1e-12)


def test_grid4_on_8x8_with_known_cell_statistics():
    # teacher cell (i, j) = [[a, a+d], [a-d, a]] with a = i + 4j, d = 1 + i: mean a, unbiased
    # variance 2d²/3. The student is 0 everywhere (mean 0, variance 0).
    teacher = torch.zeros(1, 1, 8, 8, dtype=torch.float64)
    expected = 0.0
    for i in range(4):
        for j in range(4):
            a, d = float(i + 4 * j), 1.0 + i
            teacher[0, 0, 2 * i : 2 * i + 2, 2 * j : 2 * j + 2] = torch.tensor(
                [[a, a + d], [a - d, a]], dtype=torch.float64
            )
            expected += 3.0 * a**2 + (np.sqrt(2 * d**2 / 3 + 1e-5) - np.sqrt(1e-5)) ** 2
    student = torch.zeros_like(teacher)
    loss = wkd_feature_loss(student, teacher, gamma=3.0, grid=4)
    assert loss.item() == pytest.approx(expected / 16, rel=1e-12)


def test_grid4_on_7x7_uses_overlapping_adaptive_pool_cells():
    cells = [(0, 2), (1, 4), (3, 6), (5, 7)]  # floor(i*7/4), ceil((i+1)*7/4): written by hand
    assert grid_cells(7, 4) == cells
    # the same boundaries as adaptive average pooling: cell means of an arbitrary map agree
    x = torch.randn(1, 1, 7, 7, dtype=torch.float64)
    pooled = F.adaptive_avg_pool2d(x, 4)[0, 0]
    means = torch.tensor([[x[0, 0, r0:r1, c0:c1].mean() for c0, c1 in cells] for r0, r1 in cells])
    torch.testing.assert_close(pooled, means.double())

    f_s, f_t = _maps(2, (2, 3, 7, 7))
    s, t = f_s.detach().numpy(), f_t.numpy()
    expected = 0.0
    for r0, r1 in cells:
        for c0, c1 in cells:
            cs = s[:, :, r0:r1, c0:c1].reshape(2, 3, -1)
            ct = t[:, :, r0:r1, c0:c1].reshape(2, 3, -1)
            expected += 2.0 * ((cs.mean(2) - ct.mean(2)) ** 2).sum()
            expected += (
                (np.sqrt(cs.var(2, ddof=1) + 1e-5) - np.sqrt(ct.var(2, ddof=1) + 1e-5)) ** 2
            ).sum()
    loss = wkd_feature_loss(f_s, f_t, gamma=2.0, grid=4)
    assert loss.item() == pytest.approx(expected / (2 * 16), rel=1e-12)


def test_full_covariance_equals_pot():
    f_s, f_t = _maps(3, (2, 4, 3, 3))
    loss = wkd_feature_loss(f_s, f_t, covariance="full", eps=1e-3)
    s, t = f_s.detach().numpy().reshape(2, 4, -1), f_t.numpy().reshape(2, 4, -1)
    total = 0.0
    for b in range(2):
        cov_s = np.cov(s[b]) + 1e-3 * np.eye(4)
        cov_t = np.cov(t[b]) + 1e-3 * np.eye(4)
        total += float(bures_wasserstein_distance(s[b].mean(1), t[b].mean(1), cov_s, cov_t)) ** 2
    assert loss.item() == pytest.approx(total / 2, rel=1e-8)


def test_bures_wasserstein_with_diagonal_covariances_reduces_to_std_difference():
    gen = torch.Generator().manual_seed(4)
    m_s, m_t = torch.randn(2, 3, 5, generator=gen, dtype=torch.float64)
    sd_s, sd_t = torch.rand(2, 3, 5, generator=gen, dtype=torch.float64) + 0.1
    full = bures_wasserstein(m_s, torch.diag_embed(sd_s**2), m_t, torch.diag_embed(sd_t**2))
    torch.testing.assert_close(full, diag_gaussian_w2(m_s, sd_s, m_t, sd_t))


def test_gradcheck_diag_and_full():
    f_s, f_t = _maps(5, (2, 3, 4, 4))
    for kw in (dict(grid=1), dict(grid=2, gamma=2.0), dict(covariance="full", eps=1e-2)):
        assert torch.autograd.gradcheck(lambda x, kw=kw: wkd_feature_loss(x, f_t, **kw), (f_s,))


def test_module_and_bad_inputs():
    f_s, f_t = _maps(6, (2, 3, 8, 8))
    module = WKDFeatureLoss(gamma=2.0, grid=4)
    torch.testing.assert_close(module(f_s, f_t), wkd_feature_loss(f_s, f_t, gamma=2.0, grid=4))
    with pytest.raises(ValueError, match="same shape"):
        wkd_feature_loss(f_s, f_t[:, :2])
    with pytest.raises(ValueError, match="same shape"):
        wkd_feature_loss(f_s[0], f_t[0])
    with pytest.raises(ValueError, match="single-position"):
        wkd_feature_loss(f_s[:, :, :4, :4], f_t[:, :, :4, :4], grid=4)
    with pytest.raises(ValueError, match="grid"):
        wkd_feature_loss(f_s, f_t, grid=9)
    with pytest.raises(ValueError, match="covariance"):
        WKDFeatureLoss(covariance="low_rank")


def test_full_covariance_gradient_is_finite_when_rank_deficient():
    # 2x2 positions, 6 channels: rank-1 sample covariances + eps·I, eigenvalue eps repeated
    f_s, f_t = _maps(7, (2, 6, 2, 2))
    wkd_feature_loss(f_s, f_t, covariance="full").backward()
    assert torch.isfinite(f_s.grad).all()


def _sliced_reference(f_s, f_t, *, gamma, grid, eps, covariance):
    """The per-cell slicing loop WKD-F ran before the one-pass gather (one cell at a time)."""
    total = f_s.new_zeros(())
    height, width = f_s.shape[2:]
    for r0, r1 in grid_cells(height, grid):
        for c0, c1 in grid_cells(width, grid):
            cs, ct = (f[:, :, r0:r1, c0:c1].flatten(2) for f in (f_s, f_t))  # (B, C, n)
            if covariance == "diag":
                std_s, std_t = (torch.sqrt(c.var(dim=2) + eps) for c in (cs, ct))
                term = diag_gaussian_w2(cs.mean(2), std_s, ct.mean(2), std_t, mean_weight=gamma)
            else:
                covs = []
                for c in (cs, ct):
                    centred = c - c.mean(2, keepdim=True)
                    cov = centred @ centred.transpose(1, 2) / (c.shape[2] - 1)
                    covs.append(cov + eps * torch.eye(c.shape[1], dtype=c.dtype))
                term = bures_wasserstein(cs.mean(2), covs[0], ct.mean(2), covs[1],
                                         mean_weight=gamma)  # fmt: skip
            total = total + term.sum()
    return total / (f_s.shape[0] * grid * grid)


@pytest.mark.parametrize(
    ("shape", "grid", "covariance"),
    [((4, 6, 8, 8), 4, "diag"), ((3, 5, 7, 7), 4, "diag"), ((2, 4, 6, 9), 4, "diag"),
     ((2, 3, 8, 8), 2, "full"), ((2, 3, 7, 5), 2, "full"), ((2, 5, 7, 7), 1, "diag")],
)  # fmt: skip
def test_one_pass_equals_per_cell_slicing_float32(shape, grid, covariance):
    f_s, f_t = _maps(7, shape, dtype=torch.float32)
    f_t = f_t.requires_grad_()
    kw = {"gamma": 2.0, "grid": grid, "eps": 1e-5, "covariance": covariance}
    got = wkd_feature_loss(f_s, f_t, **kw)
    g_got = torch.autograd.grad(got, (f_s, f_t))
    ref = _sliced_reference(f_s, f_t, **kw)
    g_ref = torch.autograd.grad(ref, (f_s, f_t))
    assert got.item() == pytest.approx(ref.item(), rel=1e-6)
    for a, b in zip(g_got, g_ref, strict=True):  # overlapping cells add up at shared positions
        assert ((a - b).norm() / b.norm()).item() <= 1e-6


def test_grid_positions_gathers_every_cell_and_pads_with_zero_weight():
    x = torch.arange(2 * 3 * 7 * 5, dtype=torch.float64).reshape(2, 3, 7, 5)
    cells, weight = grid_positions(x, 4)
    rows, cols = grid_cells(7, 4), grid_cells(5, 4)
    assert cells.shape == (2, 16, 3, 3 * 2) and weight.shape == (16, 1, 6)
    for i, (r0, r1) in enumerate(rows):
        for j, (c0, c1) in enumerate(cols):
            k = 4 * i + j
            real = cells[:, k][..., weight[k, 0] == 1]  # (B, C, positions of the cell)
            torch.testing.assert_close(real, x[:, :, r0:r1, c0:c1].flatten(2), rtol=0, atol=0)
            assert weight[k].sum() == (r1 - r0) * (c1 - c0)
    cells, weight = grid_positions(x[:, :, :4, :4], 2)  # divisible: a plain reshape
    assert weight is None and cells.shape == (2, 4, 3, 4)
    torch.testing.assert_close(cells[:, 1], x[:, :, 0:2, 2:4].flatten(2))
