"""Category interrelations: CKA against its definition and invariances, streaming, file format."""

from __future__ import annotations

import io
import zipfile

import numpy as np
import pytest
import torch

from wkd_core.losses import (
    ClassFeatureBank,
    centroid_cosine_distance,
    cka_distance_matrix,
    classifier_cosine_distance,
    distance_matrix,
    kernel_cka,
    linear_cka,
    load_distance_matrix,
    save_distance_matrix,
)


def _x(seed, n, d, dtype=torch.float64):
    return torch.randn(n, d, generator=torch.Generator().manual_seed(seed), dtype=dtype)


def _orthogonal(seed, d):
    q, _ = torch.linalg.qr(_x(seed, d, d))
    return q


def _cka_by_definition(x, y, gram=lambda z: z @ z.T):
    """tr(K H L H) / sqrt(tr(K H K H) tr(L H L H)) in numpy (Kornblith et al., Eq. 2-4)."""
    x, y = x.numpy(), y.numpy()
    n = x.shape[0]
    h = np.eye(n) - np.ones((n, n)) / n
    k, l_ = gram(x), gram(y)
    hsic = lambda a, b: np.trace(a @ h @ b @ h)  # noqa: E731
    return hsic(k, l_) / np.sqrt(hsic(k, k) * hsic(l_, l_))


def _rbf_gram(x, threshold=1.0):
    """Kornblith's gram_rbf, verbatim in numpy."""
    dots = x @ x.T
    sq_norms = np.diag(dots)
    sq_dist = -2 * dots + sq_norms[:, None] + sq_norms[None, :]
    return np.exp(-sq_dist / (2 * threshold**2 * np.median(sq_dist)))


def test_linear_cka_definition_identity_symmetry_invariances():
    x, y = _x(0, 30, 5), _x(1, 30, 8) + 0.3 * _x(0, 30, 5) @ _x(2, 5, 8)
    assert linear_cka(x, y).item() == pytest.approx(_cka_by_definition(x, y), rel=1e-10)
    assert linear_cka(x, x).item() == pytest.approx(1.0, rel=1e-12)
    assert linear_cka(x, y).item() == pytest.approx(linear_cka(y, x).item(), rel=1e-12)
    rotated = linear_cka(x @ _orthogonal(3, 5), 7.5 * y @ _orthogonal(4, 8))
    assert rotated.item() == pytest.approx(linear_cka(x, y).item(), rel=1e-10)
    assert 0.0 <= linear_cka(x, y).item() <= 1.0


def test_kernel_cka_poly_and_rbf_match_definition_and_invariances():
    x, y = _x(5, 25, 4), _x(6, 25, 6)
    torch.testing.assert_close(kernel_cka(x, y, kernel="linear"), linear_cka(x, y))
    poly = _cka_by_definition(x, y, lambda z: (z @ z.T / z.shape[1] + 1.0) ** 3)
    assert kernel_cka(x, y, kernel="poly").item() == pytest.approx(poly, rel=1e-10)
    rbf = _cka_by_definition(x, y, _rbf_gram)
    assert kernel_cka(x, y, kernel="rbf").item() == pytest.approx(rbf, rel=1e-10)
    assert kernel_cka(x, x, kernel="rbf").item() == pytest.approx(1.0, rel=1e-12)
    moved = kernel_cka(3.0 * x @ _orthogonal(7, 4), y @ _orthogonal(8, 6), kernel="rbf")
    assert moved.item() == pytest.approx(rbf, rel=1e-9)
    with pytest.raises(ValueError, match="kernel"):
        kernel_cka(x, y, kernel="laplace")


@pytest.mark.parametrize(("n", "d"), [(6, 10), (40, 3)])  # Gram route, cross-product route
def test_linear_matrix_equals_pairwise_and_truncates(n, d):
    feats = [_x(10 + c, n + 3 * c, d) for c in range(5)]  # unequal counts: cut to n
    dist = cka_distance_matrix(feats, block=2)
    for i in range(5):
        for j in range(5):
            expected = 0.0 if i == j else 1.0 - linear_cka(feats[i][:n], feats[j][:n]).item()
            assert dist[i, j].item() == pytest.approx(expected, abs=1e-12)
    assert torch.equal(dist, dist.T) and (dist.diagonal() == 0).all()


@pytest.mark.parametrize("kernel", ["poly", "rbf"])
def test_kernel_matrices_equal_pairwise(kernel):
    feats = [_x(20 + c, 12, 4) for c in range(4)]
    dist = distance_matrix(f"{kernel}_cka", features=feats, block=3)
    for i in range(4):
        for j in range(i + 1, 4):
            expected = 1.0 - kernel_cka(feats[i], feats[j], kernel=kernel).item()
            assert dist[i, j].item() == pytest.approx(expected, abs=1e-12)


def test_cosine_variants():
    weight = _x(30, 6, 5)
    w = weight.numpy()
    cos = (w @ w.T) / np.outer(np.linalg.norm(w, axis=1), np.linalg.norm(w, axis=1))
    expected = 1.0 - cos
    np.fill_diagonal(expected, 0.0)
    np.testing.assert_allclose(classifier_cosine_distance(weight).numpy(), expected, atol=1e-12)
    feats = [_x(31 + c, 10 + c, 5) for c in range(3)]
    centroids = torch.stack([f.mean(0) for f in feats])
    torch.testing.assert_close(
        centroid_cosine_distance(feats), classifier_cosine_distance(centroids)
    )
    torch.testing.assert_close(
        distance_matrix("classifier_cosine", classifier_weight=weight),
        classifier_cosine_distance(weight),
    )
    with pytest.raises(ValueError, match="unknown IR method"):
        distance_matrix("euclid", features=feats)


def test_bank_streams_maps_and_vectors_like_the_direct_computation():
    gen = torch.Generator().manual_seed(40)
    maps = torch.randn(24, 3, 2, 2, generator=gen, dtype=torch.float64)
    labels = torch.randint(0, 3, (24,), generator=gen)
    labels[:3] = torch.arange(3)
    bank = ClassFeatureBank(3, max_per_class=10, dtype=torch.float64)
    for start in range(0, 24, 5):
        bank.update(maps[start : start + 5], labels[start : start + 5])
    rows = maps.flatten(2).transpose(1, 2)  # (24, 4 positions, 3 channels)
    direct = [rows[labels == c].reshape(-1, 3)[:10] for c in range(3)]
    assert bank.counts == [min(10, 4 * int((labels == c).sum())) for c in range(3)]
    for got, want in zip(bank.class_features(), direct, strict=True):
        torch.testing.assert_close(got, want)
    torch.testing.assert_close(bank.distance_matrix(), cka_distance_matrix(direct))

    vectors = ClassFeatureBank(3, dtype=torch.float64)
    vectors.update(maps.flatten(1), labels)
    flat = [maps.flatten(1)[labels == c] for c in range(3)]
    torch.testing.assert_close(
        vectors.distance_matrix("centroid_cosine"), centroid_cosine_distance(flat)
    )
    with pytest.raises(ValueError, match="label"):
        vectors.update(maps.flatten(1)[:1], torch.tensor([5]))
    with pytest.raises(ValueError, match="no rows"):
        ClassFeatureBank(2).class_features()


def test_load_distance_matrix_round_trip_and_validation(tmp_path):
    dist = cka_distance_matrix([_x(50 + c, 8, 3) for c in range(4)]).float()
    path = tmp_path / "linear_cka.pth"
    torch.save(dist, path)
    torch.testing.assert_close(load_distance_matrix(path, num_classes=4), dist)
    save_distance_matrix(dist.double(), tmp_path / "ours.pth")
    assert load_distance_matrix(tmp_path / "ours.pth").dtype == torch.float32

    bad = {
        "size": (dist, 5),
        "square": (dist[:, :3], None),
        "symmetric": (dist + torch.triu(torch.ones(4, 4), 1), None),
        "finite": (dist.clone().fill_(float("nan")), None),
    }
    for message, (tensor, num_classes) in bad.items():
        torch.save(tensor, tmp_path / "bad.pth")
        with pytest.raises(ValueError, match=f"(?i){message[:5]}|expected"):
            load_distance_matrix(tmp_path / "bad.pth", num_classes=num_classes)
    torch.save({"D": dist}, tmp_path / "dict.pth")
    with pytest.raises(ValueError, match="not a"):
        load_distance_matrix(tmp_path / "dict.pth")


def test_load_a_matrix_saved_on_cuda(tmp_path):
    # The authors' files were saved from cuda:0. No GPU here, so we write such a file by
    # saving a CPU tensor and rewriting the storage location recorded in its pickle.
    dist = cka_distance_matrix([_x(60 + c, 8, 3) for c in range(3)]).float()
    buf = io.BytesIO()
    torch.save(dist, buf)
    src = zipfile.ZipFile(io.BytesIO(buf.getvalue()))
    path = tmp_path / "cuda_saved.pth"
    with zipfile.ZipFile(path, "w", zipfile.ZIP_STORED) as dst:
        for name in src.namelist():
            data = src.read(name)
            if name.endswith("data.pkl"):
                assert b"X\x03\x00\x00\x00cpu" in data
                data = data.replace(b"X\x03\x00\x00\x00cpu", b"X\x06\x00\x00\x00cuda:0")
            dst.writestr(name, data)
    if not torch.cuda.is_available():  # proves the file really points at a CUDA device
        with pytest.raises(RuntimeError, match="CUDA"):
            torch.load(path, weights_only=True)
    loaded = load_distance_matrix(path, num_classes=3)
    assert loaded.device.type == "cpu"
    torch.testing.assert_close(loaded, dist)


def test_a_one_tensor_safetensors_file_loads_as_a_distance_matrix(tmp_path):
    """The service accepts cost-matrix uploads as .safetensors; the worker once read every
    matrix with torch.load, which failed on them ("holds a dict")."""
    from safetensors.torch import save_file

    from wkd_core.losses.interrelations import load_distance_matrix

    distance = torch.rand(5, 5, generator=torch.Generator().manual_seed(0))
    distance = (distance + distance.t()) / 2
    distance.fill_diagonal_(0)
    save_file({"linear_cka": distance}, tmp_path / "m.safetensors")
    assert torch.equal(load_distance_matrix(tmp_path / "m.safetensors", num_classes=5), distance)
    save_file({"a": distance, "b": distance.clone()}, tmp_path / "two.safetensors")
    with pytest.raises(ValueError, match="holds 2 tensors"):
        load_distance_matrix(tmp_path / "two.safetensors")
    (tmp_path / "cut.safetensors").write_bytes(b"\x08\x00\x00\x00\x00\x00\x00\x00{}")
    with pytest.raises(ValueError, match="cannot read a distance matrix"):
        load_distance_matrix(tmp_path / "cut.safetensors")
