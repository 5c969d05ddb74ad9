"""The Parquet store: the manifest and feature-table contracts of DESIGN.md, written atomically.

A feature table has one row per manifest row (never a dropped row), with `present`, `status`,
`detail`, and either `emb` (one vector) or `seq` + `t` (a sequence with timestamps).
Schema metadata says how the table was made. Same inputs and parameters give identical bytes.
"""
from __future__ import annotations

import json
import os
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

META_PREFIX = "trml."

# Statuses a row can carry. `ok` is the only one with present=True.
STATUSES = (
    "ok", "missing_file", "decode_error", "no_video_stream", "no_audio_stream", "no_face",
    "silent", "empty_text", "too_short", "empty_sequence",
)


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


def read_metadata(path: str | Path) -> dict[str, str]:
    """The trml.* schema metadata of a Parquet file, without the prefix."""
    raw = pq.read_schema(path).metadata or {}
    return {k.decode()[len(META_PREFIX):]: v.decode() for k, v in raw.items()
            if k.decode().startswith(META_PREFIX)}


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
    """Write Parquet to a temporary file beside `path`, fsync, then rename: never a partial file at `path`.

    Statistics and compression are fixed so that equal tables give equal bytes.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    # Created with O_EXCL and mode 0666 minus the umask, like any file a user writes (mkstemp would give 0600).
    tmp = path.parent / f".{path.name}.{uuid.uuid4().hex}.tmp"
    os.close(os.open(tmp, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o666))
    try:
        pq.write_table(table, tmp, compression="zstd", compression_level=3,
                       write_statistics=False, use_dictionary=False,
                       store_schema=True, write_page_index=False)
        with open(tmp, "rb") as fh:
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path
