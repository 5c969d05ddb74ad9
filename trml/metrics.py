"""Metrics with MMSA's definitions (thuiar/MMSA metricsTop), under DESIGN.md's key names.

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
    total = 0.0
    for label in np.union1d(y_true, y_pred):
        tp = np.sum((y_pred == label) & (y_true == label))
        n_pred, n_true = np.sum(y_pred == label), np.sum(y_true == label)
        f1 = 2.0 * tp / (n_pred + n_true) if n_pred + n_true else 0.0
        total += n_true * f1
    return float(total / len(y_true)) if len(y_true) else float("nan")


def multiclass_acc(y_pred: np.ndarray, y_true: np.ndarray) -> float:
    """MMSA's __multiclass_acc: agreement after np.round (which rounds half to even)."""
    return float(np.mean(np.round(y_pred) == np.round(y_true)))


def regression_metrics(pred: np.ndarray, truth: np.ndarray, digits: int | None = DECIMALS) -> dict[str, float | None]:
    pred = np.asarray(pred, np.float64).reshape(-1)
    truth = np.asarray(truth, np.float64).reshape(-1)
    if len(truth) == 0:
        return {k: None for k in REGRESSION_KEYS}
    non0 = truth != 0
    out = {
        "acc2_has0": float(np.mean((pred >= 0) == (truth >= 0))),
        "f1_has0": weighted_f1(truth >= 0, pred >= 0),
        "acc2_non0": float(np.mean((pred[non0] > 0) == (truth[non0] > 0))) if non0.any() else None,
        "f1_non0": weighted_f1(truth[non0] > 0, pred[non0] > 0) if non0.any() else None,
        "acc7": multiclass_acc(np.clip(pred, -3.0, 3.0), np.clip(truth, -3.0, 3.0)),
        "acc5": multiclass_acc(np.clip(pred, -2.0, 2.0), np.clip(truth, -2.0, 2.0)),
        "mae": float(np.mean(np.abs(pred - truth))),
        "corr": _pearson(pred, truth),
    }
    return _rounded(out, digits)


def classification_metrics(pred_labels: np.ndarray, truth: np.ndarray,
                           digits: int | None = DECIMALS) -> dict[str, float | None]:
    pred_labels = np.asarray(pred_labels).reshape(-1)
    truth = np.asarray(truth).reshape(-1)
    if len(truth) == 0:
        return {k: None for k in CLASSIFICATION_KEYS}
    return _rounded({"acc": float(np.mean(pred_labels == truth)), "wf1": weighted_f1(truth, pred_labels)},
                    digits)


def compute_metrics(task: str, pred: np.ndarray, truth: np.ndarray,
                    digits: int | None = DECIMALS) -> dict[str, float | None]:
    """pred: scores (regression) or logits / labels (classification; logits are argmax-ed)."""
    if task == "regression":
        return regression_metrics(pred, truth, digits)
    pred = np.asarray(pred)
    return classification_metrics(pred.argmax(-1) if pred.ndim == 2 else pred, truth, digits)


def mean_metrics(runs: list[dict[str, float | None]], digits: int | None = DECIMALS) -> dict[str, float | None]:
    """The mean of each metric over several mask draws (None if any draw has it undefined).

    Give it unrounded runs (digits=None) so that rounding happens once, at the end.
    """
    keys = runs[0].keys()
    return _rounded({k: None if any(r[k] is None for r in runs) else float(np.mean([r[k] for r in runs]))
                     for k in keys}, digits)


def _pearson(a: np.ndarray, b: np.ndarray) -> float | None:
    if len(a) < 2 or np.std(a) == 0 or np.std(b) == 0:
        return None                    # np.corrcoef would give nan, which JSON cannot hold
    return float(np.corrcoef(a, b)[0, 1])


def _rounded(d: dict[str, float | None], digits: int | None) -> dict[str, float | None]:
    if digits is None:
        return d
    return {k: None if v is None else round(float(v), digits) for k, v in d.items()}
