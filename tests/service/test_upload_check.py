"""The torch-free checkpoint checker, in process and as the limited child the API runs."""

from __future__ import annotations

import io
import json
import struct
import zipfile

import numpy as np
import torch
from safetensors.numpy import save

from service.checkpoint_check import check_file
from service.settings import Settings
from service.upload_check import UploadRejectedError, check_upload, classifier_outputs


def _write(tmp_path, name, content):
    path = tmp_path / name
    path.write_bytes(content)
    return path


def test_real_torch_save_passes_with_shapes(tmp_path):
    buffer = io.BytesIO()
    layer = torch.nn.Linear(8, 10)
    torch.save({"state_dict": layer.state_dict(), "acc": 71.5}, buffer)
    report = check_file(str(_write(tmp_path, "t.pth", buffer.getvalue())))
    assert report == {"ok": True, "format": "torch_zip", "tensors": 2,
                      "shapes": {"weight": [10, 8], "bias": [10]}}  # fmt: skip


def test_a_view_past_its_storage_is_refused(tmp_path):
    buffer = io.BytesIO()
    torch.save({"fc.weight": torch.zeros(4, 4)}, buffer)
    source, out = zipfile.ZipFile(io.BytesIO(buffer.getvalue())), io.BytesIO()
    with zipfile.ZipFile(out, "w") as forged:  # a consistent archive, CRCs and all
        for name in source.namelist():
            data = source.read(name)
            if name.endswith("data.pkl"):  # the storage now claims 8 elements, not 16
                data = data.replace(b"K\x10t", b"K\x08t", 1)
                assert b"K\x08t" in data
            forged.writestr(name, data)
    report = check_file(str(_write(tmp_path, "t.pth", out.getvalue())))
    assert not report["ok"] and "bytes, expected 32" in report["message"]


def test_safetensors_offsets_must_tile_the_data(tmp_path):
    blob = save({"fc.weight": np.zeros((10, 4), np.float32)})
    good = check_file(str(_write(tmp_path, "a.safetensors", blob)))
    assert good["ok"] and classifier_outputs(good["shapes"]) == 10
    cut = check_file(str(_write(tmp_path, "b.safetensors", blob[:-8])))
    assert not cut["ok"] and "truncated" in cut["message"]
    header = json.dumps({"w": {"dtype": "F32", "shape": [4], "data_offsets": [0, 8]}}).encode()
    lying = struct.pack("<Q", len(header)) + header + b"\0" * 8
    report = check_file(str(_write(tmp_path, "c.safetensors", lying)))
    assert not report["ok"] and "does not match dtype and shape" in report["message"]


def test_child_process_reports_and_limits(tmp_path):
    settings = Settings(data_dir=tmp_path)
    path = _write(tmp_path, "t.pth", b"\x00" * 64)
    try:
        check_upload(path, settings)
    except UploadRejectedError as error:
        assert "not a PyTorch checkpoint" in str(error)
    else:
        raise AssertionError("random bytes passed")
    slow = Settings(data_dir=tmp_path, upload_check_timeout_s=0.001)
    try:
        check_upload(path, slow)
    except UploadRejectedError as error:
        assert "too long" in str(error)
    else:
        raise AssertionError("the wall-clock limit did not apply")
