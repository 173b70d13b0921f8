"""Teachers from an mdistiller-style archive, a study over methods × seeds, and the deployable
students downloaded from the service, on ``wkd serve`` (real processes, embedded defaults)."""

from __future__ import annotations

import io
import re
import subprocess
import sys
import tarfile
from pathlib import Path

import numpy as np
import pytest
import yaml
from stacks import ROOT

from wkd_client import Client

# Four 2-epoch jobs on one worker: about two minutes on an idle 2-core machine, far more when
# the machine is shared, hence the long timeout.
pytestmark = [pytest.mark.e2e, pytest.mark.slow, pytest.mark.timeout(2400)]


def wkd(*args: str, stack, cwd: Path) -> subprocess.CompletedProcess[str]:
    env = {"PYTHONPATH": str(ROOT), "PATH": "/usr/bin:/bin", "WKD_API_KEY": stack.key}
    command = [sys.executable, "-m", "cli.main", *args, "--url", stack.base_url]
    return subprocess.run(command, cwd=cwd, env=env, capture_output=True, text=True, timeout=900)


def teacher_archive(teacher_file: Path, path: Path) -> Path:
    """``cifar_teachers/resnet8_vanilla/ckpt_epoch_240.pth`` holding {"model": weights}."""
    import torch
    from safetensors.torch import load_file

    buffer = io.BytesIO()
    torch.save({"model": load_file(teacher_file), "epoch": 240}, buffer)
    with tarfile.open(path, "w") as archive:
        info = tarfile.TarInfo("cifar_teachers/resnet8_vanilla/ckpt_epoch_240.pth")
        info.size = len(buffer.getvalue())
        archive.addfile(info, io.BytesIO(buffer.getvalue()))
    return path


def test_study_from_imported_teacher_to_verified_onnx(embedded, teacher_file, tmp_path):
    import onnxruntime as ort
    import torch
    from safetensors.torch import load

    from wkd_core.data import create_dataset
    from wkd_core.models import create_model

    stack = embedded
    archive = teacher_archive(teacher_file, tmp_path / "cifar_teachers.tar")
    imported = wkd("teachers", "import", str(archive), "--dataset", "mnist5k", stack=stack,
                   cwd=tmp_path)  # fmt: skip
    assert imported.returncode == 0, imported.stderr
    teacher_id = re.search(r"mnist5k/resnet8: (ck_\w+)", imported.stdout)[1]

    study_file = tmp_path / "study.yaml"
    study_file.write_text(yaml.safe_dump({
        "teacher": {"checkpoint_id": teacher_id}, "student": {"arch": "resnet8"},
        "dataset": {"name": "mnist5k", "train_subset_per_class": 10},
        "methods": ["kd", "wkd_l"], "seeds": [0, 1],
        "training": {"epochs": 2, "batch_size": 50, "num_workers": 0},
    }))  # fmt: skip
    done = wkd("study", "submit", str(study_file), "--wait", "--poll", "1", stack=stack,
               cwd=tmp_path)  # fmt: skip
    assert done.returncode == 0, done.stderr + stack.log_tail()
    assert "status: succeeded; interrelations shared: True" in done.stdout, done.stdout

    client = stack.client()
    study_id = re.search(r"study (study_\w+)", done.stdout)[1]
    study = client.get(f"/studies/{study_id}").json()
    assert len(study["interrelations"]["sha256"]) == 1  # both WKD-L seeds used one matrix
    jobs = {(j["method"], j["seed"]): j for j in study["jobs"]}
    kd, wkd_l = study["summary"]
    best = [jobs[("wkd_l", s)]["best_top1"] for s in (0, 1)]
    assert wkd_l["best_top1"]["mean"] == pytest.approx(np.mean(best))
    assert wkd_l["best_top1"]["std"] == pytest.approx(np.std(best, ddof=1))
    assert wkd_l["delta_vs_kd"]["best_top1"] == pytest.approx(
        wkd_l["best_top1"]["mean"] - kd["best_top1"]["mean"]
    )
    assert f"{wkd_l['best_top1']['mean']:.2f} ± {wkd_l['best_top1']['std']:.2f}" in done.stdout

    # The same study through the typed client and `wkd study list`.
    typed = Client(stack.base_url, stack.key)
    finished = typed.wait_study(study_id, timeout=60, poll=0.5)
    assert finished.is_terminal and [row.method for row in finished.summary] == ["kd", "wkd_l"]
    assert finished.summary[1].best_top1["mean"] == pytest.approx(wkd_l["best_top1"]["mean"])
    assert {(j.method, j.seed) for j in finished.jobs} == set(jobs)
    item = next(i for i in typed.iter_studies() if i.id == study_id)
    assert (item.jobs, item.job_states, item.methods) == (4, {"succeeded": 4}, ["kd", "wkd_l"])
    listed = wkd("study", "list", stack=stack, cwd=tmp_path)
    assert listed.returncode == 0, listed.stderr
    line = next(row for row in listed.stdout.splitlines() if row.startswith(study_id))
    assert "resnet8 → resnet8" in line and "4/4 jobs ended" in line, line
    torch.save(torch.zeros(10, 10), tmp_path / "linear_cka.pth")
    matrix = typed.upload_cost_matrix(tmp_path / "linear_cka.pth", num_classes=10)
    assert (matrix.kind, matrix.num_classes) == ("cost_matrix", 10)

    # The deployable student of one job, downloaded through the API and checked here.
    job_id = jobs[("wkd_l", 1)]["id"]
    names = {a["name"]: a for a in client.get(f"/jobs/{job_id}/artifacts").json()["data"]}
    assert {"student_best.safetensors", "student_last.onnx", "model_card.md",
            "events.out.tfevents.wkd", "onnx_verification.json"} <= set(names)  # fmt: skip
    onnx_bytes = client.get(names["student_last.onnx"]["url"]).content
    weights = load(client.get(names["student_last.safetensors"]["url"]).content)
    model = create_model("resnet8", num_classes=10).eval()
    model.load_state_dict(weights, strict=True)
    test = create_dataset("mnist5k", split="test")
    images = torch.stack([test[i][0] for i in range(len(test))])
    session = ort.InferenceSession(onnx_bytes, providers=["CPUExecutionProvider"])
    onnx_logits = session.run(None, {"input": images.numpy()})[0]
    with torch.no_grad():
        torch_logits = model(images).numpy()
    assert (onnx_logits.argmax(1) == torch_logits.argmax(1)).all()
    assert np.abs(onnx_logits - torch_logits).max() < 1e-4
    card = client.get(names["model_card.md"]["url"]).text
    assert f"Teacher: `resnet8` checkpoint_id `{teacher_id}`" in card
