"""`trml compare`: every variant of compare.variants, once per seed of compare.seeds, on the same data and
the same test masks; then how they differ, and how sure that is.

    reports/<dataset>/compare.json          per variant, condition and metric: mean, sd, n and the per-seed
                                            values; trml - each baseline with its 95% CI, raw and adjusted
                                            for the conditions compared (trml/stats.py); upper_bound as a
                                            reference on complete data (docs/architecture.md, "results")
    reports/<dataset>/predictions.parquet   every test prediction behind those numbers: variant, seed,
                                            condition, draw, utterance_id, truth, pred
    reports/<dataset>/compare_lineage.json  checkpoint, configs and feature weights ids of every variant and seed
    reports/<dataset>/results.md            the paper-style table (trml/report.py)
    metrics/<dataset>.json                  the headline numbers, at most 12, that `dvc exp show` displays
    plots/<dataset>/compare.png             a panel per metric against the missing rate, mean +- sd per variant
    plots/<dataset>/compare/<metric>.csv    variant, rate, mean, sd, lo, hi (a DVC plot)

Training: a model already trained with the same settings, data and seed is reused, wherever it is
(compare's own models_dir, or the train stage's models, given as trained_dir): the train stage's model
at train.seed is one of compare's runs, not a second training. Others are trained into
<models_dir>/<dataset>/<variant>/seed<k>/ (and resumed there after an interruption, see train.resume).

Conditions: evaluate.protocol's (trml/evaluate.py conditions): modality, the test rates, their mean rate_mean
and the patterns; subsets, every availability subset and their mean subset_mean; intra, the step-masking rates
i<p> and their mean intra_mean. compare.json names the protocol and train.regime.

Testing: every variant and seed sees the very same test masks (evaluate.condition_masks), so the
differences are paired. upper_bound is trained at missing rate 0 and tested once, at rate 0 (the data's
own missingness remains: it cannot be undone): a reference, not a model under test, so it has no entry
per condition.
"""
from __future__ import annotations

import csv
import io
import logging
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from common.device import resolve_device
from common.files import atomic_path, write_json, write_text_atomic
from common.layout import dataset_dir, metrics_path, run_dir
from trml.checkpoint import completed_run, run_signature
from trml.config import CompareConfig, EvaluateConfig, ModelConfig, TrainConfig
from trml.data import DataError, TRMLData, load_dataset
from trml.evaluate import (averaged, condition_masks, conditions, is_rate, lineage, load_model, plot_vs_rate,
                           predict_masks, x_label)
from trml.metrics import DECIMALS, HEADLINE, LOWER_IS_BETTER, metric_keys
from trml.missing import RATE_MEAN, SUBSET_MEAN, condition_rate, derive_seed, rate_key
from trml.registry import TRML_VARIANTS, model_class
from trml.report import render_markdown
from trml.stats import CI_LEVEL, CORRECTION, METHOD, PairedBootstrap, seed_values, simultaneous, summarize
from trml.train import fit, memmap_path

log = logging.getLogger(__name__)

REFERENCE = "upper_bound"
# metrics/<dataset>.json, what `dvc exp show` displays: trml's headline metrics at no missing data, at the
# highest test rate and averaged over the rates, then trml - zero_fill on that average with its adjusted 95% CI
# (zero_fill is the ablation that isolates MMI), and, when other models than trml's ablations are compared,
# trml's rank among all of them on that average (`rank`, 1 = best; every pairwise interval is in results.md).
# Flat, with short names, so that `dvc exp show --only-changed` fits them all in a 160-column terminal
# (a "trml." prefix on each would push them off): metric key -> its short name. Every protocol shares two names,
# so that runs of different protocols fit side by side: <short>_r0.0, the condition with nothing dropped (r0.0;
# intra's i0.0 and the subset of every enabled modality predict exactly that), and <short>_mean, the mean over the
# protocol's conditions (rate_mean, intra_mean or subset_mean: read it with evaluate.protocol, as vs_zf_*). Only
# the modality protocol adds its highest rate (<short>_r0.7); intra and subsets are reported by their mean, as
# TFR-Net, LNLN and MoMKE do, and each condition is in results.md.
HEADLINE_METRICS = {"regression": {"mae": "mae", "acc2_non0": "acc2"}, "classification": {"wf1": "wf1", "acc": "acc"}}


def compare(dataset: str, model_cfg: ModelConfig, train_cfg: TrainConfig, eval_cfg: EvaluateConfig,
            compare_cfg: CompareConfig, data_dir: Path, models_dir: Path, reports_dir: Path, metrics_dir: Path,
            plots_dir: Path, trained_dir: Path | None = None) -> dict:
    resolve_device(train_cfg.device, "train.device")           # a device that is not there fails now, not after the load
    for variant in compare_cfg.variants:                       # and so does a model name that cannot be found
        model_class(variant)
    data = load_dataset(dataset, model_cfg, Path(data_dir), memmap_path(train_cfg, dataset))
    test_idx = data.indices("test")
    if len(test_idx) == 0:
        raise DataError(f"{dataset}: the manifest has no labelled test rows, so there is nothing to compare on; "
                        f"check the split column of data/index/{dataset}.parquet")
    conds = conditions(data.names, eval_cfg)
    masks = condition_masks(data, "test", list(dict.fromkeys(conds + [rate_key(0.0)])), eval_cfg)
    Path(models_dir, dataset).mkdir(parents=True, exist_ok=True)        # a DVC out, even when every run is reused
    preds: dict[str, dict[str, list[np.ndarray]]] = {}
    lineages: dict[str, dict] = {}
    for variant in compare_cfg.variants:
        tested = [rate_key(0.0)] if variant == REFERENCE else conds
        for seed in compare_cfg.seeds:
            cfg = train_cfg.model_copy(update={"variant": variant, "seed": seed})
            path = trained_model(data, model_cfg, cfg, Path(models_dir), trained_dir)
            model, ckpt = load_model(path, model_cfg, cfg, data)
            for cond in tested:
                preds.setdefault(variant, {}).setdefault(cond, []).append(
                    np.stack(predict_masks(model, data, test_idx, masks[cond])))
            lineages.setdefault(variant, {})[f"seed{seed}"] = lineage(path, ckpt, eval_cfg)
        log.info("compare %s/%s: %d seed(s) tested", dataset, variant, len(compare_cfg.seeds))
    by_variant = {v: {c: np.stack(p) for c, p in by_cond.items()} for v, by_cond in preds.items()}

    truth = data.y[test_idx].cpu().numpy()
    mean, rates = averaged(data.names, eval_cfg)       # rates: the x axis, the test rates or the subsets
    results = summarize_comparison(data, by_variant, truth, conds, rates, compare_cfg,
                                   derive_seed(eval_cfg.seed, "bootstrap"), mean=mean,
                                   protocol=eval_cfg.protocol, regime=train_cfg.regime)
    out = dataset_dir(reports_dir, dataset)
    write_json(results, out / "compare.json")
    write_json(lineages, out / "compare_lineage.json")
    write_predictions(by_variant, data.ids[test_idx.numpy()], truth, compare_cfg.seeds, out / "predictions.parquet")
    write_text_atomic(render_markdown(results), out / "results.md")
    write_json(headline(results, rates), metrics_path(metrics_dir, dataset))
    keys = metric_keys(data.task)
    curves = {v: {r: {k: (s["mean"], s["sd"]) for k, s in by_cond.get(r, {}).items()} for r in rates}
              for v, by_cond in results["variants"].items()}
    reference = {name: {k: (s["mean"], s["sd"]) for k, s in by_metric.items()}
                 for name, by_metric in results["reference"].items()}
    plot_vs_rate(curves, rates, keys, dataset_dir(plots_dir, dataset) / "compare.png",
                 title=f"{dataset}: variants (test, mean +- sd over {len(compare_cfg.seeds)} seeds)",
                 reference=reference)
    write_variant_tables(results, rates, keys, dataset_dir(plots_dir, dataset) / "compare",
                         ref_at=rates[-1] if mean == SUBSET_MEAN else rate_key(0.0))
    return results


def trained_model(data: TRMLData, model_cfg: ModelConfig, cfg: TrainConfig, models_dir: Path,
                  trained_dir: Path | None) -> Path:
    """best.pt of this (variant, seed): a finished run with the same signature where there is one, else
    trained now into models_dir (resumed from its last.pt after an interruption)."""
    signature = run_signature(model_cfg, cfg, data)
    own = run_dir(models_dir, data.dataset, cfg.variant) / f"seed{cfg.seed}"
    for folder in ([run_dir(trained_dir, data.dataset, cfg.variant)] if trained_dir else []) + [own]:
        if completed_run(folder, signature, cfg.epochs):
            log.info("%s/%s seed %d: reusing %s (same settings, data and seed)", data.dataset, cfg.variant,
                     cfg.seed, folder)
            return folder / "best.pt"
    fit(data, model_cfg, cfg, models_dir, out=own)
    return own / "best.pt"


def summarize_comparison(data: TRMLData, preds: dict[str, dict[str, np.ndarray]], truth: np.ndarray,
                         conds: list[str], rates: list[str], compare_cfg: CompareConfig, boot_seed: int,
                         mean: str = RATE_MEAN, protocol: str = "modality", regime: str = "fixed") -> dict:
    """compare.json: per-seed statistics of every variant, paired differences, and the reference.
    `mean` (rate_mean, or subset_mean under protocol subsets) averages the conditions `rates`."""
    task = data.task
    tested = [v for v in preds if v != REFERENCE]
    boot = PairedBootstrap(task, truth, compare_cfg.bootstrap, boot_seed)
    order = rates + [mean] + [c for c in conds if c not in rates]      # the report's column order
    variants = {}
    for v in tested:
        per_cond = {c: seed_values(task, preds[v][c], truth) for c in conds}
        per_cond[mean] = {k: _mean_over([per_cond[r][k] for r in rates]) for k in metric_keys(task)}
        variants[v] = {c: {k: _rounded(summarize(vals)) for k, vals in per_cond[c].items()} for c in order}
    differences = {}
    for base in tested:
        if base == "trml":
            continue
        # A condition is a list of one; the mean averages the difference over every rate (or subset).
        sides = {c: [c] for c in conds} | {mean: rates}
        raw = {c: boot.difference([("trml", r, preds["trml"][r]) for r in sides[c]],
                                  [(base, r, preds[base][r]) for r in sides[c]]) for c in order}
        # The family: every condition of this baseline, one metric at a time (trml.stats.simultaneous).
        for m in metric_keys(task):
            for c, adj in zip(order, simultaneous([raw[c][m] for c in order])):
                raw[c][m]["ci95_adj"] = adj
        differences[base] = {c: _rounded_diff(raw[c]) for c in order}
    lower = HEADLINE[task] in LOWER_IS_BETTER
    ranks = {c: sorted((v for v in tested if variants[v][c][HEADLINE[task]]["mean"] is not None),
                       key=lambda v: variants[v][c][HEADLINE[task]]["mean"] * (1 if lower else -1)) for c in order}
    reference = {}
    if REFERENCE in preds:
        ref = seed_values(task, preds[REFERENCE][rate_key(0.0)], truth)
        reference[REFERENCE] = {k: _rounded(summarize(vals)) for k, vals in ref.items()}
    return {
        "dataset": data.dataset, "task": task, "headline": HEADLINE[task],
        "protocol": protocol, "regime": regime,          # evaluate.protocol, train.regime
        "seeds": list(compare_cfg.seeds),
        "conditions": order, "rates": [r for r in rates if is_rate(r)], "mean_of": {mean: rates},
        "split_sizes": {s: int(len(data.indices(s))) for s in ("train", "valid", "test")},
        "method": {"spread": "sd over seeds (n - 1)", "ci": METHOD, "level": CI_LEVEL,
                   "correction": CORRECTION, "family_size": len(order),
                   "seed_level": len(compare_cfg.seeds) >= 2,
                   "resamples": compare_cfg.bootstrap, "seed": boot_seed},
        "variants": variants, "differences": differences, "reference": reference,
        "ranks": ranks,                # per condition: the models by mean headline metric, best first
        "provenance": data.provenance(),
    }


def headline(results: dict, rates: list[str]) -> dict:
    """metrics/<dataset>.json: at most 12 numbers, flat (see HEADLINE_METRICS and the README)."""
    task, trml = results["task"], results["variants"]["trml"]
    mean = next(iter(results.get("mean_of", {RATE_MEAN: rates})))
    out = {}
    if mean == RATE_MEAN:
        points = [rates[0], rates[-1], mean]
    else:   # intra, subsets: the point with nothing dropped (the last subset has every modality), and the mean
        points = [rates[-1] if mean == SUBSET_MEAN else rates[0], mean]
    for key, short in HEADLINE_METRICS[task].items():
        for cond in points:
            out[f"{short}_{headline_name(cond, mean)}"] = trml[cond][key]["mean"]
    main = HEADLINE[task]
    diff = results["differences"].get("zero_fill", {}).get(mean, {}).get(main)
    if diff is not None:
        lo, hi = diff["ci95_adj"] or (None, None)          # the adjusted interval, the one the report marks
        out.update({f"vs_zf_{main}": diff["mean"], "vs_zf_lo": lo, "vs_zf_hi": hi})
    ranking = results.get("ranks", {}).get(mean, [])
    if any(v not in TRML_VARIANTS for v in ranking):    # other models than trml's ablations: where trml stands
        out["rank"] = float(ranking.index("trml") + 1) if "trml" in ranking else None
    return out


def headline_name(cond: str, mean: str) -> str:
    """A condition's name in the headline: "r0.0" wherever nothing is dropped (r0.0, i0.0, the subset of every
    enabled modality), "mean" for the protocol's mean, the condition itself otherwise ("r0.7", "i0.9")."""
    if cond == mean:
        return "mean"
    if mean == SUBSET_MEAN or condition_rate(cond) == 0.0:
        return rate_key(0.0)
    return cond


def write_predictions(preds: dict[str, dict[str, np.ndarray]], ids: np.ndarray, truth: np.ndarray,
                      seeds: list[int], path: Path) -> None:
    """One row per (variant, seed, condition, draw, utterance): everything the statistics were computed from."""
    cols: dict[str, list] = {k: [] for k in ("variant", "seed", "condition", "draw", "utterance_id", "truth", "pred")}
    for variant, by_cond in preds.items():
        for cond, p in by_cond.items():              # (S, D, n) scores or (S, D, n, C) logits
            labels = p if p.ndim == 3 else p.argmax(-1)
            for s, seed in enumerate(seeds):
                for d in range(p.shape[1]):
                    n = len(ids)
                    cols["variant"] += [variant] * n
                    cols["seed"] += [seed] * n
                    cols["condition"] += [cond] * n
                    cols["draw"] += [d] * n
                    cols["utterance_id"].append(ids)
                    cols["truth"].append(truth)
                    cols["pred"].append(labels[s, d])
    table = pa.table({
        "variant": pa.array(cols["variant"], pa.string()), "seed": pa.array(cols["seed"], pa.int64()),
        "condition": pa.array(cols["condition"], pa.string()), "draw": pa.array(cols["draw"], pa.int32()),
        "utterance_id": pa.array(np.concatenate(cols["utterance_id"]).tolist(), pa.string()),
        "truth": pa.array(np.concatenate(cols["truth"]).astype(np.float64)),
        "pred": pa.array(np.concatenate(cols["pred"]).astype(np.float64)),
    })
    with atomic_path(path) as tmp:
        pq.write_table(table, tmp, compression="zstd")


def write_variant_tables(results: dict, rates: list[str], keys: tuple[str, ...], folder: Path,
                         ref_at: str) -> None:
    """One CSV per metric, long format: variant, rate, mean, sd, lo, hi (lo/hi = mean -+ sd; a DVC plot
    coloured by variant, with a band). The reference appears once, at `ref_at`: rate 0.0 (protocol subsets: the
    rate column holds the subset, and the reference sits at the full one)."""
    for key in keys:
        buf = io.StringIO()
        w = csv.writer(buf, lineterminator="\n")
        w.writerow(["variant", "rate", "mean", "sd", "lo", "hi"])
        rows = [(v, r, by_cond.get(r, {}).get(key)) for v, by_cond in results["variants"].items() for r in rates]
        rows += [(name, ref_at, by_metric.get(key)) for name, by_metric in results["reference"].items()]
        for variant, r, s in rows:
            if s and s["mean"] is not None:
                sd = s["sd"] or 0.0
                w.writerow([variant, x_label(r), *(f"{x:.4f}" for x in (s["mean"], sd, s["mean"] - sd, s["mean"] + sd))])
        write_text_atomic(buf.getvalue(), folder / f"{key}.csv")


def _mean_over(per_rate: list[list[float | None]]) -> list[float | None]:
    """Per seed: the mean over the rates (None where any rate is undefined)."""
    return [None if any(v is None for v in vals) else float(np.mean(vals)) for vals in zip(*per_rate)]


def _round(v: float | None) -> float | None:
    return None if v is None else round(float(v), DECIMALS)


def _rounded(s: dict) -> dict:
    return {"mean": _round(s["mean"]), "sd": _round(s["sd"]), "n": s["n"], "values": [_round(v) for v in s["values"]]}


def _rounded_diff(by_metric: dict[str, dict]) -> dict[str, dict]:
    def interval(ci):
        return None if ci is None else [_round(x) for x in ci]
    return {k: {"mean": _round(d["mean"]), "ci95": interval(d["ci95"]), "ci95_adj": interval(d["ci95_adj"]),
                "se": None if d["se"] is None else round(d["se"], 6),
                "df": None if d["df"] is None else round(d["df"], 2), "resamples": d["resamples"]}
            for k, d in by_metric.items()}
