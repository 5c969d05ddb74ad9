"""params.yaml validation: unknown keys, wrong types and out-of-range values name the key and the fix."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from flows.params import ParamsError, load_params
from tests.conftest import ROOT


def write_params(tmp_path: Path, mutate) -> Path:
    data = yaml.safe_load((ROOT / "params.yaml").read_text())
    mutate(data)
    path = tmp_path / "params.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


def test_project_params_are_valid():
    p = load_params(ROOT / "params.yaml")
    assert p.datasets["sample"].name == "sample"
    assert str(p.datasets["sample"].root) == "data/raw/sample"
    assert p.extract.clip.pretrained is None  # the demo's CLIP is random-init, said everywhere
    assert p.model.modalities.text == "text_minilm"


@pytest.mark.parametrize("mutate, key, words", [
    (lambda d: d["train"].update(alpah=0.5), "train.alpah", "unknown key"),
    (lambda d: d["train"].update(alpha="lots"), "train.alpha", "'lots'"),
    (lambda d: d["train"].update(missing_rate=1.5), "train.missing_rate", "less than 1"),
    (lambda d: d["extract"]["vision_clip"].update(n_frames=0), "extract.vision_clip.n_frames", "greater than or equal to 1"),
    (lambda d: d["datasets"]["sample"].update(layout="csv"), "datasets.sample.layout", "'mmsa', 'meld' or 'folder'"),
    (lambda d: d.update(feature_sets=["text_bert"]), "feature_sets.0", "'text_clip'"),
    (lambda d: d.update(extra_section={}), "extra_section", "unknown key"),
    (lambda d: d["datasets"]["sample"].update(name="other"), "", "a dataset's name is its key"),
    # A name is a DVC params key (datasets.<name>): a dot would split it.
    (lambda d: d["datasets"].update({"mosi.v2": {"layout": "mmsa"}}), "datasets.mosi.v2", "e.g. mosi_v2"),
    # Imported MMSA pickles (mmsa_pickles: keyed by dataset name, like datasets:).
    (lambda d: d.update(mmsa_pickles={"mosi": {"pickle": "m.pkl", "pickel": "m.pkl"}}),
     "mmsa_pickles.mosi.pickel", "unknown key"),
    (lambda d: d.update(mmsa_pickles={"mosi": {"task": "regression"}}), "mmsa_pickles.mosi.pickle", "Add it"),
    (lambda d: d.update(mmsa_pickles={"sample": {"pickle": "m.pkl"}}), "datasets.sample and mmsa_pickles.sample",
     "Rename one of the two keys"),
    (lambda d: d.update(mmsa_pickles={"mosi": {"pickle": "m.pkl", "task": "classification"}}),
     "mmsa_pickles.mosi.task", "'regression'"),
    (lambda d: d.update(mmsa_pickles={"mosi": {"pickle": "m.pkl", "modalities": {"face": "face_mediapipe"}}}),
     "mmsa_pickles.mosi.modalities.face", "no face table"),
    (lambda d: d.update(mmsa_pickles={"mosi": {"pickle": "m.pkl", "modalities": {
        "text": None, "audio": None, "vision": None}}}), "mmsa_pickles.mosi.modalities", "keep at least one"),
    (lambda d: d.update(mmsa_pickles={"mosi.v2": {"pickle": "m.pkl"}}), "mmsa_pickles.mosi.v2", "e.g. mosi_v2"),
    (lambda d: d.update(mmsa_pickles={"mosi v2": {"pickle": "m.pkl"}}), "mmsa_pickles.mosi v2.name", "pattern"),
    (lambda d: d.update(mmsa_pickles=None), "", "write `mmsa_pickles: {}`"),
])
def test_bad_params_name_the_key(tmp_path, mutate, key, words):
    path = write_params(tmp_path, mutate)
    with pytest.raises(ParamsError) as exc:
        load_params(path)
    msg = str(exc.value)
    assert str(path) in msg
    assert key in msg
    assert words in msg


def test_mmsa_pickle_datasets_bring_their_own_modalities(tmp_path):
    path = write_params(tmp_path, lambda d: d.update(mmsa_pickles={
        "mosi_aligned": {"pickle": "data/raw/mosi_mmsa/aligned_50.pkl"},
        "mosei_av": {"pickle": "mosei.pkl", "modalities": {"text": None}}}))
    p = load_params(path)
    assert p.mmsa_pickles["mosi_aligned"].name == "mosi_aligned" and p.mmsa_pickles["mosi_aligned"].task == "regression"
    model = p.model_for("mosi_aligned")
    assert model.modalities.enabled() == {"text": "mmsa_text", "vision": "mmsa_vision", "audio": "mmsa_audio"}
    assert model.hidden == p.model.hidden and model.standardize == p.model.standardize   # only modalities change
    # A partial override keeps the other MMSA defaults (not model.modalities' feature sets).
    assert p.model_for("mosei_av").modalities.enabled() == {"vision": "mmsa_vision", "audio": "mmsa_audio"}
    assert p.model_for("sample") == p.model
    with pytest.raises(ParamsError) as exc:
        p.model_for("meld")
    assert "datasets: ['sample']" in str(exc.value) and "mmsa_pickles: ['mosei_av', 'mosi_aligned']" in str(exc.value)
    with pytest.raises(ParamsError, match="no raw media to index or extract"):
        p.dataset("mosi_aligned")                       # `trml index/extract` refuse it with the reason


def test_missing_and_malformed_files(tmp_path):
    with pytest.raises(ParamsError, match="not found"):
        load_params(tmp_path / "nope.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("train: [unclosed\n")
    with pytest.raises(ParamsError, match="not valid YAML"):
        load_params(bad)
    bad.write_text("- just\n- a list\n")
    with pytest.raises(ParamsError, match="top level must be a mapping"):
        load_params(bad)


def test_cli_reports_params_error_without_traceback(tmp_path):
    path = write_params(tmp_path, lambda d: d["train"].update(epochs=-1))
    proc = subprocess.run([sys.executable, "-m", "flows.cli", "--params", str(path), "index",
                           "--dataset", "sample"], capture_output=True, text=True, cwd=ROOT)
    assert proc.returncode == 2
    assert "train.epochs" in proc.stderr and "Traceback" not in proc.stderr


@pytest.mark.parametrize("section, command", [
    ("train", ["train", "--dataset", "sample"]),
    ("extract", ["extract", "--dataset", "sample", "--feature-set", "text_minilm"]),
])
def test_cuda_without_a_gpu_is_a_one_line_error(tmp_path, section, command):
    """device: cuda on a machine without CUDA (hidden here): the key and the fix, no traceback, no work.

    It runs in an empty folder: the device is checked before any data is looked for."""
    path = write_params(tmp_path, lambda d: d[section].update(device="cuda"))
    env = {**os.environ, "CUDA_VISIBLE_DEVICES": ""}
    proc = subprocess.run([sys.executable, "-m", "flows.cli", "--params", str(path), *command],
                          capture_output=True, text=True, cwd=tmp_path, env=env, timeout=300)
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert f"{section}.device is 'cuda'" in proc.stderr and f"set {section}.device to 'auto' or 'cpu'" in proc.stderr
    assert "Traceback" not in proc.stderr


def test_every_subcommand_has_help():
    from flows.cli import build_parser
    parser = build_parser()
    sub = next(a for a in parser._actions if a.dest == "command")
    for name in ["sample", "index", "extract", "train", "evaluate", "compare", "bench", "serve"]:
        assert name in sub.choices
        assert sub.choices[name].format_help().strip()
