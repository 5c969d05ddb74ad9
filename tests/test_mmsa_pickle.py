"""MMSA feature pickles: import into our Parquet contracts, export back, and refuse unsafe pickles."""
from __future__ import annotations

import os
import pickle
import subprocess
import sys

import numpy as np
import pyarrow.parquet as pq
import pytest

from features.mmsa_pickle import UnsafePickleError, export_mmsa, import_mmsa, load_pickle
from features.store import read_metadata
from tests.conftest import ROOT


def mmsa_split(rng, ids, la=7, lv=5, lt=6, da=5, dv=4, dt=8, zero_rows=()):
    """One split in the exact structure MMSA's unaligned_50.pkl uses (arrays padded to a fixed length)."""
    n = len(ids)
    audio = np.zeros((n, la, da), np.float32)
    vision = np.zeros((n, lv, dv), np.float32)
    text = np.zeros((n, lt, dt), np.float32)
    a_len = rng.integers(1, la + 1, n)
    v_len = rng.integers(1, lv + 1, n)
    t_len = rng.integers(1, lt + 1, n)
    bert = np.zeros((n, 3, lt), np.float32)
    for i in range(n):
        audio[i, : a_len[i]] = rng.normal(size=(a_len[i], da))
        vision[i, : v_len[i]] = rng.normal(size=(v_len[i], dv))
        text[i, : t_len[i]] = rng.normal(size=(t_len[i], dt))
        bert[i, 1, : t_len[i]] = 1  # attention mask
    for i in zero_rows:
        vision[i] = 0
    labels = rng.uniform(-3, 3, n).astype(np.float32)
    return {
        "id": np.array(ids, dtype=object),
        "raw_text": np.array([f"utterance {i}" for i in ids], dtype=object),
        "text": text, "text_bert": bert, "audio": audio, "vision": vision,
        "audio_lengths": a_len.tolist(), "vision_lengths": v_len.tolist(),
        "regression_labels": labels,
        "classification_labels": (labels > 0).astype(np.float32),
        "annotations": ["Positive" if x > 0 else "Negative" for x in labels],
    }


@pytest.fixture
def mmsa_pkl(tmp_path):
    rng = np.random.default_rng(0)
    data = {"train": mmsa_split(rng, [f"vid{i}$_${i}" for i in range(6)], zero_rows=(2,)),
            "valid": mmsa_split(rng, ["vidA$_$1", "vidA$_$2"]),
            "test": mmsa_split(rng, ["vidB$_$1", "vidB$_$2", "vidB$_$3"])}
    path = tmp_path / "unaligned_50.pkl"
    path.write_bytes(pickle.dumps(data, protocol=4))
    return path, data


def test_import_writes_contract_tables(tmp_path, mmsa_pkl):
    path, data = mmsa_pkl
    summary = import_mmsa(path, "mosi", tmp_path / "index", tmp_path / "features")
    assert summary["rows"] == 11
    manifest = pq.read_table(tmp_path / "index/mosi.parquet").to_pylist()
    assert manifest[0]["utterance_id"] == "vid0/0" and manifest[0]["split"] == "train"
    assert manifest[0]["label"] == pytest.approx(float(data["train"]["regression_labels"][0]))
    vision = pq.read_table(tmp_path / "features/mosi/mmsa_vision.parquet").to_pylist()
    assert len(vision) == 11
    assert vision[2]["present"] is False and vision[2]["status"] == "empty_sequence"  # all-zero padding
    row = vision[0]
    assert len(row["seq"]) == data["train"]["vision_lengths"][0]  # lengths become sequence lengths
    np.testing.assert_allclose(row["seq"], data["train"]["vision"][0, : len(row["seq"])])
    text = pq.read_table(tmp_path / "features/mosi/mmsa_text.parquet").to_pylist()
    assert len(text[0]["seq"]) == int(data["train"]["text_bert"][0, 1].sum())  # from the attention mask
    meta = read_metadata(tmp_path / "features/mosi/mmsa_audio.parquet")
    assert meta["kind"] == "seq" and meta["dim"] == "5" and "mmsa-pickle" in meta["weights_id"]


def test_round_trip(tmp_path, mmsa_pkl):
    path, _ = mmsa_pkl
    import_mmsa(path, "mosi", tmp_path / "a/index", tmp_path / "a/features")
    out = tmp_path / "exported.pkl"
    export_mmsa("mosi", out, {"text": "mmsa_text", "audio": "mmsa_audio", "vision": "mmsa_vision"},
                index_dir=tmp_path / "a/index", features_dir=tmp_path / "a/features")
    exported = load_pickle(out)
    assert exported["train"]["vision"].ndim == 3 and "vision_lengths" in exported["train"]
    import_mmsa(out, "mosi", tmp_path / "b/index", tmp_path / "b/features")
    for name in ["index/mosi.parquet", "features/mosi/mmsa_text.parquet", "features/mosi/mmsa_audio.parquet",
                 "features/mosi/mmsa_vision.parquet"]:
        a = pq.read_table(tmp_path / "a" / name)
        b = pq.read_table(tmp_path / "b" / name)
        if name.startswith("index"):
            a, b = a.drop(["dataset"]), b.drop(["dataset"])
        assert a.to_pylist() == b.to_pylist(), name


class Evil:
    def __reduce__(self):
        return (os.system, ("echo pwned > /tmp/trml-pwned",))


def test_restricted_unpickler_refuses_code(tmp_path):
    path = tmp_path / "evil.pkl"
    path.write_bytes(pickle.dumps({"train": {"id": [Evil()]}}))
    with pytest.raises(UnsafePickleError, match="refusing to unpickle"):
        load_pickle(path)
    assert not os.path.exists("/tmp/trml-pwned")
    proc = subprocess.run([sys.executable, "-m", "flows.cli", "import-mmsa", str(path), "--dataset", "x",
                           "--index-dir", str(tmp_path / "i"), "--features-dir", str(tmp_path / "f")],
                          capture_output=True, text=True, cwd=ROOT)
    assert proc.returncode == 2 and "refusing to unpickle" in proc.stderr and "Traceback" not in proc.stderr
    assert not (tmp_path / "i").exists()
