"""The Parquet store: the owner of the manifest and feature-table contracts (docs/architecture.md).

A manifest (data/index/<dataset>.parquet) has one row per utterance: utterance_id (unique), split,
media_path (relative to the raw dataset folder, which the schema metadata trml.root names), text and
the label. `read_manifest` reads and checks it; `media_items` turns its rows into extractor inputs.

A feature table has one row per manifest row (never a dropped row), with `present`, `status`,
`detail`, and either `emb` (one vector) or `seq` + `t` (a sequence with timestamps); `assemble`
refuses anything else. Schema metadata says how the table was made. Same inputs and parameters give
identical bytes. Every file here is written through `atomic_path`: never a partial file at a final path.
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from common.errors import MissingInputError, UserError
from common.files import atomic_path
from common.layout import META_PREFIX, read_metadata  # noqa: F401  (read_metadata: part of the public API)

if TYPE_CHECKING:
    import polars

# Statuses a row can carry. `ok` is the only one with present=True.
STATUSES = (
    "ok", "missing_file", "decode_error", "no_video_stream", "no_audio_stream", "no_face",
    "silent", "empty_text", "too_short", "empty_sequence",
)


class FeatureTableError(UserError, ValueError):
    """A file read as a feature table is not one; the message names the file and what to read it with."""


@dataclass
class FeatureRow:
    """One utterance's result from an extractor."""
    utterance_id: str
    status: str = "ok"
    detail: str | None = None
    emb: np.ndarray | None = None      # (d,) for single-vector features
    seq: np.ndarray | None = None      # (n, d) for sequences
    t: np.ndarray | None = None        # (n,) seconds, for sequences

    @property
    def present(self) -> bool:
        return self.status == "ok"


@dataclass
class TableInfo:
    """What a feature table is and how it was made (goes into the schema metadata)."""
    feature_set: str
    modality: str                      # text | vision | audio | face
    kind: str                          # emb | seq
    dim: int
    extractor: str
    extractor_version: str
    weights_id: str
    weights_sha256: str | None = None
    feature_names: list[str] | None = None
    params: dict[str, Any] = field(default_factory=dict)

    def to_metadata(self) -> dict[bytes, bytes]:
        meta = {
            "feature_set": self.feature_set, "modality": self.modality, "kind": self.kind,
            "dim": str(self.dim), "extractor": self.extractor,
            "extractor_version": self.extractor_version, "weights_id": self.weights_id,
            "weights_sha256": self.weights_sha256 or "",
            "feature_names": json.dumps(self.feature_names or []),
            "params": json.dumps(self.params, sort_keys=True, default=str),
        }
        return {(META_PREFIX + k).encode(): v.encode() for k, v in meta.items()}


def read_features(path: str | Path) -> polars.DataFrame:
    """A feature table as a polars DataFrame, one row per manifest row: utterance_id, present, status,
    detail, and the payload, `emb` (Array(Float32, dim)) or `seq` (List(Array(Float32, dim))) with `t`
    (List(Float32), seconds). How the table was made (extractor, weights id, feature names, params) is
    in `read_metadata(path)`."""
    import polars as pl

    path = Path(path)
    if not path.is_file():
        raise MissingInputError(f"{path}: no feature table here; extract it first (`trml extract`, or "
                                f"flows.api.extract_folder)")
    meta = read_metadata(path)
    if meta.get("kind") not in ("emb", "seq"):
        raise FeatureTableError(f"{path}: not a feature table (its schema metadata has no trml.kind emb|seq); "
                         f"a manifest is read with read_manifest")
    return pl.read_parquet(path)


def feature_schema(info: TableInfo) -> pa.Schema:
    vec = pa.list_(pa.float32(), info.dim)
    fields = [
        pa.field("utterance_id", pa.string(), nullable=False),
        pa.field("present", pa.bool_(), nullable=False),
        pa.field("status", pa.string(), nullable=False),
        pa.field("detail", pa.string()),
    ]
    if info.kind == "emb":
        fields.append(pa.field("emb", vec))
    elif info.kind == "seq":
        fields += [pa.field("seq", pa.list_(vec)), pa.field("t", pa.list_(pa.float32()))]
    else:
        raise ValueError(f"unknown feature kind {info.kind!r}; expected 'emb' or 'seq'")
    return pa.schema(fields, metadata=info.to_metadata())


def rows_to_table(rows: list[FeatureRow], info: TableInfo) -> pa.Table:
    """Build a feature table; absent payloads are null. Checks every vector's width."""
    schema = feature_schema(info)
    cols: dict[str, list] = {
        "utterance_id": [r.utterance_id for r in rows],
        "present": [r.present for r in rows],
        "status": [r.status for r in rows],
        "detail": [r.detail for r in rows],
    }
    if info.kind == "emb":
        cols["emb"] = [_vector(r.emb, info.dim, r.utterance_id) if r.present else None for r in rows]
    else:
        cols["seq"] = [[_vector(v, info.dim, r.utterance_id) for v in r.seq] if r.present else None
                       for r in rows]
        cols["t"] = [np.asarray(r.t, dtype=np.float32).tolist() if r.present else None for r in rows]
    return pa.table(cols, schema=schema)


def _vector(v: np.ndarray | None, dim: int, uid: str) -> list[float]:
    arr = np.asarray(v, dtype=np.float32).reshape(-1)
    if arr.shape[0] != dim:
        raise ValueError(f"{uid}: feature width {arr.shape[0]} != declared dim {dim}")
    return arr.tolist()


def write_atomic(table: pa.Table, path: str | Path) -> Path:
    """Write a Parquet table (a manifest or a feature table) atomically to `path`.

    Statistics and compression are fixed so that equal tables give equal bytes.
    """
    with atomic_path(path) as tmp:
        pq.write_table(table, tmp, compression="zstd", compression_level=3,
                       write_statistics=False, use_dictionary=False,
                       store_schema=True, write_page_index=False)
    return Path(path)


# ---------------------------------------------------------------- the manifest, as extraction reads it

class ManifestError(UserError, ValueError):
    """The manifest is missing or breaks the contract; the message names the file and the fix."""


@dataclass(frozen=True)
class ManifestRow:
    utterance_id: str
    media_path: str | None      # relative to the dataset root, as the manifest stores it
    text: str | None


def read_manifest(path: Path) -> tuple[Path, list[ManifestRow]]:
    """The raw root (from schema metadata trml.root) and the rows, in manifest order."""
    if not path.is_file():
        raise ManifestError(f"{path}: manifest not found. Run `trml index --dataset {path.stem}` first.")
    table = pq.read_table(path, columns=["utterance_id", "media_path", "text"])
    raw_root = (table.schema.metadata or {}).get(b"trml.root")
    if not raw_root:
        raise ManifestError(f"{path}: schema metadata has no trml.root (the raw dataset folder); "
                            f"re-create it with `trml index --dataset {path.stem}`.")
    root = Path(raw_root.decode())
    if not root.is_absolute():  # adapters store a relative root as given: relative to the project root
        root = Path.cwd() / root
    cols = table.to_pydict()
    rows = [ManifestRow(u, m, t) for u, m, t in zip(cols["utterance_id"], cols["media_path"], cols["text"])]
    seen: dict[str, int] = {}
    for i, row in enumerate(rows):
        if row.utterance_id in seen:
            raise ManifestError(f"{path}: utterance_id {row.utterance_id!r} appears in rows {seen[row.utterance_id]} "
                                f"and {i}; re-index the dataset.")
        seen[row.utterance_id] = i
    return root, rows


@dataclass(frozen=True)
class MediaItem:
    """One utterance to extract: its id, its media file (absolute, or None when absent) and its text."""
    utterance_id: str
    media_path: Path | None = None
    text: str | None = None


def media_items(rows: list[ManifestRow], root: Path, uses_text: bool) -> list[MediaItem]:
    """An extractor sees only its own modality's input: its text, or its media file (absolute)."""
    if uses_text:
        return [MediaItem(r.utterance_id, None, r.text) for r in rows]
    return [MediaItem(r.utterance_id, root / r.media_path if r.media_path is not None else None, None)
            for r in rows]


def assemble(info: TableInfo, parts: list[pa.Table], rows: list[ManifestRow], dest: Path) -> pa.Table:
    """One feature table from its parts, in manifest order; refuses anything but exactly one row per
    manifest row (`dest`, the table's path, is only named in the error)."""
    table = pa.concat_tables(parts).combine_chunks() if parts else rows_to_table([], info)
    ids = table.column("utterance_id").to_pylist()
    if ids != [r.utterance_id for r in rows]:
        missing = sorted({r.utterance_id for r in rows} - set(ids))[:5]
        raise ValueError(f"{info.feature_set}: assembled {len(ids)} rows for {len(rows)} manifest rows "
                         f"(first missing: {missing}); nothing was written to {dest}.")
    return table
