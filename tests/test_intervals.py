"""The intervals of trml - baseline hold at the seeds a user runs, and the check can fail.

A simulation with a known true difference of MAE, in two regimes (trml/stats.py, docs/architecture.md,
"Intervals"):
    seeds   training randomness dominates: every seed shifts a model's errors (sd 0.08), on 300 test
            utterances whose noise mostly cancels in the paired difference;
    test    test sampling dominates: 150 utterances, a hard-for-both part (sd 0.6) and each model's own
            noise (sd 0.5, new for every seed), no seed shift.
Both models err by |bias + shift + shared + own|, so the true difference of expected MAE is that of two
folded normals. At 3 seeds, over TRIALS independent test sets, the product's interval must cover it at a
rate inside a two-sided binomial band around 95%; planted wrong methods must land outside the band:
    unpaired     a and b resampled independently: too wide where the shared part matters (test regime)
    too_wide     [-10, 10]: covers always
    two_level    the earlier method (seeds and utterances resampled, percentile interval): at 3 seeds its
                 seed part is [min, max] of three values, too narrow where training dominates
    test_only    the utterance bootstrap alone, seeds ignored: too narrow where training dominates
"""
import numpy as np
import pytest
from scipy.stats import binom, norm

from trml.stats import PairedBootstrap, seed_t, simultaneous, t_interval

TRIALS, SEEDS, RESAMPLES = 600, 3, 200
REGIMES = {"seeds": dict(n=300, shift=0.08, shared=0.5, own=0.1),
           "test": dict(n=150, shift=0.0, shared=0.6, own=0.5)}
BIAS_A, BIAS_B = 0.8, 0.9
# 95% coverage observed over TRIALS trials falls outside this band with probability about 0.2%.
BAND = (binom.ppf(0.001, TRIALS, 0.95) / TRIALS, binom.ppf(0.999, TRIALS, 0.95) / TRIALS)


def folded_normal_mean(mu: float, sd: float) -> float:
    """E|X| for X ~ N(mu, sd^2)."""
    return sd * np.sqrt(2 / np.pi) * np.exp(-mu ** 2 / (2 * sd ** 2)) + mu * (1 - 2 * norm.cdf(-mu / sd))


def simulate(rng: np.random.Generator, regime: str, n_seeds: int = SEEDS):
    """truth (n,), predictions of a and b (S, 1, n), and the true difference of their expected MAE."""
    p = REGIMES[regime]
    n = p["n"]
    truth = rng.uniform(-3, 3, n)
    shared = rng.normal(0, p["shared"], n)                 # the same utterance is hard for both models

    def model(bias: float) -> np.ndarray:
        return truth + bias + rng.normal(0, p["shift"], (n_seeds, 1, 1)) + shared + rng.normal(0, p["own"], (n_seeds, 1, n))

    sd = np.sqrt(p["shift"] ** 2 + p["shared"] ** 2 + p["own"] ** 2)
    return truth, model(BIAS_A), model(BIAS_B), folded_normal_mean(BIAS_A, sd) - folded_normal_mean(BIAS_B, sd)


def intervals(truth: np.ndarray, a: np.ndarray, b: np.ndarray, trial: int) -> dict[str, list[float]]:
    """The product's 95% interval of MAE(a) - MAE(b), and the planted wrong ones, on the same data."""
    boot = PairedBootstrap("regression", truth, RESAMPLES, seed=trial)
    out = {"product": boot.difference([("a", 0, a)], [("b", 0, b)])["mae"]["ci95"]}
    (full_a, boot_a), (full_b, boot_b) = boot.metrics("a", a), boot.metrics("b", b)
    full, paired = full_a["mae"] - full_b["mae"], boot_a["mae"] - boot_b["mae"]
    _, unpaired_b = PairedBootstrap("regression", truth, RESAMPLES, seed=trial + 10 ** 6).metrics("b", b)
    out["unpaired"] = t_interval(*seed_t(full, boot_a["mae"] - unpaired_b["mae"])[:3])
    out["too_wide"] = [-10.0, 10.0]
    seeds = np.random.default_rng(trial).integers(0, len(full), (RESAMPLES, len(full)))
    two_level = paired[seeds, np.arange(RESAMPLES)[:, None]].mean(1)
    out["two_level"] = list(np.percentile(two_level, [2.5, 97.5]))
    half = 1.96 * np.std(paired.mean(0), ddof=1)
    out["test_only"] = [full.mean() - half, full.mean() + half]
    return out


@pytest.fixture(scope="module")
def coverage() -> dict[str, dict[str, float]]:
    """{regime: {method: share of TRIALS test sets whose interval holds the true difference}}."""
    out = {}
    for regime in REGIMES:
        rng = np.random.default_rng(2026)
        hits: dict[str, int] = {}
        for trial in range(TRIALS):
            truth, a, b, true = simulate(rng, regime)
            for method, (lo, hi) in intervals(truth, a, b, trial).items():
                hits[method] = hits.get(method, 0) + int(lo <= true <= hi)
        out[regime] = {m: h / TRIALS for m, h in hits.items()}
    return out


@pytest.mark.parametrize("regime", list(REGIMES))
def test_the_interval_covers_at_about_95_percent_at_3_seeds(coverage, regime):
    lo, hi = BAND
    assert lo <= coverage[regime]["product"] <= hi, (regime, coverage[regime])


@pytest.mark.parametrize("method, regime", [("unpaired", "test"), ("too_wide", "seeds"), ("too_wide", "test"),
                                            ("two_level", "seeds"), ("test_only", "seeds")])
def test_a_planted_wrong_interval_falls_outside_the_band(coverage, method, regime):
    lo, hi = BAND
    assert not lo <= coverage[regime][method] <= hi, (method, regime, coverage[regime])


def test_the_band_is_two_sided_and_narrow_enough_to_tell():
    lo, hi = BAND
    assert 0.915 < lo < 0.95 < hi < 0.98


def test_one_seed_has_no_seed_part_and_identical_seeds_add_none():
    rng = np.random.default_rng(0)
    truth, a, b, _ = simulate(rng, "test", n_seeds=1)
    one = PairedBootstrap("regression", truth, RESAMPLES, seed=0).difference([("a", 0, a)], [("b", 0, b)])["mae"]
    assert one["df"] is None                                    # infinite: the normal interval
    three = PairedBootstrap("regression", truth, RESAMPLES, seed=0).difference(
        [("a", 0, np.repeat(a, 3, 0))], [("b", 0, np.repeat(b, 3, 0))])["mae"]
    assert three["se"] == pytest.approx(one["se"]) and three["df"] is None
    assert three["resamples"] == RESAMPLES


def test_seeds_that_disagree_widen_the_interval_and_get_few_degrees_of_freedom():
    rng = np.random.default_rng(1)
    truth, a, b, _ = simulate(rng, "seeds", n_seeds=3)
    d = PairedBootstrap("regression", truth, RESAMPLES, seed=0).difference([("a", 0, a)], [("b", 0, b)])["mae"]
    assert 2.0 <= d["df"] < 3.0                                   # nearly all of se is the seeds' part
    lo, hi = d["ci95"]
    assert hi - lo == pytest.approx(2 * 4.303 * d["se"], rel=0.05)


def test_bonferroni_widens_each_interval_to_level_1_minus_alpha_over_m():
    family = [{"mean": 0.1, "se": 0.05, "df": None}, {"mean": -0.2, "se": 0.1, "df": 4.0}, {"mean": None, "se": None}]
    adjusted = simultaneous(family)
    z = norm.ppf(1 - 0.05 / 4)                                   # m = 2 defined comparisons, two-sided
    assert adjusted[0] == pytest.approx([0.1 - z * 0.05, 0.1 + z * 0.05])
    from scipy.stats import t
    assert adjusted[1] == pytest.approx([-0.2 - t.ppf(1 - 0.05 / 4, 4) * 0.1, -0.2 + t.ppf(1 - 0.05 / 4, 4) * 0.1])
    assert adjusted[2] is None


def test_resamples_where_the_metric_is_undefined_are_counted_out():
    """Pearson r of a constant prediction is undefined; the usable count says how many resamples were left."""
    rng = np.random.default_rng(3)
    truth = rng.uniform(-3, 3, 6)
    a = np.tile(truth + rng.normal(0, 1, 6), (2, 1, 1))
    b = np.zeros((2, 1, 6))                                      # constant: corr undefined on every resample
    d = PairedBootstrap("regression", truth, 50, seed=0).difference([("a", 0, a)], [("b", 0, b)])
    assert d["corr"]["resamples"] == 0 and d["corr"]["ci95"] is None
    assert d["mae"]["resamples"] == 50


def test_report_the_coverage(coverage, capsys):
    """Not a check: prints the coverage table (pytest -s) that docs/architecture.md quotes."""
    with capsys.disabled():
        for regime, by_method in coverage.items():
            print(f"\ncoverage at {SEEDS} seeds, {TRIALS} trials, regime {regime}: "
                  + ", ".join(f"{m} {v:.3f}" for m, v in by_method.items()))


def test_the_outside_check_imports_nothing_from_the_project():
    import ast
    from tests.conftest import ROOT
    tree = ast.parse((ROOT / "tests" / "recompute_compare.py").read_text())
    modules = {a.name.split(".")[0] for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names}
    modules |= {n.module.split(".")[0] for n in ast.walk(tree) if isinstance(n, ast.ImportFrom) and n.module}
    assert modules <= {"__future__", "json", "pathlib", "numpy", "pyarrow", "scipy"}, modules


if __name__ == "__main__":
    # docs/architecture.md's coverage table: python -m tests.test_intervals [TRIALS]
    import sys
    trials = int(sys.argv[1]) if len(sys.argv) > 1 else 1000
    for n_seeds in (3, 5, 10):
        for regime in REGIMES:
            rng = np.random.default_rng(2026)
            hits: dict[str, int] = {}
            widths: dict[str, list[float]] = {}
            for trial in range(trials):
                truth, a, b, true = simulate(rng, regime, n_seeds)
                for method, (lo, hi) in intervals(truth, a, b, trial).items():
                    hits[method] = hits.get(method, 0) + int(lo <= true <= hi)
                    widths.setdefault(method, []).append(hi - lo)
            print(f"S={n_seeds} {regime}: " + ", ".join(f"{m} {h / trials:.3f} (w {np.median(widths[m]):.3f})"
                                                     for m, h in hits.items()), flush=True)
