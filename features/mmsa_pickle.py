"""Interop with MMSA / MMSA-FET feature pickles (`aligned_50.pkl`, `unaligned_50.pkl`).

Their layout: {'train'|'valid'|'test': {'id', 'raw_text', 'text', 'text_bert', 'audio', 'vision',
'audio_lengths', 'vision_lengths', 'regression_labels', 'annotations', ...}}, arrays padded to a fixed
length, ids 'video_id$_$clip_id'.

Import writes our manifest plus three feature tables (mmsa_text, mmsa_audio, mmsa_vision) in the
Parquet contracts; the unimodal labels (CH-SIMS's 'regression_labels_T' / '_A' / '_V') become the manifest's
label_T, label_A, label_V. Export, the other way, is features/mmsa_export.py (kept apart so that the
import_mmsa stage does not depend on the text encoders export can tokenize with).

Unpickling can run arbitrary code. `load_pickle` therefore uses a restricted unpickler that rebuilds only
dicts, lists, tuples, strings, numbers and numpy arrays, and refuses anything else by name.
"""
from __future__ import annotations

import pickle
from pathlib import Path

import numpy as np

from common.errors import MissingInputError, UserError
from common.files import sha256_file
from common.layout import DATA_DIR, feature_path, manifest_path
from features.adapters import UNIMODAL_LABELS, Manifest, check_unique_ids
from features.store import FeatureRow, TableInfo, rows_to_table, write_atomic

SPLITS = ("train", "valid", "test")
MODALITIES = {"text": "mmsa_text", "audio": "mmsa_audio", "vision": "mmsa_vision"}
IMPORTER_VERSION = "1"
# The manifest's unimodal label columns and MMSA's pickle keys for them (CH-SIMS).
UNIMODAL_KEYS = {name: f"regression_labels_{name[-1]}" for name in UNIMODAL_LABELS}

# The globals a pickle of numpy arrays needs: array reconstruction, dtypes and scalars, nothing callable else.
SAFE_GLOBALS = {
    ("numpy", "ndarray"), ("numpy", "dtype"),
    ("numpy.core.multiarray", "_reconstruct"), ("numpy._core.multiarray", "_reconstruct"),
    ("numpy.core.multiarray", "scalar"), ("numpy._core.multiarray", "scalar"),
    ("numpy.core.numeric", "_frombuffer"), ("numpy._core.numeric", "_frombuffer"),
    ("_codecs", "encode"),  # how protocol-2 pickles carry an array's raw bytes
    ("builtins", "dict"), ("builtins", "list"), ("builtins", "tuple"), ("builtins", "set"),
    ("builtins", "frozenset"), ("builtins", "str"), ("builtins", "bytes"), ("builtins", "int"),
    ("builtins", "float"), ("builtins", "complex"), ("builtins", "bool"),
    ("collections", "OrderedDict"),
}


class MMSAPickleError(UserError):
    """The file is not an MMSA feature pickle (empty, truncated, another format); the message names it."""


class UnsafePickleError(MMSAPickleError, pickle.UnpicklingError):
    """The pickle asks for a global an MMSA feature pickle never holds."""


class RestrictedUnpickler(pickle.Unpickler):
    def find_class(self, module: str, name: str):
        if (module, name) in SAFE_GLOBALS or (module.startswith("numpy") and name.startswith("dtype")
                                              and module.endswith("dtypes")):
            return super().find_class(module, name)
        raise UnsafePickleError(
            f"refusing to unpickle {module}.{name}: an MMSA feature pickle holds only dicts, lists, strings, "
            f"numbers and numpy arrays. Only open pickles from sources you trust.")


def load_pickle(path: Path) -> dict:
    if not path.is_file():
        raise MissingInputError(f"{path}: no such file; give the path of an MMSA feature pickle "
                                f"(aligned_50.pkl, unaligned_50.pkl)")
    with open(path, "rb") as fh:
        try:
            data = RestrictedUnpickler(fh).load()
        except UnsafePickleError as exc:
            raise UnsafePickleError(f"{path}: {exc}") from None
        except EOFError:
            what = "is empty" if path.stat().st_size == 0 else "ends early (truncated)"
            raise MMSAPickleError(f"{path}: the file {what}; download or copy the MMSA pickle again") from None
        except (pickle.UnpicklingError, ValueError, TypeError, IndexError, UnicodeDecodeError, MemoryError) as exc:
            raise MMSAPickleError(f"{path}: not a pickle ({type(exc).__name__}: {exc}); give an MMSA feature "
                                  f"pickle (aligned_50.pkl, unaligned_50.pkl)") from None
    if not isinstance(data, dict) or not any(s in data for s in SPLITS):
        raise MMSAPickleError(f"{path}: not an MMSA feature pickle (expected a dict with keys {list(SPLITS)}).")
    return data


def _lengths(split: dict, key: str, n: int, arr: np.ndarray) -> np.ndarray:
    """Sequence lengths: MMSA's `<key>_lengths` when given, else the count of rows up to the last non-zero row."""
    given = split.get(f"{key}_lengths")
    if given is not None:
        return np.asarray(given, dtype=np.int64).reshape(n)
    if key == "text" and split.get("text_bert") is not None:
        return np.asarray(split["text_bert"])[:, 1, :].sum(axis=1).astype(np.int64)  # the attention mask
    nonzero = np.abs(arr).sum(axis=2) > 0
    return np.where(nonzero.any(axis=1), arr.shape[1] - np.argmax(nonzero[:, ::-1], axis=1), 0)


def _optional_labels(values, n: int) -> list[float | None]:
    """A split's optional label key (regression_labels_T, ...) as floats, None where absent or NaN."""
    if values is None:
        return [None] * n
    arr = np.asarray(values, dtype=np.float64).reshape(n)
    return [None if np.isnan(v) else float(v) for v in arr]


def import_mmsa(pkl: Path, dataset: str, data_dir: Path = DATA_DIR) -> dict:
    """Write <data_dir>/index/<dataset>.parquet and <data_dir>/features/<dataset>/mmsa_{text,audio,vision}.parquet.

    A split without the keys MMSA writes (id, regression_labels, text, audio, vision) is refused with one
    line naming the key."""
    data = load_pickle(pkl)
    source_sha = sha256_file(pkl)
    manifest = Manifest(dataset, "mmsa_pickle", pkl.parent, "regression")
    rows: dict[str, list[FeatureRow]] = {m: [] for m in MODALITIES}
    dims: dict[str, int] = {}
    for split in SPLITS:
        part = data.get(split)
        if not part:
            continue
        absent = [k for k in ("id", "regression_labels", *MODALITIES) if k not in part]
        if absent:
            raise MMSAPickleError(f"{pkl}: split {split!r} has no key {absent[0]!r}; an MMSA feature pickle holds "
                                  f"id, regression_labels, text, audio and vision per split")
        ids = [str(i).replace("$_$", "/") for i in part["id"]]
        n = len(ids)
        labels = np.asarray(part["regression_labels"], dtype=np.float64).reshape(n)
        raw_text = part.get("raw_text", [None] * n)
        unimodal = {name: _optional_labels(part.get(key), n) for name, key in UNIMODAL_KEYS.items()}
        for i, (uid, label, text) in enumerate(zip(ids, labels, raw_text)):
            manifest.rows.append({"utterance_id": uid, "split": split, "media_path": None, "_where": f"{pkl}:{split}",
                                  "text": str(text) if text is not None else None, "label": float(label),
                                  "label_class": None, **{name: v[i] for name, v in unimodal.items()}})
        for modality in MODALITIES:
            arr = np.asarray(part[modality], dtype=np.float32)
            if arr.ndim == 2:  # a single vector per utterance
                arr = arr[:, None, :]
            dims[modality] = arr.shape[2]
            lengths = _lengths(part, modality, n, arr)
            for i, uid in enumerate(ids):
                seq = arr[i, : int(lengths[i])]
                if seq.shape[0] == 0 or not np.any(seq):
                    rows[modality].append(FeatureRow(uid, "empty_sequence", "all-zero (padding only) in the pickle"))
                else:
                    rows[modality].append(FeatureRow(uid, seq=seq, t=np.arange(seq.shape[0], dtype=np.float32)))
    manifest.rows = check_unique_ids(manifest.rows)
    out_index = manifest_path(data_dir, dataset)
    write_atomic(manifest.to_table(), out_index)
    written = {"manifest": str(out_index)}
    for modality, feature_set in MODALITIES.items():
        info = TableInfo(feature_set=feature_set, modality=modality, kind="seq", dim=dims[modality],
                         extractor="mmsa-pickle-import", extractor_version=IMPORTER_VERSION,
                         weights_id=f"mmsa-pickle:{pkl.name}:{modality} (features as shipped by MMSA)",
                         weights_sha256=None,
                         feature_names=None,
                         params={"source": pkl.name, "source_sha256": source_sha,
                                 "t": "position index in the padded MMSA sequence"})
        path = feature_path(data_dir, dataset, feature_set)
        write_atomic(rows_to_table(rows[modality], info), path)
        written[feature_set] = str(path)
    return {"dataset": dataset, "rows": len(manifest.rows), "written": written}
