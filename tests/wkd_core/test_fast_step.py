"""The fast (captured) step computes what the eager reference loop computes.

On a CPU the captured step runs the very code it records on CUDA, without the graph, so
these tests compare, on fixed batches, the per-epoch loss terms and the weights after a few
SGD steps of ``train_epoch_fast`` against ``train_one_epoch`` (float32: 1e-5 relative), for
every method; bf16 autocast against float32 within a stated tolerance; and the SGD update
with a device-tensor learning rate against ``torch.optim.SGD``.
"""

from __future__ import annotations

import copy

import pytest
import torch

from wkd_core.distillers import create_distiller
from wkd_core.models import create_model
from wkd_core.train import TrainConfig
from wkd_core.train.fast import CapturedStep, fast_enabled, sgd_update_, train_epoch_fast
from wkd_core.train.trainer import make_optimizer, train_one_epoch

METHODS = ("vanilla", "kd", "dkd", "wkd_l", "wkd_f", "wkd_lf")
NUM_CLASSES = 10
EPOCH, EPOCHS = 3, 5  # inside the cosine decay (start 1) and the DKD warm-up (2 epochs)


def method_params(method: str) -> dict:
    params: dict = {}
    if method in ("wkd_l", "wkd_lf"):
        gen = torch.Generator().manual_seed(7)
        distance = torch.rand(NUM_CLASSES, NUM_CLASSES, generator=gen)
        distance = (distance + distance.t()) / 2
        distance.fill_diagonal_(0)
        params.update(distance=distance, temperature=4.0, cosine_decay_epoch=1)
    if method in ("wkd_f", "wkd_lf"):
        params.update(
            projector="conv1x1", spatial_grid=1, input_size=(SIZE, SIZE), cosine_decay_epoch=1
        )
    if method == "dkd":
        params.update(warmup_epochs=EPOCHS - 1)
    return params


def make_distiller(method: str):
    torch.manual_seed(0)
    student = create_model("resnet8", num_classes=NUM_CLASSES)
    teacher = None if method == "vanilla" else create_model("resnet14", num_classes=NUM_CLASSES)
    return create_distiller(method, student=student, teacher=teacher, **method_params(method))


SIZE = 16  # CIFAR networks pool adaptively: 16×16 inputs keep the tests fast


def batches(count: int = 3, batch: int = 8, last: int = 5):
    gen = torch.Generator().manual_seed(1)
    sizes = [batch] * (count - 1) + [last]  # a partial last batch, as in a real epoch
    return [
        (
            torch.randn(n, 3, SIZE, SIZE, generator=gen),
            torch.randint(0, NUM_CLASSES, (n,), generator=gen),
        )
        for n in sizes
    ]


def eager_epoch(distiller, data, *, amp_dtype=None):
    optimizer = make_optimizer(distiller, TrainConfig(lr=0.1, weight_decay=5e-4))
    scaler = torch.amp.GradScaler("cpu", enabled=False)
    means = train_one_epoch(
        distiller, data, optimizer, scaler, epoch=EPOCH, total_epochs=EPOCHS,
        device=torch.device("cpu"), amp=amp_dtype is not None,
        amp_dtype=amp_dtype or torch.float16,
    )  # fmt: skip
    return means, optimizer


def fast_epoch(distiller, data, *, precision=None, channels_last=False, warmup=1):
    optimizer = make_optimizer(distiller, TrainConfig(lr=0.1, weight_decay=5e-4))
    if channels_last:
        distiller.to(memory_format=torch.channels_last)
    step = CapturedStep(
        distiller, optimizer, total_epochs=EPOCHS, precision=precision,
        channels_last=channels_last, capture=False, warmup=warmup,
    )  # fmt: skip
    sums, names = train_epoch_fast(step, data, epoch=EPOCH, lr=0.1, device=torch.device("cpu"))
    correct, count, loss, *terms = sums.tolist()
    means = {"top1": 100 * correct / count, "loss": loss / count}
    means.update({k: t / count for k, t in zip(names, terms, strict=True)})
    return means, optimizer


def rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return ((a.double() - b.double()).norm() / b.double().norm().clamp(min=1e-12)).item()


def weights(distiller) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in distiller.trainable_state_dict().items()}


def flat(state: dict[str, torch.Tensor]) -> torch.Tensor:
    return torch.cat([v.double().flatten() for v in state.values() if v.is_floating_point()])


@pytest.mark.parametrize("method", METHODS)
def test_fast_step_equals_eager_float32(method):
    data = batches()
    reference = make_distiller(method)
    fast = copy.deepcopy(reference)
    fast.fast_kernels(True)  # as fit does: WKD-L on the adjoint solver here (no Triton device)
    if hasattr(fast, "solver"):
        assert (fast.solver, reference.solver) == (
            "adjoint" if fast.use_logit else "plain",
            "plain",
        )
    ref_means, ref_opt = eager_epoch(reference, data)
    got_means, got_opt = fast_epoch(fast, data)
    assert got_means.keys() == ref_means.keys()
    for key, value in ref_means.items():
        assert got_means[key] == pytest.approx(value, rel=1e-5, abs=1e-7), key
    # weights compared as one vector (as the buffers below): single BN biases are tiny sums
    # that nearly cancel, where float32 rounding alone moves them by 1e-3 relative
    assert rel(flat(weights(fast)), flat(weights(reference))) <= 1e-5

    # the momentum buffers are the optimizer's own: a checkpoint sees the same SGD state
    # (compared as one vector: single BN-bias buffers are sums that nearly cancel)
    def buffers(opt):
        params = opt.param_groups[0]["params"]
        return torch.cat([opt.state[p]["momentum_buffer"].flatten() for p in params])

    assert rel(buffers(got_opt), buffers(ref_opt)) <= 1e-5


@pytest.mark.slow
def test_fast_step_channels_last_same_losses():
    # channels_last changes the memory layout only. On a CPU, oneDNN's channels_last
    # convolution backward sums in another order (single gradients differ by ~1e-3
    # relative); so here the losses are held to 1e-5 and the weights to 1e-4. (On CUDA,
    # gpu_check.sh compares the captured channels_last step with the eager one.)
    data = batches()
    reference = make_distiller("kd")
    fast = copy.deepcopy(reference)
    ref_means, _ = eager_epoch(reference, data)
    got_means, _ = fast_epoch(fast, data, channels_last=True)
    for key, value in ref_means.items():
        assert got_means[key] == pytest.approx(value, rel=1e-5, abs=1e-7), key
    assert rel(flat(weights(fast)), flat(weights(reference))) <= 1e-4


@pytest.mark.slow
def test_fast_step_bf16_close_to_float32():
    # bf16 autocast (the fast path's GPU precision; CPU autocast runs it too, slowly, hence
    # two small batches of KD) against float32: the documented tolerance is 3e-2 relative on
    # each loss term's epoch mean and 2e-2 on the weights' change (one vector) after two
    # steps; the bf16 fast step and the bf16 eager step are the same computation (1e-5).
    data = batches(count=2, batch=4, last=4)
    base = make_distiller("kd")
    start = weights(base)
    ref, fast_bf16, eager_bf16 = base, copy.deepcopy(base), copy.deepcopy(base)
    ref_means, _ = eager_epoch(ref, data)
    got_means, _ = fast_epoch(fast_bf16, data, precision=torch.bfloat16)
    eager_means, _ = eager_epoch(eager_bf16, data, amp_dtype=torch.bfloat16)
    for key, value in ref_means.items():
        assert got_means[key] == pytest.approx(value, rel=3e-2, abs=1e-4), key
        assert got_means[key] == pytest.approx(eager_means[key], rel=1e-5, abs=1e-7), key

    def change(distiller):
        now = weights(distiller)
        return torch.cat([(now[k] - start[k]).flatten() for k in now if now[k].is_floating_point()])

    assert rel(change(fast_bf16), change(ref)) <= 2e-2
    assert rel(change(fast_bf16), change(eager_bf16)) <= 1e-5


@pytest.mark.parametrize("nesterov", [True, False])
def test_sgd_update_equals_torch_sgd(nesterov):
    gen = torch.Generator().manual_seed(0)
    params = [torch.randn(4, 3, generator=gen), torch.randn(5, generator=gen)]
    ours = [p.clone() for p in params]
    ref = [torch.nn.Parameter(p.clone()) for p in params]
    opt = torch.optim.SGD(ref, lr=0.05, momentum=0.9, weight_decay=5e-4, nesterov=nesterov)
    buffers: list = [None, None]
    for step in range(4):
        grads = [torch.randn(p.shape, generator=gen) for p in params]
        for p, g in zip(ref, grads, strict=True):
            p.grad = g.clone()
        opt.step()
        lr = torch.tensor(0.05) if step % 2 else 0.05  # a device tensor or a float
        buffers = sgd_update_(
            ours, grads, buffers, lr=lr, momentum=0.9, weight_decay=5e-4, nesterov=nesterov
        )
        for mine, theirs in zip(ours, ref, strict=True):
            assert torch.allclose(mine, theirs.detach(), rtol=1e-6, atol=1e-7)
        for mine, theirs in zip(buffers, ref, strict=True):
            assert torch.allclose(mine, opt.state[theirs]["momentum_buffer"], rtol=1e-6)


def test_fast_enabled_rules():
    cpu, cuda = torch.device("cpu"), torch.device("cuda")
    assert fast_enabled("auto", cuda, distributed=False)
    assert not fast_enabled("auto", cuda, distributed=True)
    assert not fast_enabled("auto", cpu, distributed=False)
    assert fast_enabled(True, cpu, distributed=False)
    with pytest.raises(ValueError, match="single process"):
        fast_enabled(True, cuda, distributed=True)
    with pytest.raises(ValueError, match="fast must be"):
        fast_enabled("yes", cpu, distributed=False)


def test_captured_step_refuses_other_optimizers():
    distiller = make_distiller("vanilla")
    adam = torch.optim.Adam(distiller.trainable_parameters())
    with pytest.raises(ValueError, match="SGD"):
        CapturedStep(distiller, adam, total_epochs=2)
