"""`trml evaluate`: the trained variant under every test missing rate and single-modality pattern.

    metrics/<dataset>.json          {"test": {"r0.0": {metric: v}, ..., "miss_text": {...}}, "valid": {...}}
    metrics/<dataset>_lineage.json  which checkpoint, feature tables and weights ids made those numbers
    plots/<dataset>/missing_rate.csv  test metrics per rate (columns rate, <metrics>): a DVC plot
    plots/<dataset>/missing_rate.png  the same, one panel per metric

Every condition's mask is seeded from (evaluate.seed, split, condition, draw) only, so every variant
is tested on exactly the same missing entries. With evaluate.mask_draws > 1 the metrics of a random
rate are the mean over that many mask draws (a pattern or rate 0 has one possible mask).
"""
from __future__ import annotations

import csv
import hashlib
import io
import logging
from pathlib import Path

import numpy as np
import torch

from trml.config import EvaluateConfig, ModelConfig, TrainConfig
from trml.data import TRMLData, load_dataset
from trml.metrics import HEADLINE, compute_metrics, mean_metrics, metric_keys
from trml.missing import derive_seed, mask_for, pattern_names, rate_key
from trml.model import TRML, InputSpec
from trml.checkpoint import load_checkpoint, run_dir
from trml.device import pick_device
from trml.io import write_json, write_text_atomic
from trml.train import memmap_path, predict

log = logging.getLogger(__name__)

EVAL_BATCH = 512


class StaleModelError(RuntimeError):
    """The checkpoint was trained with other settings or other data than the ones asked for."""


def evaluate(dataset: str, model_cfg: ModelConfig, train_cfg: TrainConfig, eval_cfg: EvaluateConfig,
             data_dir: Path, models_dir: Path, metrics_dir: Path, plots_dir: Path) -> dict:
    pick_device(train_cfg.device)             # a device that is not there fails now, not after the load
    data = load_dataset(dataset, model_cfg, Path(data_dir), memmap_path(train_cfg, dataset))
    ckpt_path = run_dir(Path(models_dir), dataset, train_cfg.variant) / "best.pt"
    model, ckpt = load_model(ckpt_path, model_cfg, train_cfg, data)
    conds = conditions(data.names, eval_cfg)
    results = {split: evaluate_split(model, data, split, conds, eval_cfg) for split in ("test", "valid")}
    metrics_dir, plots_dir = Path(metrics_dir), Path(plots_dir)
    write_json(results, metrics_dir / f"{dataset}.json")
    write_json({train_cfg.variant: lineage(ckpt_path, ckpt, eval_cfg)}, metrics_dir / f"{dataset}_lineage.json")
    rates = [rate_key(r) for r in eval_cfg.test_missing_rates]
    keys = metric_keys(data.task)
    write_rate_table(results["test"], rates, keys, plots_dir / dataset / "missing_rate.csv")
    plot_vs_rate({train_cfg.variant: results["test"]}, rates, keys, plots_dir / dataset / "missing_rate.png",
                 title=f"{dataset}: {train_cfg.variant} (test)")
    log.info("wrote %s", metrics_dir / f"{dataset}.json")
    return results


def conditions(names: list[str], eval_cfg: EvaluateConfig) -> list[str]:
    """["r0.0", "r0.1", ..., "miss_text", "miss_vision", ...] in a fixed order."""
    return [rate_key(r) for r in eval_cfg.test_missing_rates] + (pattern_names(names) if eval_cfg.patterns else [])


def evaluate_split(model: TRML, data: TRMLData, split: str, conds: list[str],
                   eval_cfg: EvaluateConfig) -> dict[str, dict]:
    """{condition: metrics} on one split; {} when the manifest has no labelled rows in it."""
    idx = data.indices(split)
    if len(idx) == 0:
        log.warning("%s: no labelled %s rows; its section of the metrics is empty", data.dataset, split)
        return {}
    natural = data.present().cpu()[idx]
    truth = data.y[idx].cpu().numpy()
    out = {}
    for cond in conds:
        draws = eval_cfg.mask_draws if cond.startswith("r") and float(cond[1:]) > 0 else 1
        runs = []
        for d in range(draws):
            mask = mask_for(natural, data.names, cond, derive_seed(eval_cfg.seed, split, cond, d))
            pred = predict(model, data, idx, mask, EVAL_BATCH)
            runs.append(compute_metrics(data.task, pred, truth, digits=None))
        out[cond] = mean_metrics(runs)
    return out


def load_model(path: Path, model_cfg: ModelConfig, train_cfg: TrainConfig, data: TRMLData) -> tuple[TRML, dict]:
    """The best.pt of a run, checked against the settings and data it is asked to stand for."""
    device = pick_device(train_cfg.device)
    ckpt = load_checkpoint(path, device)
    want = {"model": model_cfg.model_dump(mode="json"), "train": _comparable(train_cfg.model_dump(mode="json"))}
    have = {"model": ckpt["config"]["model"], "train": _comparable(dict(ckpt["config"]["train"]))}
    if want != have:
        diff = [f"{sec}.{k}: checkpoint {have[sec].get(k)!r}, params {want[sec].get(k)!r}"
                for sec in want for k in sorted(set(want[sec]) | set(have[sec])) if want[sec].get(k) != have[sec].get(k)]
        raise StaleModelError(f"{path} was trained with other settings ({'; '.join(diff)}). "
                              f"Run `trml train --dataset {data.dataset}` again.")
    if ckpt["data_fingerprint"] != data.fingerprint():
        raise StaleModelError(f"{path} was trained on other feature tables than those now under the data "
                              f"directory (manifest or feature files changed). Run `trml train` again.")
    specs = [InputSpec(i["name"], i["kind"], i["dim"]) for i in ckpt["inputs"]]
    torch.manual_seed(0)          # construction draws random init; it is overwritten by the state dict
    model = TRML(model_cfg, specs, ckpt["n_outputs"], train_cfg.variant).to(device)
    model.load_state_dict(ckpt["model"])
    model.eval()
    data.to(device)
    return model, ckpt


def lineage(path: Path, ckpt: dict, eval_cfg: EvaluateConfig) -> dict:
    return {
        "checkpoint": str(path), "checkpoint_sha256": _sha256(path), "best_epoch": ckpt["epoch"],
        "task": ckpt["task"], "class_names": ckpt["class_names"],
        "config": ckpt["config"], "evaluate": eval_cfg.model_dump(mode="json"),
        "provenance": ckpt["provenance"],
    }


def write_rate_table(by_cond: dict[str, dict], rates: list[str], keys: tuple[str, ...], path: Path) -> None:
    """rate, <metric>... one row per numeric missing rate. The task's headline metric (mae, wf1) is the last
    column, which is what `dvc plots` draws when dvc.yaml names no y, for either task."""
    keys = sorted(keys, key=lambda k: k in HEADLINE.values())      # stable: only the headline moves
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(["rate", *keys])
    for r in rates:
        if r in by_cond:
            w.writerow([r[1:], *[_cell(by_cond[r].get(k)) for k in keys]])
    write_text_atomic(buf.getvalue(), path)


def plot_vs_rate(by_variant: dict[str, dict[str, dict]], rates: list[str], keys: tuple[str, ...], path: Path,
                 title: str) -> None:
    """One panel per metric, metric against missing rate, one line per variant (a PNG anyone can open)."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    ncol = min(4, len(keys))
    nrow = int(np.ceil(len(keys) / ncol))
    fig, axes = plt.subplots(nrow, ncol, figsize=(3.6 * ncol, 3.0 * nrow), squeeze=False)
    xs = [float(r[1:]) for r in rates]
    for ax, key in zip(axes.flat, keys):
        for variant, by_cond in by_variant.items():
            ys = [by_cond.get(r, {}).get(key) for r in rates]
            ys = [np.nan if v is None else v for v in ys]
            ax.plot(xs, ys, marker="o", label=variant, linestyle="--" if variant == "upper_bound" else "-")
        ax.set_title(key)
        ax.set_xlabel("missing rate")
        ax.grid(alpha=0.3)
    for ax in list(axes.flat)[len(keys):]:
        ax.axis("off")
    axes.flat[0].legend(fontsize=8)
    fig.suptitle(title)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=90, metadata={"Software": None})    # no version stamp: same numbers, same bytes
    plt.close(fig)


def _comparable(train: dict) -> dict:
    """Train settings that make a different model (device and resume do not)."""
    return {k: v for k, v in train.items() if k not in ("device", "resume", "memmap_dir")}


def _cell(v) -> str:
    return "" if v is None else f"{v:.4f}"


def _sha256(path: Path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()
