"""Inputs that once crashed ``wkd`` with a traceback (or hung) now give one line on stderr and
a non-zero status: malformed ``--set`` values, job files that are folders, bad YAML or the
wrong shape, corrupt weights, unknown devices, output paths of the wrong kind, bad URLs,
values JSON cannot carry, damaged archives and registries, a fresh machine's key database,
bad ports and poll intervals. Run in process (``cli.main.main``) for speed."""

from __future__ import annotations

import io
import tarfile
from pathlib import Path

import pytest

from cli import commands
from cli.main import main

TRAIN = ["train", "--arch", "resnet8", "--dataset", "synthetic", "--epochs", "1", "--no-progress"]
KD = ["distill", "--method", "kd", "--student", "resnet8", "--dataset", "synthetic"]
REMOTE = ["--url", "http://127.0.0.1:1", "--key", "k"]  # nothing listens on port 1


def files(folder: Path) -> None:
    """The odd files the cases name, in the working folder."""
    (folder / "adir").mkdir()
    (folder / "bad.yaml").write_text("method: [kd\n")
    (folder / "deep.yaml").write_text("params: {x: " + "[" * 5000 + "]" * 5000 + "}\n")
    (folder / "teacher3.yaml").write_text("method: kd\nteacher: 3\n")
    (folder / "dataset_str.yaml").write_text("method: vanilla\nstudent: {arch: resnet8}\n"
                                             "dataset: cifar100\n")  # fmt: skip
    (folder / "binary.yaml").write_bytes(b"\xff\xfe\x00garbage")
    (folder / "g.safetensors").write_bytes(b"\x00" * 7)
    (folder / "a_file").write_text("not a database\n" * 300)
    (folder / "date.yaml").write_text("preset: p\nnotes: 2024-01-01\n")
    archive = io.BytesIO()
    with tarfile.open(fileobj=archive, mode="w") as tar:
        data = b"\x00" * 4096
        info = tarfile.TarInfo("teachers/resnet8_vanilla/ckpt.pth")
        info.size = len(data)
        tar.addfile(info, io.BytesIO(data))
    (folder / "cut.tar").write_bytes(archive.getvalue()[:700])  # header, then cut short
    (folder / "registry").mkdir()
    (folder / "registry" / "teachers.json").write_text("[1, 2]")


CASES = {
    "--set under a value": (
        [*TRAIN, "--set", "training=3", "--set", "training.epochs=1"], "already set to a value"),
    "--set bad YAML": ([*TRAIN, "--set", "training.epochs=["], "--set training.epochs: not a YAML"),
    "--set python tag": ([*TRAIN, "--set", "x=!!python/object:os.system x"], "not a YAML value"),
    "job file is a folder": (["distill", "adir"], "adir: a folder"),
    "job file bad YAML": (["distill", "bad.yaml"], "bad.yaml: not valid YAML"),
    "job file nested 5000 deep": (["distill", "deep.yaml"], "nested too deeply"),
    "job file binary": (["distill", "binary.yaml"], "not a text file"),
    "teacher not fields": (["distill", "teacher3.yaml"], "teacher: fields"),
    "dataset a string": (["distill", "dataset_str.yaml"], "dataset"),
    "corrupt safetensors": (
        [*KD, "--teacher", "g.safetensors", "--teacher-arch", "resnet8"],
        "not a readable safetensors file"),
    "unknown device": ([*TRAIN, "--device", "bogus"], "unknown device 'bogus'"),
    "cuda without a GPU": ([*TRAIN, "--device", "cuda:3"], "no usable CUDA GPU"),
    "--out is a file": ([*TRAIN, "--out", "a_file"], "a_file"),
    "ir --out is a folder": (
        ["ir", "--teacher", "g.safetensors", "--arch", "resnet8", "--dataset", "synthetic",
         "--out", "adir"], "--out adir: a folder"),
    "invalid URL": (["status", "job_1", "--url", "http://x:abc", "--key", "k"], "invalid URL"),
    "non-ASCII key": (["status", "job_1", "--url", "http://127.0.0.1:1", "--key", "clé"],
                      "invalid API key"),
    "YAML date in a job": (["submit", "date.yaml", *REMOTE], "only JSON values"),
    "NaN in a job": (["submit", "--preset", "p", "--set", "x=.nan", *REMOTE], "only JSON values"),
    "study wait, no server": (
        ["study", "status", "study_1", "--wait", *REMOTE], "cannot reach http://127.0.0.1:1"),
    "damaged archive": (["teachers", "import", "cut.tar", "--dataset", "synthetic"],
                        "cut.tar: a damaged archive"),
    "registry not a mapping": (["teachers", "list", "--registry", "registry"],
                               "not a teachers registry"),
    "teachers upload, no server": (
        ["teachers", "import", "cut.tar", "--dataset", "synthetic", "--url", "notaurl",
         "--key", "k"], "damaged archive"),
    "keys: not a database URL": (["keys", "list", "--database-url", "notaurl"],
                                 "cannot use the database"),
    "keys: no such server": (
        ["keys", "list", "--database-url", "postgresql://u:secret@127.0.0.1:1/db"],
        "cannot use the database postgresql+psycopg://u:***@127.0.0.1:1/db"),
    "keys: not SQLite": (["keys", "list", "--database-url", "sqlite:///a_file"],
                         "file is not a database"),
    "keys: a name with a line break": (["keys", "create", "--name", "a\nb"], "printable"),
    "keys: a name of 201 characters": (["keys", "create", "--name", "n" * 201], "1 … 200"),
}  # fmt: skip


@pytest.mark.parametrize(("argv", "expected"), CASES.values(), ids=CASES.keys())
def test_a_bad_input_is_one_line_and_status_2(argv, expected, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("WKD_API_KEY", raising=False)
    files(tmp_path)
    assert main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) >= 1 and err[-1].startswith("wkd: error: "), err
    assert expected in err[-1]
    assert "Traceback" not in "\n".join(err) and "secret" not in err[-1]


@pytest.mark.parametrize(
    "argv",
    [["serve", "--port", "99999"], ["serve", "--port", "-1"], ["serve", "--port", "http"],
     ["study", "status", "s", "--wait", "--poll", "0"],
     ["study", "status", "s", "--wait", "--poll", "inf"]],
)  # fmt: skip
def test_bad_ports_and_poll_intervals_are_usage_errors(argv, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(argv)
    assert exit_info.value.code == 2
    assert "error: argument" in capsys.readouterr().err


def test_a_fresh_machine_creates_its_key_database(tmp_path, monkeypatch, capsys):
    """``wkd keys create`` on a machine with no ``.wkd`` folder yet (the README's first
    service step) creates it, and ``--data-dir`` folders that do not exist too."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("WKD_DATABASE_URL", raising=False)
    monkeypatch.delenv("WKD_DATA_DIR", raising=False)
    assert main(["keys", "create", "--name", "alice"]) == 0
    assert capsys.readouterr().out.startswith("wkd_")
    assert (tmp_path / ".wkd" / "wkd.db").is_file()
    assert main(["keys", "create", "--name", "bob", "--data-dir", "new/sub"]) == 0
    assert (tmp_path / "new" / "sub" / "wkd.db").is_file()


def test_an_unexpected_error_is_one_line_with_its_type(monkeypatch, capsys):
    """What no check foresaw still prints one line (status 1); WKD_DEBUG=1 re-raises it."""

    def broken(_args):
        raise TypeError("'int' object is not iterable")

    monkeypatch.setattr(commands, "listing", broken)
    monkeypatch.delenv("WKD_DEBUG", raising=False)
    assert main(["list", "models"]) == 1
    err = capsys.readouterr().err
    assert err == ("wkd: error: TypeError: 'int' object is not iterable "
                   "(WKD_DEBUG=1 shows the traceback)\n")  # fmt: skip
    monkeypatch.setenv("WKD_DEBUG", "1")
    with pytest.raises(TypeError):
        main(["list", "models"])
