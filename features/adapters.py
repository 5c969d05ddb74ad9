"""Dataset adapters: read a raw layout (MMSA, MELD or a folder of videos) into the manifest Parquet.

The manifest has one row per utterance (docs/architecture.md, "The contracts"). Adapters never drop a
row: a clip that is not on disk keeps its row with media_path null, so its text still counts and its
audio and vision become naturally missing modalities downstream.

Choices where real files are messy (documented in the README):
- CSVs are read as UTF-8 with an optional BOM; a file that is not valid UTF-8 is read as cp1252
  (with a warning), which is what Windows-exported label files usually are. Text is never "cleaned".
- Extra columns are ignored; a missing required column is an error that names the file and column.
  The MMSA layout's optional unimodal labels label_T, label_A, label_V (CH-SIMS has them) are kept: same
  rules as label, except that an empty cell is null; a column that no row fills is left out of the manifest.
- A duplicate utterance id is an error naming both rows. An empty or NaN label is an error naming the
  row (a labelled layout must be labelled); a regression label outside [-3, 3] is an error too.
- MELD restarts Dialogue_ID in each split, so the utterance id is `<split>/dia{D}_utt{U}` with the
  MELD file's split name (train, dev, test); `split` holds our name (train, valid, test).
"""
from __future__ import annotations

import csv
import hashlib
import io
import json
import logging
import math
from dataclasses import dataclass, field
from pathlib import Path

import pyarrow as pa

from common.errors import UserError
from features.config import DatasetConfig
from features.store import write_atomic

log = logging.getLogger("features.adapters")

VIDEO_EXTENSIONS = (".mp4", ".mkv", ".webm", ".mov", ".avi")
SPLITS = ("train", "valid", "test")
SPLIT_ALIASES = {"train": "train", "valid": "valid", "val": "valid", "validation": "valid",
                 "dev": "valid", "test": "test"}
MELD_EMOTIONS = ["neutral", "joy", "surprise", "anger", "sadness", "disgust", "fear"]
MELD_SENTIMENTS = ["negative", "neutral", "positive"]
MELD_SPLITS = {  # MELD file prefix -> (our split, clip folder)
    "train": ("train", "train_splits"),
    "dev": ("valid", "dev_splits_complete"),
    "test": ("test", "output_repeated_splits_test"),
}
MMSA_COLUMNS = ("video_id", "clip_id", "text", "label", "mode")
UNIMODAL_LABELS = ("label_T", "label_A", "label_V")  # optional MMSA columns (CH-SIMS), null when absent
MELD_COLUMNS = ("Utterance", "Speaker", "Emotion", "Sentiment", "Dialogue_ID", "Utterance_ID",
                "StartTime", "EndTime")
LABEL_RANGE = (-3.0, 3.0)


class AdapterError(UserError, ValueError):
    """The raw data is malformed: the message names the file, the row and the fix."""


@dataclass
class Manifest:
    dataset: str
    layout: str
    root: Path
    task: str
    class_names: list[str] = field(default_factory=list)
    rows: list[dict] = field(default_factory=list)

    def to_table(self) -> pa.Table:
        schema = pa.schema([
            pa.field("utterance_id", pa.string(), nullable=False),
            pa.field("dataset", pa.string(), nullable=False),
            pa.field("split", pa.string(), nullable=False),
            pa.field("media_path", pa.string()),
            pa.field("text", pa.string()),
            pa.field("label", pa.float64()),
            pa.field("label_class", pa.int64()),
            pa.field("speaker", pa.string()),
            pa.field("dialogue_id", pa.string()),
            pa.field("start_s", pa.float64()),
            pa.field("end_s", pa.float64()),
            # Only where some row has one: a MOSI/MOSEI/MELD manifest stays byte-identical to one written before
            # these columns existed, so an upgrade re-runs no stage.
            *(pa.field(name, pa.float64()) for name in UNIMODAL_LABELS
              if any(r.get(name) is not None for r in self.rows)),
        ], metadata={
            b"trml.dataset": self.dataset.encode(),
            b"trml.layout": self.layout.encode(),
            # As given: a relative root resolves against the project root, so manifests are portable across clones.
            b"trml.root": self.root.as_posix().encode(),
            b"trml.task": self.task.encode(),
            b"trml.class_names": json.dumps(self.class_names).encode(),
        })
        cols = {f.name: [r.get(f.name) for r in self.rows] for f in schema}
        cols["dataset"] = [self.dataset] * len(self.rows)
        return pa.table(cols, schema=schema)


def index_dataset(ds: DatasetConfig, out: Path) -> dict:
    """Build the manifest of `ds` and write it atomically to `out`; return a summary."""
    root = Path(ds.root)
    if not root.is_dir():
        raise AdapterError(f"dataset {ds.name!r}: root {root} is not a folder. "
                           f"Set datasets[].root in params.yaml (or --root) to the raw {ds.layout} folder.")
    reader = {"mmsa": read_mmsa, "meld": read_meld, "folder": read_folder}[ds.layout]
    manifest = reader(ds)
    write_atomic(manifest.to_table(), out)
    splits = {s: sum(r["split"] == s for r in manifest.rows) for s in SPLITS}
    missing = sum(r["media_path"] is None for r in manifest.rows)
    summary = {"dataset": ds.name, "layout": ds.layout, "manifest": str(out), "rows": len(manifest.rows),
               "splits": splits, "media_missing": missing, "task": manifest.task,
               "class_names": manifest.class_names}
    log.info("indexed %s: %d rows (%s), %d without media", ds.name, len(manifest.rows), splits, missing)
    return summary


# ---------------------------------------------------------------- CSV reading

def read_csv_rows(path: Path, required: tuple[str, ...]) -> list[tuple[int, dict]]:
    """Rows of a CSV as (line number, row dict); tolerate a BOM, cp1252 files and extra columns."""
    raw = path.read_bytes()
    try:
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        log.warning("%s is not valid UTF-8 (%s); reading it as cp1252", path, exc)
        text = raw.decode("cp1252", errors="replace")
    reader = csv.DictReader(io.StringIO(text, newline=""))
    header = [h.strip() for h in (reader.fieldnames or [])]
    missing = [c for c in required if c not in header]
    if missing:
        raise AdapterError(f"{path}: missing column(s) {missing}; found {header}. "
                           f"The file needs at least the columns {list(required)}.")
    reader.fieldnames = header
    rows = []
    for row in reader:
        # DictReader puts surplus cells under the None key; they are ignored like extra columns.
        rows.append((reader.line_num, {k: (v.strip() if isinstance(v, str) else v)
                                       for k, v in row.items() if k is not None}))
    return rows


def parse_label(value: str | None, path: Path, line: int, column: str = "label",
                fix: str = "Fix the row, or remove it if it has no annotation.") -> float:
    try:
        label = float(value)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        raise AdapterError(f"{path}:{line}: {column} {value!r} is not a number. {fix}") from None
    if math.isnan(label):
        raise AdapterError(f"{path}:{line}: {column} is NaN. {fix}")
    lo, hi = LABEL_RANGE
    if not lo <= label <= hi:
        raise AdapterError(f"{path}:{line}: {column} {label} is outside [{lo}, {hi}], the MOSI/MOSEI "
                           f"sentiment range. Rescale the labels, or use task: classification.")
    return label


def parse_optional_label(value: str | None, path: Path, line: int, column: str) -> float | None:
    """An optional label column (label_T, label_A, label_V): an empty cell is null, anything else parse_label's."""
    if value is None or value == "":
        return None
    return parse_label(value, path, line, column, fix=f"Fix the cell, or leave it empty ({column} is optional).")


def parse_split(value: str | None, path: Path, line: int) -> str:
    split = SPLIT_ALIASES.get((value or "").strip().lower())
    if split is None:
        raise AdapterError(f"{path}:{line}: split {value!r} is not one of train, valid (or val, dev), test.")
    return split


def check_unique_ids(rows: list[dict]) -> list[dict]:
    """Raise on a duplicate utterance id (naming both rows); drop the bookkeeping `_where` field."""
    seen: dict[str, str] = {}
    for r in rows:
        uid = r["utterance_id"]
        if uid in seen:
            raise AdapterError(f"duplicate utterance id {uid!r}: {seen[uid]} and {r['_where']}. "
                               f"Each utterance must appear once; remove or rename one of them.")
        seen[uid] = r["_where"]
    for r in rows:
        del r["_where"]
    return rows


def _media(root: Path, rel: Path) -> str | None:
    """The clip's path relative to the root, or None when it is not on disk (a missing modality)."""
    return rel.as_posix() if (root / rel).is_file() else None


# ---------------------------------------------------------------- MMSA (CMU-MOSI, CMU-MOSEI, CH-SIMS)

def read_mmsa(ds: DatasetConfig) -> Manifest:
    root = Path(ds.root)
    path = root / "label.csv"
    if not path.is_file():
        raise AdapterError(f"{path}: not found. The MMSA layout is <root>/label.csv with "
                           f"<root>/Raw/<video_id>/<clip_id>.mp4.")
    rows = []
    for line, r in read_csv_rows(path, MMSA_COLUMNS):
        vid, cid = r["video_id"], r["clip_id"]
        if not vid or not cid:
            raise AdapterError(f"{path}:{line}: empty video_id or clip_id.")
        rows.append({
            "utterance_id": f"{vid}/{cid}", "_where": f"{path}:{line}",
            "split": parse_split(r["mode"], path, line),
            "media_path": _media(root, Path("Raw") / vid / f"{cid}.mp4"),
            "text": r["text"] or None,
            "label": parse_label(r["label"], path, line),
            "label_class": None,
            **{name: parse_optional_label(r.get(name), path, line, name) for name in UNIMODAL_LABELS},
        })
    class_names: list[str] = []
    if ds.task == "classification":
        # MMSA labels read as 3 classes by sign, as MMSA's Acc-3 does.
        class_names = ["negative", "neutral", "positive"]
        for row in rows:
            row["label_class"] = 0 if row["label"] < 0 else (1 if row["label"] == 0 else 2)
    return Manifest(ds.name, "mmsa", root, ds.task, class_names, check_unique_ids(rows))


# ---------------------------------------------------------------- MELD

def parse_timestamp(value: str | None) -> float | None:
    """'00:16:16,059' -> 976.059 seconds; None when absent or malformed (timestamps are optional)."""
    try:
        hms, _, ms = (value or "").partition(",")
        h, m, s = (int(x) for x in hms.split(":"))
        return h * 3600 + m * 60 + s + int(ms or 0) / 1000.0
    except ValueError:
        return None


def read_meld(ds: DatasetConfig) -> Manifest:
    root = Path(ds.root)
    if ds.task != "classification":
        raise AdapterError(f"dataset {ds.name!r}: the meld layout is a classification task; "
                           f"set task: classification (and meld_target: emotion or sentiment) in params.yaml.")
    target_col, class_names = (("Emotion", MELD_EMOTIONS) if ds.meld_target == "emotion"
                               else ("Sentiment", MELD_SENTIMENTS))
    found = [p for p in MELD_SPLITS if (root / f"{p}_sent_emo.csv").is_file()]
    if not found:
        raise AdapterError(f"{root}: no MELD label file; expected one or more of "
                           f"{[f'{p}_sent_emo.csv' for p in MELD_SPLITS]}.")
    rows = []
    for prefix in found:
        split, clip_dir = MELD_SPLITS[prefix]
        path = root / f"{prefix}_sent_emo.csv"
        for line, r in read_csv_rows(path, MELD_COLUMNS):
            value = (r[target_col] or "").lower()
            if value not in class_names:
                raise AdapterError(f"{path}:{line}: {target_col} {r[target_col]!r} is not one of {class_names}.")
            d, u = r["Dialogue_ID"], r["Utterance_ID"]
            if not d.isdigit() or not u.isdigit():
                raise AdapterError(f"{path}:{line}: Dialogue_ID {d!r} / Utterance_ID {u!r} must be integers.")
            name = f"dia{d}_utt{u}"
            rows.append({
                "utterance_id": f"{prefix}/{name}", "_where": f"{path}:{line}",
                "split": split,
                "media_path": _media(root, Path(clip_dir) / f"{name}.mp4"),
                "text": r["Utterance"] or None,
                "label": None,
                "label_class": class_names.index(value),
                "speaker": r["Speaker"] or None,
                "dialogue_id": f"{prefix}/{d}",
                "start_s": parse_timestamp(r["StartTime"]),
                "end_s": parse_timestamp(r["EndTime"]),
            })
    return Manifest(ds.name, "meld", root, "classification", class_names, check_unique_ids(rows))


# ---------------------------------------------------------------- a folder of videos

def hash_split(name: str) -> str:
    """A stable 80/10/10 split by name, for labelled folders whose labels CSV has no split column."""
    bucket = int(hashlib.sha256(name.encode()).hexdigest(), 16) % 10
    return "train" if bucket < 8 else ("valid" if bucket == 8 else "test")


def read_folder(ds: DatasetConfig) -> Manifest:
    """Every video under root (recursively); transcript from <name>.txt; labels from an optional CSV.

    The utterance id is the path relative to root without its extension. The labels CSV (columns
    name,label[,split]) is datasets[].labels_csv, or <root>/labels.csv when present. Without labels,
    every row is in split 'test' with a null label: extraction needs no labels.
    """
    root = Path(ds.root)
    videos = sorted(p for p in root.rglob("*") if p.suffix.lower() in VIDEO_EXTENSIONS and p.is_file())
    labels_path = Path(ds.labels_csv) if ds.labels_csv else root / "labels.csv"
    if ds.labels_csv and not labels_path.is_file():
        raise AdapterError(f"{labels_path}: labels_csv not found (datasets[].labels_csv in params.yaml).")
    labels: dict[str, tuple[int, dict]] = {}
    if labels_path.is_file():
        for line, r in read_csv_rows(labels_path, ("name", "label")):
            key = Path(r["name"]).with_suffix("").as_posix() if Path(r["name"]).suffix.lower() in VIDEO_EXTENSIONS else r["name"]
            if key in labels:
                raise AdapterError(f"duplicate name {key!r} in {labels_path}: lines {labels[key][0]} and {line}.")
            labels[key] = (line, r)
    class_names = sorted({r["label"] for _, r in labels.values()}) if ds.task == "classification" else []
    rows = []
    for video in videos:
        rel = video.relative_to(root)
        uid = rel.with_suffix("").as_posix()
        txt = video.with_suffix(".txt")
        text = txt.read_text(encoding="utf-8", errors="replace").strip() if txt.is_file() else None
        row = {"utterance_id": uid, "_where": str(video), "media_path": rel.as_posix(), "text": text or None,
               "label": None, "label_class": None, "split": "test"}
        entry = labels.get(uid) or labels.get(video.stem)
        if entry:
            line, r = entry
            if ds.task == "regression":
                row["label"] = parse_label(r["label"], labels_path, line)
            else:
                row["label_class"] = class_names.index(r["label"])
            row["split"] = parse_split(r["split"], labels_path, line) if r.get("split") else hash_split(uid)
        rows.append(row)
    if labels:
        unmatched = sorted(set(labels) - {r["utterance_id"] for r in rows} - {Path(r["utterance_id"]).name for r in rows})
        if unmatched:
            log.warning("%s: %d label(s) match no video (e.g. %s)", labels_path, len(unmatched), unmatched[:3])
    if not rows:
        log.warning("%s: no videos found (extensions %s)", root, ", ".join(VIDEO_EXTENSIONS))
    return Manifest(ds.name, "folder", root, ds.task, class_names, check_unique_ids(rows))
