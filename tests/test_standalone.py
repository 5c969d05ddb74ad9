"""Features without a project: a folder of real mp4 clips, extracted from the shell (`trml index` then
`trml extract`, in a folder with no params.yaml) and from Python (flows.api), on the built-in defaults.

Cheap feature sets only (audio_librosa, text_minilm) and four one-second clips; both paths give the
same bytes, since they run the same flow on the same defaults.
"""
from __future__ import annotations

import os
import subprocess
from pathlib import Path

import numpy as np
import polars as pl
import pyarrow.parquet as pq
import pytest

from flows import runtime  # noqa: F401  (before prefect)
from prefect.settings import PREFECT_LOCAL_STORAGE_PATH, temporary_settings
from prefect.testing.utilities import prefect_test_harness

from features.media import write_clip
from features.store import read_features, read_metadata
from flows.api import extract_folder
from flows.cli import build_parser
from tests.conftest import ROOT

TRML = Path(ROOT) / ".venv" / "bin" / "trml"
SR = 16_000
TRANSCRIPTS = {"happy": "what a wonderful day", "sad": "this is terrible news", "calm": "it is fine"}


def make_videos(folder: Path) -> Path:
    """Three clips with transcripts, and one (`quiet/untold`) in a sub-folder without one."""
    t = np.arange(SR) / SR
    for i, name in enumerate([*TRANSCRIPTS, "quiet/untold"]):
        audio = (0.3 * np.sin(2 * np.pi * (140 + 60 * i) * t) * (1 + 0.5 * np.sin(2 * np.pi * 3 * t))).astype(np.float32)
        frames = np.full((10, 48, 64, 3), 30 + 50 * i, np.uint8)
        write_clip(folder / f"{name}.mp4", frames, fps=10, audio=audio)
        if name in TRANSCRIPTS:
            (folder / f"{name}.txt").write_text(TRANSCRIPTS[name] + "\n")
    return folder


@pytest.fixture(scope="module")
def videos(tmp_path_factory) -> Path:
    return make_videos(tmp_path_factory.mktemp("videos") / "my videos")


def no_project_above(path: Path) -> None:
    assert not any((p / "params.yaml").exists() for p in [path, *path.parents]), "test needs a folder outside a project"


@pytest.fixture(scope="module")
def shell_run(videos, tmp_path_factory) -> dict:
    """`trml index` and `trml extract` as a user types them, in a folder with no params.yaml."""
    work = tmp_path_factory.mktemp("work")
    no_project_above(work)
    env = {**os.environ, "PREFECT_HOME": str(work.parent / f"{work.name}-prefect")}
    env.pop("PREFECT_LOCAL_STORAGE_PATH", None)
    procs = []
    for args in (["index", "--layout", "folder", "--root", str(videos), "--dataset", "mine"],
                 ["extract", "--dataset", "mine", "--feature-set", "audio_librosa"]):
        proc = subprocess.run([str(TRML), *args], cwd=work, env=env, capture_output=True, text=True, timeout=600)
        assert proc.returncode == 0, proc.stderr[-3000:]
        procs.append(proc)
    return {"work": work, "index": procs[0], "extract": procs[1]}


def test_shell_outside_a_project(shell_run):
    work = shell_run["work"]
    manifest = work / "data/index/mine.parquet"
    assert pq.read_table(manifest).column("utterance_id").to_pylist() == ["calm", "happy", "quiet/untold", "sad"]
    assert shell_run["extract"].stdout.strip() == "data/features/mine/audio_librosa.parquet"
    table = work / "data/features/mine/audio_librosa.parquet"
    df = read_features(table)
    assert df["status"].to_list() == ["ok"] * 4
    assert read_metadata(table)["feature_set"] == "audio_librosa"
    assert "Traceback" not in shell_run["extract"].stderr
    # The outputs are under the folder the commands ran in, and nothing else was written there.
    assert sorted(p.name for p in work.iterdir()) == ["data"]


def test_python_api_outside_a_project(videos, shell_run, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    no_project_above(tmp_path)
    out = tmp_path / "features out"
    with prefect_test_harness(server_startup_timeout=None), \
            temporary_settings(updates={PREFECT_LOCAL_STORAGE_PATH: tmp_path / "cache"}):
        paths = extract_folder(videos, out=out, feature_sets=["text_minilm", "audio_librosa"])
    assert paths == {"text_minilm": out / "features/my_videos/text_minilm.parquet",
                     "audio_librosa": out / "features/my_videos/audio_librosa.parquet"}
    assert (out / "index/my_videos.parquet").is_file()

    text = read_features(paths["text_minilm"])
    assert isinstance(text, pl.DataFrame)
    assert text["utterance_id"].to_list() == ["calm", "happy", "quiet/untold", "sad"]
    assert text["status"].to_list() == ["ok", "ok", "empty_text", "ok"]
    assert text.schema["emb"] == pl.Array(pl.Float32, 384)
    emb = np.stack(text.filter(pl.col("present"))["emb"].to_numpy())
    assert emb.shape == (3, 384) and np.allclose(np.linalg.norm(emb, axis=1), 1, atol=1e-4)
    assert read_metadata(paths["text_minilm"])["feature_set"] == "text_minilm"

    audio = read_features(paths["audio_librosa"])
    assert audio.schema["seq"] == pl.List(pl.Array(pl.Float32, int(read_metadata(paths["audio_librosa"])["dim"])))
    frames = audio["seq"].list.len().to_list()
    assert all(n > 20 for n in frames) and audio["t"].list.len().to_list() == frames
    # Same folder, same built-in defaults, same flow: the shell's table is the same bytes.
    assert paths["audio_librosa"].read_bytes() == (shell_run["work"] / "data/features/mine/audio_librosa.parquet").read_bytes()


def test_read_features_refuses_what_is_not_a_feature_table(tmp_path, videos):
    with pytest.raises(FileNotFoundError, match="no feature table"):
        read_features(tmp_path / "absent.parquet")
    from features.adapters import index_dataset
    from features.config import DatasetConfig
    manifest = tmp_path / "m.parquet"
    index_dataset(DatasetConfig(name="m", layout="folder", root=videos), manifest)
    with pytest.raises(ValueError, match="not a feature table"):
        read_features(manifest)


def test_help_says_how_extract_finds_a_dataset():
    sub = next(a for a in build_parser()._actions if a.dest == "command")
    text = " ".join(sub.choices["extract"].format_help().split())
    assert "needs no params.yaml entry" in text and "manifest written by `trml index`" in text
    assert "--data-dir" in text
    text = " ".join(sub.choices["index"].format_help().split())
    assert "trml index --layout folder --root ~/videos --dataset mine" in text


def test_a_params_file_may_hold_only_the_settings_to_change(tmp_path):
    """Outside a project, `--params FILE` with one section: the rest are the built-in defaults."""
    from flows.params import default_params, load_params
    path = tmp_path / "mine.yaml"
    path.write_text("extract:\n  clip:\n    pretrained: /models/clip.pt\n")
    p = load_params(path)
    assert p.datasets == {} and str(p.extract.clip.pretrained) == "/models/clip.pt"
    assert p.model_copy(update={"extract": default_params().extract}) == default_params()
