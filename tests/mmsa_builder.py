"""Builds feature pickles in the exact structure of MMSA's aligned_50.pkl / unaligned_50.pkl (shared by tests)."""
from __future__ import annotations

import pickle
from pathlib import Path

import numpy as np


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


def write_mmsa_pickle(path: Path, sizes: tuple[int, int, int] = (6, 2, 3), seed: int = 0,
                      train_zero_rows=(2,)) -> dict:
    """train/valid/test splits of sizes[0..2] utterances (ids 'video$_$clip'), pickled as MMSA does."""
    rng = np.random.default_rng(seed)
    n_train, n_valid, n_test = sizes
    data = {"train": mmsa_split(rng, [f"vid{i}$_${i}" for i in range(n_train)], zero_rows=train_zero_rows),
            "valid": mmsa_split(rng, [f"vidA$_${i + 1}" for i in range(n_valid)]),
            "test": mmsa_split(rng, [f"vidB$_${i + 1}" for i in range(n_test)])}
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(pickle.dumps(data, protocol=4))
    return data
