"""KD and DKD against values computed by hand in numpy."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from wkd_core.losses import DKDLoss, KDLoss, dkd_loss, kd_loss

Z_S = np.array([[2.0, 0.5, -1.0, 0.0], [0.1, 0.2, 3.0, -2.0], [1.0, 1.0, 1.0, 1.0]])
Z_T = np.array([[3.0, -0.5, 0.0, 1.0], [-1.0, 0.5, 2.0, 0.0], [0.0, 2.0, -1.0, 0.5]])
Y = np.array([0, 2, 1])


def _softmax(z):
    e = np.exp(z - z.max(-1, keepdims=True))
    return e / e.sum(-1, keepdims=True)


def _kl(p, q):
    return (p * (np.log(p) - np.log(q))).sum(-1)


@pytest.mark.parametrize("temperature", [1.0, 4.0])
def test_kd_by_hand(temperature):
    expected = temperature**2 * _kl(_softmax(Z_T / temperature), _softmax(Z_S / temperature))
    loss = kd_loss(torch.tensor(Z_S), torch.tensor(Z_T), temperature=temperature)
    assert loss.item() == pytest.approx(expected.mean(), rel=1e-12)
    module = KDLoss(temperature=temperature)
    assert module(torch.tensor(Z_S), torch.tensor(Z_T)).item() == pytest.approx(expected.mean())


@pytest.mark.parametrize(("alpha", "beta", "temperature"), [(1.0, 8.0, 4.0), (0.5, 2.0, 1.0)])
def test_dkd_by_hand(alpha, beta, temperature):
    tckd, nckd = [], []
    for zs, zt, y in zip(Z_S, Z_T, Y, strict=True):
        ps, pt = _softmax(zs / temperature), _softmax(zt / temperature)
        tckd.append(_kl(np.array([pt[y], 1 - pt[y]]), np.array([ps[y], 1 - ps[y]])))
        rest = np.arange(len(zs)) != y
        nckd.append(_kl(_softmax(zt[rest] / temperature), _softmax(zs[rest] / temperature)))
    expected = temperature**2 * (alpha * np.mean(tckd) + beta * np.mean(nckd))
    args = (torch.tensor(Z_S), torch.tensor(Z_T), torch.tensor(Y))
    loss = dkd_loss(*args, alpha=alpha, beta=beta, temperature=temperature)
    assert loss.item() == pytest.approx(expected, rel=1e-10)
    module = DKDLoss(alpha=alpha, beta=beta, temperature=temperature)
    assert module(*args).item() == pytest.approx(expected, rel=1e-10)


def test_gradients_flow_to_student():
    z_s = torch.tensor(Z_S, requires_grad=True)
    loss = kd_loss(z_s, torch.tensor(Z_T), temperature=4.0)
    loss = loss + dkd_loss(z_s, torch.tensor(Z_T), torch.tensor(Y), alpha=1, beta=8, temperature=4)
    loss.backward()
    assert torch.isfinite(z_s.grad).all() and z_s.grad.abs().sum() > 0


def test_bad_inputs():
    z_s, z_t, y = torch.tensor(Z_S), torch.tensor(Z_T), torch.tensor(Y)
    with pytest.raises(ValueError, match="logits_teacher shape"):
        kd_loss(z_s, z_t[:, :3], temperature=1.0)
    with pytest.raises(ValueError, match="temperature"):
        kd_loss(z_s, z_t, temperature=-1.0)
    with pytest.raises(ValueError, match="target"):
        dkd_loss(z_s, z_t, y[:2], alpha=1, beta=1, temperature=1)
    with pytest.raises(ValueError, match="labels"):
        dkd_loss(z_s, z_t, y + 4, alpha=1, beta=1, temperature=1, validate=True)
    with pytest.raises(ValueError, match="NaN"):
        kd_loss(z_s * float("nan"), z_t, temperature=1.0, validate=True)
