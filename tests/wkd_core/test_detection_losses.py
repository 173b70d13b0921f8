"""Detection distillation terms against independent per-RoI formulations, and the RoI pairing
of teacher and student (the teacher pools the student's sampled boxes)."""

from __future__ import annotations

import copy
import math

import pytest
import torch

from wkd_core.detection import DetectionDistiller, create_detector, roi_distill_terms
from wkd_core.losses import sharpen_cost

N, C1 = 12, 5  # RoIs, classes including the background


@pytest.fixture
def rois():
    g = torch.Generator().manual_seed(0)
    s = torch.randn(N, C1, generator=g, dtype=torch.float64) * 2
    t = torch.randn(N, C1, generator=g, dtype=torch.float64) * 2
    labels = torch.randint(0, C1, (N,), generator=g)
    labels[:4] = 0  # background RoIs
    d = torch.rand(C1, C1, generator=g, dtype=torch.float64)
    d = (d + d.T) / 2
    d.fill_diagonal_(0)
    return s, t, labels, d


def _softmax(row, temperature):
    e = [math.exp(v / temperature) for v in row]
    return [v / sum(e) for v in e]


def test_kd_term_is_the_mean_tempered_kl(rois):
    s, t, labels, _ = rois
    temperature = 2.0
    expected = 0.0
    for zs, zt in zip(s.tolist(), t.tolist(), strict=True):
        ps, pt = _softmax(zs, temperature), _softmax(zt, temperature)
        expected += sum(b * (math.log(b) - math.log(a)) for a, b in zip(ps, pt, strict=True))
    expected *= temperature**2 / N
    terms = roi_distill_terms(
        "kd",
        logits_student=s,
        logits_teacher=t,
        labels=labels,
        temperature=temperature,
        kd_weight=0.5,
    )
    assert terms.keys() == {"loss_kd"}
    assert terms["loss_kd"].item() == pytest.approx(0.5 * expected, rel=1e-9)


def test_dkd_term_per_roi(rois):
    s, t, labels, _ = rois
    temperature, alpha, beta = 1.0, 1.0, 0.25
    tckd = nckd = 0.0
    for zs, zt, y in zip(s.tolist(), t.tolist(), labels.tolist(), strict=True):
        ps, pt = _softmax(zs, temperature), _softmax(zt, temperature)
        bs, bt = [ps[y], 1 - ps[y]], [pt[y], 1 - pt[y]]
        tckd += sum(b * math.log(b / a) for a, b in zip(bs, bt, strict=True))
        qs = _softmax([v for j, v in enumerate(zs) if j != y], temperature)
        qt = _softmax([v for j, v in enumerate(zt) if j != y], temperature)
        nckd += sum(b * math.log(b / a) for a, b in zip(qs, qt, strict=True))
    expected = (alpha * tckd + beta * nckd) * temperature**2 / N
    terms = roi_distill_terms(
        "dkd",
        logits_student=s,
        logits_teacher=t,
        labels=labels,
        temperature=temperature,
        alpha=alpha,
        beta=beta,
    )
    assert terms["loss_dkd"].item() == pytest.approx(expected, rel=1e-7)


def _per_roi_wkd(zs, zt, y, cost, temperature, eps, n_iter):
    """The authors' per-sample recipe: drop the target row/column, plain Sinkhorn."""
    keep = [j for j in range(len(zs)) if j != y]
    a = _softmax([zs[j] for j in keep], temperature)
    b = _softmax([zt[j] for j in keep], temperature)
    c = [[cost[i][j] for j in keep] for i in keep]
    k = [[math.exp(-v / eps) for v in row] for row in c]
    m = len(keep)
    u, v = [1.0 / m] * m, [0.0] * m
    for _ in range(n_iter):
        v = [b[j] / (sum(k[i][j] * u[i] for i in range(m)) + 1e-8) for j in range(m)]
        u = [a[i] / (sum(k[i][j] * v[j] for j in range(m)) + 1e-8) for i in range(m)]
    transport = sum(u[i] * k[i][j] * v[j] * c[i][j] for i in range(m) for j in range(m))
    target = -_softmax(zt, 1.0)[y] * math.log(_softmax(zs, 1.0)[y])
    return target, transport


def test_wkd_logit_terms_per_roi(rois):
    s, t, labels, d = rois
    cost = sharpen_cost(d, kappa=1.0)
    temperature, eps, n_iter, weight = 2.0, 0.05, 10, 3.0
    pairs = [
        _per_roi_wkd(zs, zt, y, cost.tolist(), temperature, eps, n_iter)
        for zs, zt, y in zip(s.tolist(), t.tolist(), labels.tolist(), strict=True)
    ]
    terms = roi_distill_terms(
        "wkd_l",
        logits_student=s,
        logits_teacher=t,
        labels=labels,
        cost=cost,
        temperature=temperature,
        eps=eps,
        n_iter=n_iter,
        wkd_logit_weight=weight,
    )
    assert terms["loss_wkd_target"].item() == pytest.approx(sum(p[0] for p in pairs) / N, rel=1e-9)
    assert terms["loss_wkd_logit"].item() == pytest.approx(
        weight * sum(p[1] for p in pairs) / N, rel=1e-6
    )


def test_wkd_feature_term_is_the_gaussian_w2_per_cell():
    g = torch.Generator().manual_seed(1)
    fs = torch.randn(3, 4, 7, 7, generator=g, dtype=torch.float64)
    ft = torch.randn(3, 4, 7, 7, generator=g, dtype=torch.float64) * 1.5 + 0.3
    gamma, grid, eps = 2.0, 4, 1e-5
    cells = [(0, 2), (1, 4), (3, 6), (5, 7)]  # adaptive pooling's cells of 7 split in 4
    total = 0.0
    for b in range(3):
        for r0, r1 in cells:
            for c0, c1 in cells:
                for ch in range(4):
                    xs = fs[b, ch, r0:r1, c0:c1].flatten().tolist()
                    xt = ft[b, ch, r0:r1, c0:c1].flatten().tolist()
                    mu_s, mu_t = sum(xs) / len(xs), sum(xt) / len(xt)
                    var_s = sum((x - mu_s) ** 2 for x in xs) / (len(xs) - 1)
                    var_t = sum((x - mu_t) ** 2 for x in xt) / (len(xt) - 1)
                    total += gamma * (mu_s - mu_t) ** 2
                    total += (math.sqrt(var_s + eps) - math.sqrt(var_t + eps)) ** 2
    expected = 0.5 * total / (3 * grid * grid)
    terms = roi_distill_terms(
        "wkd_f",
        logits_student=torch.zeros(3, 2),
        logits_teacher=torch.zeros(3, 2),
        labels=torch.zeros(3, dtype=torch.long),
        feat_student=fs,
        feat_teacher=ft,
        wkd_feat_weight=0.5,
        mean_cov_ratio=gamma,
        spatial_grid=grid,
        feat_eps=eps,
    )
    assert terms.keys() == {"loss_wkd_feat"}
    assert terms["loss_wkd_feat"].item() == pytest.approx(expected, rel=1e-9)


def test_wkd_lf_has_both_terms_and_vanilla_none(rois):
    s, t, labels, d = rois
    feats = torch.randn(N, 2, 7, 7, dtype=torch.float64)
    common = {"logits_student": s, "logits_teacher": t, "labels": labels}
    both = roi_distill_terms(
        "wkd_lf", **common, cost=sharpen_cost(d), feat_student=feats, feat_teacher=feats + 1
    )
    assert both.keys() == {"loss_wkd_target", "loss_wkd_logit", "loss_wkd_feat"}
    assert roi_distill_terms("vanilla", **common) == {}
    with pytest.raises(ValueError, match="cost"):
        roi_distill_terms("wkd_l", **common)


def _batch():
    g = torch.Generator().manual_seed(2)
    images = [torch.rand(3, 96, 96, generator=g) for _ in range(2)]
    targets = [
        {"boxes": torch.tensor([[10.0, 12.0, 50.0, 40.0]]), "labels": torch.tensor([2])},
        {
            "boxes": torch.tensor([[30.0, 30.0, 70.0, 80.0], [5.0, 60.0, 25.0, 90.0]]),
            "labels": torch.tensor([1, 4]),
        },
    ]
    return images, targets


def test_teacher_pools_the_students_rois():
    """A teacher identical to the student gives identical RoI logits and features: KD = 0 and
    WKD-F (identity projector) = 0, so the two sides are paired RoI by RoI."""
    torch.manual_seed(0)
    student = create_detector("fasterrcnn_tiny_fpn", num_classes=4).eval()
    teacher = copy.deepcopy(student)
    images, targets = _batch()
    kd = DetectionDistiller("kd", student=student, teacher=teacher, temperature=1.0)
    kd.student.eval()  # BN in eval: the two backbones compute the same function
    torch.manual_seed(1)
    out = kd(images, targets)
    assert out["loss_kd"].abs().item() < 1e-6
    wkd = DetectionDistiller("wkd_f", student=student, teacher=teacher)
    with torch.no_grad():
        wkd.projector.weight.copy_(torch.eye(64).view(64, 64, 1, 1))
        wkd.projector.bias.zero_()
    wkd.student.eval()
    out = wkd(images, targets)
    assert out["loss_wkd_feat"].abs().item() < 1e-6
    assert {"loss_classifier", "loss_box_reg"} <= out.keys()  # (the RPN has losses in train mode)


def test_distiller_trains_student_and_projector_only():
    torch.manual_seed(0)
    student = create_detector("fasterrcnn_tiny_fpn", num_classes=4)
    teacher = create_detector("fasterrcnn_small_fpn", num_classes=4)
    d = torch.rand(5, 5)
    distiller = DetectionDistiller(
        "wkd_lf", student=student, teacher=teacher, distance=(d + d.T).fill_diagonal_(0)
    )
    distiller.train()
    assert not teacher.training
    images, targets = _batch()
    losses = distiller(images, targets)
    sum(losses.values()).backward()
    assert all(p.grad is None for p in teacher.parameters())
    assert distiller.projector.weight.grad is not None
    trainable = {id(p) for p in distiller.trainable_parameters()}
    assert trainable.isdisjoint(id(p) for p in teacher.parameters())


def test_teacher_must_match_class_count_and_transform():
    student = create_detector("fasterrcnn_tiny_fpn", num_classes=4)
    with pytest.raises(ValueError, match="classes"):
        DetectionDistiller(
            "kd", student=student, teacher=create_detector("fasterrcnn_small_fpn", num_classes=3)
        )
    with pytest.raises(ValueError, match="resize"):
        DetectionDistiller(
            "kd",
            student=student,
            teacher=create_detector(
                "fasterrcnn_small_fpn", num_classes=4, min_size=128, max_size=128
            ),
        )


# ---- presets: ReviewKD's COCO pairs and schedule ------------------------------------------
REVIEWKD_PAIRS = {  # Detection/configs/ReviewKD-{R18-R101,R50-R101,MV2-R50}.yaml
    ("fasterrcnn_resnet101_fpn", "fasterrcnn_resnet18_fpn"),
    ("fasterrcnn_resnet101_fpn", "fasterrcnn_resnet50_fpn"),
    ("fasterrcnn_resnet50_fpn", "fasterrcnn_mobilenet_v2_fpn"),
}


def test_detection_presets_follow_reviewkd_and_build():
    from wkd_core.presets import get_preset, list_presets

    names = [n for n in list_presets() if n.startswith("coco/")]
    assert len(names) == 15
    assert {(get_preset(n).teacher, get_preset(n).student) for n in names} == REVIEWKD_PAIRS
    for name in names:
        preset = get_preset(name)
        assert (
            preset.task == "detection" and preset.num_classes == 80 and "ReviewKD" in preset.source
        )
        t = preset.training  # 180k iterations of 8 images, steps at 120k and 160k
        assert (t.batch_size, t.lr, t.epochs, t.lr_milestones, t.weight_decay) == (
            8, 0.01, 12, (8, 11), 1e-4)  # fmt: skip
        assert preset.to_spec()["task"] == "detection"
    spec = get_preset("coco/wkd_lf/fasterrcnn_resnet101_fpn_fasterrcnn_resnet18_fpn").to_spec()
    loop = ("warmup_iters", "warmup_factor", "train_min_sizes")
    params = {k: v for k, v in spec["params"].items() if k not in loop}
    student = create_detector(spec["student"]["arch"], num_classes=80)
    teacher = create_detector(spec["teacher"]["arch"], num_classes=80)
    d = torch.rand(81, 81)
    distiller = DetectionDistiller("wkd_lf", student=student, teacher=teacher,
                                   distance=(d + d.T).fill_diagonal_(0), **params)  # fmt: skip
    assert distiller.hyper["spatial_grid"] == 4 and distiller.projector.in_channels == 256
