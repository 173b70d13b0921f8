"""Local storage (path safety, streamed saves, the safetensors header) and the settings."""

from __future__ import annotations

import hashlib
import io
import os

import numpy as np
import pytest
from safetensors.numpy import save_file

from service import storage
from service.settings import Settings, normalize_database_url


@pytest.mark.parametrize(
    "hostile",
    ["../secret", "a/../../secret", "/etc/passwd", "", ".", "a//b", "a\\..\\b", "a/\x00b",
     "..", "job_x/../../x"],
)  # fmt: skip
def test_safe_join_refuses_paths_leaving_the_root(tmp_path, hostile):
    with pytest.raises(ValueError):
        storage.safe_join(tmp_path, hostile)


def test_safe_join_accepts_inner_paths_and_refuses_symlinks_out(tmp_path):
    (tmp_path / "job_a").mkdir()
    assert storage.safe_join(tmp_path, "job_a/x.csv") == (tmp_path / "job_a/x.csv").resolve()
    outside = tmp_path.parent / "outside.txt"
    outside.write_text("secret")
    os.symlink(outside, tmp_path / "job_a" / "link")
    with pytest.raises(ValueError):
        storage.safe_join(tmp_path, "job_a/link")


def test_artifact_names_are_validated():
    job_id = "job_" + "0" * 24
    assert (
        storage.artifact_relpath(job_id, "student.safetensors") == f"{job_id}/student.safetensors"
    )
    for bad in ("../x", ".hidden", "a/b", ""):
        with pytest.raises(ValueError):
            storage.artifact_relpath(job_id, bad)
    with pytest.raises(ValueError):
        storage.job_dir("/tmp", "../job")


def test_save_stream_hashes_and_limits(tmp_path):
    data = os.urandom(3 * storage.CHUNK + 17)
    size, digest = storage.save_stream(io.BytesIO(data), tmp_path / "a.pt", max_bytes=len(data))
    assert (size, digest) == (len(data), hashlib.sha256(data).hexdigest())
    assert (tmp_path / "a.pt").read_bytes() == data
    with pytest.raises(storage.UploadTooLargeError):
        storage.save_stream(io.BytesIO(data), tmp_path / "b.pt", max_bytes=len(data) - 1)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.pt"]  # no partial file left


def test_checkpoint_suffixes():
    assert storage.checkpoint_suffix("teacher.PTH") == ".pth"
    assert storage.checkpoint_suffix("m.tar.safetensors") == ".safetensors"
    for bad in ("model.pkl", "model", "model.pth.exe"):
        with pytest.raises(ValueError):
            storage.checkpoint_suffix(bad)


def test_safetensors_header_gives_the_classifier_shape(tmp_path):
    tensors = {"conv1.weight": np.zeros((16, 3, 3, 3), np.float32),
               "fc.weight": np.zeros((100, 256), np.float32),
               "fc.bias": np.zeros(100, np.float32)}  # fmt: skip
    save_file(tensors, tmp_path / "t.safetensors")
    header = storage.safetensors_header(tmp_path / "t.safetensors")
    assert header["fc.weight"]["shape"] == [100, 256] and "__metadata__" not in header
    assert storage.classifier_outputs(header) == 100
    (tmp_path / "bad.safetensors").write_bytes(b"\x05\x00\x00\x00\x00\x00\x00\x00nope!")
    with pytest.raises(ValueError):
        storage.safetensors_header(tmp_path / "bad.safetensors")


def test_settings_defaults_live_under_the_data_dir(tmp_path, monkeypatch):
    for name in list(os.environ):
        if name.startswith("WKD_"):
            monkeypatch.delenv(name)
    settings = Settings(data_dir=tmp_path)
    assert settings.database_url == f"sqlite:///{tmp_path / 'wkd.db'}"
    assert (
        settings.broker_url == "filesystem://" and settings.artifact_dir == tmp_path / "artifacts"
    )
    options = settings.broker_transport_options()
    assert options["data_folder_in"] == options["data_folder_out"] == str(tmp_path / "broker/queue")
    settings.ensure_dirs()
    assert (tmp_path / "broker" / "control").is_dir() and (tmp_path / "checkpoints").is_dir()
    monkeypatch.setenv("WKD_DATABASE_URL", "postgresql://u@h/db")
    monkeypatch.setenv("WKD_BROKER_URL", "redis://127.0.0.1:6379/0")
    monkeypatch.setenv("WKD_MAX_PAGE_SIZE", "7")
    env = Settings()
    assert env.database_url == "postgresql+psycopg://u@h/db" and env.max_page_size == 7
    assert env.broker_transport_options() == {} and env.default_page_size == 7
    assert normalize_database_url("postgres://x/y") == "postgresql+psycopg://x/y"
