"""From the Parquet contracts to tensors, once: the manifest joined with the chosen feature tables.

Reads only the files (docs/architecture.md, "The contracts"), never the code that wrote them:
  data/index/<dataset>.parquet                     the manifest (splits, labels, trml.task)
  data/features/<dataset>/<feature_set>.parquet    one row per manifest row, `present` + `emb` or `seq`

Every modality becomes dense tensors in manifest row order:
  emb -> x (N, d)                    seq -> x (N, T, d) zero-padded, with lengths (N,)
  present (N,) bool: the natural mask (present=False rows are zeros and never read).
Sequences longer than max_seq_len are average-pooled in time into max_seq_len steps, so one
60 s utterance cannot make the whole padded tensor huge. The modalities listed in
`standardize` are z-scored with statistics of the train split only.
"""
from __future__ import annotations

import hashlib
import json
import logging
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import torch

from common.errors import UserError
from common.files import sha256_file
from common.layout import feature_path, manifest_path, schema_metadata
from trml.config import ModelConfig

log = logging.getLogger(__name__)

SPLITS = ("train", "valid", "test")
READ_BATCH = 4096          # feature-table rows decoded at a time
STATS_CHUNK = 4096         # rows per chunk when summing train statistics


class DataError(UserError, ValueError):
    """A manifest or feature table breaks the contract; the message names the file and the fix."""


@dataclass
class ModalityData:
    name: str                       # text | vision | audio | face
    feature_set: str
    kind: str                       # emb | seq
    dim: int
    x: torch.Tensor                 # (N, d) or (N, T, d), float32, zeros where absent
    present: torch.Tensor           # (N,) bool: the natural mask
    lengths: torch.Tensor | None    # (N,) int64 for seq (0 where absent), None for emb
    provenance: dict[str, str]      # weights_id, extractor, ..., file sha256
    status_counts: dict[str, int]
    nonfinite: int = 0              # NaN/inf values found in present rows (set to 0 when loaded)


@dataclass
class TRMLData:
    dataset: str
    task: str                       # regression | classification
    class_names: list[str]
    ids: np.ndarray                 # (N,) utterance ids, manifest order
    split: np.ndarray               # (N,) train | valid | test
    y: torch.Tensor                 # (N,) float32 (regression) or int64 (classification)
    modalities: list[ModalityData]
    standardization: dict[str, dict[str, torch.Tensor]] = field(default_factory=dict)
    manifest_sha256: str = ""
    memmapped: bool = False         # feature tensors live in .npy files: they stay there, batches move
    batch_device: torch.device | None = None

    @property
    def names(self) -> list[str]:
        return [m.name for m in self.modalities]

    @property
    def n_outputs(self) -> int:
        return 1 if self.task == "regression" else len(self.class_names)

    def present(self) -> torch.Tensor:
        """(N, K) bool natural mask, columns in self.names order."""
        return torch.stack([m.present for m in self.modalities], dim=1)

    def indices(self, split: str) -> torch.Tensor:
        return torch.from_numpy(np.flatnonzero(self.split == split)).long()

    def batch(self, idx: torch.Tensor) -> dict[str, tuple[torch.Tensor, torch.Tensor | None]]:
        """Inputs of rows idx: {modality: (x, lengths)}; sequences trimmed to the batch's longest."""
        out = {}
        for m in self.modalities:
            if m.kind == "seq":
                lengths = m.lengths[idx]
                t = max(int(lengths.max()), 1) if len(idx) else 1
                out[m.name] = (m.x[idx, :t], lengths)
            else:
                out[m.name] = (m.x[idx], None)
        if self.batch_device is not None:
            out = {k: (x.to(self.batch_device, non_blocking=True), None if n is None else n.to(self.batch_device))
                   for k, (x, n) in out.items()}
        return out

    def to(self, device: torch.device) -> "TRMLData":
        """Move the tensors to `device` once; memory-mapped features stay on disk and each batch moves."""
        if self.memmapped:
            self.batch_device = None if device.type == "cpu" else device
        else:
            for m in self.modalities:
                m.x, m.present = m.x.to(device), m.present.to(device)
                if m.lengths is not None:
                    m.lengths = m.lengths.to(device)
        self.y = self.y.to(device)
        return self

    def provenance(self) -> dict:
        """Which manifest and which feature weights made these tensors (goes into every output)."""
        return {
            "dataset": self.dataset,
            "task": self.task,
            "manifest_sha256": self.manifest_sha256,
            "modalities": {m.name: dict(m.provenance) for m in self.modalities},
        }

    def fingerprint(self) -> str:
        """One hash of every input file: a checkpoint only resumes on the very same data."""
        return hashlib.sha256(json.dumps(self.provenance(), sort_keys=True).encode()).hexdigest()


def load_dataset(dataset: str, model_cfg: ModelConfig, data_dir: Path, memmap_dir: Path | None = None) -> TRMLData:
    """Join the manifest and the configured feature tables into tensors (the only file reading in trml).

    memmap_dir: put the feature tensors in .npy files there (memory-mapped) instead of in RAM, for
    tables larger than memory; the OS pages in what each batch touches. Results are identical.
    """
    enabled = model_cfg.modalities.enabled()
    if not enabled:
        raise DataError("model.modalities switches every modality off; set at least one feature set")
    mpath = manifest_path(data_dir, dataset)
    if not mpath.is_file():
        raise DataError(f"{mpath}: manifest not found. Run `trml index --dataset {dataset}` first.")
    man = pq.read_table(mpath)
    meta = schema_metadata(man.schema)
    task = meta.get("task", "")
    if task not in ("regression", "classification"):
        raise DataError(f"{mpath}: schema metadata trml.task is {task!r}; expected regression or "
                        "classification. Re-run `trml index` to rewrite the manifest.")
    class_names = json.loads(meta.get("class_names", "[]") or "[]")
    if task == "classification" and len(class_names) < 2:
        raise DataError(f"{mpath}: a classification manifest needs trml.class_names with at least two "
                        f"names, got {class_names!r}")
    for col in ("utterance_id", "split", "label" if task == "regression" else "label_class"):
        if col not in man.column_names:
            raise DataError(f"{mpath}: column {col!r} is missing (has {man.column_names})")

    ids = man.column("utterance_id").to_numpy(zero_copy_only=False).astype(object)
    if len(set(ids)) != len(ids):
        raise DataError(f"{mpath}: utterance_id is not unique")
    split = np.asarray(man.column("split").fill_null("").to_numpy(zero_copy_only=False), dtype=object)
    y, labelled = _labels(man, task, class_names, mpath)
    bad_split = sorted(set(split[labelled]) - set(SPLITS))
    if bad_split:
        raise DataError(f"{mpath}: split values {bad_split} are not train/valid/test")
    if (~labelled).any():
        log.warning("%s: %d of %d rows have no label and are left out of training and evaluation",
                    mpath, int((~labelled).sum()), len(ids))
        split = np.where(labelled, split, "unlabelled").astype(object)
    for s in ("train", "valid"):
        if not (split == s).any():
            raise DataError(f"{mpath}: no labelled rows in split {s!r}; training needs train and valid "
                            "(valid drives early stopping)")

    modalities = [_load_modality(name, fs, data_dir, dataset, ids, model_cfg.max_seq_len, memmap_dir)
                  for name, fs in enabled.items()]
    data = TRMLData(dataset=dataset, task=task, class_names=class_names, ids=ids, split=split,
                    y=y, modalities=modalities, manifest_sha256=sha256_file(mpath), memmapped=memmap_dir is not None)
    _standardize(data, set(model_cfg.standardize))
    for m in data.modalities:
        log.info("%s: %s %s dim=%d present %d/%d (%s) weights=%s", dataset, m.name, m.feature_set,
                 m.dim, int(m.present.sum()), len(ids), m.status_counts, m.provenance["weights_id"])
    return data


def _labels(man: pa.Table, task: str, class_names: list[str], path: Path) -> tuple[torch.Tensor, np.ndarray]:
    if task == "regression":
        col = man.column("label").cast(pa.float64())
        labelled = ~pc.is_null(col).to_numpy(zero_copy_only=False)
        y = col.fill_null(0.0).to_numpy(zero_copy_only=False).astype(np.float32)
        bad = labelled & ~np.isfinite(y)
        if bad.any():
            raise DataError(f"{path}: {int(bad.sum())} labels are not finite")
        return torch.from_numpy(y), labelled
    col = man.column("label_class").cast(pa.int64())
    labelled = ~pc.is_null(col).to_numpy(zero_copy_only=False)
    y = col.fill_null(0).to_numpy(zero_copy_only=False).astype(np.int64)
    out = labelled & ((y < 0) | (y >= len(class_names)))
    if out.any():
        raise DataError(f"{path}: label_class values {sorted(set(y[out].tolist()))} are outside "
                        f"0..{len(class_names) - 1} ({class_names})")
    return torch.from_numpy(y), labelled


def _load_modality(name: str, feature_set: str, data_dir: Path, dataset: str, ids: np.ndarray,
                   max_seq_len: int, memmap_dir: Path | None = None) -> ModalityData:
    """One feature table -> dense tensors in manifest order, streamed in record batches.

    The payload is decoded batch by batch straight into the preallocated tensor, so the peak memory
    is the tensor plus one batch (decoding a whole nested column at once costs several times its size).
    """
    path = feature_path(data_dir, dataset, feature_set)
    if not path.is_file():
        raise DataError(f"{path}: feature table not found for model.modalities.{name}={feature_set}. "
                        f"Run `trml extract --dataset {dataset} --feature-set {feature_set}`, "
                        f"or set model.modalities.{name}: null")
    pf = pq.ParquetFile(path)
    meta = schema_metadata(pf.schema_arrow)
    kind, dim = meta.get("kind"), int(meta.get("dim", "0") or 0)
    if meta.get("modality") != name:
        raise DataError(f"{path}: holds modality {meta.get('modality')!r}, but params put it under "
                        f"model.modalities.{name}")
    if kind not in ("emb", "seq") or dim <= 0:
        raise DataError(f"{path}: schema metadata kind={kind!r} dim={dim}; expected emb|seq and dim > 0")
    payload = "emb" if kind == "emb" else "seq"
    # The small columns first: ids, present, status, and each sequence's length (from its timestamps).
    head = pf.read(columns=["utterance_id", "present", "status"] + (["t"] if kind == "seq" else []),
                   use_threads=False)

    # Join on utterance_id: feature row j belongs to manifest row row_of[j].
    fids = head.column("utterance_id")
    if len(pc.unique(fids)) != len(fids):
        raise DataError(f"{path}: utterance_id is not unique; re-run the extraction")
    row_of = pc.index_in(fids, value_set=pa.array(ids, type=pa.string())).to_numpy(zero_copy_only=False)
    stale = np.isnan(row_of) if row_of.dtype.kind == "f" else np.zeros(len(row_of), bool)
    covered = np.zeros(len(ids), bool)
    covered[row_of[~stale].astype(np.int64)] = True
    if stale.any() or not covered.all():
        raise DataError(
            f"{path}: does not match the manifest ({int((~covered).sum())} manifest rows without a "
            f"feature row, {int(stale.sum())} feature rows not in the manifest). The table is stale: "
            f"re-run `trml extract --dataset {dataset} --feature-set {feature_set}`")
    row_of = row_of.astype(np.int64)
    n = len(ids)
    present_f = head.column("present").to_numpy(zero_copy_only=False).astype(bool)
    statuses = head.column("status").to_numpy(zero_copy_only=False).astype(str)
    status_counts = {str(s): int(c) for s, c in zip(*np.unique(statuses, return_counts=True))}

    if kind == "emb":
        x = _zeros((n, dim), memmap_dir, f"{dataset}.{feature_set}")
        lengths_f = None
    else:
        lengths_f = pc.fill_null(pc.list_value_length(head.column("t")), 0).to_numpy(
            zero_copy_only=False).astype(np.int64)
        lengths_f = np.where(present_f, lengths_f, 0)
        t = max(int(np.minimum(lengths_f, max_seq_len).max(initial=0)), 1)
        x = _zeros((n, t, dim), memmap_dir, f"{dataset}.{feature_set}")
    got = np.zeros(len(row_of), bool)            # rows whose payload really arrived
    nonfinite, start = 0, 0
    for batch in pf.iter_batches(batch_size=READ_BATCH, columns=[payload], use_threads=False):
        col = batch.column(0)
        rows = slice(start, start + len(col))
        start += len(col)
        has = ~pc.is_null(col).to_numpy(zero_copy_only=False) & present_f[rows]
        if kind == "emb":
            values = _float_values(col.filter(pa.array(has)).flatten(), dim)
            x[row_of[rows][has]] = values
            got[rows] = has
        else:
            raw_len = pc.fill_null(pc.list_value_length(col), 0).to_numpy(zero_copy_only=False).astype(np.int64)
            want = lengths_f[rows]
            if (has & (raw_len != want)).any():
                j = int(np.flatnonzero(has & (raw_len != want))[0]) + rows.start
                raise DataError(f"{path}: row {fids[j]}: seq has {raw_len[j - rows.start]} frames but t has "
                                f"{lengths_f[j]}; the table is corrupt, re-run the extraction")
            keep = has & (raw_len > 0)
            frames = _float_values(col.filter(pa.array(keep)).flatten(), dim)
            _scatter_frames(x, frames, raw_len[keep], row_of[rows][keep], max_seq_len)
            values = frames
            got[rows] = keep
        nonfinite += int(values.size - np.isfinite(values).sum())
    lost = present_f & ~got
    if lost.any():
        log.warning("%s: %d rows say present=True but carry no payload; treated as missing", path, int(lost.sum()))
    present = np.zeros(n, bool)
    present[row_of[got]] = True
    lengths = None
    if kind == "seq":
        lengths = np.zeros(n, np.int64)
        lengths[row_of] = np.where(got, np.minimum(lengths_f, max_seq_len), 0)
        lengths = torch.from_numpy(lengths)
    return ModalityData(
        name=name, feature_set=feature_set, kind=kind, dim=dim, x=torch.from_numpy(x),
        present=torch.from_numpy(present), lengths=lengths, status_counts=status_counts, nonfinite=nonfinite,
        provenance={
            "feature_set": feature_set, "weights_id": meta.get("weights_id", ""),
            "weights_sha256": meta.get("weights_sha256", ""), "extractor": meta.get("extractor", ""),
            "extractor_version": meta.get("extractor_version", ""), "file_sha256": sha256_file(path),
        })


def _zeros(shape: tuple[int, ...], memmap_dir: Path | None, name: str) -> np.ndarray:
    """A float32 zero array, in RAM or as a memory-mapped .npy file under memmap_dir."""
    if memmap_dir is None:
        return np.zeros(shape, np.float32)
    Path(memmap_dir).mkdir(parents=True, exist_ok=True)
    path = Path(memmap_dir) / f"{name}.npy"
    return np.lib.format.open_memmap(path, mode="w+", dtype=np.float32, shape=shape)   # a new file reads as 0


def _float_values(arr: pa.Array, dim: int) -> np.ndarray:
    """Float values (or a FixedSizeList<float32>[dim] array without nulls) as an (n, dim) float32 array."""
    if pa.types.is_fixed_size_list(arr.type):
        arr = arr.flatten()
    flat = arr.to_numpy(zero_copy_only=False)
    return np.asarray(flat, dtype=np.float32).reshape(-1, dim)


def _scatter_frames(x: np.ndarray, frames: np.ndarray, lengths: np.ndarray, dest: np.ndarray, max_len: int) -> None:
    """Write rows of frames (concatenated; row i has lengths[i] frames) into x[dest[i], :len].

    A row that fits is copied as it is. A row longer than max_len is cut into max_len equal spans of
    frames (frame p goes to slot floor(p * max_len / length)) and each span is averaged; vectorised
    with np.add.reduceat over runs of equal (row, slot).
    """
    if len(frames) == 0:
        return
    frame_row = np.repeat(np.arange(len(lengths)), lengths)
    pos = np.arange(len(frames)) - np.repeat(np.cumsum(lengths) - lengths, lengths)
    fits = (lengths <= max_len)[frame_row]
    if fits.all():
        x[dest[frame_row], pos] = frames
        return
    x[dest[frame_row[fits]], pos[fits]] = frames[fits]
    row, p = frame_row[~fits], pos[~fits]
    slot = p * max_len // lengths[row]
    key = row * max_len + slot                                    # non-decreasing
    starts = np.flatnonzero(np.r_[True, key[1:] != key[:-1]])
    sums = np.add.reduceat(frames[~fits].astype(np.float64), starts, axis=0)
    counts = np.diff(np.r_[starts, len(key)])
    x[dest[row[starts]], slot[starts]] = (sums / counts[:, None]).astype(np.float32)


def _standardize(data: TRMLData, which: set[str]) -> None:
    """z-score the chosen modalities with train-split statistics.

    Sums run over chunks of rows in float64, so no full-size temporary is made. Entries beyond a
    row's length and absent rows are zeros, so they add nothing to the sums; counts come from the
    mask. Non-finite values (NaN f0, say) are left out of the statistics and then set to 0, which is
    the train mean of a z-scored modality (and plain 0 for the others).
    """
    train = torch.from_numpy(data.split == "train")
    for m in data.modalities:
        if m.nonfinite:
            log.warning("%s %s: %d non-finite feature values in present rows; set to %s", data.dataset,
                        m.feature_set, m.nonfinite, "the train mean" if m.name in which else "0")
        if m.name in which:
            valid = _valid_entries(m)                            # (N,) or (N, T) bool
            total = torch.zeros(m.dim, dtype=torch.float64)
            squares = torch.zeros(m.dim, dtype=torch.float64)
            count = torch.zeros(m.dim, dtype=torch.float64)
            for chunk in torch.nonzero(train).flatten().split(STATS_CHUNK):
                xc = m.x[chunk].double().reshape(-1, m.dim)
                count += int(valid[chunk].sum())
                if m.nonfinite:
                    bad = ~torch.isfinite(xc)
                    xc = torch.where(bad, 0.0, xc)
                    count -= bad.sum(0)
                total += xc.sum(0)
                squares += (xc * xc).sum(0)
            count = count.clamp(min=1)
            mean = total / count
            std = (squares / count - mean * mean).clamp(min=0).sqrt()
            std = torch.where(std > 1e-6, std, torch.ones_like(std))
            m.x.sub_(mean.float()).div_(std.float())
            m.x.masked_fill_(~valid.unsqueeze(-1), 0.0)           # padding and absent rows back to 0
            data.standardization[m.name] = {"mean": mean.float(), "std": std.float()}
        if m.nonfinite:
            m.x.nan_to_num_(nan=0.0, posinf=0.0, neginf=0.0)


def _valid_entries(m: ModalityData) -> torch.Tensor:
    if m.kind == "emb":
        return m.present
    steps = torch.arange(m.x.shape[1])
    return m.present.unsqueeze(1) & (steps.unsqueeze(0) < m.lengths.unsqueeze(1))
