"""The Parquet store's contracts (features/store.py) on real files: the table round trip, its metadata, the
manifest's order and checks, and the errors a user can meet, each naming the file."""
import json
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from common.errors import MissingInputError
from features.store import (FeatureRow, FeatureTableError, ManifestError, ManifestRow, TableInfo, assemble,
                            media_items, read_features, read_manifest, read_metadata, rows_to_table, write_atomic)


def info(kind: str = "emb", dim: int = 3, **extra) -> TableInfo:
    return TableInfo(feature_set="audio_x", modality="audio", kind=kind, dim=dim, extractor="tests.X",
                     extractor_version="2", weights_id="w:1", **extra)


def test_an_emb_table_round_trips_with_its_statuses(tmp_path):
    rows = [FeatureRow("b", emb=np.array([1.0, 2.0, 3.0])), FeatureRow("a", "silent", "peak -80 dBFS")]
    path = write_atomic(rows_to_table(rows, info()), str(tmp_path / "t.parquet"))
    assert path == tmp_path / "t.parquet"
    df = read_features(str(path))
    assert df["utterance_id"].to_list() == ["b", "a"]                          # rows keep their order
    assert df["present"].to_list() == [True, False]
    assert df["status"].to_list() == ["ok", "silent"] and df["detail"].to_list() == [None, "peak -80 dBFS"]
    assert df["emb"].to_list()[0] == [1.0, 2.0, 3.0] and df["emb"].to_list()[1] is None
    assert df.columns == ["utterance_id", "present", "status", "detail", "emb"]


def test_a_seq_table_round_trips_with_timestamps(tmp_path):
    rows = [FeatureRow("a", seq=np.arange(6.0).reshape(2, 3), t=np.array([0.0, 0.5])),
            FeatureRow("b", "too_short", "3 samples")]
    path = write_atomic(rows_to_table(rows, info("seq")), tmp_path / "s.parquet")
    df = read_features(path)
    assert df.columns == ["utterance_id", "present", "status", "detail", "seq", "t"]
    assert df["seq"].to_list()[0] == [[0.0, 1.0, 2.0], [3.0, 4.0, 5.0]] and df["t"].to_list()[0] == [0.0, 0.5]
    assert df["seq"].to_list()[1] is None and df["t"].to_list()[1] is None
    schema = pq.read_schema(path)
    assert schema.field("utterance_id").nullable is False and schema.field("present").nullable is False
    assert schema.field("status").nullable is False and schema.field("detail").nullable is True
    assert schema.field("seq").type == pa.list_(pa.list_(pa.float32(), 3))


def test_metadata_says_how_the_table_was_made(tmp_path):
    table = rows_to_table([], info(feature_names=["x", "y", "z"], weights_sha256="ab", params={"b": 1, "a": 2}))
    path = write_atomic(table, tmp_path / "m.parquet")
    meta = read_metadata(path)
    assert {k: meta[k] for k in ("feature_set", "modality", "kind", "extractor", "extractor_version",
                                 "weights_id", "weights_sha256")} == \
        {"feature_set": "audio_x", "modality": "audio", "kind": "emb", "extractor": "tests.X",
         "extractor_version": "2", "weights_id": "w:1", "weights_sha256": "ab"}
    assert int(meta["dim"]) == 3 and json.loads(meta["feature_names"]) == ["x", "y", "z"]
    assert json.loads(meta["params"]) == {"a": 2, "b": 1}
    raw = pq.read_schema(path).metadata
    assert raw[b"trml.params"] == b'{"a": 2, "b": 1}'                       # sorted keys: stable bytes
    bare = rows_to_table([], info()).schema.metadata                        # no sha256, no feature names
    assert bare[b"trml.weights_sha256"] == b"" and bare[b"trml.feature_names"] == b"[]"


def test_equal_tables_give_equal_bytes(tmp_path):
    rows = [FeatureRow(u, emb=np.full(3, i, np.float32)) for i, u in enumerate("abcde")]
    a = write_atomic(rows_to_table(rows, info()), tmp_path / "a.parquet").read_bytes()
    b = write_atomic(rows_to_table(rows, info()), tmp_path / "b.parquet").read_bytes()
    assert a == b
    assert pq.ParquetFile(tmp_path / "a.parquet").metadata.row_group(0).column(0).compression == "ZSTD"


def test_a_wrong_width_or_kind_is_refused():
    with pytest.raises(ValueError, match=r"^u7: feature width 2 != declared dim 3$"):
        rows_to_table([FeatureRow("u7", emb=np.zeros(2))], info())
    with pytest.raises(ValueError, match=r"u8: feature width 4 != declared dim 3"):
        rows_to_table([FeatureRow("u8", seq=np.zeros((2, 4)), t=np.zeros(2))], info("seq"))
    with pytest.raises(ValueError, match=r"unknown feature kind 'vec'; expected 'emb' or 'seq'"):
        rows_to_table([], info("vec"))


def test_read_features_names_the_file_and_the_fix(tmp_path):
    with pytest.raises(MissingInputError, match=r"nope\.parquet: no feature table here; extract it first"):
        read_features(tmp_path / "nope.parquet")
    (tmp_path / "dir.parquet").mkdir()
    with pytest.raises(MissingInputError):
        read_features(tmp_path / "dir.parquet")
    pq.write_table(pa.table({"utterance_id": ["a"]}), tmp_path / "other.parquet")
    with pytest.raises(FeatureTableError, match=r"other\.parquet: not a feature table .* read_manifest"):
        read_features(tmp_path / "other.parquet")


def manifest(path: Path, ids: list[str], root: str | None = "/data/raw", media=None, texts=None) -> Path:
    table = pa.table({"utterance_id": ids, "split": ["train"] * len(ids),
                      "media_path": media or [f"{u}.mp4" for u in ids], "text": texts or [f"t {u}" for u in ids]})
    if root is not None:
        table = table.replace_schema_metadata({b"trml.root": root.encode()})
    pq.write_table(table, path)
    return path


def test_read_manifest_keeps_manifest_order_and_resolves_the_root(tmp_path, monkeypatch):
    path = manifest(tmp_path / "ds.parquet", ["z9", "a1", "m5"], media=["z9.mp4", None, "m5.mp4"],
                    texts=["hi", "there", None])
    root, rows = read_manifest(path)
    assert root == Path("/data/raw")
    assert rows == [ManifestRow("z9", "z9.mp4", "hi"), ManifestRow("a1", None, "there"), ManifestRow("m5", "m5.mp4", None)]
    monkeypatch.chdir(tmp_path)                                       # a relative root is relative to the project
    root, _ = read_manifest(manifest(tmp_path / "rel.parquet", ["a"], root="data/raw/x"))
    assert root == tmp_path / "data/raw/x"


def test_read_manifest_errors_name_the_file_and_the_fix(tmp_path):
    with pytest.raises(ManifestError, match=r"mosi\.parquet: manifest not found\. Run `trml index --dataset mosi` first\."):
        read_manifest(tmp_path / "mosi.parquet")
    with pytest.raises(ManifestError, match=r"bare\.parquet: schema metadata has no trml\.root .*--dataset bare"):
        read_manifest(manifest(tmp_path / "bare.parquet", ["a"], root=None))
    with pytest.raises(ManifestError, match=r"utterance_id 'b' appears in rows 1 and 3; re-index the dataset\."):
        read_manifest(manifest(tmp_path / "dup.parquet", ["a", "b", "c", "b"]))


def test_media_items_give_each_extractor_its_own_input():
    rows = [ManifestRow("a", "clips/a.mp4", "hello"), ManifestRow("b", None, None)]
    root = Path("/data/raw")
    texts = media_items(rows, root, uses_text=True)
    assert [(i.utterance_id, i.media_path, i.text) for i in texts] == [("a", None, "hello"), ("b", None, None)]
    items = media_items(rows, root, uses_text=False)
    assert [(i.utterance_id, i.media_path, i.text) for i in items] == [("a", root / "clips/a.mp4", None),
                                                                       ("b", None, None)]


def test_assemble_keeps_manifest_order_and_refuses_a_lost_row():
    rows = [ManifestRow(u, None, None) for u in ("c", "a", "b")]
    parts = [rows_to_table([FeatureRow("c", emb=np.zeros(3)), FeatureRow("a", emb=np.ones(3))], info()),
             rows_to_table([FeatureRow("b", "silent", "x")], info())]
    table = assemble(info(), parts, rows, Path("out.parquet"))
    assert table.column("utterance_id").to_pylist() == ["c", "a", "b"]
    assert table.column("emb").num_chunks == 1
    with pytest.raises(ValueError, match=r"audio_x: assembled 2 rows for 3 manifest rows \(first missing: \['b'\]\); "
                                         r"nothing was written to out\.parquet\."):
        assemble(info(), parts[:1], rows, Path("out.parquet"))
    assert assemble(info(), [], [], Path("e.parquet")).num_rows == 0
    many = [ManifestRow(f"u{i}", None, None) for i in range(8)]
    with pytest.raises(ValueError, match=r"first missing: \['u1', 'u2', 'u3', 'u4', 'u5'\]\)"):   # five at most
        assemble(info(), [rows_to_table([FeatureRow("u0", emb=np.zeros(3))], info())], many, Path("o.parquet"))
