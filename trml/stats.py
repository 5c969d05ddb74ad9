"""How sure a comparison is: the spread over seeds, and paired bootstrap intervals of differences.

Two questions, two tools:

  summarize(values)    one variant, condition and metric over seeds: mean, sd (n - 1 in the denominator;
                       None with one seed), n, and the per-seed values themselves.

  paired_difference    trml minus a baseline on one condition, from the per-seed, per-utterance predictions
                       of both. Two-level paired bootstrap: each of B resamples draws the seeds with
                       replacement and, independently, the test utterances with replacement; on the drawn
                       utterances it computes the metric of both models for every drawn seed and mask draw,
                       and averages (model a - model b) over them. The 95% interval is the 2.5th and 97.5th
                       percentiles of those B differences. Both models always see the same utterances, seeds
                       and masks (that is the pairing), so what is shared cancels; resampling seeds carries
                       training randomness into the interval, resampling utterances the test set's.
                       With one seed it is the ordinary paired bootstrap over utterances.

The point estimate is the difference on the full test set, averaged over seeds and mask draws: the
difference of the two variants' means in compare.json.
"""
from __future__ import annotations

import numpy as np

from trml.metrics import metric_rows

CI_LEVEL = 0.95


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


class PairedBootstrap:
    """One set of resamples (seeds and utterances, drawn once from `seed`) shared by every comparison, so
    each variant's resampled metrics are computed once and reused against every other variant."""

    def __init__(self, task: str, truth: np.ndarray, n_seeds: int, resamples: int, seed: int):
        rng = np.random.default_rng(seed)
        self.task, self.truth, self.resamples = task, np.asarray(truth), resamples
        n = len(self.truth)
        # Resampling n of n utterances with replacement, as counts: how often each one is drawn.
        self.counts = rng.multinomial(n, np.full(n, 1.0 / n), size=resamples).astype(np.float64)
        self.seeds = rng.integers(0, n_seeds, size=(resamples, n_seeds))
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
        """{metric: {"mean", "ci95": [lo, hi], "resamples"}} of a - b (see the module docstring).

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
        rows = np.arange(self.resamples)[:, None]
        out = {}
        for m, per_seed in boot.items():
            mean = float(np.mean(full[m]))
            resampled = per_seed[self.seeds, rows].mean(1)                 # over each resample's drawn seeds
            resampled = resampled[np.isfinite(resampled)]                  # where the metric is undefined
            lo, hi = (np.percentile(resampled, [50 * (1 - CI_LEVEL), 50 * (1 + CI_LEVEL)]) if len(resampled)
                      else (np.nan, np.nan))
            out[m] = {"mean": None if np.isnan(mean) else mean,
                      "ci95": None if np.isnan(lo) else [float(lo), float(hi)],
                      "resamples": int(len(resampled))}
        return out


def paired_difference(task: str, preds_a: np.ndarray, preds_b: np.ndarray, truth: np.ndarray,
                      resamples: int, seed: int) -> dict[str, dict]:
    """a - b for one pair: PairedBootstrap(...).difference without the sharing."""
    boot = PairedBootstrap(task, truth, preds_a.shape[0], resamples, seed)
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
