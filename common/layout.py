"""Where the pipeline keeps its files, spelled once (dvc.yaml spells the same paths for DVC).

    <data>/index/<dataset>.parquet                     the manifest (features/store.py owns its contract)
    <data>/features/<dataset>/<feature_set>.parquet    a feature table (same owner)
    <models>/<dataset>/<variant>/                      a training run: best.pt, last.pt, summary.json
    <reports>/<dataset>/, <plots>/<dataset>/           the results of a dataset (trml/compare.py)
    <metrics>/<dataset>.json                           its headline numbers

and the trml.* schema metadata that says how a Parquet file was made.
"""
from __future__ import annotations

from pathlib import Path

DATA_DIR = Path("data")
META_PREFIX = "trml."


def manifest_path(data_dir: str | Path, dataset: str) -> Path:
    return Path(data_dir) / "index" / f"{dataset}.parquet"


def features_dir(data_dir: str | Path, dataset: str) -> Path:
    return Path(data_dir) / "features" / dataset


def feature_path(data_dir: str | Path, dataset: str, feature_set: str) -> Path:
    return features_dir(data_dir, dataset) / f"{feature_set}.parquet"


def run_dir(models_dir: str | Path, dataset: str, variant: str) -> Path:
    """A model's runs; a model named by import path (mypkg.nets:Net) gets the folder mypkg.nets.Net."""
    return Path(models_dir) / dataset / variant.replace(":", ".")


def dataset_dir(root: str | Path, dataset: str) -> Path:
    """A dataset's folder under a results root: <reports>/<dataset>, <plots>/<dataset>."""
    return Path(root) / dataset


def metrics_path(metrics_dir: str | Path, dataset: str) -> Path:
    return Path(metrics_dir) / f"{dataset}.json"


def schema_metadata(schema) -> dict[str, str]:
    """The trml.* entries of a pyarrow schema's metadata, without the prefix."""
    raw = schema.metadata or {}
    return {k.decode()[len(META_PREFIX):]: v.decode() for k, v in raw.items()
            if k.decode().startswith(META_PREFIX)}


def read_metadata(path: str | Path) -> dict[str, str]:
    """The trml.* schema metadata of a Parquet file (its schema only, not its data), without the prefix."""
    import pyarrow.parquet as pq

    return schema_metadata(pq.read_schema(path))
