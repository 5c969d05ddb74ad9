"""Metrics with MMSA's definitions (thuiar/MMSA metricsTop); the key names are the contract of
docs/architecture.md ("Results").

Regression (scores in [-3, 3]):
    acc2_has0, f1_has0  binary "negative vs non-negative": truth >= 0 against pred >= 0, all samples
    acc2_non0, f1_non0  binary "negative vs positive": samples with truth != 0 only, > 0 against > 0
    acc7                clip both to [-3, 3], np.round (half to even: 0.5 -> 0, 1.5 -> 2, -2.5 -> -2), equal
    acc5                the same after clipping to [-2, 2]
    mae                 mean |pred - truth|
    corr                Pearson correlation (None when either side is constant)
    The F1 scores are weighted F1 (scikit-learn's average="weighted"): per-class F1 weighted by the
    class's support in the truth.
Classification: acc (accuracy) and wf1 (weighted F1).
Values are fractions in [0, 1] (not percent), rounded to 4 decimals as MMSA reports them.
"""
from __future__ import annotations

import numpy as np

REGRESSION_KEYS = ("acc2_has0", "f1_has0", "acc2_non0", "f1_non0", "acc7", "acc5", "mae", "corr")
CLASSIFICATION_KEYS = ("acc", "wf1")
LOWER_IS_BETTER = {"mae", "loss"}
# The one number a task is usually judged by (last column of the rate tables, which DVC plots by default).
HEADLINE = {"regression": "mae", "classification": "wf1"}
DECIMALS = 4


def metric_keys(task: str) -> tuple[str, ...]:
    return REGRESSION_KEYS if task == "regression" else CLASSIFICATION_KEYS


def weighted_f1(y_true: np.ndarray, y_pred: np.ndarray) -> float:
    """F1 per label (over the labels seen in truth or prediction), weighted by support in the truth.

    A label never predicted has precision 0/0, taken as 0 (scikit-learn's zero_division default).
    """
    y_true, y_pred = np.asarray(y_true), np.asarray(y_pred)
    if len(y_true) == 0:
        return float("nan")
    labels = np.union1d(y_true, y_pred)
    t, p = np.searchsorted(labels, y_true), np.searchsorted(labels, y_pred)
    return float(_class_rows(t, p, len(labels), np.ones((1, len(t))))["wf1"][0])


def metric_rows(task: str, pred: np.ndarray, truth: np.ndarray, weights: np.ndarray | None = None) -> dict[str, np.ndarray]:
    """Every metric of the task, once per row of `weights` (B, n): how many times each sample counts.

    The one implementation of the metrics. compute_metrics is its single-row case (every sample once);
    the bootstrap (trml/stats.py) gives it a row of resampling counts per resample. Each metric is a
    function of weighted sums of per-sample quantities, so B resamples cost one matrix product.
    pred: scores (regression), or logits (n, C) / labels (n,) (classification). Undefined values (no
    non-zero truth; a constant side for corr) are nan.
    """
    truth = np.asarray(truth).reshape(-1)
    w = np.ones((1, len(truth))) if weights is None else np.asarray(weights, np.float64)
    if task == "regression":
        return _regression_rows(np.asarray(pred, np.float64).reshape(-1), truth.astype(np.float64), w)
    pred = np.asarray(pred)
    labels = (pred.argmax(-1) if pred.ndim == 2 else pred.reshape(-1)).astype(np.int64)
    truth = truth.astype(np.int64)
    n_labels = int(max(labels.max(initial=0), truth.max(initial=0))) + 1
    return _class_rows(truth, labels, n_labels, w)


def _ratio(num: np.ndarray, den: np.ndarray) -> np.ndarray:
    return np.divide(num, den, out=np.full(np.shape(num), np.nan), where=den > 0)


def _binary_wf1(n: np.ndarray, true1: np.ndarray, pred1: np.ndarray, tp1: np.ndarray, tp0: np.ndarray) -> np.ndarray:
    """Weighted F1 of labels {0, 1} from weighted counts (F1 = 2 tp / (n_pred + n_true), 0 when both are 0)."""
    true0, pred0 = n - true1, n - pred1
    return _ratio(true1 * _f1(tp1, true1, pred1) + true0 * _f1(tp0, true0, pred0), n)


def _f1(tp: np.ndarray, n_true: np.ndarray, n_pred: np.ndarray) -> np.ndarray:
    """2 tp / (n_true + n_pred), 0 where a label is neither true nor predicted."""
    return np.divide(2 * tp, n_true + n_pred, out=np.zeros(np.shape(tp)), where=n_true + n_pred > 0)


def _regression_rows(p: np.ndarray, t: np.ndarray, w: np.ndarray) -> dict[str, np.ndarray]:
    # Centre first (corr is shift-invariant), so that the weighted moments below lose no precision.
    pc, tc = p - p.mean(), t - t.mean()
    cols = np.stack([
        np.ones_like(p), (p >= 0) == (t >= 0), t >= 0, p >= 0, (t >= 0) & (p >= 0), (t < 0) & (p < 0),
        t != 0, ((p > 0) == (t > 0)) & (t != 0), t > 0, (p > 0) & (t != 0), (t > 0) & (p > 0), (t < 0) & (p <= 0),
        np.round(np.clip(p, -3.0, 3.0)) == np.round(np.clip(t, -3.0, 3.0)),
        np.round(np.clip(p, -2.0, 2.0)) == np.round(np.clip(t, -2.0, 2.0)),
        np.abs(p - t), pc, tc, pc * pc, tc * tc, pc * tc,
    ], axis=1).astype(np.float64)
    (n, has0_agree, true1, pred1, tp1, tp0, n_non0, non0_agree, true1_nz, pred1_nz, tp1_nz, tp0_nz,
     eq7, eq5, abs_err, sp, st, spp, stt, spt) = (w @ cols).T
    var_p, var_t = spp / n - (sp / n) ** 2, stt / n - (st / n) ** 2
    constant = np.ptp(p) == 0 or np.ptp(t) == 0 or len(p) < 2
    defined = (var_p > 0) & (var_t > 0) & (not constant)
    cov = spt / n - (sp / n) * (st / n)
    return {
        "acc2_has0": has0_agree / n,
        "f1_has0": _binary_wf1(n, true1, pred1, tp1, tp0),
        "acc2_non0": _ratio(non0_agree, n_non0),
        "f1_non0": _binary_wf1(n_non0, true1_nz, pred1_nz, tp1_nz, tp0_nz),
        "acc7": eq7 / n,
        "acc5": eq5 / n,
        "mae": abs_err / n,
        "corr": np.divide(cov, np.sqrt(np.abs(var_p * var_t)), out=np.full(len(n), np.nan), where=defined),
    }


def _class_rows(t: np.ndarray, p: np.ndarray, n_labels: int, w: np.ndarray) -> dict[str, np.ndarray]:
    cols = [np.ones(len(t)), p == t]
    for label in range(n_labels):
        cols += [t == label, p == label, (t == label) & (p == label)]
    sums = w @ np.stack(cols, axis=1).astype(np.float64)
    n, correct = sums[:, 0], sums[:, 1]
    total = np.zeros(len(n))
    for label in range(n_labels):
        n_true, n_pred, tp = sums[:, 2 + 3 * label], sums[:, 3 + 3 * label], sums[:, 4 + 3 * label]
        total += n_true * _f1(tp, n_true, n_pred)
    return {"acc": _ratio(correct, n), "wf1": _ratio(total, n)}


def regression_metrics(pred: np.ndarray, truth: np.ndarray, digits: int | None = DECIMALS) -> dict[str, float | None]:
    if len(np.asarray(truth).reshape(-1)) == 0:
        return {k: None for k in REGRESSION_KEYS}
    return _scalars(metric_rows("regression", pred, truth), digits)


def classification_metrics(pred_labels: np.ndarray, truth: np.ndarray,
                           digits: int | None = DECIMALS) -> dict[str, float | None]:
    if len(np.asarray(truth).reshape(-1)) == 0:
        return {k: None for k in CLASSIFICATION_KEYS}
    return _scalars(metric_rows("classification", np.asarray(pred_labels).reshape(-1), truth), digits)


def compute_metrics(task: str, pred: np.ndarray, truth: np.ndarray,
                    digits: int | None = DECIMALS) -> dict[str, float | None]:
    """pred: scores (regression) or logits / labels (classification; logits are argmax-ed)."""
    if task == "regression":
        return regression_metrics(pred, truth, digits)
    pred = np.asarray(pred)
    return classification_metrics(pred.argmax(-1) if pred.ndim == 2 else pred, truth, digits)


def _scalars(rows: dict[str, np.ndarray], digits: int | None) -> dict[str, float | None]:
    """The single row of metric_rows as floats, nan -> None (JSON holds no NaN)."""
    return _rounded({k: None if np.isnan(v[0]) else float(v[0]) for k, v in rows.items()}, digits)


def mean_metrics(runs: list[dict[str, float | None]], digits: int | None = DECIMALS) -> dict[str, float | None]:
    """The mean of each metric over several mask draws (None if any draw has it undefined).

    Give it unrounded runs (digits=None) so that rounding happens once, at the end.
    """
    keys = runs[0].keys()
    return _rounded({k: None if any(r[k] is None for r in runs) else float(np.mean([r[k] for r in runs]))
                     for k in keys}, digits)


def _rounded(d: dict[str, float | None], digits: int | None) -> dict[str, float | None]:
    if digits is None:
        return d
    return {k: None if v is None else round(float(v), digits) for k, v in d.items()}
