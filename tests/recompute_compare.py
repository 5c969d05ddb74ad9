"""An outside check of reports/<dataset>/compare.json: every number of the task's headline metric,
recomputed from predictions.parquet with numpy, scipy and pyarrow alone.

It imports nothing from the project, on purpose: a bug in trml/stats.py or trml/metrics.py cannot hide by
being shared with its checker. It follows the method as documented (trml/stats.py's docstring, README
"Intervals"), with the resample count and seed that compare.json records:

    per seed: the metric on all test utterances, averaged over the mask draws
    mean, sd (n - 1) over seeds
    d_s = trml - baseline per seed (the rate average: the mean of d_s over the rates)
    V   = variance over the utterance resamples of the seed mean of d; V_s of each seed's own d_s
    W   = S / (S - 1) * max(mean V_s - V, 0);  se^2 = V + max(var(d_s) - W, 0) / S
    nu  = se^4 (S - 1) / (seed part)^2, infinite without a seed part
    95% interval d -+ t(nu) se; adjusted: t at 1 - 0.05 / (2 m), m the conditions of the baseline
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
from scipy import stats


def mae(truth: np.ndarray, pred: np.ndarray, w: np.ndarray) -> np.ndarray:
    return (w * np.abs(pred - truth)).sum(-1) / w.sum(-1)


def weighted_f1(truth: np.ndarray, pred: np.ndarray, w: np.ndarray) -> np.ndarray:
    total = np.zeros(w.shape[:-1])
    for label in np.union1d(truth, pred):
        t, p = truth == label, pred == label
        tp, n_true, n_pred = (w * (t & p)).sum(-1), (w * t).sum(-1), (w * p).sum(-1)
        f1 = np.divide(2 * tp, n_true + n_pred, out=np.zeros_like(tp), where=(n_true + n_pred) > 0)
        total += n_true * f1
    return total / w.sum(-1)


METRICS = {"mae": mae, "wf1": weighted_f1}


def recompute(report_dir: Path) -> dict:
    """{"variants": {v: {cond: {mean, sd, values}}}, "differences": {base: {cond: {mean, se, df, ci95,
    ci95_adj, resamples}}}} of the headline metric, from report_dir/predictions.parquet."""
    results = json.loads((report_dir / "compare.json").read_text())
    metric, method = results["headline"], results["method"]
    table = pq.read_table(report_dir / "predictions.parquet").to_pydict()
    rows: dict[tuple, dict[int, list[tuple[str, float, float]]]] = {}
    for v, s, c, d, u, t, p in zip(*(table[k] for k in ("variant", "seed", "condition", "draw", "utterance_id",
                                                          "truth", "pred"))):
        rows.setdefault((v, s, c), {}).setdefault(d, []).append((u, t, p))
    first = next(iter(next(iter(rows.values())).values()))
    order = [u for u, _, _ in first]
    truth = np.array([t for _, t, _ in first])
    n = len(order)
    counts = np.random.default_rng(method["seed"]).multinomial(n, np.full(n, 1.0 / n), size=method["resamples"])
    weights = np.vstack([np.ones(n), counts.astype(float)])           # row 0: every utterance once

    def per_seed(variant: str, cond: str) -> np.ndarray:
        """(S, 1 + B): the metric of each seed, on all utterances (column 0) and on each resample."""
        out = []
        for seed in results["seeds"]:
            draws = rows[(variant, seed, cond)]
            values = []
            for draw in sorted(draws):
                by_id = {u: p for u, _, p in draws[draw]}
                values.append(METRICS[metric](truth, np.array([by_id[u] for u in order]), weights))
            out.append(np.mean(values, axis=0))
        return np.array(out)

    means = results.get("mean_of", {"rate_mean": results["rates"]})     # rate_mean, or subset_mean
    conds = [c for c in results["conditions"] if c not in means]
    values = {v: {c: per_seed(v, c) for c in conds} for v in results["variants"]}
    for v in values:
        for mean, over in means.items():
            values[v][mean] = np.mean([values[v][r] for r in over], axis=0)
    out = {"variants": {}, "differences": {}}
    for v, by_cond in values.items():
        out["variants"][v] = {c: {"mean": float(x[:, 0].mean()), "values": [float(y) for y in x[:, 0]],
                                  "sd": float(x[:, 0].std(ddof=1)) if len(x) > 1 else None}
                              for c, x in by_cond.items()}
    m = len(results["conditions"])
    for base in results["differences"]:
        out["differences"][base] = {}
        for c in results["conditions"]:
            d = values["trml"][c] - values[base][c]
            out["differences"][base][c] = interval(d[:, 0], d[:, 1:], m)
    return out


def interval(full: np.ndarray, boot: np.ndarray, m: int) -> dict:
    s = len(full)
    boot = boot[:, np.isfinite(boot).all(0)]
    v = np.var(boot.mean(0), ddof=1)
    seed_part = 0.0
    if s > 1:
        w = s / (s - 1) * max(np.mean(np.var(boot, axis=1, ddof=1)) - v, 0.0)
        seed_part = max(np.var(full, ddof=1) - w, 0.0) / s
    se = np.sqrt(v + seed_part)
    df = (v + seed_part) ** 2 * (s - 1) / seed_part ** 2 if seed_part > 0 else np.inf
    mean = float(full.mean())

    def ci(level: float) -> list[float]:
        half = stats.t.ppf(0.5 + level / 2, df) * se
        return [mean - half, mean + half]

    return {"mean": mean, "se": float(se), "df": None if np.isinf(df) else float(df), "ci95": ci(0.95),
            "ci95_adj": ci(1 - 0.05 / m), "resamples": boot.shape[1]}


def mismatches(report_dir: Path, tol: float = 2e-4) -> list[str]:
    """Where compare.json differs from the recomputation (empty when every number agrees)."""
    results = json.loads((report_dir / "compare.json").read_text())
    metric = results["headline"]
    again = recompute(report_dir)
    bad = []

    def close(a, b, what):
        if a is None or b is None:
            if a is not b:
                bad.append(f"{what}: {a} != {b}")
        elif isinstance(a, list):
            for i, (x, y) in enumerate(zip(a, b)):
                close(x, y, f"{what}[{i}]")
        elif abs(a - b) > tol * max(1.0, abs(b)):
            bad.append(f"{what}: {a} != {b}")

    for v, by_cond in again["variants"].items():
        for c, s in by_cond.items():
            for k in ("mean", "sd", "values"):
                close(results["variants"][v][c][metric][k], s[k], f"{v}/{c}/{k}")
    for base, by_cond in again["differences"].items():
        for c, d in by_cond.items():
            got = results["differences"][base][c][metric]
            for k in ("mean", "se", "ci95", "ci95_adj"):
                close(got[k], d[k], f"trml-{base}/{c}/{k}")
            if (got["df"] is None) != (d["df"] is None) or (d["df"] is not None and abs(got["df"] - d["df"]) > 0.01 * d["df"] + 0.01):
                bad.append(f"trml-{base}/{c}/df: {got['df']} != {d['df']}")
            if got["resamples"] != d["resamples"]:
                bad.append(f"trml-{base}/{c}/resamples: {got['resamples']} != {d['resamples']}")
    return bad
