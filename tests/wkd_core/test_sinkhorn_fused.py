"""The fused Triton WKD-L kernel equals the plain shared-kernel solver (and so the authors'
per-sample form, which ``test_wkd_logit.py`` ties to the plain one), run on the CPU through
Triton's interpreter; and the plain loss compiles to one graph (no break in ``autocast_off``).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from wkd_core.losses import sharpen_cost, wkd_logit_terms
from wkd_core.ot.sinkhorn_fused import FUSED_MAX_CLASSES, REGISTER_MAX_CLASSES, fused_available

ROOT = Path(__file__).resolve().parents[2]

pytest.importorskip("triton")

# Triton's interpreter must be switched on before triton is first imported (its language
# functions are bound at import), so the kernels run in a child process started with
# TRITON_INTERPRET=1; the child computes, the tests here assert.
CASES = [(8, 10, 4.0, 10), (16, 100, 8.0, 10), (3, REGISTER_MAX_CLASSES, 2.0, 3)]


def _problem(seed: int, batch: int, num_classes: int):
    gen = torch.Generator().manual_seed(seed)
    z_s = (3 * torch.randn(batch, num_classes, generator=gen)).requires_grad_()
    z_t = 3 * torch.randn(batch, num_classes, generator=gen)
    target = torch.randint(0, num_classes, (batch,), generator=gen)
    distance = torch.rand(num_classes, num_classes, generator=gen)
    distance = (distance + distance.t()) / 2
    distance.fill_diagonal_(0)
    return z_s, z_t, target, sharpen_cost(distance)


def _terms_and_grad(z_s, z_t, target, cost, solver, *, temperature=4.0, n_iter=10):
    z_s.grad = None
    terms = wkd_logit_terms(
        z_s, z_t, target, cost, temperature=temperature, n_iter=n_iter, solver=solver
    )
    (0.7 * terms.target + 3.0 * terms.transport).backward()  # distinct upstream weights
    return terms.target.item(), terms.transport.item(), z_s.grad.clone()


def _child() -> dict:
    """Run in the interpreter: every case with both solvers, plus a float64 plain reference."""
    out = {}
    for batch, num_classes, temperature, n_iter in CASES:
        problem = _problem(batch * num_classes, batch, num_classes)
        kw = {"temperature": temperature, "n_iter": n_iter}
        plain = _terms_and_grad(*problem, "plain", **kw)
        fused = _terms_and_grad(*problem, "fused", **kw)
        z_s, z_t, target, cost = problem
        z64 = z_s.detach().double().requires_grad_()
        ref64 = _terms_and_grad(z64, z_t.double(), target, cost.double(), "plain", **kw)
        out[f"{batch}-{num_classes}"] = {
            "plain": plain[:2], "fused": fused[:2], "float64": ref64[:2],
            "grad_err": ((fused[2] - plain[2]).norm() / plain[2].norm()).item(),
            "grad_err64": ((fused[2].double() - ref64[2]).norm() / ref64[2].norm()).item(),
            "grad_finite": bool(torch.isfinite(fused[2]).all()),
        }  # fmt: skip
    return out


@pytest.fixture(scope="module")
def interpreted() -> dict:
    env = {**os.environ, "TRITON_INTERPRET": "1", "PYTHONPATH": str(ROOT)}
    proc = subprocess.run(
        [sys.executable, __file__], env=env, capture_output=True, text=True, timeout=300
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])


@pytest.mark.parametrize(("batch", "num_classes", "temperature", "n_iter"), CASES)
def test_fused_equals_plain_solver(interpreted, batch, num_classes, temperature, n_iter):
    case = interpreted[f"{batch}-{num_classes}"]
    for ref, got in zip(case["plain"], case["fused"], strict=True):
        assert abs(got - ref) <= 1e-6 * abs(ref)
    assert case["grad_err"] <= 1e-6
    assert case["grad_finite"]


def test_fused_matches_float64_plain(interpreted):
    for case in interpreted.values():
        for ref, got in zip(case["float64"], case["fused"], strict=True):
            assert got == pytest.approx(ref, rel=1e-5)
        assert case["grad_err64"] <= 1e-5


def test_fused_availability_and_refusals(monkeypatch):
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    assert not fused_available(100, "cpu")
    assert fused_available(100, "cuda")
    assert not fused_available(FUSED_MAX_CLASSES + 1, "cuda")
    z_s, z_t, target, cost = _problem(0, 4, 10)
    with pytest.raises(ValueError, match="fused solver"):  # no CUDA, no interpreter
        wkd_logit_terms(z_s, z_t, target, cost, temperature=4.0, solver="fused")
    monkeypatch.setenv("TRITON_INTERPRET", "1")  # checked before any kernel is built
    with pytest.raises(ValueError, match="float32"):
        wkd_logit_terms(z_s.double(), z_t.double(), target, cost, temperature=4.0, solver="fused")


def test_plain_loss_compiles_to_one_graph():
    # fullgraph=True fails on any graph break: the loss must trace whole (gpu-notes.md), with
    # its checks running at trace time only.
    z_s, z_t, target, cost = _problem(1, 8, 10)

    def loss(z_s, z_t, target, cost):
        terms = wkd_logit_terms(z_s, z_t, target, cost, temperature=4.0)
        return terms.target + 2.0 * terms.transport

    compiled = torch.compile(loss, fullgraph=True, backend="aot_eager")
    got, ref = compiled(z_s, z_t, target, cost), loss(z_s, z_t, target, cost)
    assert got.item() == pytest.approx(ref.item(), rel=1e-6)
    (g_got,) = torch.autograd.grad(got, z_s)
    (g_ref,) = torch.autograd.grad(ref, z_s)
    assert torch.allclose(g_got, g_ref, rtol=1e-5, atol=1e-8)


if __name__ == "__main__":
    print(json.dumps(_child()))
