"""The pipeline from Python, without a project: a folder of videos to Parquet feature tables, and back.

    from flows.api import extract_folder, read_features

    tables = extract_folder("~/videos", out="features", feature_sets=["text_minilm", "audio_librosa"])
    audio = read_features(tables["audio_librosa"])        # a polars DataFrame, one row per clip

`extract_folder` is `trml index --layout folder` followed by `trml extract`: the same adapter, Prefect
flow, shard cache and Parquet contract, on the built-in defaults (flows.params.default_params) unless a
Params is given. `read_features` and `read_metadata` come from features.store, the owner of the contract.
"""
from __future__ import annotations

from flows import runtime  # noqa: F401  (Prefect settings; must come before `import prefect`)

import re
from pathlib import Path

from common.layout import manifest_path
from features.adapters import index_dataset
from features.config import DatasetConfig
from features.store import read_features, read_metadata
from flows.params import Params, default_params

__all__ = ["extract_folder", "read_features", "read_metadata"]


def extract_folder(root: str | Path, out: str | Path = "data", feature_sets: list[str] | None = None, *,
                   dataset: str | None = None, labels_csv: str | Path | None = None,
                   params: Params | None = None, runner: str | None = None,
                   dask_address: str | None = None) -> dict[str, Path]:
    """Index the videos under `root` and extract `feature_sets` from them; returns {feature_set: path}.

    - root: a folder of videos (mp4, mkv, webm, mov, avi, in sub-folders too), each optionally with a
      transcript `<name>.txt` beside it; `labels_csv` (columns name,label[,split]) adds labels.
    - out: the manifest goes to <out>/index/<dataset>.parquet and the tables to
      <out>/features/<dataset>/<feature_set>.parquet, as `trml index/extract --data-dir out` write them.
    - feature_sets: default every one of params.feature_sets (text_clip, text_minilm, vision_clip,
      audio_librosa, face_mediapipe with the built-in defaults).
    - dataset: the name in those paths; default the folder's name.
    - params: the extraction settings (default: the built-in defaults); runner and dask_address as
      `trml extract --runner/--dask-address`.

    A clip that can't be read gives its rows present=false with a status and detail; a re-run computes
    only what changed (Prefect's shard cache).
    """
    from flows.extract import extract_dataset   # imports Prefect: only when extraction really starts

    root = Path(root).expanduser().resolve()
    params = params or default_params()
    name = dataset or _dataset_name(root)
    ds = DatasetConfig(name=name, layout="folder", root=root,
                       labels_csv=Path(labels_csv).expanduser().resolve() if labels_csv else None)
    out = Path(out)
    index_dataset(ds, manifest_path(out, name))
    reports = extract_dataset(params, name, list(feature_sets or params.feature_sets), runner=runner,
                              dask_address=dask_address, data_dir=out)
    return {report.feature_set: report.path for report in reports}


def _dataset_name(root: Path) -> str:
    """A folder's name as a dataset name (letters, digits, '_' and '-', as DatasetConfig requires)."""
    name = re.sub(r"[^A-Za-z0-9_-]+", "_", root.name).lstrip("_-")
    return name or "videos"
