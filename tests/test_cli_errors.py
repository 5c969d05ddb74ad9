"""Every mistake a user can make with `trml` is one line on stderr: `error: ...` naming the file or key and the
fix, a non-zero exit code, and no traceback.

Most cases call flows.cli.main in-process (a `trml` process costs seconds of imports each); a few run the real
console script, where logging and stderr are exactly what a user sees.
"""
from __future__ import annotations

import os
import pickle
import subprocess
from pathlib import Path

import pytest
import yaml

# Prefect's logging, once set up (by the first handler that imports a flow), writes to the stderr of that
# moment; set up here, that is pytest's session-wide capture, not one test's capsys stream (closed after it).
from flows import runtime  # noqa: F401,E402  (before prefect)
from prefect.logging.configuration import setup_logging  # noqa: E402

setup_logging()

from flows.cli import build_parser, main
from tests.conftest import ROOT
from tests.mmsa_builder import write_mmsa_pickle

TRML = Path(ROOT) / ".venv" / "bin" / "trml"


def subcommands() -> set[str]:
    sub = next(a for a in build_parser()._actions if a.dest == "command")
    return set(sub.choices)


# (subcommand, argv) run in an empty folder: no params.yaml, no data, no models.
EMPTY_FOLDER = [
    ("sample", ["sample", "--size", "5"]),                              # below sample.size's minimum
    ("sample", ["--params", "absent.yaml", "sample"]),
    ("index", ["index", "--dataset", "mine"]),                          # no params entry, no --layout/--root
    ("index", ["index", "--dataset", "mine", "--layout", "folder"]),
    ("index", ["index", "--dataset", "mine", "--layout", "folder", "--root", "no_such_folder"]),
    ("index", ["index"]),                                               # a required option left out
    ("extract", ["extract", "--dataset", "mine", "--feature-set", "text_minilm"]),   # before `trml index`
    ("extract", ["extract", "--dataset", "mine"]),
    ("extract", ["extract", "--dataset", "mine", "--feature-set", "text_bert"]),
    ("train", ["train", "--dataset", "mine"]),
    ("evaluate", ["evaluate", "--dataset", "mine"]),
    ("compare", ["compare", "--dataset", "mine"]),
    ("report", ["report", "--dataset", "mine"]),
    ("bench", ["bench", "--feature-set", "text_bert"]),
    ("serve", ["serve", "--root", "no_such_folder", "--dataset", "mine"]),
    ("import-mmsa", ["import-mmsa", "absent.pkl", "--dataset", "mine"]),
    ("import-mmsa", ["import-mmsa", "not_a.pkl", "--dataset", "mine"]),         # a text file
    ("import-mmsa", ["import-mmsa", "empty.pkl", "--dataset", "mine"]),         # zero bytes: EOFError inside
    ("import-mmsa", ["import-mmsa", "truncated.pkl", "--dataset", "mine"]),     # a real pickle, cut short
    ("import-mmsa", ["import-mmsa", "no_split.pkl", "--dataset", "mine"]),      # a dict, but not MMSA's
    ("export-mmsa", ["export-mmsa", "--dataset", "mine", "--out", "mine.pkl"]),
    ("plots", ["plots"]),
    ("show-metrics", ["show-metrics"]),
    ("with-prefect", ["with-prefect"]),                                 # no command to run
    ("with-prefect", ["with-prefect", "--", "no-such-command-here"]),
]

# (subcommand, argv) run in a project (the repository's params.yaml, plus an imported MMSA pickle `mm`)
# whose stages have not run yet.
IN_A_PROJECT = [
    ("index", ["index", "--dataset", "sample"]),                        # data/raw/sample not generated
    ("extract", ["extract", "--dataset", "sample", "--all"]),
    ("extract", ["extract", "--dataset", "mm", "--feature-set", "text_minilm"]),   # a pickle has no media
    ("train", ["train", "--dataset", "sample"]),                        # before index/extract: DataError
    ("train", ["train", "--dataset", "nope"]),
    ("evaluate", ["evaluate", "--dataset", "sample"]),
    ("evaluate", ["evaluate", "--dataset", "mm"]),                      # tables there, no checkpoint yet
    ("compare", ["compare", "--dataset", "sample"]),
    ("report", ["report", "--dataset", "sample"]),
    ("export-mmsa", ["export-mmsa", "--dataset", "sample", "--out", "s.pkl"]),
    ("import-mmsa", ["import-mmsa", "mm.pkl", "--dataset", "sample"]),  # would overwrite a raw dataset
    ("train", ["--params", "bad.yaml", "train", "--dataset", "sample"]),            # a malformed params file
]


def assert_one_line_error(code: int, err: str) -> None:
    assert code != 0
    assert "Traceback" not in err, err
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert lines[0].startswith("error: ") and len(lines[0]) > len("error: ") + 10, err


def run_main(argv: list[str], capsys) -> tuple[int, str]:
    try:
        code = main(argv)
    except SystemExit as exc:           # argparse's own exit
        code = exc.code
    err = capsys.readouterr().err
    return code, err


def test_the_cases_cover_every_subcommand():
    covered = {name for name, _ in EMPTY_FOLDER}
    missing = subcommands() - covered
    assert not missing, f"no error case for {sorted(missing)}"


@pytest.mark.parametrize("name, argv", [c for c in EMPTY_FOLDER if c[0] in subcommands()],
                         ids=[" ".join(a) for n, a in EMPTY_FOLDER if n in subcommands()])
def test_in_an_empty_folder(name, argv, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "not_a.pkl").write_bytes(b"this is not a pickle")
    (tmp_path / "empty.pkl").write_bytes(b"")
    write_mmsa_pickle(tmp_path / "whole.pkl")
    whole = (tmp_path / "whole.pkl").read_bytes()
    (tmp_path / "truncated.pkl").write_bytes(whole[: len(whole) // 2])
    (tmp_path / "no_split.pkl").write_bytes(pickle.dumps({"train": {"id": ["a"]}}))
    code, err = run_main(argv, capsys)
    assert_one_line_error(code, err)
    assert not (tmp_path / "data").exists()       # a mistake writes nothing


@pytest.fixture(scope="module")
def project(tmp_path_factory) -> Path:
    """The repository's params.yaml with an imported MMSA pickle `mm` (manifest + tables, no model yet)."""
    path = tmp_path_factory.mktemp("project")
    params = yaml.safe_load((ROOT / "params.yaml").read_text())
    params["mmsa_pickles"] = {"mm": {"pickle": "mm.pkl"}}
    (path / "params.yaml").write_text(yaml.safe_dump(params))
    bad = dict(params, train={**params["train"], "epochs": -1, "alpah": 1})
    (path / "bad.yaml").write_text(yaml.safe_dump(bad))
    write_mmsa_pickle(path / "mm.pkl")
    assert main(["--params", str(path / "params.yaml"), "import-mmsa", str(path / "mm.pkl"), "--dataset", "mm",
                 "--data-dir", str(path / "data")]) == 0
    return path


@pytest.mark.parametrize("name, argv", [c for c in IN_A_PROJECT if c[0] in subcommands()],
                         ids=[" ".join(a) for n, a in IN_A_PROJECT if n in subcommands()])
def test_in_a_project_with_missing_inputs(name, argv, project, monkeypatch, capsys):
    monkeypatch.chdir(project)
    capsys.readouterr()
    code, err = run_main(argv, capsys)
    assert_one_line_error(code, err)


def test_messages_name_the_file_or_key_and_the_fix(project, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(project)
    capsys.readouterr()
    _, err = run_main(["train", "--dataset", "sample"], capsys)
    assert "data/index/sample.parquet" in err and "trml index --dataset sample" in err
    _, err = run_main(["evaluate", "--dataset", "mm"], capsys)
    assert "models/mm" in err and "trml train" in err
    _, err = run_main(["--params", "bad.yaml", "train", "--dataset", "sample"], capsys)
    assert "bad.yaml" in err and "train.epochs" in err and "train.alpah" in err
    monkeypatch.chdir(tmp_path)
    _, err = run_main(["extract", "--dataset", "mine", "--feature-set", "text_minilm"], capsys)
    assert "data/index/mine.parquet" in err and "trml index --layout folder --root DIR --dataset mine" in err


def trml(args: list[str], cwd: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "PREFECT_HOME": str(cwd / ".prefect")}
    return subprocess.run([str(TRML), *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=300)


def test_the_console_script_prints_one_line(project, tmp_path):
    """The issue's example (train before index) and a standalone mistake, as a user runs them."""
    proc = trml(["train", "--dataset", "sample"], project)
    assert_one_line_error(proc.returncode, proc.stderr)
    assert "manifest not found" in proc.stderr
    proc = trml(["index", "--dataset", "mine"], tmp_path)
    assert_one_line_error(proc.returncode, proc.stderr)
    assert "--layout and --root" in proc.stderr


def test_verbose_shows_the_traceback(tmp_path):
    """-v is for debugging: the same mistake with its traceback."""
    proc = trml(["-v", "extract", "--dataset", "mine", "--feature-set", "text_minilm"], tmp_path)
    assert proc.returncode != 0 and "Traceback" in proc.stderr and "manifest not found" in proc.stderr


def test_an_error_inside_the_extraction_flow_is_one_line(tmp_path):
    """A WeightsError raised while the flow loads the extractors: Prefect's own traceback log is held back."""
    import numpy as np

    from features.media import write_clip
    write_clip(tmp_path / "videos" / "a.mp4", np.zeros((5, 32, 32, 3), np.uint8), fps=5)
    (tmp_path / "videos" / "a.txt").write_text("a sentence")
    assert main(["index", "--layout", "folder", "--root", str(tmp_path / "videos"), "--dataset", "mine",
                 "--data-dir", str(tmp_path / "data")]) == 0
    (tmp_path / "mine.yaml").write_text("extract:\n  clip:\n    pretrained: /no/such/clip.pt\n")
    proc = trml(["--params", "mine.yaml", "extract", "--dataset", "mine", "--feature-set", "text_clip"], tmp_path)
    assert_one_line_error(proc.returncode, proc.stderr)
    assert "extract.clip.pretrained" in proc.stderr and "/no/such/clip.pt" in proc.stderr


def test_import_mmsa_of_bad_files_names_the_file_and_the_fix(tmp_path, monkeypatch, capsys):
    """The empty, truncated and text files of the issue: one line each, naming the file and what is wrong."""
    monkeypatch.chdir(tmp_path)
    (tmp_path / "empty.pkl").write_bytes(b"")
    write_mmsa_pickle(tmp_path / "whole.pkl")
    whole = (tmp_path / "whole.pkl").read_bytes()
    (tmp_path / "truncated.pkl").write_bytes(whole[: len(whole) // 2])
    (tmp_path / "notes.pkl").write_text("id,label\nvid0/0,1.2\n")
    for name, says in [("empty.pkl", "is empty"), ("truncated.pkl", "truncated"), ("notes.pkl", "not a pickle")]:
        code, err = run_main(["import-mmsa", name, "--dataset", "mine"], capsys)
        assert_one_line_error(code, err)
        assert name in err and says in err, err
    assert not (tmp_path / "data").exists()


def test_a_bad_checkpoint_is_one_line(project, monkeypatch, capsys):
    """A checkpoint of another format, or not a checkpoint at all: one line naming it and saying retrain."""
    import torch

    monkeypatch.chdir(project)
    best = project / "models" / "mm" / "trml" / "best.pt"
    best.parent.mkdir(parents=True)
    try:
        for content in ({"format": 0}, b"not a checkpoint"):
            if isinstance(content, bytes):
                best.write_bytes(content)
            else:
                torch.save(content, best)
            capsys.readouterr()
            code, err = run_main(["evaluate", "--dataset", "mm"], capsys)
            assert_one_line_error(code, err)
            assert str(best.relative_to(project)) in err and "retrain" in err, err
    finally:
        best.unlink()


def test_every_user_error_exits_with_one_code(tmp_path, monkeypatch, capsys):
    """Usage errors (argparse) and user errors (UserError) exit 2; there is no second code."""
    from common.errors import USER_ERROR_EXIT

    monkeypatch.chdir(tmp_path)
    codes = {run_main(argv, capsys)[0] for _, argv in EMPTY_FOLDER}
    assert codes == {USER_ERROR_EXIT} == {2}
