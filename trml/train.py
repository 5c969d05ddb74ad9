"""Training: one loop over epochs, with simulated missing modalities, SML, early stopping and resume.

    models/<dataset>/<variant>/best.pt         the weights with the best valid score (what evaluate uses)
    models/<dataset>/<variant>/last.pt         everything needed to resume (optimizer, early-stopping state)
    models/<dataset>/<variant>/train_log.csv   one row per epoch (also copied to plots/<dataset>/train_<variant>.csv)
    models/<dataset>/<variant>/summary.json    best epoch, best valid metrics, configs, feature weights ids

`fit` reads top to bottom: set up (model, optimizer, resumed state), then per epoch `train_one_epoch`,
`validate`, `record_epoch` (early stopping) and `save_checkpoints`; last `write_summary`. What a
checkpoint holds and how a run resumes is trml/checkpoint.py; the device rules are common/device.py.

Reproducibility: every random draw of epoch e (shuffle, missing mask, dropout) comes from a seed
derived from (train.seed, e), so an interrupted run resumed from last.pt continues exactly as an
uninterrupted one. On CPU the run is deterministic (torch.use_deterministic_algorithms).
"""
from __future__ import annotations

import csv
import io
import logging
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from tqdm.auto import tqdm

from common.device import amp_dtype, autocast, deterministic, resolve_device
from common.errors import ParamsError
from common.files import write_json, write_text_atomic
from common.layout import dataset_dir, run_dir
from trml.checkpoint import checkpoint_payload, resume, run_signature, save_checkpoint
from trml.config import ModelConfig, TrainConfig
from trml.data import TRMLData, load_dataset
from trml.losses import sml_loss, task_loss
from trml.metrics import LOWER_IS_BETTER, compute_metrics, metric_keys
from trml.missing import StepMask, derive_seed, drop_at_rate, drop_steps_at_rate, lnln_rates
from trml.model import InputSpec
from trml.registry import build_model, forward
from trml.registry import uses_sml as model_uses_sml

log = logging.getLogger(__name__)


def train(dataset: str, model_cfg: ModelConfig, train_cfg: TrainConfig, data_dir: Path, models_dir: Path,
          plots_dir: Path | None = None) -> dict:
    """`trml train`: load the Parquet tables once, then fit. Returns the summary (also in summary.json)."""
    resolve_device(train_cfg.device, "train.device")           # a device that is not there fails now, not after the load
    data = load_dataset(dataset, model_cfg, Path(data_dir), memmap_path(train_cfg, dataset))
    return fit(data, model_cfg, train_cfg, Path(models_dir), plots_dir=plots_dir)


def fit(data: TRMLData, model_cfg: ModelConfig, train_cfg: TrainConfig, models_dir: Path,
        plots_dir: Path | None = None, out: Path | None = None) -> dict:
    """Train train_cfg.variant on already-loaded data (compare() reuses one load for every variant and seed)
    into `out` (default: run_dir(models_dir, dataset, variant))."""
    cfg = train_cfg
    check_early_stop_on(cfg.early_stop_on, data.task)
    out = Path(out) if out is not None else run_dir(models_dir, data.dataset, cfg.variant)
    out.mkdir(parents=True, exist_ok=True)
    device = torch.device(resolve_device(cfg.device, "train.device"))

    with deterministic(device):
        run = start_run(data, model_cfg, cfg, device, out / "last.pt")
        bar = epoch_bar(run.state, cfg, f"{data.dataset}/{cfg.variant}", out)
        for epoch in bar:
            t0 = time.perf_counter()
            train_losses, data_s = train_one_epoch(run, data, cfg, epoch)
            valid_loss, valid_metrics = validate(run, data, cfg)
            improved = record_epoch(run.state, epoch, train_losses, valid_loss, valid_metrics, cfg)
            save_checkpoints(run, data, model_cfg, cfg, out, improved)
            epoch_s = time.perf_counter() - t0
            run.timing["epochs"] += 1
            run.timing["epoch_s"] += epoch_s
            run.timing["data_s"] += data_s
            bar.set_postfix(loss=f"{train_losses['train_loss']:.4f}", valid=f"{valid_loss:.4f}",
                            best=run.state["best_epoch"])
            log.info("%s/%s epoch %d: train %.4f (task %.4f, sml %.4f) valid %.4f %s %.1fs", data.dataset,
                     cfg.variant, epoch, *train_losses.values(), valid_loss, "*" if improved else "", epoch_s)
            if run.state["stopped"]:
                log.info("early stopping after epoch %d (best %d, patience %d)", epoch, run.state["best_epoch"],
                         cfg.patience)
                break
        bar.close()

    return write_summary(run, data, model_cfg, cfg, out, plots_dir)


@dataclass
class Run:
    """What one training run carries from epoch to epoch."""
    model: torch.nn.Module
    opt: torch.optim.Optimizer
    scaler: torch.amp.GradScaler
    amp_dtype: torch.dtype | None        # None: full precision
    device: torch.device
    specs: list[InputSpec]
    signature: str                       # what last.pt must match to be resumed
    missing_rate: float | None           # simulated in training and validation (None: per row, regime lnln)
    sml: bool
    natural: torch.Tensor                # (N, K) bool on the CPU: which modalities the data has
    widths: dict[str, int]               # {sequence modality: T}: what train.lnln_mask intra masks steps of
    train_idx: torch.Tensor
    valid_idx: torch.Tensor
    valid_mask: torch.Tensor | StepMask  # one fixed draw, so valid scores are comparable across epochs
    state: dict                          # epoch, early stopping and the log: what last.pt resumes
    timing: dict                         # this process only (not written)


def start_run(data: TRMLData, model_cfg: ModelConfig, cfg: TrainConfig, device: torch.device,
              last_pt: Path) -> Run:
    """A fresh model and optimizer, or the ones of last.pt when cfg.resume and it matches this run."""
    specs = input_specs(data)
    signature = run_signature(model_cfg, cfg, data)
    torch.manual_seed(cfg.seed)
    model = build_model(cfg.variant, model_cfg, specs, data.n_outputs).to(device)
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    state = {"epoch": -1, "best_epoch": -1, "best_score": None, "bad_epochs": 0, "stopped": False, "log": []}
    if cfg.resume:
        state = resume(last_pt, signature, model, opt, state)
    dtype = amp_dtype(device, cfg.amp)
    scaler = torch.amp.GradScaler(device.type, enabled=dtype == torch.float16)
    data.to(device)
    rate = train_missing_rate(cfg)
    natural = data.present().cpu()
    widths = sequence_widths(data)
    valid_idx = data.indices("valid")
    valid_mask = simulated_mask(natural[valid_idx], cfg, derive_seed(cfg.seed, "valid"), widths)
    return Run(model=model, opt=opt, scaler=scaler, amp_dtype=dtype, device=device, specs=specs,
               signature=signature, missing_rate=rate, sml=uses_sml(cfg), natural=natural, widths=widths,
               train_idx=data.indices("train"), valid_idx=valid_idx, valid_mask=valid_mask, state=state,
               timing={"epochs": 0, "epoch_s": 0.0, "data_s": 0.0})


def epoch_bar(state: dict, cfg: TrainConfig, name: str, out: Path) -> tqdm:
    """The epochs still to run (none when the run already finished or stopped early), as a progress bar."""
    first = state["epoch"] + 1
    done = state["stopped"] or first >= cfg.epochs
    if done:
        log.info("%s: already trained (%d epochs, best %d); nothing to resume", out, first, state["best_epoch"])
    return tqdm(range(first, cfg.epochs) if not done else range(0), desc=f"train {name}", unit="epoch",
                initial=first, total=cfg.epochs, disable=True if done else None)   # None: only on a TTY


def train_one_epoch(run: Run, data: TRMLData, cfg: TrainConfig, epoch: int) -> tuple[dict[str, float], float]:
    """One pass over the shuffled train rows under this epoch's missing mask: L = L_task + alpha * L_sml.

    Returns the per-row mean losses (train_loss, train_task, train_sml) and the seconds spent on data.
    """
    t0 = time.perf_counter()
    torch.manual_seed(derive_seed(cfg.seed, "epoch", epoch))            # dropout
    g = torch.Generator().manual_seed(derive_seed(cfg.seed, "shuffle", epoch))
    perm = run.train_idx[torch.randperm(len(run.train_idx), generator=g)]
    mask = simulated_mask(run.natural[perm], cfg, derive_seed(cfg.seed, "mask", epoch), run.widths)
    run.model.train()
    sums = torch.zeros(3, dtype=torch.float64, device=run.device)
    data_s = time.perf_counter() - t0
    for start in range(0, len(perm), cfg.batch_size):
        td = time.perf_counter()
        idx = perm[start:start + cfg.batch_size]
        batch, y = data.batch(idx), data.y[idx]
        m, steps = mask_rows(mask, slice(start, start + cfg.batch_size), run.device)
        data_s += time.perf_counter() - td
        with autocast(run.device, run.amp_dtype):
            o = forward(run.model, run.specs, batch, m, steps)
        l_task = task_loss(o.pred, y, data.task, cfg.regression_loss)
        l_sml = (sml_loss(o.real, o.virtual, m, cfg.tau, cfg.sml_detach_real) if run.sml
                 else torch.zeros((), device=run.device))
        loss = l_task + cfg.alpha * l_sml + (o.aux_loss if o.aux_loss is not None else 0.0)
        run.opt.zero_grad(set_to_none=True)
        run.scaler.scale(loss).backward()
        if cfg.grad_clip > 0:
            run.scaler.unscale_(run.opt)
            torch.nn.utils.clip_grad_norm_(run.model.parameters(), cfg.grad_clip)
        run.scaler.step(run.opt)
        run.scaler.update()
        sums += len(idx) * torch.stack([loss, l_task, l_sml]).detach().double()   # no sync per step
    n = max(len(perm), 1)
    sums = sums.cpu().numpy()
    return {"train_loss": float(sums[0] / n), "train_task": float(sums[1] / n),
            "train_sml": float(sums[2] / n)}, data_s


def validate(run: Run, data: TRMLData, cfg: TrainConfig) -> tuple[float, dict[str, float]]:
    """The task loss and the metrics on the valid rows under the run's fixed valid mask."""
    pred = predict(run.model, data, run.valid_idx, run.valid_mask, cfg.batch_size, run.amp_dtype)
    y_valid = data.y[run.valid_idx].cpu()
    valid_loss = float(task_loss(torch.from_numpy(pred), y_valid, data.task, cfg.regression_loss))
    return valid_loss, compute_metrics(data.task, pred, y_valid.numpy())


def record_epoch(state: dict, epoch: int, train_losses: dict[str, float], valid_loss: float,
                 valid_metrics: dict[str, float], cfg: TrainConfig) -> bool:
    """Early stopping on train.early_stop_on, and the epoch's log row. True when this epoch is the best so far."""
    score = valid_loss if cfg.early_stop_on == "loss" else valid_metrics[cfg.early_stop_on]
    improved = _better(score, state["best_score"], cfg.early_stop_on)
    if improved:
        state.update(best_epoch=epoch, best_score=score, bad_epochs=0)
    else:
        state["bad_epochs"] += 1
    state["epoch"] = epoch
    state["stopped"] = state["bad_epochs"] >= cfg.patience
    state["log"].append({"epoch": epoch, **train_losses, "valid_loss": valid_loss,
                         **{f"valid_{k}": v for k, v in valid_metrics.items()}, "best": int(improved)})
    return improved


def save_checkpoints(run: Run, data: TRMLData, model_cfg: ModelConfig, cfg: TrainConfig, out: Path,
                     improved: bool) -> None:
    """best.pt when the epoch improved; last.pt (with the optimizer) after every epoch."""
    payload = checkpoint_payload(run.model, run.specs, model_cfg, cfg, data, run.signature, run.state)
    if improved:
        save_checkpoint(payload, out / "best.pt")
    save_checkpoint({**payload, "optimizer": run.opt.state_dict()}, out / "last.pt")


def write_summary(run: Run, data: TRMLData, model_cfg: ModelConfig, cfg: TrainConfig, out: Path,
                  plots_dir: Path | None) -> dict:
    """train_log.csv (and its copy under plots/) and summary.json; returns the summary plus this run's timing."""
    state = run.state
    if not (out / "best.pt").is_file():
        raise RuntimeError(f"{out}/best.pt was not written: training ran no epoch")
    _write_log(state["log"], data.task, out / "train_log.csv",
               dataset_dir(plots_dir, data.dataset) / f"train_{cfg.variant}.csv" if plots_dir else None)
    summary = {
        "dataset": data.dataset, "variant": cfg.variant, "task": data.task,
        "epochs_run": state["epoch"] + 1, "best_epoch": state["best_epoch"], "stopped_early": state["stopped"],
        "train_missing_rate": run.missing_rate, "sml": run.sml,
        "best_valid": next((r for r in state["log"] if r["epoch"] == state["best_epoch"]), {}),
        "config": {"model": model_cfg.model_dump(mode="json"), "train": cfg.model_dump(mode="json")},
        "provenance": data.provenance(),
    }
    write_json(summary, out / "summary.json")
    summary["timing"] = run.timing         # not written: the files stay byte-identical across runs
    return summary


@torch.inference_mode()
def predict(model: torch.nn.Module, data: TRMLData, idx: torch.Tensor, mask: torch.Tensor, batch_size: int,
            amp_dtype: torch.dtype | None = None) -> np.ndarray:
    """Model outputs for rows idx under mask (len(idx), K), or a StepMask of those rows (evaluate.protocol
    intra): scores (n,) or logits (n, C), float32 numpy."""
    model.eval()
    device = next(model.parameters()).device
    outs = []
    for start in range(0, len(idx), max(batch_size, 256)):
        sl = slice(start, start + max(batch_size, 256))
        rows_mask, steps = mask_rows(mask, sl, device)
        with autocast(device, amp_dtype):
            outs.append(forward(model, input_specs(data), data.batch(idx[sl]), rows_mask, steps).pred.float().cpu())
    if not outs:
        return np.zeros((0,) if data.n_outputs == 1 else (0, data.n_outputs), np.float32)
    return torch.cat(outs).numpy()


def mask_rows(mask: torch.Tensor | StepMask, sl: slice, device: torch.device) -> tuple[torch.Tensor, dict | None]:
    """Rows sl of a mask as forward takes them: the modality mask on `device`, and the step masks of a StepMask
    (None for a plain mask)."""
    if isinstance(mask, StepMask):
        part = mask.rows(sl)
        return part.modality.to(device), part.steps
    return mask[sl].to(device), None


def sequence_widths(data: TRMLData) -> dict[str, int]:
    """{sequence modality: T, the width of its data tensor}: the shape of its step masks (trml/missing.py)."""
    return {m.name: m.x.shape[1] for m in data.modalities if m.kind == "seq"}


def check_early_stop_on(key: str, task: str) -> None:
    if key != "loss" and key not in metric_keys(task):
        raise ParamsError(f"train.early_stop_on={key!r} is not a {task} metric; "
                         f"use 'loss' or one of {metric_keys(task)}")


def train_missing_rate(train_cfg: TrainConfig) -> float | None:
    """The upper bound, and regime complete, train (and select) on complete data; regime fixed at
    train.missing_rate; regime lnln has a rate per row (None here, see simulated_mask)."""
    if train_cfg.variant == "upper_bound" or train_cfg.regime == "complete":
        return 0.0
    return None if train_cfg.regime == "lnln" else train_cfg.missing_rate


def simulated_mask(natural: torch.Tensor, cfg: TrainConfig, seed: int,
                   widths: dict[str, int] | None = None) -> torch.Tensor | StepMask:
    """The mask of train.regime on rows `natural` (N, K), seeded: an epoch's train rows, or the valid rows once.
    lnln: each row gets its own rate from U(0, 1), train.complete_share of them 0 (LNLN, NeurIPS 2024), drawn
    from the same seed, so every epoch redraws them. train.lnln_mask modality: the rate drops whole modalities,
    never all of a row's, as drop_at_rate; intra: it drops steps of the sequence modalities (widths {modality:
    T}) as LNLN masks tokens and frames, and the modality mask stays the natural one (a StepMask)."""
    rate = train_missing_rate(cfg)
    if rate is None:
        rate = lnln_rates(len(natural), cfg.complete_share, derive_seed(seed, "lnln"))
        if cfg.lnln_mask == "intra":
            if widths is None:
                raise ValueError("train.lnln_mask intra masks steps: give the sequence widths {modality: T}")
            return StepMask(natural.cpu().bool().clone(), drop_steps_at_rate(len(natural), widths, rate, seed))
    return drop_at_rate(natural, rate, seed)


def uses_sml(train_cfg: TrainConfig) -> bool:
    return model_uses_sml(train_cfg.variant) and train_cfg.alpha > 0


def input_specs(data: TRMLData) -> list[InputSpec]:
    return [InputSpec(m.name, m.kind, m.dim) for m in data.modalities]


def memmap_path(train_cfg: TrainConfig, dataset: str) -> Path | None:
    """Where train.memmap_dir puts this dataset's disk-backed tensors (None: in memory)."""
    return Path(train_cfg.memmap_dir) / dataset if train_cfg.memmap_dir else None


def _better(score: float | None, best: float | None, key: str) -> bool:
    if score is None:
        return False
    if best is None:
        return True
    return score < best if key in LOWER_IS_BETTER else score > best


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
