"""Training: one loop over epochs, with simulated missing modalities, SML, early stopping and resume.

    models/<dataset>/<variant>/best.pt         the weights with the best valid score (what evaluate uses)
    models/<dataset>/<variant>/last.pt         everything needed to resume (optimizer, early-stopping state)
    models/<dataset>/<variant>/train_log.csv   one row per epoch (also copied to plots/<dataset>/train_<variant>.csv)
    models/<dataset>/<variant>/summary.json    best epoch, best valid metrics, configs, feature weights ids

Reproducibility: every random draw of epoch e (shuffle, missing mask, dropout) comes from a seed
derived from (train.seed, e), so an interrupted run resumed from last.pt continues exactly as an
uninterrupted one. On CPU the run is deterministic (torch.use_deterministic_algorithms).
"""
from __future__ import annotations

import contextlib
import csv
import hashlib
import io
import json
import logging
import os
import time
from pathlib import Path

import numpy as np
import torch
from tqdm.auto import tqdm

from trml.config import ModelConfig, TrainConfig
from trml.data import TRMLData, load_dataset
from trml.losses import sml_loss, task_loss
from trml.metrics import LOWER_IS_BETTER, compute_metrics, metric_keys
from trml.missing import derive_seed, drop_at_rate
from trml.model import TRML, InputSpec

log = logging.getLogger(__name__)

CHECKPOINT_FORMAT = 1


def run_dir(models_dir: Path, dataset: str, variant: str) -> Path:
    return Path(models_dir) / dataset / variant


def train_missing_rate(train_cfg: TrainConfig) -> float:
    """The upper bound is trained (and selected) on complete data; every other variant at train.missing_rate."""
    return 0.0 if train_cfg.variant == "upper_bound" else train_cfg.missing_rate


def uses_sml(train_cfg: TrainConfig) -> bool:
    return train_cfg.variant in ("trml", "upper_bound") and train_cfg.alpha > 0


class DeviceUnavailableError(RuntimeError):
    """train.device asks for a device that is not there; the message names the key and the fix."""


def pick_device(choice: str) -> torch.device:
    """train.device: 'auto' is CUDA when torch sees it, else the CPU; 'cuda' without CUDA is an error, not a fallback."""
    if choice == "cuda" and not torch.cuda.is_available():
        raise DeviceUnavailableError("train.device is 'cuda' but torch sees no CUDA device (torch.cuda.is_available() "
                                     "is False); set train.device to 'auto' or 'cpu' in params.yaml")
    if choice == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(choice)


def input_specs(data: TRMLData) -> list[InputSpec]:
    return [InputSpec(m.name, m.kind, m.dim) for m in data.modalities]


def train(dataset: str, model_cfg: ModelConfig, train_cfg: TrainConfig, data_dir: Path, models_dir: Path,
          plots_dir: Path | None = None) -> dict:
    """`trml train`: load the Parquet tables once, then fit. Returns the summary (also in summary.json)."""
    pick_device(train_cfg.device)             # a device that is not there fails now, not after the load
    data = load_dataset(dataset, model_cfg, Path(data_dir), memmap_path(train_cfg, dataset))
    return fit(data, model_cfg, train_cfg, Path(models_dir), plots_dir=plots_dir)


def fit(data: TRMLData, model_cfg: ModelConfig, train_cfg: TrainConfig, models_dir: Path,
        plots_dir: Path | None = None) -> dict:
    """Train train_cfg.variant on already-loaded data (compare() reuses one load for every variant)."""
    cfg = train_cfg
    if cfg.early_stop_on != "loss" and cfg.early_stop_on not in metric_keys(data.task):
        raise ValueError(f"train.early_stop_on={cfg.early_stop_on!r} is not a {data.task} metric; "
                         f"use 'loss' or one of {metric_keys(data.task)}")
    out = run_dir(models_dir, data.dataset, cfg.variant)
    out.mkdir(parents=True, exist_ok=True)
    device = pick_device(cfg.device)
    rate, use_sml = train_missing_rate(cfg), uses_sml(cfg)
    signature = run_signature(model_cfg, cfg, data)

    with deterministic(device):
        torch.manual_seed(cfg.seed)
        model = TRML(model_cfg, input_specs(data), data.n_outputs, cfg.variant).to(device)
        opt = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
        state = {"epoch": -1, "best_epoch": -1, "best_score": None, "bad_epochs": 0, "stopped": False, "log": []}
        if cfg.resume:
            state = _resume(out / "last.pt", signature, model, opt, state)
        amp_dtype = _amp_dtype(device, cfg.amp)
        scaler = torch.amp.GradScaler(device.type, enabled=amp_dtype == torch.float16)
        data.to(device)

        natural = data.present().cpu()
        train_idx, valid_idx = data.indices("train"), data.indices("valid")
        valid_mask = drop_at_rate(natural[valid_idx], rate, derive_seed(cfg.seed, "valid"))
        timing = {"epochs": 0, "epoch_s": 0.0, "data_s": 0.0}
        first = state["epoch"] + 1
        done = state["stopped"] or first >= cfg.epochs
        if done:
            log.info("%s: already trained (%d epochs, best %d); nothing to resume", out, first, state["best_epoch"])
        bar = tqdm(range(first, cfg.epochs) if not done else range(0), desc=f"train {data.dataset}/{cfg.variant}", unit="epoch",
                   initial=first, total=cfg.epochs, disable=True if done else None)   # None: only on a TTY
        for epoch in bar:
            t0 = time.perf_counter()
            torch.manual_seed(derive_seed(cfg.seed, "epoch", epoch))            # dropout
            g = torch.Generator().manual_seed(derive_seed(cfg.seed, "shuffle", epoch))
            perm = train_idx[torch.randperm(len(train_idx), generator=g)]
            mask = drop_at_rate(natural[perm], rate, derive_seed(cfg.seed, "mask", epoch)).to(device)
            model.train()
            sums = torch.zeros(3, dtype=torch.float64, device=device)
            data_s = time.perf_counter() - t0
            for start in range(0, len(perm), cfg.batch_size):
                td = time.perf_counter()
                idx = perm[start:start + cfg.batch_size]
                batch, y, m = data.batch(idx), data.y[idx], mask[start:start + cfg.batch_size]
                data_s += time.perf_counter() - td
                with _autocast(device, amp_dtype):
                    o = model(batch, m)
                l_task = task_loss(o.pred, y, data.task, cfg.regression_loss)
                l_sml = sml_loss(o.real, o.virtual, m, cfg.tau, cfg.sml_detach_real) if use_sml else torch.zeros((), device=device)
                loss = l_task + cfg.alpha * l_sml                    # L = L_task + alpha * L_sml
                opt.zero_grad(set_to_none=True)
                scaler.scale(loss).backward()
                if cfg.grad_clip > 0:
                    scaler.unscale_(opt)
                    torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
                scaler.step(opt)
                scaler.update()
                sums += len(idx) * torch.stack([loss, l_task, l_sml]).detach().double()   # no sync per step

            pred = predict(model, data, valid_idx, valid_mask, cfg.batch_size, amp_dtype)
            y_valid = data.y[valid_idx].cpu()
            valid_loss = float(task_loss(torch.from_numpy(pred), y_valid, data.task, cfg.regression_loss))
            valid_metrics = compute_metrics(data.task, pred, y_valid.numpy())
            score = valid_loss if cfg.early_stop_on == "loss" else valid_metrics[cfg.early_stop_on]
            improved = _better(score, state["best_score"], cfg.early_stop_on)
            if improved:
                state.update(best_epoch=epoch, best_score=score, bad_epochs=0)
            else:
                state["bad_epochs"] += 1
            state["epoch"] = epoch
            state["stopped"] = state["bad_epochs"] >= cfg.patience
            n = max(len(perm), 1)
            sums = sums.cpu().numpy()
            state["log"].append({
                "epoch": epoch, "train_loss": float(sums[0] / n), "train_task": float(sums[1] / n),
                "train_sml": float(sums[2] / n),
                "valid_loss": valid_loss, **{f"valid_{k}": v for k, v in valid_metrics.items()},
                "best": int(improved)})
            payload = _checkpoint(model, model_cfg, cfg, data, signature, state)
            if improved:
                save_atomic(payload, out / "best.pt")
            save_atomic({**payload, "optimizer": opt.state_dict()}, out / "last.pt")
            epoch_s = time.perf_counter() - t0
            timing["epochs"] += 1
            timing["epoch_s"] += epoch_s
            timing["data_s"] += data_s
            bar.set_postfix(loss=f"{sums[0] / n:.4f}", valid=f"{valid_loss:.4f}", best=state["best_epoch"])
            log.info("%s/%s epoch %d: train %.4f (task %.4f, sml %.4f) valid %.4f %s %.1fs", data.dataset,
                     cfg.variant, epoch, sums[0] / n, sums[1] / n, sums[2] / n, valid_loss,
                     "*" if improved else "", epoch_s)
            if state["stopped"]:
                log.info("early stopping after epoch %d (best %d, patience %d)", epoch, state["best_epoch"], cfg.patience)
                break
        bar.close()

    if not (out / "best.pt").is_file():
        raise RuntimeError(f"{out}/best.pt was not written: training ran no epoch")
    _write_log(state["log"], data.task, out / "train_log.csv",
               Path(plots_dir) / data.dataset / f"train_{cfg.variant}.csv" if plots_dir else None)
    summary = {
        "dataset": data.dataset, "variant": cfg.variant, "task": data.task,
        "epochs_run": state["epoch"] + 1, "best_epoch": state["best_epoch"], "stopped_early": state["stopped"],
        "train_missing_rate": rate, "sml": use_sml,
        "best_valid": next((r for r in state["log"] if r["epoch"] == state["best_epoch"]), {}),
        "config": {"model": model_cfg.model_dump(mode="json"), "train": cfg.model_dump(mode="json")},
        "provenance": data.provenance(),
    }
    write_json(summary, out / "summary.json")
    summary["timing"] = timing             # not written: the files stay byte-identical across runs
    return summary


@torch.inference_mode()
def predict(model: TRML, data: TRMLData, idx: torch.Tensor, mask: torch.Tensor, batch_size: int,
            amp_dtype: torch.dtype | None = None) -> np.ndarray:
    """Model outputs for rows idx under mask (len(idx), K): scores (n,) or logits (n, C), float32 numpy."""
    model.eval()
    device = next(model.parameters()).device
    outs = []
    for start in range(0, len(idx), max(batch_size, 256)):
        sl = slice(start, start + max(batch_size, 256))
        with _autocast(device, amp_dtype):
            outs.append(model(data.batch(idx[sl]), mask[sl].to(device)).pred.float().cpu())
    if not outs:
        return np.zeros((0,) if data.n_outputs == 1 else (0, data.n_outputs), np.float32)
    return torch.cat(outs).numpy()


def load_checkpoint(path: Path, device: torch.device | str = "cpu") -> dict:
    if not Path(path).is_file():
        raise FileNotFoundError(f"{path}: no checkpoint. Run `trml train` (or `trml compare`) first.")
    ckpt = torch.load(path, map_location=device, weights_only=True)
    if ckpt.get("format") != CHECKPOINT_FORMAT:
        raise ValueError(f"{path}: checkpoint format {ckpt.get('format')!r}, expected {CHECKPOINT_FORMAT}; retrain")
    return ckpt


def run_signature(model_cfg: ModelConfig, train_cfg: TrainConfig, data: TRMLData) -> str:
    """What must match for last.pt to be resumed: every setting but epochs/device/resume, and the data."""
    t = train_cfg.model_dump(mode="json")
    for k in ("epochs", "device", "resume", "memmap_dir"):
        t.pop(k)
    blob = json.dumps({"model": model_cfg.model_dump(mode="json"), "train": t, "data": data.fingerprint()},
                      sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()


def save_atomic(payload: dict, path: Path) -> None:
    """torch.save to a temporary file beside `path`, then rename: never a half-written checkpoint."""
    tmp = _tmp_beside(path)
    try:
        # Through a file object: given a path, torch names the zip's inner folder after the (pid-stamped)
        # temporary file, and equal checkpoints would differ in bytes from run to run.
        with open(tmp, "wb") as fh:
            torch.save(payload, fh)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def write_text_atomic(text: str, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = _tmp_beside(path)
    try:
        tmp.write_text(text, encoding="utf-8")
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def write_json(obj: dict, path: Path) -> None:
    """JSON in a stable layout (insertion order is deterministic; no NaN), written atomically."""
    write_text_atomic(json.dumps(obj, indent=2, allow_nan=False) + "\n", path)


def _tmp_beside(path: Path) -> Path:
    return path.with_name(f".{path.name}.{os.getpid()}.tmp")


@contextlib.contextmanager
def deterministic(device: torch.device):
    """Deterministic kernels on CPU for the duration of a run (restored afterwards)."""
    if device.type != "cpu":
        torch.backends.cudnn.benchmark = False
        yield
        return
    before = torch.are_deterministic_algorithms_enabled()
    torch.use_deterministic_algorithms(True)
    try:
        yield
    finally:
        torch.use_deterministic_algorithms(before)


def _checkpoint(model: TRML, model_cfg: ModelConfig, cfg: TrainConfig, data: TRMLData, signature: str,
                state: dict) -> dict:
    return {
        "format": CHECKPOINT_FORMAT,
        "model": model.state_dict(),
        "epoch": state["epoch"],
        "state": json.loads(json.dumps(state)),
        "signature": signature,
        "config": {"model": model_cfg.model_dump(mode="json"), "train": cfg.model_dump(mode="json")},
        "inputs": [{"name": s.name, "kind": s.kind, "dim": s.dim} for s in input_specs(data)],
        "n_outputs": data.n_outputs,
        "task": data.task,
        "class_names": list(data.class_names),
        "provenance": data.provenance(),
        "data_fingerprint": data.fingerprint(),
        "standardization": {k: {s: t.cpu() for s, t in v.items()} for k, v in data.standardization.items()},
    }


def _resume(path: Path, signature: str, model: TRML, opt: torch.optim.Optimizer, fresh: dict) -> dict:
    if not path.is_file():
        return fresh
    try:
        ckpt = load_checkpoint(path)
    except Exception as exc:           # a half-written or foreign file must not block a fresh run
        log.warning("%s: cannot be read (%s); training from scratch", path, exc)
        return fresh
    if ckpt.get("signature") != signature:
        log.info("%s: config or data changed since it was written; training from scratch", path)
        return fresh
    model.load_state_dict(ckpt["model"])
    opt.load_state_dict(ckpt["optimizer"])
    log.info("%s: resuming after epoch %d", path, ckpt["epoch"])
    return ckpt["state"]


def memmap_path(train_cfg: TrainConfig, dataset: str) -> Path | None:
    """Where train.memmap_dir puts this dataset's disk-backed tensors (None: in memory)."""
    return Path(train_cfg.memmap_dir) / dataset if train_cfg.memmap_dir else None


def _better(score: float | None, best: float | None, key: str) -> bool:
    if score is None:
        return False
    if best is None:
        return True
    return score < best if key in LOWER_IS_BETTER else score > best


def _amp_dtype(device: torch.device, amp: bool) -> torch.dtype | None:
    if device.type != "cuda" or not amp:
        return None
    return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16


def _autocast(device: torch.device, dtype: torch.dtype | None):
    return torch.autocast(device.type, dtype=dtype) if dtype is not None else contextlib.nullcontext()


def _write_log(rows: list[dict], task: str, path: Path, copy: Path | None) -> None:
    cols = ["epoch", "train_loss", "train_task", "train_sml", "valid_loss",
            *[f"valid_{k}" for k in metric_keys(task)], "best"]
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(cols)
    for r in rows:
        w.writerow(["" if r.get(c) is None else (f"{r[c]:.6f}" if isinstance(r[c], float) else r[c]) for c in cols])
    for p in [path] + ([copy] if copy else []):
        write_text_atomic(buf.getvalue(), p)
