"""Training-speed benchmark on a MOSEI-sized synthetic table: `python -m trml.benchmark`.

It writes a manifest and four feature tables in the Parquet contract (random values, a few
rows naturally missing; the shapes follow MOSEI with our extractors: text 384-d, 8 CLIP frames of
512-d, 60 audio frames of 30 features, 8 face frames of 56), then, in a fresh process so that the
peak RSS is the training's own, it measures:

    load_s          Parquet -> tensors (trml.data.load_dataset), once per run
    epoch_s         one training epoch over the train split, plus the valid pass
    data_s          the part of epoch_s spent gathering batches and drawing missing masks
    peak_rss_gib    the process's peak resident memory (ru_maxrss)

and prints them as JSON, with data_s / epoch_s and load_s / epoch_s. The numbers are for the
default model and training settings (trml/config.py defaults, the values in params.yaml), on the
CPU unless --device says otherwise.
"""
from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from common.layout import feature_path, manifest_path

# name -> (modality, kind, dim, frames per utterance)
SHAPES = {
    "text_minilm": ("text", "emb", 384, 1),
    "vision_clip": ("vision", "seq", 512, 8),
    "audio_librosa": ("audio", "seq", 30, 60),
    "face_mediapipe": ("face", "seq", 56, 8),
}
SPLIT_SIZES = {"train": 16_000, "valid": 1_900, "test": 4_700}     # about CMU-MOSEI's split sizes
DATASET = "bench"


def write_synthetic(out: Path, train: int, valid: int = SPLIT_SIZES["valid"], test: int = SPLIT_SIZES["test"],
                    seed: int = 0, missing: float = 0.02) -> dict:
    """Manifest + feature tables under out/{index,features}/bench, in the schema trml reads."""
    rng = np.random.default_rng(seed)
    sizes = {"train": train, "valid": valid, "test": test}
    split = np.concatenate([[s] * n for s, n in sizes.items()])
    n = len(split)
    ids = [f"video{i // 8:05d}/{i % 8}" for i in range(n)]
    label = np.round(rng.uniform(-3, 3, n), 1)
    manifest = pa.table({
        "utterance_id": pa.array(ids, pa.string()), "dataset": pa.array([DATASET] * n, pa.string()),
        "split": pa.array(split.tolist(), pa.string()),
        "media_path": pa.array([f"Raw/{u}.mp4" for u in ids], pa.string()),
        "text": pa.array(["synthetic"] * n, pa.string()),
        "label": pa.array(label, pa.float64()), "label_class": pa.array([None] * n, pa.int64()),
    }).replace_schema_metadata({
        b"trml.dataset": DATASET.encode(), b"trml.layout": b"synthetic", b"trml.root": str(out).encode(),
        b"trml.task": b"regression", b"trml.class_names": b"[]"})
    manifest_path(out, DATASET).parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(manifest, manifest_path(out, DATASET), compression="zstd")
    for name, (modality, kind, dim, frames) in SHAPES.items():
        present = rng.random(n) >= missing
        table = _feature_table(name, modality, kind, dim, frames, ids, present, label, rng)
        path = feature_path(out, DATASET, name)
        path.parent.mkdir(parents=True, exist_ok=True)
        pq.write_table(table, path, compression="zstd")
    return {"utterances": n, "train": train}


def _feature_table(name: str, modality: str, kind: str, dim: int, frames: int, ids: list[str],
                   present: np.ndarray, label: np.ndarray, rng: np.random.Generator) -> pa.Table:
    """One table in the contract: utterance_id, present, status, detail, emb | (seq, t), trml.* metadata."""
    n, k = len(ids), int(present.sum())
    vec = pa.list_(pa.float32(), dim)
    cols = {
        "utterance_id": pa.array(ids, pa.string()),
        "present": pa.array(present, pa.bool_()),
        "status": pa.array(np.where(present, "ok", "missing_file").tolist(), pa.string()),
        "detail": pa.array([None if p else "synthetic: no file" for p in present], pa.string()),
    }
    # Noise plus a weak label signal along one direction, so that training has something to learn.
    direction = rng.normal(size=dim).astype(np.float32)
    values = rng.normal(size=(k * frames, dim)).astype(np.float32)
    values += np.repeat(label[present] / 3.0, frames).astype(np.float32)[:, None] * direction
    if kind == "emb":
        full = np.zeros((n, dim), np.float32)
        full[present] = values
        cols["emb"] = pa.FixedSizeListArray.from_arrays(pa.array(full.reshape(-1)), dim,
                                                         mask=pa.array(~present, pa.bool_()))
        schema_cols = [("emb", vec)]
    else:
        offsets = np.concatenate([[0], np.cumsum(np.where(present, frames, 0))]).astype(np.int32)
        inner = pa.FixedSizeListArray.from_arrays(pa.array(values.reshape(-1)), dim)
        cols["seq"] = pa.ListArray.from_arrays(pa.array(offsets), inner, mask=pa.array(~present, pa.bool_()))
        t = np.tile(np.arange(frames, dtype=np.float32) * 0.125, k)
        cols["t"] = pa.ListArray.from_arrays(pa.array(offsets), pa.array(t), mask=pa.array(~present, pa.bool_()))
        schema_cols = [("seq", pa.list_(vec)), ("t", pa.list_(pa.float32()))]
    schema = pa.schema(
        [pa.field("utterance_id", pa.string(), nullable=False), pa.field("present", pa.bool_(), nullable=False),
         pa.field("status", pa.string(), nullable=False), pa.field("detail", pa.string())]
        + [pa.field(c, ty) for c, ty in schema_cols],
        metadata={f"trml.{key}".encode(): str(v).encode() for key, v in {
            "feature_set": name, "modality": modality, "kind": kind, "dim": dim,
            "extractor": "trml.benchmark", "extractor_version": "1",
            "weights_id": "synthetic(seed=0)", "weights_sha256": "",
            "feature_names": json.dumps([f"f{i}" for i in range(dim)]),
            "params": json.dumps({"frames": frames}),
        }.items()})
    return pa.table(cols, schema=schema)


def measure(root: Path, device: str, threads: int, batch_size: int | None, memmap: Path | None = None) -> dict:
    """Load the tables and train one epoch with the default model; time each part, report peak RSS."""
    import torch

    from trml.config import ModelConfig, TrainConfig
    from trml.data import load_dataset
    from trml.train import fit
    torch.set_num_threads(threads)
    model_cfg = ModelConfig(modalities={m: name for name, (m, *_rest) in SHAPES.items()})
    train_cfg = TrainConfig(epochs=1, device=device, resume=False,
                            **({"batch_size": batch_size} if batch_size else {}))
    t0 = time.perf_counter()
    data = load_dataset(DATASET, model_cfg, root, memmap_dir=memmap)
    load_s = time.perf_counter() - t0
    summary = fit(data, model_cfg, train_cfg, root / "models")
    timing = summary["timing"]
    return {
        "utterances": len(data.ids), "train_utterances": len(data.indices("train")),
        "shapes": {m.name: list(m.x.shape) for m in data.modalities},
        "device": device, "torch_threads": threads, "batch_size": train_cfg.batch_size,
        "hidden": model_cfg.hidden, "rnn": model_cfg.rnn,
        "load_s": round(load_s, 2), "epoch_s": round(timing["epoch_s"], 2), "data_s": round(timing["data_s"], 2),
        "data_share_of_epoch": round(timing["data_s"] / timing["epoch_s"], 4),
        "load_share_of_epoch": round(load_s / timing["epoch_s"], 4),
        "peak_rss_gib": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20, 3),
        **_rss_split(),
        "memmap": str(memmap) if memmap else None,
    }


def _rss_split() -> dict:
    """Current anonymous vs file-backed resident memory (Linux): memory-mapped tensors are file-backed,
    so the kernel can drop them under pressure; ru_maxrss counts both kinds."""
    try:
        lines = Path("/proc/self/status").read_text().splitlines()
    except OSError:
        return {}
    kb = {k: int(v.split()[0]) for k, v in (ln.split(":", 1) for ln in lines) if k in ("RssAnon", "RssFile")}
    return {"rss_anon_gib_at_end": round(kb.get("RssAnon", 0) / 2**20, 3),
            "rss_file_gib_at_end": round(kb.get("RssFile", 0) / 2**20, 3)}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m trml.benchmark", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", default="/tmp/trml-benchmark", help="folder for the synthetic tables and model")
    ap.add_argument("--train", type=int, default=SPLIT_SIZES["train"], help="train utterances (default 16000)")
    ap.add_argument("--device", default="cpu", choices=["cpu", "cuda", "auto"])
    ap.add_argument("--threads", type=int, default=1, help="torch CPU threads (default 1)")
    ap.add_argument("--batch-size", type=int, default=None, help="default: train.batch_size's default")
    ap.add_argument("--memmap", default=None, help="keep the feature tensors in memory-mapped .npy files here")
    ap.add_argument("--measure-only", action="store_true", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    out = Path(args.out)
    if args.measure_only:
        print(json.dumps(measure(out, args.device, args.threads, args.batch_size,
                                 Path(args.memmap) if args.memmap else None)))
        return 0
    marker = manifest_path(out, DATASET)
    if not marker.is_file() or pq.read_table(marker, columns=["split"]).column("split").to_pylist().count(
            "train") != args.train:
        t0 = time.perf_counter()
        write_synthetic(out, args.train)
        print(f"wrote synthetic tables under {out} in {time.perf_counter() - t0:.1f}s", file=sys.stderr)
    # A fresh process, so that the peak RSS is the training's, not the table writer's.
    cmd = [sys.executable, "-m", "trml.benchmark", "--measure-only", "--out", str(out), "--device", args.device,
           "--threads", str(args.threads)] + (["--batch-size", str(args.batch_size)] if args.batch_size else []) \
        + (["--memmap", args.memmap] if args.memmap else [])
    res = subprocess.run(cmd, check=True, stdout=subprocess.PIPE, text=True)
    result = json.loads(res.stdout.strip().splitlines()[-1])
    print(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
