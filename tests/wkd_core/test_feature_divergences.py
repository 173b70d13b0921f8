"""WKD-F's ablation dissimilarities against independent computations (numerical integration,
scipy's 1-D Wasserstein distance, sampling) and the FitNet baseline against its definition."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from scipy import integrate, stats

from wkd_core.distillers import create_distiller
from wkd_core.losses import wkd_feature_loss
from wkd_core.losses.feature_divergences import (
    DIVERGENCES,
    exponential_kl,
    feature_divergence_loss,
    gaussian_kl,
    gaussian_sym_kl,
    histogram_w1,
    laplace_kl,
    soft_histogram,
)

T64 = torch.float64


def _kl_by_quadrature(p, q, lo, hi, points=()):
    """∫ p log(p / q) over [lo, hi], with scipy's adaptive quadrature."""

    def integrand(x):
        px = p.pdf(x)
        return 0.0 if px == 0 else px * (p.logpdf(x) - q.logpdf(x))

    value, _ = integrate.quad(integrand, lo, hi, points=points or None, limit=200)
    return value


PARAMS = [(0.3, 0.8, -0.5, 1.7), (2.0, 0.5, 1.0, 0.4), (-1.0, 2.5, 0.0, 1.0)]


@pytest.mark.parametrize(("mu_t", "s_t", "mu_s", "s_s"), PARAMS)
def test_gaussian_kl_and_symmetric_kl_match_quadrature(mu_t, s_t, mu_s, s_s):
    p, q = stats.norm(mu_t, s_t), stats.norm(mu_s, s_s)
    expected = _kl_by_quadrature(p, q, -40, 40)
    reverse = _kl_by_quadrature(q, p, -40, 40)
    args = [torch.tensor(v, dtype=T64) for v in (mu_t, s_t, mu_s, s_s)]
    assert gaussian_kl(*args).item() == pytest.approx(expected, rel=1e-7)
    assert gaussian_sym_kl(*args).item() == pytest.approx(expected + reverse, rel=1e-7)


def test_gaussian_kl_gamma_scales_only_the_mean_part():
    args = [torch.tensor(v, dtype=T64) for v in (0.3, 0.8, -0.5, 1.7)]
    same_mean = gaussian_kl(args[0], args[1], args[0], args[3])
    mean_part = (args[0] - args[2]) ** 2 / (2 * args[3] ** 2)
    assert gaussian_kl(*args, mean_weight=3.0).item() == pytest.approx(
        (same_mean + 3.0 * mean_part).item(), rel=1e-12
    )


@pytest.mark.parametrize(("mu_t", "b_t", "mu_s", "b_s"), PARAMS)
def test_laplace_kl_matches_quadrature(mu_t, b_t, mu_s, b_s):
    p, q = stats.laplace(mu_t, b_t), stats.laplace(mu_s, b_s)
    expected = _kl_by_quadrature(p, q, -60, 60, points=(mu_t, mu_s))
    args = [torch.tensor(v, dtype=T64) for v in (mu_t, b_t, mu_s, b_s)]
    assert laplace_kl(*args).item() == pytest.approx(expected, rel=1e-7)


@pytest.mark.parametrize(("theta_t", "theta_s"), [(0.5, 2.0), (3.0, 1.0), (1.0, 1.0)])
def test_exponential_kl_matches_quadrature(theta_t, theta_s):
    p, q = stats.expon(scale=theta_t), stats.expon(scale=theta_s)
    expected = _kl_by_quadrature(p, q, 0, 200)
    got = exponential_kl(torch.tensor(theta_t, dtype=T64), torch.tensor(theta_s, dtype=T64))
    assert got.item() == pytest.approx(expected, abs=1e-9)


def test_soft_histogram_keeps_mass_and_mean():
    gen = torch.Generator().manual_seed(0)
    values = torch.rand(4, 50, generator=gen, dtype=T64) * 3 - 1
    lo, hi = values.amin(-1), values.amax(-1)
    pmf = soft_histogram(values, lo, hi, bins=9)
    centres = lo.unsqueeze(-1) + (hi - lo).unsqueeze(-1) * torch.linspace(0, 1, 9, dtype=T64)
    assert torch.allclose(pmf.sum(-1), torch.ones(4, dtype=T64))
    assert torch.allclose((pmf * centres).sum(-1), values.mean(-1))


def test_histogram_w1_matches_scipy_wasserstein_distance():
    gen = torch.Generator().manual_seed(1)
    pmf_t = torch.rand(3, 12, generator=gen, dtype=T64)
    pmf_s = torch.rand(3, 12, generator=gen, dtype=T64)
    pmf_t, pmf_s = pmf_t / pmf_t.sum(-1, keepdim=True), pmf_s / pmf_s.sum(-1, keepdim=True)
    width = torch.tensor([0.5, 1.0, 0.1], dtype=T64)
    got = histogram_w1(pmf_t, pmf_s, width)
    for i in range(3):
        centres = np.arange(12) * width[i].item()
        ref = stats.wasserstein_distance(centres, centres, pmf_t[i].numpy(), pmf_s[i].numpy())
        assert got[i].item() == pytest.approx(ref, rel=1e-10)


def test_pmf_wd_approaches_the_sample_w1_with_fine_bins():
    # Independent check by sampling: the histogram W1 of two samples ≈ their empirical W1.
    gen = torch.Generator().manual_seed(2)
    f_t = torch.randn(1, 1, 40, 50, generator=gen, dtype=T64)
    f_s = 0.5 * torch.randn(1, 1, 40, 50, generator=gen, dtype=T64) + 0.7
    got = feature_divergence_loss(f_s, f_t, divergence="pmf_wd", bins=512)
    ref = stats.wasserstein_distance(f_t.flatten().numpy(), f_s.flatten().numpy())
    assert got.item() == pytest.approx(ref, rel=2e-3)


def _maps(seed, shape=(2, 3, 6, 6)):
    gen = torch.Generator().manual_seed(seed)
    f_s = torch.relu(torch.randn(shape, generator=gen, dtype=T64) + 0.3).requires_grad_()
    f_t = torch.relu(1.5 * torch.randn(shape, generator=gen, dtype=T64) + 0.5)
    return f_s, f_t


@pytest.mark.parametrize("divergence", ["gaussian_kl", "laplace_kl", "exponential_kl"])
def test_map_loss_is_the_per_channel_closed_form_on_moment_fits(divergence):
    f_s, f_t = _maps(3)
    got = feature_divergence_loss(f_s, f_t, divergence=divergence, grid=2, eps=1e-5)
    s, t = f_s.detach().numpy(), f_t.numpy()
    total = 0.0
    for b in range(2):
        for c in range(3):
            for r in (slice(0, 3), slice(3, 6)):
                for k in (slice(0, 3), slice(3, 6)):
                    xs, xt = s[b, c, r, k].ravel(), t[b, c, r, k].ravel()
                    sd_s = np.sqrt(xs.var(ddof=1) + 1e-5)
                    sd_t = np.sqrt(xt.var(ddof=1) + 1e-5)
                    if divergence == "gaussian_kl":
                        p, q = stats.norm(xt.mean(), sd_t), stats.norm(xs.mean(), sd_s)
                    elif divergence == "laplace_kl":
                        p = stats.laplace(xt.mean(), sd_t / np.sqrt(2))
                        q = stats.laplace(xs.mean(), sd_s / np.sqrt(2))
                    else:
                        p = stats.expon(scale=max(xt.mean(), 0) + 1e-5)
                        q = stats.expon(scale=max(xs.mean(), 0) + 1e-5)
                    total += _kl_by_quadrature(
                        p, q, -50, 50, points=(xt.mean(), xs.mean())
                    )
    assert got.item() == pytest.approx(total / (2 * 4), rel=1e-6)


def test_gaussian_wd_is_wkd_f_and_every_divergence_is_differentiable():
    f_s, f_t = _maps(4)
    wd = feature_divergence_loss(f_s, f_t, divergence="gaussian_wd", gamma=2.0, grid=2)
    assert wd.item() == wkd_feature_loss(f_s, f_t, gamma=2.0, grid=2).item()
    for divergence in DIVERGENCES:
        loss = feature_divergence_loss(f_s, f_t, divergence=divergence, grid=2)
        (grad,) = torch.autograd.grad(loss, f_s)
        assert loss.item() > 0 and torch.isfinite(grad).all() and grad.abs().sum() > 0
        same = feature_divergence_loss(f_t, f_t, divergence=divergence, grid=2)
        assert same.item() == pytest.approx(0.0, abs=1e-12), divergence


def test_gamma_is_refused_where_there_is_no_mean_term():
    f_s, f_t = _maps(5)
    with pytest.raises(ValueError, match="gamma must be 1"):
        feature_divergence_loss(f_s, f_t, divergence="laplace_kl", gamma=2.0)
    with pytest.raises(ValueError, match="divergence must be one of"):
        feature_divergence_loss(f_s, f_t, divergence="kl")


class _Tiny(torch.nn.Module):
    def __init__(self, width):
        super().__init__()
        self.conv = torch.nn.Conv2d(3, width, 3, padding=1)
        self.fc = torch.nn.Linear(width, 5)

    def forward_features(self, x):
        feat = torch.relu(self.conv(x))
        return self.fc(feat.mean((2, 3))), {"feats": [x, feat], "pooled_feat": feat.mean((2, 3))}

    def forward(self, x):
        return self.forward_features(x)[0]


def test_wkd_f_distiller_switches_divergence_and_fitnet_is_the_mse_of_the_hint():
    torch.manual_seed(0)
    student, teacher = _Tiny(4), _Tiny(6)
    images, labels = torch.randn(4, 3, 8, 8), torch.randint(0, 5, (4,))
    kl = create_distiller(
        "wkd_f", student=student, teacher=teacher, divergence="gaussian_kl",
        projector="conv1x1", spatial_grid=1, input_size=(8, 8), wkd_feat_weight=1.0,
        cosine_decay_epoch=5,
    )  # fmt: skip
    out = kl(images, labels, epoch=1, total_epochs=10)  # before the decay: weight 1
    projected = kl.projector(student.forward_features(images)[1]["feats"][-1])
    teacher_map = teacher.forward_features(images)[1]["feats"][-1]
    expected = feature_divergence_loss(
        projected, teacher_map, divergence="gaussian_kl", gamma=2.0
    )
    assert out.losses["loss_wkd_f"].item() == pytest.approx(expected.item(), rel=1e-5)
    fitnet = create_distiller(
        "fitnet", student=student, teacher=teacher, projector="conv1x1", input_size=(8, 8)
    )
    out = fitnet(images, labels)
    projected = fitnet.projector(student.forward_features(images)[1]["feats"][-1])
    mse = ((projected - teacher_map) ** 2).sum() / projected.numel()
    assert out.losses["loss_feat"].item() == pytest.approx(100 * mse.item(), rel=1e-5)
    out.total.backward()
    assert fitnet.projector.conv.weight.grad is not None
