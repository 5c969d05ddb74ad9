"""`trml evaluate`: the trained variant under every test missing rate and single-modality pattern.

    reports/<dataset>/evaluate.json          {"test": {"r0.0": {metric: v}, ..., "miss_text": {...}}, "valid": {...}}
    reports/<dataset>/evaluate_lineage.json  which checkpoint, feature tables and weights ids made those numbers
    plots/<dataset>/missing_rate.csv         test metrics per rate (columns rate, <metrics>): a DVC plot
    plots/<dataset>/missing_rate.png         the same, one panel per metric

The headline numbers that `dvc exp show` displays (metrics/<dataset>.json) come from `trml compare`,
which runs every variant over several seeds; this is one model's full picture.

evaluate.protocol picks the conditions (conditions, averaged): modality, the test rates r<p> and the patterns
miss_<m>; subsets, every availability subset avail_<initials> (trml/missing.py subset_names); intra, the test
rates as i<p>, each step of every present sequence modality dropped with probability p (trml/missing.py).

Every condition's mask is seeded from (evaluate.seed, split, condition, draw) only (condition_masks), so
every variant and every seed is tested on exactly the same missing entries. With evaluate.mask_draws > 1
the metrics of a random rate are the mean over that many mask draws (a pattern or rate 0 has one
possible mask).
"""
from __future__ import annotations

import csv
import io
import logging
from pathlib import Path

import numpy as np
import torch

from common.device import resolve_device
from common.errors import UserError
from common.files import sha256_file, write_json, write_text_atomic
from common.layout import dataset_dir, run_dir
from trml.checkpoint import load_checkpoint
from trml.config import EvaluateConfig, ModelConfig, TrainConfig
from trml.data import TRMLData, load_dataset
from trml.metrics import HEADLINE, compute_metrics, mean_metrics, metric_keys
from trml.missing import (INTRA_MEAN, RATE_MEAN, SUBSET_MEAN, StepMask, condition_rate, derive_seed, intra_key,
                          mask_for, pattern_names, rate_key, subset_names)
from trml.model import InputSpec
from trml.registry import build_model
from trml.train import memmap_path, predict, sequence_widths

log = logging.getLogger(__name__)

EVAL_BATCH = 512


class StaleModelError(UserError):
    """The checkpoint was trained with other settings or other data than the ones asked for."""


def evaluate(dataset: str, model_cfg: ModelConfig, train_cfg: TrainConfig, eval_cfg: EvaluateConfig,
             data_dir: Path, models_dir: Path, reports_dir: Path, plots_dir: Path) -> dict:
    resolve_device(train_cfg.device, "train.device")           # a device that is not there fails now, not after the load
    data = load_dataset(dataset, model_cfg, Path(data_dir), memmap_path(train_cfg, dataset))
    ckpt_path = run_dir(Path(models_dir), dataset, train_cfg.variant) / "best.pt"
    model, ckpt = load_model(ckpt_path, model_cfg, train_cfg, data)
    conds = conditions(data.names, eval_cfg)
    results = {split: evaluate_split(model, data, split, conds, eval_cfg) for split in ("test", "valid")}
    out, plots = dataset_dir(reports_dir, dataset), dataset_dir(plots_dir, dataset)
    write_json(results, out / "evaluate.json")
    write_json({train_cfg.variant: lineage(ckpt_path, ckpt, eval_cfg)}, out / "evaluate_lineage.json")
    rates = averaged(data.names, eval_cfg)[1]          # the x axis: the test rates, or the subsets
    keys = metric_keys(data.task)
    write_rate_table(results["test"], rates, keys, plots / "missing_rate.csv")
    curves = {train_cfg.variant: {r: {k: (v, None) for k, v in results["test"].get(r, {}).items()} for r in rates}}
    plot_vs_rate(curves, rates, keys, plots / "missing_rate.png",
                 title=f"{dataset}: {train_cfg.variant} (test)")
    log.info("wrote %s", out / "evaluate.json")
    return results


def conditions(names: list[str], eval_cfg: EvaluateConfig) -> list[str]:
    """The conditions of evaluate.protocol, in a fixed order: modality ["r0.0", "r0.1", ..., "miss_text",
    "miss_vision", ...]; subsets ["avail_t", "avail_v", ..., "avail_tv", ..., "avail_tvaf"]; intra ["i0.0",
    "i0.1", ...] (no patterns: whole modalities are never dropped under intra)."""
    if eval_cfg.protocol == "subsets":
        return subset_names(names)
    if eval_cfg.protocol == "intra":
        return [intra_key(r) for r in eval_cfg.test_missing_rates]
    return [rate_key(r) for r in eval_cfg.test_missing_rates] + (pattern_names(names) if eval_cfg.patterns else [])


def averaged(names: list[str], eval_cfg: EvaluateConfig) -> tuple[str, list[str]]:
    """The protocol's summary pseudo-condition and the conditions it averages: rate_mean over the test rates
    (modality), subset_mean over every subset (subsets), intra_mean over the intra rates (intra). Each gets its
    own paired interval in compare."""
    if eval_cfg.protocol == "subsets":
        return SUBSET_MEAN, subset_names(names)
    if eval_cfg.protocol == "intra":
        return INTRA_MEAN, [intra_key(r) for r in eval_cfg.test_missing_rates]
    return RATE_MEAN, [rate_key(r) for r in eval_cfg.test_missing_rates]


def is_rate(cond: str) -> bool:
    """A random-rate condition (r<p> or i<p>): one with a number for the x axis."""
    return condition_rate(cond) is not None


def x_label(cond: str) -> str:
    """A condition on the x axis of a plot table: a rate as its number ("0.3"), any other by its name."""
    return cond[1:] if is_rate(cond) else cond


def evaluate_split(model: torch.nn.Module, data: TRMLData, split: str, conds: list[str],
                   eval_cfg: EvaluateConfig) -> dict[str, dict]:
    """{condition: metrics} on one split; {} when the manifest has no labelled rows in it."""
    idx = data.indices(split)
    if len(idx) == 0:
        log.warning("%s: no labelled %s rows; its section of the metrics is empty", data.dataset, split)
        return {}
    truth = data.y[idx].cpu().numpy()
    masks = condition_masks(data, split, conds, eval_cfg)
    return {cond: mean_metrics([compute_metrics(data.task, pred, truth, digits=None)
                                for pred in predict_masks(model, data, idx, masks[cond])])
            for cond in conds}


def condition_masks(data: TRMLData, split: str, conds: list[str],
                    eval_cfg: EvaluateConfig) -> dict[str, list[torch.Tensor | StepMask]]:
    """{condition: one mask per draw} for the rows of `split`, seeded only by (evaluate.seed, split,
    condition, draw): the same for every variant and seed, which is what makes comparisons paired."""
    natural = data.present().cpu()[data.indices(split)]
    widths = sequence_widths(data)                    # what intra masks steps of
    out = {}
    for cond in conds:
        draws = eval_cfg.mask_draws if (condition_rate(cond) or 0.0) > 0 else 1
        out[cond] = [mask_for(natural, data.names, cond, derive_seed(eval_cfg.seed, split, cond, d), widths)
                     for d in range(draws)]
    return out


def predict_masks(model: torch.nn.Module, data: TRMLData, idx: torch.Tensor,
                  masks: list[torch.Tensor | StepMask]) -> list[np.ndarray]:
    """The model's outputs for rows idx under each mask."""
    return [predict(model, data, idx, mask, EVAL_BATCH) for mask in masks]


def load_model(path: Path, model_cfg: ModelConfig, train_cfg: TrainConfig, data: TRMLData) -> tuple[torch.nn.Module, dict]:
    """The best.pt of a run, checked against the settings and data it is asked to stand for."""
    device = torch.device(resolve_device(train_cfg.device, "train.device"))
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
    model = build_model(train_cfg.variant, model_cfg, specs, ckpt["n_outputs"]).to(device)
    model.load_state_dict(ckpt["model"])
    model.eval()
    data.to(device)
    return model, ckpt


def lineage(path: Path, ckpt: dict, eval_cfg: EvaluateConfig) -> dict:
    return {
        "checkpoint": str(path), "checkpoint_sha256": sha256_file(path), "best_epoch": ckpt["epoch"],
        "task": ckpt["task"], "class_names": ckpt["class_names"],
        "config": ckpt["config"], "evaluate": eval_cfg.model_dump(mode="json"),
        "provenance": ckpt["provenance"],
    }


def write_rate_table(by_cond: dict[str, dict], rates: list[str], keys: tuple[str, ...], path: Path) -> None:
    """rate, <metric>... one row per numeric missing rate (protocol subsets: per subset, by name). The task's headline metric (mae, wf1) is the last
    column, which is what `dvc plots` draws when dvc.yaml names no y, for either task."""
    keys = sorted(keys, key=lambda k: k in HEADLINE.values())      # stable: only the headline moves
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(["rate", *keys])
    for r in rates:
        if r in by_cond:
            w.writerow([x_label(r), *[_cell(by_cond[r].get(k)) for k in keys]])
    write_text_atomic(buf.getvalue(), path)


def plot_vs_rate(curves: dict[str, dict[str, dict[str, tuple[float | None, float | None]]]], rates: list[str],
                 keys: tuple[str, ...], path: Path, title: str,
                 reference: dict[str, dict[str, tuple[float | None, float | None]]] | None = None) -> None:
    """One panel per metric against the missing rate: a line per variant, a band of +-1 sd where there is
    one (over seeds), and each reference (upper_bound, tested on complete data) as one dashed level.

    curves: {variant: {rate: {metric: (mean, sd)}}}; reference: {name: {metric: (mean, sd)}}.
    """
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    ncol = min(4, len(keys))
    nrow = int(np.ceil(len(keys) / ncol))
    fig, axes = plt.subplots(nrow, ncol, figsize=(3.6 * ncol, 3.0 * nrow), squeeze=False)
    numeric = all(is_rate(r) for r in rates)
    xs = np.array([float(r[1:]) for r in rates] if numeric else np.arange(len(rates)), dtype=float)
    for ax, key in zip(axes.flat, keys):
        for variant, by_rate in curves.items():
            mean = np.array([_num(by_rate.get(r, {}).get(key, (None, None))[0]) for r in rates])
            sd = np.array([_num(by_rate.get(r, {}).get(key, (None, None))[1]) for r in rates])
            line, = ax.plot(xs, mean, marker="o", label=variant)
            if np.isfinite(sd).any():
                ax.fill_between(xs, mean - sd, mean + sd, color=line.get_color(), alpha=0.2, linewidth=0)
        for name, by_metric in (reference or {}).items():
            mean, sd = (_num(v) for v in by_metric.get(key, (None, None)))
            if np.isfinite(mean):
                line = ax.axhline(mean, linestyle="--", color="grey", label=f"{name} (complete data)")
                if np.isfinite(sd):
                    ax.axhspan(mean - sd, mean + sd, color=line.get_color(), alpha=0.12, linewidth=0)
        ax.set_title(key)
        ax.set_xlabel("missing rate" if numeric else "available modalities")
        if not numeric:
            ax.set_xticks(xs, [r[len("avail_"):] if r.startswith("avail_") else r for r in rates], rotation=90)
        ax.grid(alpha=0.3)
    for ax in list(axes.flat)[len(keys):]:
        ax.axis("off")
    axes.flat[0].legend(fontsize=7)
    fig.suptitle(title)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=90, metadata={"Software": None})    # no version stamp: same numbers, same bytes
    plt.close(fig)


def _num(v: float | None) -> float:
    return np.nan if v is None else float(v)


def _comparable(train: dict) -> dict:
    """Train settings that make a different model (device and resume do not)."""
    return {k: v for k, v in train.items() if k not in ("device", "resume", "memmap_dir")}


def _cell(v) -> str:
    return "" if v is None else f"{v:.4f}"
