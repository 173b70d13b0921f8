"""The library refuses bad input with a ValueError (TypeError for a wrong type) naming the
argument, instead of a silently wrong result or an obscure crash; valid input is unchanged.

One section per finding of the input probe; the DKD section also checks the numbers (the
log-sum-exp fallback for confident logits against mdistiller's formula in float64).
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from wkd_core.data import build_loaders, create_dataset, dataset_info
from wkd_core.data.mnist5k import TRAIN_PER_CLASS, load_digits, split_indices
from wkd_core.losses import (
    FeatureDivergenceLoss,
    WKDFeatureLoss,
    WKDLogitLoss,
    cka_distance_matrix,
    distance_matrix,
    dkd_loss,
    feature_divergence_loss,
    kd_loss,
    kernel_cka,
    load_distance_matrix,
    save_distance_matrix,
    sharpen_cost,
    wkd_feature_loss,
    wkd_logit_loss,
    wkd_logit_terms,
)
from wkd_core.losses.dkd import _binary, _log_binary_lse
from wkd_core.models import create_model, load_checkpoint_into
from wkd_core.ot import bures_wasserstein, diag_gaussian_w2, sinkhorn, sinkhorn_log, sinkhorn_shared
from wkd_core.ot.sinkhorn_adjoint import sinkhorn_shared_transport

C = 6


def _logits(batch=4, classes=C, dtype=torch.float32, seed=0):
    gen = torch.Generator().manual_seed(seed)
    z_s = 3 * torch.randn(batch, classes, generator=gen, dtype=dtype)
    z_t = 3 * torch.randn(batch, classes, generator=gen, dtype=dtype)
    return z_s, z_t, torch.randint(classes, (batch,), generator=gen)


def _distance(classes=C, seed=0):
    gen = torch.Generator().manual_seed(seed)
    d = torch.rand(classes, classes, generator=gen)
    return ((d + d.T) / 2).fill_diagonal_(0.0)


def _marginals(batch, size, dtype=torch.float32, seed=0):
    gen = torch.Generator().manual_seed(seed)
    return torch.softmax(torch.randn(batch, size, generator=gen, dtype=dtype), dim=1)


# ---- 1. sharpen_cost's kappa -------------------------------------------------------------------


@pytest.mark.parametrize("kappa", [0.0, -1.0, float("nan"), float("inf")])
def test_sharpen_cost_wants_a_finite_positive_kappa(kappa):
    with pytest.raises(ValueError, match="kappa must be finite and > 0"):
        sharpen_cost(_distance(), kappa=kappa)
    with pytest.raises(ValueError, match="kappa"):
        WKDLogitLoss.from_distance(_distance(), kappa=kappa, temperature=2.0)


# ---- 2. distance matrices on disk -------------------------------------------------------------


def test_a_similarity_matrix_is_refused_with_a_hint(tmp_path):
    ir = 1.0 - _distance()  # IR: ones on the diagonal
    torch.save(ir, tmp_path / "ir.pth")
    with pytest.raises(ValueError, match="1 − IR"):
        load_distance_matrix(tmp_path / "ir.pth")
    with pytest.raises(ValueError, match="diagonal"):
        save_distance_matrix(ir, tmp_path / "out.pth")


def test_negative_distances_are_refused(tmp_path):
    d = _distance()
    d[0, 1] = d[1, 0] = -0.2
    torch.save(d, tmp_path / "neg.pth")
    with pytest.raises(ValueError, match="negative entries"):
        load_distance_matrix(tmp_path / "neg.pth")


def test_authors_style_and_computed_matrices_still_load(tmp_path):
    # The authors' file: 1 − linear_CKA_precenter(X_i, X_j) in float32 for i ≤ j, mirrored;
    # the diagonal is 1 − CKA(X_i, X_i), float32 round-off around 0.
    gen = torch.Generator().manual_seed(1)
    feats = [torch.randn(40, 7, generator=gen) + c for c in range(5)]

    def cka_precenter(x, y):
        x, y = x - x.mean(0, keepdim=True), y - y.mean(0, keepdim=True)
        return torch.norm(y.T @ x) ** 2 / (torch.norm(x.T @ x) * torch.norm(y.T @ y))

    authors = torch.zeros(5, 5)
    for i in range(5):
        for j in range(i, 5):
            authors[i, j] = authors[j, i] = 1 - cka_precenter(feats[i], feats[j])
    authors[0, 0] = -3e-7  # float32 round-off of 1 − CKA(X, X)
    torch.save(authors, tmp_path / "linear_cka.pth")
    torch.testing.assert_close(load_distance_matrix(tmp_path / "linear_cka.pth"), authors)
    ours = cka_distance_matrix(feats)
    save_distance_matrix(ours, tmp_path / "ours.pth")
    torch.testing.assert_close(load_distance_matrix(tmp_path / "ours.pth"), ours.float())


def test_a_text_file_is_not_a_distance_matrix(tmp_path):
    (tmp_path / "text.pth").write_text("hello, this is not a tensor\n")
    with pytest.raises(ValueError, match=r"not a torch\.save file"):
        load_distance_matrix(tmp_path / "text.pth")


# ---- 3. closed-form Gaussian W2 ---------------------------------------------------------------


def test_gaussians_of_different_dimensions_are_refused():
    with pytest.raises(ValueError, match="dimension d differs"):
        bures_wasserstein(torch.zeros(2), torch.eye(3), torch.zeros(2), torch.eye(3))
    with pytest.raises(ValueError, match="dimension d differs"):
        diag_gaussian_w2(torch.zeros(2, 1), torch.ones(2, 3), torch.zeros(2, 1), torch.ones(2, 3))
    with pytest.raises(ValueError, match="cov_t must be"):
        bures_wasserstein(torch.zeros(3), torch.eye(3), torch.zeros(3), torch.ones(3, 2))


def test_negative_stds_are_refused():
    with pytest.raises(ValueError, match="std_s must be >= 0"):
        diag_gaussian_w2(torch.zeros(3), -torch.ones(3), torch.zeros(3), torch.ones(3))
    with pytest.raises(ValueError, match="std_t must be >= 0"):
        diag_gaussian_w2(torch.zeros(3), torch.ones(3), torch.zeros(3), -torch.ones(3))


def test_a_covariance_that_is_not_positive_definite_is_a_value_error():
    with pytest.raises(ValueError, match="cov_s is not positive definite"):
        bures_wasserstein(torch.zeros(3), -torch.eye(3), torch.zeros(3), torch.eye(3))
    # valid input: the same numbers as before
    cov = torch.eye(3) * 4
    assert bures_wasserstein(torch.zeros(3), cov, torch.ones(3), torch.eye(3)).item() == (
        pytest.approx(3.0 + 3.0)
    )


# ---- 4. empty batches -------------------------------------------------------------------------


@pytest.mark.parametrize(
    "loss",
    [
        lambda z, y, c: kd_loss(z, z, temperature=4.0),
        lambda z, y, c: dkd_loss(z, z, y, alpha=1.0, beta=8.0, temperature=4.0),
        lambda z, y, c: wkd_logit_loss(z, z, y, c, temperature=2.0, solver="plain"),
        lambda z, y, c: wkd_logit_loss(z, z, y, c, temperature=2.0, solver="adjoint"),
        lambda z, y, c: wkd_logit_loss(z, z, y, c, temperature=2.0, solver="log"),
        lambda z, y, c: wkd_logit_terms(z, z, y, c, temperature=2.0),
    ],
)
def test_logit_losses_refuse_an_empty_batch(loss):
    z, y = torch.randn(0, C), torch.zeros(0, dtype=torch.long)
    with pytest.raises(ValueError, match="an empty batch"):
        loss(z, y, sharpen_cost(_distance()))


@pytest.mark.parametrize("divergence", ["gaussian_wd", "gaussian_kl", "pmf_wd"])
def test_feature_losses_refuse_an_empty_batch(divergence):
    f = torch.randn(0, 3, 4, 4)
    with pytest.raises(ValueError, match="an empty batch"):
        wkd_feature_loss(f, f)
    with pytest.raises(ValueError, match="an empty batch"):
        feature_divergence_loss(f, f, divergence=divergence)


# ---- 5. KD / DKD: float32 compute, confident logits -------------------------------------------


def _mdistiller_dkd(z_s, z_t, target, alpha, beta, temperature):
    """mdistiller's ``dkd_loss`` (distillers/DKD.py), the authors' form, as written there."""
    gt = torch.zeros_like(z_s).scatter_(1, target.unsqueeze(1), 1).bool()
    other = torch.ones_like(z_s).scatter_(1, target.unsqueeze(1), 0).bool()

    def cat_mask(t):
        return torch.cat([(t * gt).sum(1, keepdims=True), (t * other).sum(1, keepdims=True)], 1)

    pred_s = cat_mask(F.softmax(z_s / temperature, dim=1))
    pred_t = cat_mask(F.softmax(z_t / temperature, dim=1))
    tckd = F.kl_div(torch.log(pred_s), pred_t, reduction="sum") * temperature**2 / len(target)
    pred_t2 = F.softmax(z_t / temperature - 1000.0 * gt, dim=1)
    log_s2 = F.log_softmax(z_s / temperature - 1000.0 * gt, dim=1)
    nckd = F.kl_div(log_s2, pred_t2, reduction="sum") * temperature**2 / len(target)
    return alpha * tckd + beta * nckd


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_dkd_is_mdistillers_bit_for_bit_where_finite(dtype):
    z_s, z_t, y = _logits(64, 100, dtype, seed=3)
    z_a, z_b = z_s.clone().requires_grad_(), z_s.clone().requires_grad_()
    ours = dkd_loss(z_a, z_t, y, alpha=1.0, beta=8.0, temperature=4.0)
    ref = _mdistiller_dkd(z_b, z_t, y, 1.0, 8.0, 4.0)
    assert torch.equal(ours, ref)
    ours.backward()
    ref.backward()
    assert torch.equal(z_a.grad, z_b.grad)


def test_the_log_sum_exp_form_equals_the_log_of_the_binary_probabilities():
    for seed in range(5):
        z_s, _, y = _logits(32, 50, torch.float64, seed=seed)
        gt = torch.zeros_like(z_s, dtype=torch.bool).scatter_(1, y.unsqueeze(1), True)
        direct = torch.log(_binary(F.softmax(z_s / 2.0, dim=1), gt))
        torch.testing.assert_close(_log_binary_lse(z_s / 2.0, gt), direct, rtol=1e-6, atol=0)


@pytest.mark.parametrize(("dtype", "gap"), [(torch.float16, 30.0), (torch.float32, 120.0)])
def test_dkd_stays_finite_on_confident_logits(dtype, gap):
    z_s = torch.zeros(3, 5)
    z_s[:, 0] = gap  # the student is sure of class 0; the target is class 1
    z_t = torch.randn(3, 5, generator=torch.Generator().manual_seed(0))
    y = torch.ones(3, dtype=torch.long)
    z = z_s.to(dtype).requires_grad_()
    loss = dkd_loss(z, z_t.to(dtype), y, alpha=1.0, beta=8.0, temperature=1.0)
    assert loss.dtype == torch.float32 and torch.isfinite(loss)
    loss.backward()
    assert torch.isfinite(z.grad).all()
    # the old formula is finite in float64 here: the same value
    ref = _mdistiller_dkd(z_s.to(dtype).double(), z_t.to(dtype).double(), y, 1.0, 8.0, 1.0)
    assert torch.isfinite(ref)
    assert loss.item() == pytest.approx(ref.item(), rel=1e-5)


def test_kd_and_dkd_compute_half_inputs_in_float32():
    z_s, z_t, y = _logits(8, C)
    h_s, h_t = z_s.half(), z_t.half()
    kd = kd_loss(h_s, h_t, temperature=4.0)
    assert kd.dtype == torch.float32
    assert torch.equal(kd, kd_loss(h_s.float(), h_t.float(), temperature=4.0))
    dkd = dkd_loss(h_s, h_t, y, alpha=1.0, beta=8.0, temperature=4.0)
    assert dkd.dtype == torch.float32
    assert torch.equal(dkd, dkd_loss(h_s.float(), h_t.float(), y, alpha=1, beta=8, temperature=4))
    assert kd_loss(z_s.double(), z_t.double(), temperature=4.0).dtype == torch.float64


# ---- 6. kernel CKA options --------------------------------------------------------------------


def test_kernel_cka_refuses_unknown_options_and_a_zero_threshold():
    gen = torch.Generator().manual_seed(0)
    x, y = torch.randn(10, 3, generator=gen), torch.randn(10, 3, generator=gen)
    with pytest.raises(ValueError, match=r"unknown option\(s\) \['sigma'\]"):
        kernel_cka(x, y, kernel="rbf", sigma=2.0)
    with pytest.raises(ValueError, match="unknown option"):
        kernel_cka(x, y, kernel="linear", threshold=2.0)
    with pytest.raises(ValueError, match="threshold must be finite and > 0"):
        kernel_cka(x, y, kernel="rbf", threshold=0)
    # the linear n > d route never builds a Gram: its options are checked all the same
    with pytest.raises(ValueError, match="unknown option"):
        cka_distance_matrix([x, y], kernel="linear", degree=2)
    with pytest.raises(ValueError, match="takes no options"):
        distance_matrix("centroid_cosine", features=[x, y], threshold=2.0)
    assert torch.isfinite(kernel_cka(x, y, kernel="rbf", threshold=0.5))


# ---- 7, 8. models and checkpoints -------------------------------------------------------------


@pytest.mark.parametrize("num_classes", [0, 1, -3])
def test_create_model_wants_at_least_two_classes(num_classes):
    for name in ("resnet8", "vit_tiny_p4_32"):  # timm: 0 made a feature extractor
        with pytest.raises(ValueError, match="num_classes must be >= 2"):
            create_model(name, num_classes=num_classes)


@pytest.mark.parametrize("num_classes", [10.0, None, True, "10"])
def test_create_model_wants_an_int(num_classes):
    with pytest.raises(TypeError, match="num_classes must be an int"):
        create_model("resnet8", num_classes=num_classes)


def test_a_text_file_is_not_a_checkpoint(tmp_path):
    (tmp_path / "text.pth").write_text("hello, this is not a checkpoint\n")
    with pytest.raises(ValueError, match="not a readable weights-only checkpoint"):
        load_checkpoint_into(create_model("resnet8", num_classes=10), tmp_path / "text.pth")


# ---- 9. Sinkhorn solvers ----------------------------------------------------------------------

_SOLVERS = {
    "sinkhorn": lambda a, b, c, **kw: sinkhorn(a, b, c, **kw).transport_cost,
    "sinkhorn_shared": lambda a, b, c, **kw: sinkhorn_shared(a, b, c, **kw).transport_cost,
    "sinkhorn_log": lambda a, b, c, **kw: sinkhorn_log(a, b, c, **kw).transport_cost,
    "sinkhorn_shared_transport": sinkhorn_shared_transport,
}


@pytest.mark.parametrize("solver", sorted(_SOLVERS))
@pytest.mark.parametrize(("n", "m"), [(0, 3), (3, 0)])
def test_sinkhorn_refuses_empty_dims(solver, n, m):
    a, b = torch.ones(2, n) / max(n, 1), torch.ones(2, m) / max(m, 1)
    with pytest.raises(ValueError, match="is empty"):
        _SOLVERS[solver](a, b, torch.rand(n, m), eps=0.1)


@pytest.mark.parametrize("solver", sorted(_SOLVERS))
def test_sinkhorn_promotes_the_cost_to_the_marginals_dtype(solver):
    a, b = _marginals(3, 4, torch.float64), _marginals(3, 4, torch.float64, seed=1)
    cost = sharpen_cost(_distance(4))  # float32
    got = _SOLVERS[solver](a, b, cost, eps=0.1, n_iter=5)
    assert got.dtype == torch.float64
    torch.testing.assert_close(got, _SOLVERS[solver](a, b, cost.double(), eps=0.1, n_iter=5))


@pytest.mark.parametrize("solver", ["sinkhorn", "sinkhorn_shared", "sinkhorn_shared_transport"])
def test_sinkhorn_checks_u0_and_the_stabilizer(solver):
    a, b, cost = _marginals(3, 4), _marginals(3, 4, seed=1), sharpen_cost(_distance(4))
    for u0 in (torch.ones(3, 5), torch.ones(2, 4), torch.ones(5)):
        with pytest.raises(ValueError, match="u0 of shape"):
            _SOLVERS[solver](a, b, cost, eps=0.1, u0=u0)
    with pytest.raises(TypeError, match=r"u0 must be a torch\.Tensor"):
        _SOLVERS[solver](a, b, cost, eps=0.1, u0=[0.25] * 4)
    for stabilizer in (-1e-8, float("nan")):
        with pytest.raises(ValueError, match="stabilizer must be >= 0"):
            _SOLVERS[solver](a, b, cost, eps=0.1, stabilizer=stabilizer)
    # an (n,) start broadcasts over the batch: the same as the (B, n) one, in every solver
    u0 = torch.full((4,), 0.25)
    torch.testing.assert_close(
        _SOLVERS[solver](a, b, cost, eps=0.1, u0=u0),
        _SOLVERS[solver](a, b, cost, eps=0.1, u0=u0.expand(3, 4)),
    )


@pytest.mark.parametrize("solver", sorted(_SOLVERS))
def test_sinkhorn_wants_an_integer_n_iter(solver):
    a, b, cost = _marginals(2, 4), _marginals(2, 4, seed=1), sharpen_cost(_distance(4))
    with pytest.raises(TypeError, match="n_iter must be an int"):
        _SOLVERS[solver](a, b, cost, eps=0.1, n_iter=2.5)
    with pytest.raises(TypeError, match=r"cost must be a torch\.Tensor"):
        _SOLVERS[solver](a, b, cost.tolist(), eps=0.1)
    with pytest.raises(TypeError, match="n_iter must be an int"):
        wkd_logit_loss(*_logits(), sharpen_cost(_distance()), temperature=2.0, n_iter=2.5)


@pytest.mark.parametrize("tol", [0.0, -1e-3, float("nan")])
def test_sinkhorn_log_wants_a_positive_tol(tol):
    a, b, cost = _marginals(2, 4), _marginals(2, 4, seed=1), sharpen_cost(_distance(4))
    with pytest.raises(ValueError, match="tol must be > 0"):
        sinkhorn_log(a, b, cost, eps=0.1, tol=tol)
    with pytest.raises(ValueError, match="tol must be finite and > 0"):
        wkd_logit_loss(
            *_logits(), sharpen_cost(_distance()), temperature=2.0, solver="log", tol=tol
        )


def test_a_negative_cost_is_refused_under_validate():
    z_s, z_t, y = _logits()
    cost = sharpen_cost(_distance()) - 0.5
    with pytest.raises(ValueError, match="cost has negative entries"):
        wkd_logit_terms(z_s, z_t, y, cost, temperature=2.0, validate=True)
    wkd_logit_terms(z_s, z_t, y, sharpen_cost(_distance()), temperature=2.0, validate=True)


# ---- 10. temperature --------------------------------------------------------------------------


@pytest.mark.parametrize("temperature", [float("inf"), float("nan"), 0.0])
def test_temperature_must_be_finite_and_positive(temperature):
    z_s, z_t, y = _logits()
    with pytest.raises(ValueError, match="temperature must be finite and > 0"):
        kd_loss(z_s, z_t, temperature=temperature)
    with pytest.raises(ValueError, match="temperature must be finite and > 0"):
        dkd_loss(z_s, z_t, y, alpha=1.0, beta=8.0, temperature=temperature)
    with pytest.raises(ValueError, match="temperature must be finite and > 0"):
        wkd_logit_loss(z_s, z_t, y, sharpen_cost(_distance()), temperature=temperature)


# ---- 11. feature-loss options, checked in __init__ too ----------------------------------------


def test_feature_loss_options():
    f_s, f_t = torch.randn(2, 3, 4, 4), torch.randn(2, 3, 4, 4)
    for bins in (0, 1):
        with pytest.raises(ValueError, match="bins must be >= 2"):
            feature_divergence_loss(f_s, f_t, divergence="pmf_wd", bins=bins)
        with pytest.raises(ValueError, match="bins must be >= 2"):
            FeatureDivergenceLoss(divergence="pmf_wd", bins=bins)
    for eps in (0.0, -1e-5):
        with pytest.raises(ValueError, match="eps must be > 0 with covariance='full'"):
            wkd_feature_loss(f_s, f_t, covariance="full", eps=eps)
    with pytest.raises(ValueError, match="eps must be >= 0"):
        wkd_feature_loss(f_s, f_t, eps=-1.0)
    with pytest.raises(TypeError, match="grid must be an int"):
        wkd_feature_loss(f_s, f_t, grid=2.0)
    with pytest.raises(ValueError, match="grid must be >= 1"):
        WKDFeatureLoss(grid=0)
    with pytest.raises(ValueError, match="eps must be > 0 with covariance='full'"):
        WKDFeatureLoss(covariance="full", eps=0.0)
    with pytest.raises(ValueError, match="gamma must be 1"):
        FeatureDivergenceLoss(divergence="laplace_kl", gamma=2)
    with pytest.raises(TypeError, match=r"feat_student must be a torch\.Tensor"):
        wkd_feature_loss(f_s.tolist(), f_t)


def test_wkd_logit_loss_checks_its_arguments_at_construction():
    cost = sharpen_cost(_distance())
    with pytest.raises(ValueError, match="tol needs solver='log'"):
        WKDLogitLoss(cost, temperature=2.0, tol=1e-3, solver="plain")
    with pytest.raises(ValueError, match="tol must be finite and > 0"):
        WKDLogitLoss(cost, temperature=2.0, tol=0.0, solver="log")
    with pytest.raises(TypeError, match="n_iter must be an int"):
        WKDLogitLoss(cost, temperature=2.0, n_iter=2.5)
    with pytest.raises(TypeError, match=r"cost must be a torch\.Tensor"):
        WKDLogitLoss(cost.tolist(), temperature=2.0)


# ---- 12, 13. datasets and loaders -------------------------------------------------------------


@pytest.mark.parametrize("per_class", [0, -1])
def test_mnist5k_subset_of_zero_or_less_is_refused_like_the_generic_option(per_class):
    labels = load_digits()[1]
    with pytest.raises(ValueError, match="train_subset_per_class must be >= 1"):
        split_indices(labels, "train", train_subset_per_class=per_class)
    with pytest.raises(ValueError, match="train_subset_per_class must be >= 1"):
        create_dataset("mnist5k", split="train", train_subset_per_class=per_class)
    # ignored on the test split, as documented (the generic option is ignored there too)
    assert len(split_indices(labels, "test", train_subset_per_class=per_class)) == 1000
    with pytest.raises(ValueError, match=f"<= {TRAIN_PER_CLASS}"):
        split_indices(labels, "train", train_subset_per_class=TRAIN_PER_CLASS + 1)
    assert len(split_indices(labels, "train", train_subset_per_class=7)) == 70


def test_synthetic_options_are_checked_at_construction():
    with pytest.raises(ValueError, match="num_classes must be >= 1"):
        create_dataset("synthetic", split="train", num_classes=0)
    with pytest.raises(ValueError, match="num_classes must be >= 1"):
        dataset_info("synthetic", num_classes=0)
    with pytest.raises(ValueError, match="length must be >= 1"):
        create_dataset("synthetic", split="train", length=-1)
    with pytest.raises(TypeError, match="length must be an int"):
        create_dataset("synthetic", split="train", length=2.5)


def test_build_loaders_checks_the_batch_sizes():
    data = create_dataset("synthetic", split="train", length=8)
    for bad in (0, -4):
        with pytest.raises(ValueError, match="eval_batch_size must be >= 1"):
            build_loaders(data, data, batch_size=4, eval_batch_size=bad, distributed=False)
        with pytest.raises(ValueError, match="batch_size must be >= 1"):
            build_loaders(data, data, batch_size=bad, distributed=False)
    with pytest.raises(TypeError, match="batch_size must be an int"):
        build_loaders(data, data, batch_size=2.5, distributed=False)
    train, val = build_loaders(data, data, batch_size=4, eval_batch_size=8, distributed=False)
    assert (train.batch_size, val.batch_size) == (4, 8)


# ---- 14. lists instead of tensors -------------------------------------------------------------


def test_lists_are_refused_with_a_type_error_naming_the_argument():
    z_s, z_t, y = _logits()
    cost = sharpen_cost(_distance())
    with pytest.raises(TypeError, match=r"logits_student must be a torch\.Tensor"):
        kd_loss(z_s.tolist(), z_t, temperature=2.0)
    with pytest.raises(TypeError, match=r"logits_teacher must be a torch\.Tensor"):
        dkd_loss(z_s, z_t.tolist(), y, alpha=1.0, beta=8.0, temperature=2.0)
    with pytest.raises(TypeError, match=r"target must be a torch\.Tensor"):
        dkd_loss(z_s, z_t, y.tolist(), alpha=1.0, beta=8.0, temperature=2.0)
    with pytest.raises(TypeError, match=r"target must be a torch\.Tensor"):
        wkd_logit_loss(z_s, z_t, y.tolist(), cost, temperature=2.0)
    with pytest.raises(TypeError, match=r"cost must be a torch\.Tensor"):
        wkd_logit_loss(z_s, z_t, y, cost.tolist(), temperature=2.0)
    with pytest.raises(TypeError, match=r"distance must be a torch\.Tensor"):
        sharpen_cost(_distance().tolist())
