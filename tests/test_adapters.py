"""Dataset adapters: MMSA, MELD (on fixtures with the real CSVs' quirks, and on the real CSVs where they
exist) and folder layouts, and their messy cases."""
from __future__ import annotations

import json
from pathlib import Path

import av
import numpy as np
import pyarrow.parquet as pq
import pytest

from features.adapters import AdapterError, MELD_EMOTIONS, MELD_SENTIMENTS, index_dataset
from features.config import DatasetConfig
from tests.conftest import SHARED_MELD

HEADER = "video_id,clip_id,text,label,label_T,label_A,label_V,annotation,mode\n"
FIXTURE_MELD = Path(__file__).parent / "fixtures" / "meld"   # see its README.md: which quirk is in which file
needs_shared_meld = pytest.mark.skipif(
    not SHARED_MELD.is_dir(),
    reason=f"the real MELD CSVs are not on this machine ({SHARED_MELD}); tests/fixtures/meld covers the adapter")


def tiny_mp4(path: Path) -> None:
    """A real, one-second H.264 clip (the adapter only needs it to exist, but it is real media)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with av.open(str(path), "w") as out:
        stream = out.add_stream("libx264", rate=5)
        stream.width, stream.height, stream.pix_fmt = 64, 64, "yuv420p"
        for i in range(5):
            frame = av.VideoFrame.from_ndarray(np.full((64, 64, 3), i * 40, np.uint8), format="rgb24")
            out.mux(stream.encode(frame))
        out.mux(stream.encode())


def mmsa(tmp_path: Path, body: str, clips=("v1/1", "v1/2"), encoding="utf-8", bom=False) -> DatasetConfig:
    root = tmp_path / "mosi"
    root.mkdir()
    data = (HEADER + body).encode(encoding)
    (root / "label.csv").write_bytes((b"\xef\xbb\xbf" if bom else b"") + data)
    for clip in clips:
        tiny_mp4(root / "Raw" / f"{clip}.mp4")
    return DatasetConfig(name="mosi", layout="mmsa", root=root)


def read(out: Path):
    table = pq.read_table(out)
    return table.to_pylist(), {k.decode(): v.decode() for k, v in table.schema.metadata.items()}


def test_mmsa_rows_media_and_metadata(tmp_path):
    ds = mmsa(tmp_path, "v1,1,good movie,2.4,2,2,2,Positive,train\n"
                        "v1,2,bad movie,-1.2,-1,-1,-1,Negative,valid\n"
                        "v2,1,no clip here,0.0,0,0,0,Neutral,test\n")
    summary = index_dataset(ds, tmp_path / "m.parquet")
    rows, meta = read(tmp_path / "m.parquet")
    assert [r["utterance_id"] for r in rows] == ["v1/1", "v1/2", "v2/1"]
    assert [r["split"] for r in rows] == ["train", "valid", "test"]
    assert rows[0]["media_path"] == "Raw/v1/1.mp4"
    assert rows[2]["media_path"] is None and rows[2]["text"] == "no clip here"  # missing clip keeps its row
    assert [r["label"] for r in rows] == [2.4, -1.2, 0.0]
    assert meta["trml.task"] == "regression" and json.loads(meta["trml.class_names"]) == []
    assert summary["media_missing"] == 1 and summary["splits"] == {"train": 1, "valid": 1, "test": 1}


def test_mmsa_tolerates_bom_extra_columns_and_cp1252(tmp_path):
    body = "v1,1,caf\xe9 \u2019great\u2019,1.0,1,1,1,Positive,train\n"
    ds = mmsa(tmp_path, body, encoding="cp1252", bom=False)
    index_dataset(ds, tmp_path / "m.parquet")
    rows, _ = read(tmp_path / "m.parquet")
    assert rows[0]["text"] == "caf\xe9 \u2019great\u2019"

    root = tmp_path / "b"
    root.mkdir()
    (root / "label.csv").write_bytes(b"\xef\xbb\xbf" + (HEADER.strip() + ",extra\n" "v1,1,hi,0.5,0,0,0,Neutral,train,x\n").encode())
    index_dataset(DatasetConfig(name="b", layout="mmsa", root=root), tmp_path / "b.parquet")
    rows, _ = read(tmp_path / "b.parquet")
    assert rows[0]["utterance_id"] == "v1/1" and rows[0]["media_path"] is None


def test_mmsa_empty_split_is_allowed(tmp_path):
    ds = mmsa(tmp_path, "v1,1,a,1.0,1,1,1,Positive,train\nv1,2,b,-1.0,1,1,1,Negative,test\n")
    summary = index_dataset(ds, tmp_path / "m.parquet")
    assert summary["splits"]["valid"] == 0


@pytest.mark.parametrize("body, words", [
    ("v1,1,a,1.0,1,1,1,Positive,train\nv1,1,b,2.0,1,1,1,Positive,train\n", "duplicate utterance id 'v1/1'"),
    ("v1,1,a,nan,1,1,1,Positive,train\n", "label is NaN"),
    ("v1,1,a,,1,1,1,Positive,train\n", "is not a number"),
    ("v1,1,a,3.5,1,1,1,Positive,train\n", "outside [-3.0, 3.0]"),
    ("v1,1,a,1.0,1,1,1,Positive,holdout\n", "split 'holdout'"),
])
def test_mmsa_bad_rows_name_the_row(tmp_path, body, words):
    ds = mmsa(tmp_path, body)
    with pytest.raises(AdapterError) as exc:
        index_dataset(ds, tmp_path / "m.parquet")
    assert words in str(exc.value)
    assert "label.csv:2" in str(exc.value)
    if "duplicate" in words:
        assert "label.csv:3" in str(exc.value)  # both rows named
    assert not (tmp_path / "m.parquet").exists()  # nothing half-written


def test_mmsa_missing_column(tmp_path):
    root = tmp_path / "r"
    root.mkdir()
    (root / "label.csv").write_text("video_id,clip_id,text\nv,1,a\n")
    with pytest.raises(AdapterError, match=r"missing column\(s\) \['label', 'mode'\]"):
        index_dataset(DatasetConfig(name="r", layout="mmsa", root=root), tmp_path / "m.parquet")


def test_missing_root_is_reported_up_front(tmp_path):
    with pytest.raises(AdapterError, match="is not a folder"):
        index_dataset(DatasetConfig(name="x", layout="mmsa", root=tmp_path / "absent"), tmp_path / "m.parquet")


def read_meld_source(path: Path, encoding: str) -> list[dict]:
    """The fixture's rows as the csv module reads them, decoded with the encoding the file is known to have."""
    import csv
    with open(path, encoding=encoding, newline="") as fh:
        return list(csv.DictReader(fh))


@pytest.mark.parametrize("target, names", [("emotion", MELD_EMOTIONS), ("sentiment", MELD_SENTIMENTS)])
def test_meld_fixtures_keep_every_row_and_its_text(tmp_path, target, names):
    root = tmp_path / "meld"
    root.mkdir()
    for csv_file in FIXTURE_MELD.glob("*_sent_emo.csv"):
        (root / csv_file.name).write_bytes(csv_file.read_bytes())
    tiny_mp4(root / "train_splits" / "dia1_utt2.mp4")                 # MELD's clip folder for each split
    tiny_mp4(root / "dev_splits_complete" / "dia0_utt1.mp4")
    tiny_mp4(root / "output_repeated_splits_test" / "dia0_utt0.mp4")
    summary = index_dataset(DatasetConfig(name="meld", layout="meld", root=root, task="classification",
                                          meld_target=target), tmp_path / "meld.parquet")
    rows, meta = read(tmp_path / "meld.parquet")
    source = {}
    for prefix, encoding in (("train", "utf-8"), ("dev", "utf-8-sig"), ("test", "cp1252")):
        for r in read_meld_source(FIXTURE_MELD / f"{prefix}_sent_emo.csv", encoding):
            source[f"{prefix}/dia{r['Dialogue_ID']}_utt{r['Utterance_ID']}"] = r
    assert [r["utterance_id"] for r in rows] == list(source)           # file order, no row dropped
    assert summary["splits"] == {"train": 9, "valid": 3, "test": 2}
    assert json.loads(meta["trml.class_names"]) == names
    col = "Emotion" if target == "emotion" else "Sentiment"
    for row in rows:
        src = source[row["utterance_id"]]
        assert row["text"] == src["Utterance"].strip() and names[row["label_class"]] == src[col]
        assert row["speaker"] == src["Speaker"]
    by_id = {r["utterance_id"]: r for r in rows}
    assert by_id["test/dia0_utt0"]["text"] == "That\u2019s the \u201cplan\u201d?"         # cp1252 bytes decoded
    assert by_id["dev/dia0_utt0"]["text"] == "Hi, I\u2019m looking for the caf\u00e9."      # BOM file
    assert by_id["train/dia2_utt2"]["text"] == "I\u0092m fine, really."                     # kept, not cleaned
    assert {r["split"] for r in rows if r["utterance_id"].startswith("dev/")} == {"valid"}
    assert by_id["dev/dia0_utt0"]["dialogue_id"] == "dev/0" != by_id["train/dia0_utt0"]["dialogue_id"]
    assert {k: r["media_path"] for k, r in by_id.items() if r["media_path"]} == {
        "train/dia1_utt2": "train_splits/dia1_utt2.mp4", "dev/dia0_utt1": "dev_splits_complete/dia0_utt1.mp4",
        "test/dia0_utt0": "output_repeated_splits_test/dia0_utt0.mp4"}
    assert by_id["train/dia0_utt2"]["start_s"] == pytest.approx(3 * 60 + 16.3)         # one-digit hour "0:03:16,300"
    assert by_id["train/dia0_utt0"]["end_s"] == pytest.approx(3 * 60 + 14.88)


@needs_shared_meld
@pytest.mark.parametrize("target, names", [("emotion", MELD_EMOTIONS), ("sentiment", MELD_SENTIMENTS)])
def test_meld_real_csvs_keep_every_row(tmp_path, target, names):
    import csv
    ds = DatasetConfig(name="meld", layout="meld", root=SHARED_MELD, task="classification", meld_target=target)
    summary = index_dataset(ds, tmp_path / "meld.parquet")
    rows, meta = read(tmp_path / "meld.parquet")
    source = {}
    for prefix in ("train", "dev"):
        with open(SHARED_MELD / f"{prefix}_sent_emo.csv", encoding="utf-8", newline="") as fh:
            for r in csv.DictReader(fh):
                source[f"{prefix}/dia{r['Dialogue_ID']}_utt{r['Utterance_ID']}"] = r
    assert len(rows) == len(source) == 9989 + 1109
    assert summary["splits"] == {"train": 9989, "valid": 1109, "test": 0}
    assert json.loads(meta["trml.class_names"]) == names
    col = "Emotion" if target == "emotion" else "Sentiment"
    for row in rows:
        src = source[row["utterance_id"]]
        assert row["text"] == src["Utterance"].strip()  # real, messy text kept as is
        assert names[row["label_class"]] == src[col]
        assert row["media_path"] is None  # no clips offline: audio and vision naturally missing
    assert rows[0]["start_s"] == pytest.approx(16 * 60 + 16.059)
    assert rows[0]["speaker"] == "Chandler"


def test_meld_requires_classification(tmp_path):
    with pytest.raises(AdapterError, match="task: classification"):
        index_dataset(DatasetConfig(name="m", layout="meld", root=FIXTURE_MELD), tmp_path / "m.parquet")


def test_meld_with_clips_and_bad_label(tmp_path):
    root = tmp_path / "meld"
    root.mkdir()
    lines = (FIXTURE_MELD / "dev_sent_emo.csv").read_bytes().decode("utf-8").splitlines(keepends=True)[:4]
    (root / "dev_sent_emo.csv").write_text("".join(lines), encoding="utf-8", newline="")
    tiny_mp4(root / "dev_splits_complete" / "dia0_utt0.mp4")
    index_dataset(DatasetConfig(name="m", layout="meld", root=root, task="classification"), tmp_path / "m.parquet")
    rows, _ = read(tmp_path / "m.parquet")
    assert rows[0]["media_path"] == "dev_splits_complete/dia0_utt0.mp4" and rows[0]["split"] == "valid"
    assert rows[1]["media_path"] is None
    (root / "dev_sent_emo.csv").write_text("".join(lines).replace(",neutral,", ",bored,", 1), encoding="utf-8",
                                           newline="")
    with pytest.raises(AdapterError, match=r"dev_sent_emo.csv:[2-4]: Emotion 'bored'"):
        index_dataset(DatasetConfig(name="m", layout="meld", root=root, task="classification"), tmp_path / "m.parquet")


def test_folder_without_and_with_labels(tmp_path):
    root = tmp_path / "mine"
    tiny_mp4(root / "a.mp4")
    tiny_mp4(root / "sub" / "b.mp4")
    (root / "a.txt").write_text("  hello there \n", encoding="utf-8")
    (root / "notes.md").write_text("not a video")
    ds = DatasetConfig(name="mine", layout="folder", root=root)
    index_dataset(ds, tmp_path / "f.parquet")
    rows, _ = read(tmp_path / "f.parquet")
    assert [r["utterance_id"] for r in rows] == ["a", "sub/b"]
    assert rows[0]["text"] == "hello there" and rows[1]["text"] is None
    assert all(r["label"] is None and r["split"] == "test" for r in rows)

    (root / "labels.csv").write_text("name,label,split\na.mp4,1.5,train\nsub/b,-2,valid\n")
    index_dataset(ds, tmp_path / "f.parquet")
    rows, _ = read(tmp_path / "f.parquet")
    assert [(r["label"], r["split"]) for r in rows] == [(1.5, "train"), (-2.0, "valid")]


def test_cli_index_writes_manifest(tmp_path):
    import subprocess, sys
    from tests.conftest import ROOT
    ds = mmsa(tmp_path, "v1,1,a,1.0,1,1,1,Positive,train\n")
    out = tmp_path / "idx.parquet"
    proc = subprocess.run([sys.executable, "-m", "flows.cli", "index", "--dataset", "mosi", "--layout", "mmsa",
                           "--root", str(ds.root), "--out", str(out)], capture_output=True, text=True, cwd=ROOT)
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout)["rows"] == 1 and out.is_file()
    (Path(ds.root) / "label.csv").write_text(HEADER + "v1,1,a,9,1,1,1,Positive,train\n")
    proc = subprocess.run([sys.executable, "-m", "flows.cli", "index", "--dataset", "mosi", "--layout", "mmsa",
                           "--root", str(ds.root), "--out", str(out)], capture_output=True, text=True, cwd=ROOT)
    assert proc.returncode == 2 and "label.csv:2" in proc.stderr and "Traceback" not in proc.stderr


# ---------------------------------------------------------------- contracts the mutation run found unpinned

def test_the_summary_says_what_was_indexed(tmp_path, caplog):
    ds = mmsa(tmp_path, "v1,1,good,2.4,2,2,2,Positive,train\n")
    with caplog.at_level("INFO", logger="features.adapters"):
        summary = index_dataset(ds, tmp_path / "m.parquet")
    assert summary == {"dataset": "mosi", "layout": "mmsa", "manifest": str(tmp_path / "m.parquet"), "rows": 1,
                       "splits": {"train": 1, "valid": 0, "test": 0}, "media_missing": 0, "task": "regression",
                       "class_names": []}
    assert "indexed mosi: 1 rows ({'train': 1, 'valid': 0, 'test': 0}), 0 without media" in caplog.messages


def test_mmsa_classification_maps_the_score_sign_to_three_classes(tmp_path):
    ds = mmsa(tmp_path, "v1,1,a,-0.4,0,0,0,Negative,train\nv1,2,b,0.0,0,0,0,Neutral,train\n"
                        "v2,1,c,1.2,0,0,0,Positive,train\n")
    ds = ds.model_copy(update={"task": "classification"})
    summary = index_dataset(ds, tmp_path / "m.parquet")
    rows, meta = read(tmp_path / "m.parquet")
    assert [r["label_class"] for r in rows] == [0, 1, 2]
    assert summary["class_names"] == ["negative", "neutral", "positive"] and summary["task"] == "classification"
    assert json.loads(meta["trml.class_names"]) == ["negative", "neutral", "positive"]


def test_a_bad_label_message_names_the_fix(tmp_path):
    with pytest.raises(AdapterError) as exc:
        index_dataset(mmsa(tmp_path, "v1,1,a,x,1,1,1,Positive,train\n"), tmp_path / "m.parquet")
    assert str(exc.value).endswith("Fix the row, or remove it if it has no annotation.")


def test_a_csv_that_is_not_utf8_or_cp1252_still_reads(tmp_path, caplog):
    # 0x81 is undefined in cp1252 too: it becomes U+FFFD instead of stopping the index.
    root = tmp_path / "r"
    root.mkdir()
    (root / "label.csv").write_bytes((HEADER + "v1,1,caf\xe9 X,1.0,1,1,1,Positive,train\n").encode("cp1252")
                                     .replace(b"X", b"\x81"))
    with caplog.at_level("WARNING", logger="features.adapters"):
        index_dataset(DatasetConfig(name="r", layout="mmsa", root=root), tmp_path / "m.parquet")
    rows, _ = read(tmp_path / "m.parquet")
    assert rows[0]["text"] == "caf\xe9 \ufffd"
    assert any("is not valid UTF-8" in m and "reading it as cp1252" in m for m in caplog.messages)


def test_hash_split_is_stable_and_about_80_10_10():
    from features.adapters import hash_split
    # Pinned: a folder's split must not move between versions.
    assert [hash_split(n) for n in ("a", "clip_001", "sub/b", "interview 7")] == ["test", "train", "train", "valid"]
    counts = {s: 0 for s in ("train", "valid", "test")}
    for i in range(2000):
        counts[hash_split(f"video{i}")] += 1
    assert 1520 <= counts["train"] <= 1680 and 140 <= counts["valid"] <= 260 and 140 <= counts["test"] <= 260


def test_folder_labels_without_a_split_column_split_by_name(tmp_path, caplog):
    from features.adapters import hash_split
    root = tmp_path / "mine"
    for name in ("a", "b", "c"):
        tiny_mp4(root / f"{name}.mp4")
    (root / "b.txt").write_bytes(b"bad \xff byte")
    (root / "labels.csv").write_text("name,label\na,happy\nb.mp4,sad\nc,happy\n")
    ds = DatasetConfig(name="mine", layout="folder", root=root, task="classification")
    summary = index_dataset(ds, tmp_path / "f.parquet")
    rows, _ = read(tmp_path / "f.parquet")
    assert [r["split"] for r in rows] == [hash_split(n) for n in ("a", "b", "c")]
    assert [r["label_class"] for r in rows] == [0, 1, 0] and summary["class_names"] == ["happy", "sad"]
    assert rows[1]["text"] == "bad \ufffd byte"
    assert all(r["label"] is None for r in rows)

    empty = tmp_path / "empty"
    empty.mkdir()
    with caplog.at_level("WARNING", logger="features.adapters"):
        index_dataset(DatasetConfig(name="e", layout="folder", root=empty), tmp_path / "e.parquet")
    assert any("no videos found (extensions" in m and ".mp4" in m for m in caplog.messages)


def test_meld_without_its_csvs_names_the_files_it_wants(tmp_path):
    root = tmp_path / "meld"
    root.mkdir()
    with pytest.raises(AdapterError, match=r"meld: no MELD label file; expected one or more of .*train_sent_emo\.csv"):
        index_dataset(DatasetConfig(name="m", layout="meld", root=root, task="classification"), tmp_path / "m.parquet")


def test_meld_summary_is_classification_with_unlabelled_regression_column(tmp_path):
    summary = index_dataset(DatasetConfig(name="m", layout="meld", root=FIXTURE_MELD, task="classification"),
                            tmp_path / "m.parquet")
    rows, _ = read(tmp_path / "m.parquet")
    assert summary["task"] == "classification" and summary["class_names"] == list(MELD_EMOTIONS)
    assert all(r["label"] is None for r in rows)
