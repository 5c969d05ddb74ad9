"""`trml compare`: train and evaluate every variant of compare.variants on the same data and test masks.

    metrics/<dataset>_compare.json          {variant: {"r0.0": {metric: v}, ..., "miss_text": {...}}} (test split)
    metrics/<dataset>_compare_lineage.json  checkpoint, configs and feature weights ids of each variant
    plots/<dataset>/compare.png             one panel per metric against the missing rate, a line per variant
    plots/<dataset>/compare/<metric>.csv    variant, rate, value (DVC plots: x=rate, y=value, colour=variant)

The variants share one load of the tables, one set of settings (only train.variant changes) and, at
test time, the very same masks. Models go to <models_dir>/<dataset>/<variant>/; a variant already
trained there with the same settings and data is reused, not retrained (see train.resume).

upper_bound: DESIGN.md compares TRML "with an upper bound trained and tested on complete data". So the
upper_bound model is trained at missing rate 0, tested at rate 0 (the natural missingness of the data
remains: it cannot be undone), and that one result is its entry at every rate and pattern: a
reference line, not a model under test. (`trml evaluate` with train.variant=upper_bound shows how the
same model degrades when modalities go missing.)
"""
from __future__ import annotations

import csv
import io
import logging
from pathlib import Path

from trml.config import CompareConfig, EvaluateConfig, ModelConfig, TrainConfig
from trml.data import load_dataset
from trml.evaluate import conditions, evaluate_split, lineage, load_model, plot_vs_rate
from trml.metrics import metric_keys
from trml.missing import rate_key
from trml.checkpoint import run_dir
from trml.device import pick_device
from trml.io import write_json, write_text_atomic
from trml.train import fit, memmap_path

log = logging.getLogger(__name__)


def compare(dataset: str, model_cfg: ModelConfig, train_cfg: TrainConfig, eval_cfg: EvaluateConfig,
            compare_cfg: CompareConfig, data_dir: Path, models_dir: Path, metrics_dir: Path,
            plots_dir: Path) -> dict:
    pick_device(train_cfg.device)             # a device that is not there fails now, not after the load
    data = load_dataset(dataset, model_cfg, Path(data_dir), memmap_path(train_cfg, dataset))
    conds = conditions(data.names, eval_cfg)
    results, lineages = {}, {}
    for variant in compare_cfg.variants:
        cfg = train_cfg.model_copy(update={"variant": variant})
        fit(data, model_cfg, cfg, Path(models_dir))
        path = run_dir(Path(models_dir), dataset, variant) / "best.pt"
        model, ckpt = load_model(path, model_cfg, cfg, data)
        if variant == "upper_bound":
            reference = evaluate_split(model, data, "test", [rate_key(0.0)], eval_cfg).get(rate_key(0.0))
            results[variant] = {c: dict(reference) for c in conds} if reference else {}
        else:
            results[variant] = evaluate_split(model, data, "test", conds, eval_cfg)
        lineages[variant] = lineage(path, ckpt, eval_cfg)
        log.info("compare %s/%s: %s", dataset, variant, results[variant].get(conds[0]))

    metrics_dir, plots_dir = Path(metrics_dir), Path(plots_dir)
    write_json(results, metrics_dir / f"{dataset}_compare.json")
    write_json(lineages, metrics_dir / f"{dataset}_compare_lineage.json")
    rates = [rate_key(r) for r in eval_cfg.test_missing_rates]
    keys = metric_keys(data.task)
    plot_vs_rate(results, rates, keys, plots_dir / dataset / "compare.png", title=f"{dataset}: variants (test)")
    write_variant_tables(results, rates, keys, plots_dir / dataset / "compare")
    return results


def write_variant_tables(results: dict[str, dict], rates: list[str], keys: tuple[str, ...], folder: Path) -> None:
    """One CSV per metric, long format: variant, rate, value (a DVC plot coloured by variant)."""
    for key in keys:
        buf = io.StringIO()
        w = csv.writer(buf, lineterminator="\n")
        w.writerow(["variant", "rate", "value"])
        for variant, by_cond in results.items():
            for r in rates:
                v = by_cond.get(r, {}).get(key)
                if v is not None:
                    w.writerow([variant, r[1:], f"{v:.4f}"])
        write_text_atomic(buf.getvalue(), folder / f"{key}.csv")
