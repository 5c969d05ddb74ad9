"""How sure a comparison is: the spread over seeds, and paired intervals of differences.

Two questions, two tools:

  summarize(values)    one variant, condition and metric over seeds: mean, sd (n - 1 in the denominator;
                       None with one seed), n, and the per-seed values themselves.

  PairedBootstrap      trml minus a baseline on one condition, from the per-seed, per-utterance predictions
    .difference        of both, on the same seeds, utterances and masks (the pairing: what is shared cancels).

The interval: a seed-t interval with a bootstrap test-set variance (docs/architecture.md, "Intervals").
Per seed s, d_s is the difference of the metric on the full test set (averaged over mask draws); the
estimate is their mean d. Two sources of error move d:

  the test set     its utterances are one sample of many. B resamples of the utterances (with replacement,
                   the same resamples for every variant, so the pairing holds inside each) give the
                   bootstrap variance V of d, and of each seed's own d_s (V_s).
  training         each seed is one draw of training randomness. The seeds' sample variance s^2 holds it,
                   but also the part of the test-set noise that differs between seeds, W = S/(S-1) *
                   (mean V_s - V), which V already counts; so the seeds add max(s^2 - W, 0) / S.

  se^2 = V + max(s^2 - W, 0) / S, and the 95% interval is d -+ t(nu) se, with nu the Welch-Satterthwaite
  degrees of freedom (Satterthwaite 1946) of that sum: the test part has many, the seed part S - 1. So
  when training randomness dominates it is Student's t interval over the seeds (exact for normal d_s:
  95% even at 3 seeds, and wide, t(2) = 4.30), when the test set dominates it is the normal interval with
  the bootstrap's variance, and in between it moves smoothly. With one seed there is no seed part: the
  interval holds only the test set's uncertainty (the report says so).

Several comparisons at once (every condition of one baseline) are corrected by Bonferroni's method
(Dunn 1961): simultaneous() widens each interval to level 1 - 0.05 / m, so that all m hold together with
probability at least 95%. The report marks a difference (dagger) only when its adjusted interval excludes 0.

The point estimate is the difference on the full test set, averaged over seeds and mask draws: the
difference of the two variants' means in compare.json.
"""
from __future__ import annotations

import numpy as np
from scipy import stats as _scipy_stats

from trml.metrics import metric_rows

CI_LEVEL = 0.95
METHOD = ("seed-t interval: mean -+ t(nu) se, se^2 = the paired utterance bootstrap's variance of the "
          "seed mean + the seeds' variance beyond it / S, nu by Welch-Satterthwaite")
CORRECTION = "Bonferroni (Dunn 1961) over the conditions of each baseline comparison"


def summarize(values: list[float | None]) -> dict:
    """{"mean", "sd", "n", "values"} of one metric over seeds; undefined (None) values are left out of n."""
    defined = np.array([v for v in values if v is not None], np.float64)
    n = len(defined)
    return {
        "mean": float(defined.mean()) if n else None,
        # Deviations from the first value: identical seeds give exactly 0, not a rounding residue of the mean.
        "sd": float((defined - defined[0]).std(ddof=1)) if n >= 2 else None,
        "n": n,
        "values": list(values),
    }


def seed_values(task: str, preds: np.ndarray, truth: np.ndarray) -> dict[str, list[float | None]]:
    """preds (S, D, n[, C]): the metric of each seed (S), averaged over its D mask draws, on all utterances."""
    return {key: [None if np.isnan(v) else float(v) for v in per_seed[:, 0]]
            for key, per_seed in _draw_means(task, preds, truth, None).items()}


def critical(df: float, level: float = CI_LEVEL) -> float:
    """Student's t quantile of a two-sided `level` interval (df = inf: the normal one, 1.96 at 95%)."""
    return float(_scipy_stats.t.ppf(0.5 + level / 2, df))


def t_interval(mean: float, se: float, df: float, level: float = CI_LEVEL) -> list[float]:
    half = critical(df, level) * se
    return [mean - half, mean + half]


def seed_t(full: np.ndarray, boot: np.ndarray) -> tuple[float, float, float, int]:
    """(mean, se, df, usable resamples) of the seed mean of d, from each seed's full-set value full (S,) and
    its value under each utterance resample boot (S, B); see the module docstring. Resamples where the
    metric is undefined for some seed are left out (the count says how many were left)."""
    n_seeds = len(full)
    boot = boot[:, np.isfinite(boot).all(0)]
    usable = boot.shape[1]
    mean = float(np.mean(full))
    if usable < 2 or not np.isfinite(mean):
        return mean, float("nan"), float("nan"), usable
    test_var = float(np.var(boot.mean(0), ddof=1))
    seed_part = 0.0
    if n_seeds >= 2:
        own = float(np.mean(np.var(boot, axis=1, ddof=1)))               # mean V_s
        shared_noise = max(own - test_var, 0.0) * n_seeds / (n_seeds - 1)  # W
        deviations = full - full[0]                                          # exact 0 for identical seeds
        seed_part = max(float(np.var(deviations, ddof=1)) - shared_noise, 0.0) / n_seeds
    se2 = test_var + seed_part
    df = se2 ** 2 * (n_seeds - 1) / seed_part ** 2 if seed_part > 0 else float("inf")
    return mean, float(np.sqrt(se2)), float(df), usable


class PairedBootstrap:
    """One set of utterance resamples (drawn once from `seed`) shared by every comparison, so each variant's
    resampled metrics are computed once and reused against every other variant."""

    def __init__(self, task: str, truth: np.ndarray, resamples: int, seed: int):
        rng = np.random.default_rng(seed)
        self.task, self.truth, self.resamples = task, np.asarray(truth), resamples
        n = len(self.truth)
        # Resampling n of n utterances with replacement, as counts: how often each one is drawn.
        self.counts = rng.multinomial(n, np.full(n, 1.0 / n), size=resamples).astype(np.float64)
        self._cache: dict[object, tuple[dict, dict]] = {}

    def metrics(self, key: object, preds: np.ndarray) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray]]:
        """({metric: (S,) full-set}, {metric: (S, B) resampled}) draw-averaged values of preds (S, D, n[, C])."""
        if key not in self._cache:
            full = _draw_means(self.task, preds, self.truth, None)
            self._cache[key] = ({k: v[:, 0] for k, v in full.items()},
                                _draw_means(self.task, preds, self.truth, self.counts))
        return self._cache[key]

    def difference(self, a: list[tuple[object, object, np.ndarray]],
                   b: list[tuple[object, object, np.ndarray]]) -> dict[str, dict]:
        """{metric: {"mean", "se", "df", "ci95": [lo, hi], "resamples"}} of a - b (see the module docstring).

        a and b: one (variant, condition, preds) per condition, in the same order; preds (S, D, n[, C]) with
        the same seeds, mask draws and utterances on both sides. Several conditions give the difference of
        the metric averaged over them (as in "mae averaged over the missing rates").
        """
        if len(a) != len(b) or not a:
            raise ValueError("a difference needs the same conditions, at least one, on both sides")
        full: dict[str, np.ndarray] = {}
        boot: dict[str, np.ndarray] = {}
        for (va, ca, pa_), (vb, cb, pb) in zip(a, b):
            if pa_.shape != pb.shape:
                raise ValueError(f"paired predictions differ in shape: {pa_.shape} vs {pb.shape}")
            (full_a, boot_a), (full_b, boot_b) = self.metrics((va, ca), pa_), self.metrics((vb, cb), pb)
            for m in full_a:
                full[m] = full.get(m, 0.0) + (full_a[m] - full_b[m]) / len(a)          # (S,)
                boot[m] = boot.get(m, 0.0) + (boot_a[m] - boot_b[m]) / len(a)          # (S, B)
        out = {}
        for m in boot:
            mean, se, df, usable = seed_t(full[m], boot[m])
            defined = np.isfinite(mean) and np.isfinite(se)
            out[m] = {"mean": float(mean) if np.isfinite(mean) else None,
                      "se": float(se) if defined else None,
                      "df": (None if not np.isfinite(df) else float(df)) if defined else None,
                      "ci95": t_interval(mean, se, df) if defined else None,
                      "resamples": int(usable)}
        return out


def simultaneous(family: list[dict], level: float = CI_LEVEL) -> list[list[float] | None]:
    """Bonferroni-adjusted intervals of m differences (each {"mean", "se", "df"} from difference()): each at
    level 1 - (1 - level) / m, so that all m hold together with probability at least `level`."""
    defined = [d for d in family if d.get("se") is not None]
    m = max(len(defined), 1)
    adjusted = 1 - (1 - level) / m
    return [None if d.get("se") is None else
            t_interval(d["mean"], d["se"], float("inf") if d["df"] is None else d["df"], adjusted)
            for d in family]


def paired_difference(task: str, preds_a: np.ndarray, preds_b: np.ndarray, truth: np.ndarray,
                      resamples: int, seed: int) -> dict[str, dict]:
    """a - b for one pair: PairedBootstrap(...).difference without the sharing."""
    boot = PairedBootstrap(task, truth, resamples, seed)
    return boot.difference([("a", None, preds_a)], [("b", None, preds_b)])


def _draw_means(task: str, preds: np.ndarray, truth: np.ndarray, counts: np.ndarray | None) -> dict[str, np.ndarray]:
    """{metric: (S, B)}: each seed's metric under each row of counts (B, n) (None: every utterance once, B = 1),
    averaged over the D mask draws."""
    out: dict[str, np.ndarray] = {}
    n_seeds, n_draws = preds.shape[:2]
    rows = 1 if counts is None else len(counts)
    for s in range(n_seeds):
        for d in range(n_draws):
            for key, v in metric_rows(task, preds[s, d], truth, counts).items():
                out.setdefault(key, np.zeros((n_seeds, rows)))[s] += v / n_draws
    return out
