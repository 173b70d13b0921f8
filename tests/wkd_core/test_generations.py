"""Born-Again generations end to end on mnist5k: generation 0 alone, then WKD-L / KD from the
previous generation; per-generation artifacts, one continuous curve, the ensembles (checked
against an independent recomputation), resume, the CLI and the job-spec rules."""

from __future__ import annotations

import json

import pytest
import torch
from pydantic import ValidationError

from service.spec import validate_job_spec
from wkd_core.data import create_dataset
from wkd_core.models import create_model, load_checkpoint_into
from wkd_core.pipeline import run_job
from wkd_core.train import Callback

SMALL = {
    "dataset": {"name": "mnist5k", "train_subset_per_class": 10},
    "training": {"epochs": 1, "lr_milestones": [], "num_workers": 0, "batch_size": 50},
}


class Epochs(Callback):
    def __init__(self):
        self.seen = []

    def on_epoch_end(self, state, metrics):
        self.seen.append(metrics.epoch)


def _ensemble_top1(paths):
    test = create_dataset("mnist5k", split="test")
    images = torch.stack([test[i][0] for i in range(len(test))])
    labels = torch.tensor([test[i][1] for i in range(len(test))])
    probs = 0
    for path in paths:
        model = create_model("resnet8", num_classes=10)
        load_checkpoint_into(model, path)
        with torch.no_grad():
            probs = probs + model.eval()(images).softmax(-1)
    return (probs.argmax(-1) == labels).float().mean().item() * 100


def test_ban_with_wkd_l_runs_generations_and_their_ensembles(tmp_path):
    spec = validate_job_spec({"preset": "mnist5k/ban-wkd_l/resnet8", **SMALL}).to_stored()
    assert spec["generations"] == 2
    seen = Epochs()
    result = run_job(spec, out_dir=tmp_path, device="cpu", callbacks=[seen])
    assert seen.seen == [1, 2, 3] and [m.epoch for m in result.history] == [1, 2, 3]
    manifest = json.loads((tmp_path / "manifest.json").read_text())
    methods = [g["method"] for g in manifest["generations"]]
    assert methods == ["vanilla", "wkd_l", "wkd_l"]
    for g in range(3):
        assert (tmp_path / f"student-gen{g}.safetensors").is_file()
        assert (tmp_path / f"gen{g}" / "metrics.csv").is_file()
    # generation k's interrelations come from generation k-1 (the teacher of WKD-L)
    assert (tmp_path / "gen1" / "interrelations.pt").is_file()
    assert not (tmp_path / "gen0" / "interrelations.pt").exists()
    assert (
        result.artifacts["student.safetensors"].read_bytes()
        == (tmp_path / "student-gen2.safetensors").read_bytes()
    )
    ensembles = manifest["ensembles"]
    assert [e["generations"] for e in ensembles] == [[0, 1], [0, 1, 2]]
    students = [tmp_path / f"student-gen{g}.safetensors" for g in range(3)]
    assert ensembles[0]["top1"] == pytest.approx(_ensemble_top1(students[:2]), abs=0.11)
    assert ensembles[1]["top1"] == pytest.approx(_ensemble_top1(students), abs=0.11)
    lines = (tmp_path / "metrics.jsonl").read_text().splitlines()
    assert [json.loads(line)["epoch"] for line in lines] == [1, 2, 3]

    again = Epochs()  # a finished job resumes without training anything
    rerun = run_job(spec, out_dir=tmp_path, device="cpu", callbacks=[again])
    assert again.seen == [] and [m.epoch for m in rerun.history] == [1, 2, 3]


def test_cli_ban_with_kd_from_a_given_generation_0(tmp_path, capsys):
    from cli.main import main

    gen0 = tmp_path / "gen0"
    vanilla = validate_job_spec(
        {"method": "vanilla", "student": {"arch": "resnet8"}, **SMALL}
    ).to_stored()
    run_job(vanilla, out_dir=gen0, device="cpu")
    out = tmp_path / "ban"
    argv = ["distill", "--preset", "mnist5k/ban-kd/resnet8", "--teacher",
            str(gen0 / "student.safetensors"), "--out", str(out), "--device", "cpu",
            "--no-progress", "--set", "generations=1", "--set", "training.epochs=1",
            "--set", "training.num_workers=0", "--set", "dataset.name=mnist5k",
            "--set", "dataset.train_subset_per_class=10"]  # fmt: skip
    assert main(argv) == 0
    manifest = json.loads((out / "manifest.json").read_text())
    assert [g["generation"] for g in manifest["generations"]] == [1]
    assert manifest["generations"][0]["method"] == "kd"
    assert (out / "student-gen1.safetensors").is_file()
    assert not (out / "student-gen0.safetensors").exists()  # the user's, not an output
    assert len(manifest["ensembles"]) == 1 and "best top-1" in capsys.readouterr().out


def test_generation_specs_are_checked():
    with pytest.raises(ValidationError, match="distillation method"):
        validate_job_spec({"method": "vanilla", "student": {"arch": "resnet8"},
                           "dataset": {"name": "mnist5k"}, "generations": 2})  # fmt: skip
    with pytest.raises(ValidationError, match="student's architecture"):
        validate_job_spec({"preset": "mnist5k/ban-kd/resnet8",
                           "teacher": {"arch": "resnet20", "path": "x.pt"}})  # fmt: skip
    with pytest.raises(ValidationError, match="generations"):
        validate_job_spec({"preset": "mnist5k/ban-kd/resnet8", "generations": 0})


def test_an_uploaded_cost_matrix_reaches_every_distilled_generation(tmp_path):
    """``interrelations.source: file`` with Born-Again: generations 1…N distill with the
    uploaded matrix (the service hands its file over as ``cost_matrix_path``; generation 1
    once failed with "needs interrelations.path")."""
    distance = torch.rand(10, 10, generator=torch.Generator().manual_seed(0))
    distance = (distance + distance.t()) / 2
    distance.fill_diagonal_(0)
    matrix = tmp_path / "cost.pth"
    torch.save(distance, matrix)
    body = {"preset": "mnist5k/ban-wkd_l/resnet8", **SMALL, "generations": 1,
            "interrelations": {"source": "file", "checkpoint_id": "ck_upload"}}  # fmt: skip
    spec = validate_job_spec(body).to_stored()
    result = run_job(spec, out_dir=tmp_path / "job", device="cpu", cost_matrix_path=matrix)
    assert [m.epoch for m in result.history] == [1, 2]
    used = torch.load(tmp_path / "job" / "gen1" / "interrelations.pt", weights_only=True)
    assert torch.allclose(used, distance)


@pytest.mark.parametrize("preset", ["mnist5k/ban-kd/resnet8", "mnist5k/ban-wkd_l/resnet8"])
def test_generation_0_trains_with_plain_cross_entropy(preset):
    """BAN's KD-only preset has ce_weight 0: generation 0 once inherited it and trained on a
    zero loss; KD's 0.1 scaled its CE down likewise."""
    from wkd_core.generations import generation_spec

    spec = validate_job_spec({"preset": preset, **SMALL}).to_stored()
    first = generation_spec(spec, 0)
    assert first["method"] == "vanilla" and first["params"] == {"ce_weight": 1.0}
    assert generation_spec(spec, 1)["params"] == spec["params"]  # the method's own, unchanged
