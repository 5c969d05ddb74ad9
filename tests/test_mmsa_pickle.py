"""MMSA feature pickles: import into our Parquet contracts, export back, and refuse unsafe pickles."""
from __future__ import annotations

import os
import pickle
import subprocess
import sys

import numpy as np
import pyarrow.parquet as pq
import pytest

from features.mmsa_export import export_mmsa
from features.mmsa_pickle import UnsafePickleError, import_mmsa, load_pickle
from features.store import read_metadata
from tests.conftest import ROOT
from tests.mmsa_builder import write_mmsa_pickle


@pytest.fixture
def mmsa_pkl(tmp_path):
    path = tmp_path / "unaligned_50.pkl"
    return path, write_mmsa_pickle(path)


def test_import_writes_contract_tables(tmp_path, mmsa_pkl):
    path, data = mmsa_pkl
    summary = import_mmsa(path, "mosi", tmp_path)
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
    import_mmsa(path, "mosi", tmp_path / "a")
    out = tmp_path / "exported.pkl"
    export_mmsa("mosi", out, {"text": "mmsa_text", "audio": "mmsa_audio", "vision": "mmsa_vision"},
                data_dir=tmp_path / "a")
    exported = load_pickle(out)
    assert exported["train"]["vision"].ndim == 3 and "vision_lengths" in exported["train"]
    # A token-sequence text table gives MMSA text as (N, L, d), the layout of its BERT-feature pickles.
    text, lengths = exported["train"]["text"], exported["train"]["text_lengths"]
    assert text.shape == (len(exported["train"]["id"]), max(lengths), 8) and max(lengths) > 1
    import_mmsa(out, "mosi", tmp_path / "b")
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
                           "--data-dir", str(tmp_path / "d")],
                          capture_output=True, text=True, cwd=ROOT)
    assert proc.returncode == 2 and "refusing to unpickle" in proc.stderr and "Traceback" not in proc.stderr
    assert not (tmp_path / "d").exists()


def test_imported_tables_load_for_training(tmp_path, mmsa_pkl):
    """trml's loader takes the mmsa_* tables as they are: every modality a sequence, padding rows missing."""
    from flows.params import MmsaPickleConfig
    from trml.config import ModalitiesConfig, ModelConfig
    from trml.data import load_dataset

    path, data = mmsa_pkl
    import_mmsa(path, "mosi", tmp_path)
    mods = MmsaPickleConfig(name="mosi", pickle=path).modalities       # the defaults of an mmsa_pickles entry
    cfg = ModelConfig(modalities=ModalitiesConfig(**mods.model_dump()))
    loaded = load_dataset("mosi", cfg, tmp_path)
    assert loaded.task == "regression" and loaded.names == ["text", "vision", "audio"]
    by_name = {m.name: m for m in loaded.modalities}
    assert {n: (m.kind, m.dim) for n, m in by_name.items()} == {"text": ("seq", 8), "vision": ("seq", 4),
                                                                "audio": ("seq", 5)}
    assert by_name["vision"].present.tolist()[2] is False                 # the all-zero row: naturally missing
    assert by_name["vision"].lengths[0] == data["train"]["vision_lengths"][0]
    assert by_name["text"].lengths[0] == int(data["train"]["text_bert"][0, 1].sum())
    np.testing.assert_allclose(loaded.y[:6].numpy(), data["train"]["regression_labels"], rtol=1e-6)
    assert by_name["audio"].provenance["weights_id"].startswith("mmsa-pickle:unaligned_50.pkl:audio")
