"""The rendering of ``wkd watch`` and the text chart, without a server (the commands
themselves run against a real service in tests/e2e/test_e2e_live.py)."""

from __future__ import annotations

import io
from types import SimpleNamespace

import pytest

from cli.main import main
from cli.remote import Watcher, job_body
from cli.textchart import bar_chart, progress_bar
from wkd_client import Event


class Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_bar_chart_scales_columns_between_min_and_max():
    lines = bar_chart([10.0, 55.0, 100.0], height=2, label="top-1").splitlines()
    assert lines[0] == "top-1"
    assert lines[1] == " 100.00 ┤ ▁█" and lines[2] == "  10.00 ┤▂██"
    assert lines[3] == "        └───" and lines[4].split() == ["1", "3", "(epoch)"]
    assert len(bar_chart(list(range(500)), width=40).splitlines()[0].split("┤")[1]) == 40
    assert progress_bar(0.5, width=4) == "[██░░]  50%"


def test_watcher_draws_a_bar_in_place_and_prints_epochs():
    out = Terminal()
    watcher = Watcher(out, total=2)
    progress = {"epoch": 0, "total": 2, "batch": 5, "batches": 10}
    watcher(Event(id="1.0.3.0", event="state", data={"status": "running", "progress": progress}))
    watcher(Event(id="1.0.3.5", event="progress", data=progress))
    row = {"epoch": 1, "total": 2, "train_loss": 1.5, "test_top1": 42.0, "test_loss": 1.2,
           "seconds": 3.0}  # fmt: skip
    watcher(Event(id="1.1.0.0", event="epoch", data=row))
    text = out.getvalue()
    assert "[██████░░░░░░░░░░░░░░░░░░]  25%  epoch 0/2, batch 5/10 of epoch 1  running" in text
    assert "\r\x1b[2Kepoch    1/2  train loss 1.5000  test top-1  42.00%" in text
    assert text.endswith("[████████████░░░░░░░░░░░░]  50%  epoch 1/2  running")
    job = SimpleNamespace(id="job_x", status="succeeded", curve=[], best_top1=42.0,
                          best_epoch=1, failure_reason=None, message=None)  # fmt: skip
    watcher.finish(job)
    assert out.getvalue().endswith("job_x succeeded: best top-1 42.00% at epoch 1\n")


def test_submit_body_merges_file_flags_and_overrides(tmp_path):
    job = tmp_path / "job.yaml"
    job.write_text("method: kd\ntraining: {epochs: 5, batch_size: 32}\n")
    args = _submit_args(job=str(job), teacher_checkpoint="ck_1", student="resnet8",
                        overrides=["training.epochs=2"])  # fmt: skip
    assert job_body(args) == {"method": "kd", "teacher": {"checkpoint_id": "ck_1"},
                              "student": {"arch": "resnet8"},
                              "training": {"epochs": 2, "batch_size": 32}}  # fmt: skip


def _submit_args(argv: tuple[str, ...] = (), **fields) -> SimpleNamespace:
    """``wkd submit``'s namespace: parsed from ``argv`` (the real parser), then ``fields``."""
    import argparse

    from cli.remote import add_commands

    parser = argparse.ArgumentParser()
    add_commands(parser.add_subparsers())
    return SimpleNamespace(**{**vars(parser.parse_args(["submit", *argv])), **fields})


def test_submit_student_init_flags_build_student_init():
    argv = ("--preset", "shapes/wkd_l/fasterrcnn_small_fpn_fasterrcnn_tiny_fpn",
            "--student", "fasterrcnn_mobilenet_v2_fpn", "--student-init-checkpoint", "ck_mv2",
            "--backbone-only")  # fmt: skip
    assert job_body(_submit_args(argv)) == {
        "preset": "shapes/wkd_l/fasterrcnn_small_fpn_fasterrcnn_tiny_fpn",
        "student": {"arch": "fasterrcnn_mobilenet_v2_fpn",
                    "init": {"checkpoint_id": "ck_mv2", "backbone_only": True}},
    }  # fmt: skip
    body = job_body(_submit_args(("--method", "kd", "--student-init-job", "job_7")))
    assert body == {"method": "kd", "student": {"init": {"job_id": "job_7"}}}


def test_submit_student_init_flag_replaces_the_files_source(tmp_path):
    job = tmp_path / "job.yaml"
    job.write_text("student: {arch: resnet8, init: {path: a.pth, backbone_only: true}}\n")
    body = job_body(_submit_args((str(job), "--student-init-checkpoint", "ck_2")))
    init = {"backbone_only": True, "checkpoint_id": "ck_2"}
    assert body == {"student": {"arch": "resnet8", "init": init}}
    body = job_body(_submit_args((str(job), "--backbone-only")))  # the file names the source
    assert body["student"]["init"] == {"path": "a.pth", "backbone_only": True}


def test_submit_backbone_only_needs_a_source_and_sources_exclude_each_other(capsys):
    with pytest.raises(ValueError, match="--backbone-only needs --student-init-checkpoint"):
        job_body(_submit_args(("--method", "kd", "--backbone-only")))
    body = job_body(_submit_args(("--backbone-only", "--set", "student.init.job_id=job_1")))
    assert body == {"student": {"init": {"backbone_only": True, "job_id": "job_1"}}}
    with pytest.raises(SystemExit):
        _submit_args(("--student-init-checkpoint", "ck_1", "--student-init-job", "job_1"))
    assert "not allowed with argument" in capsys.readouterr().err


@pytest.mark.parametrize("argv, message", [
    (["jobs"], "wkd: error: no API key: pass --key or set WKD_API_KEY (see `wkd keys create`)\n"),
    (["submit", "--key", "k"], "wkd: error: nothing to submit: give a YAML job file, --preset "
                               "or fields\n"),
])  # fmt: skip
def test_errors_without_a_server_are_one_line(argv, message, capsys, monkeypatch):
    monkeypatch.delenv("WKD_API_KEY", raising=False)
    assert main(argv) == 2
    assert capsys.readouterr().err == message
