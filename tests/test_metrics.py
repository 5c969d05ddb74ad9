"""trml.metrics against cases worked out by hand (MMSA's definitions)."""
import math

import numpy as np
import pytest

from trml.metrics import (CLASSIFICATION_KEYS, REGRESSION_KEYS, _f1, classification_metrics, compute_metrics,
                          mean_metrics, metric_keys, metric_rows, regression_metrics, weighted_f1)


def test_acc7_rounds_half_to_even_after_clipping():
    # np.round: 0.5 -> 0, 1.5 -> 2, 2.5 -> 2, -0.5 -> -0, -2.5 -> -2. Rounding half away from zero
    # would match only 1.5 and give 0.2, so this case tells the two apart.
    pred = np.array([0.5, 1.5, 2.5, -0.5, -2.5])
    truth = np.array([0.0, 2.0, 2.0, 0.0, -2.0])
    assert regression_metrics(pred, truth)["acc7"] == 1.0
    # Clipping to [-3, 3] first: 3.7 and 3.0 are both class 3; 4.6 would round to 5 unclipped.
    assert regression_metrics(np.array([3.7, 4.6, -9.0]), np.array([3.0, 3.0, -3.0]))["acc7"] == 1.0
    # acc5 clips to [-2, 2]: 2.4 -> 2 and 1.6 -> 2 agree; 3.0 and 2.2 both become 2.
    assert regression_metrics(np.array([2.4, 3.0, 0.4]), np.array([1.6, 2.2, 1.0]))["acc5"] == pytest.approx(2 / 3, abs=1e-4)
    # ...while acc7 keeps 3.0 vs 2.2 apart.
    assert regression_metrics(np.array([2.4, 3.0, 0.4]), np.array([1.6, 2.2, 1.0]))["acc7"] == pytest.approx(1 / 3, abs=1e-4)


def test_has0_non0_mae_corr_by_hand():
    truth = np.array([0.0, 1.0, -1.0, 2.0])
    pred = np.array([-0.1, 0.5, 0.5, -1.0])
    m = regression_metrics(pred, truth)
    # Has0: truth >= 0 -> [T, T, F, T], pred >= 0 -> [F, T, T, F]: only row 1 agrees.
    assert m["acc2_has0"] == 0.25
    # F1(True) = 2*1/(2+3) = 0.4 with support 3; F1(False) = 0 with support 1 -> 0.3.
    assert m["f1_has0"] == 0.3
    # Non0 drops the truth-0 row: truth > 0 -> [T, F, T], pred > 0 -> [T, T, F]: 1 of 3.
    assert m["acc2_non0"] == round(1 / 3, 4)
    # F1(True) = 2*1/(2+2) = 0.5 with support 2; F1(False) = 0 with support 1 -> 1/3.
    assert m["f1_non0"] == round(1 / 3, 4)
    assert m["mae"] == round((0.1 + 0.5 + 1.5 + 3.0) / 4, 4)
    # Pearson by hand: sum(dp*dt) = -1.95, sum(dp^2) = 1.5075, sum(dt^2) = 5.
    assert m["corr"] == round(-1.95 / math.sqrt(1.5075 * 5), 4)
    assert tuple(m) == REGRESSION_KEYS


def test_weighted_f1_and_accuracy_for_classes_by_hand():
    truth = np.array([0, 0, 1, 2, 2, 2])
    pred = np.array([0, 1, 1, 2, 2, 0])
    # F1: class 0 = 2*1/(2+2) = 0.5, class 1 = 2*1/(2+1) = 2/3, class 2 = 2*2/(2+3) = 0.8;
    # weighted by support 2, 1, 3.
    expected = (2 * 0.5 + 1 * (2 / 3) + 3 * 0.8) / 6
    m = classification_metrics(pred, truth)
    assert tuple(m) == CLASSIFICATION_KEYS
    assert m["acc"] == round(4 / 6, 4)
    assert m["wf1"] == round(expected, 4)
    # Logits are argmax-ed.
    logits = np.eye(3)[pred] * 5.0
    assert compute_metrics("classification", logits, truth) == m


def test_label_only_predicted_counts_with_zero_weight():
    # Class 3 is predicted but never true: it lowers class 0's precision, adds no weight of its own.
    truth, pred = np.array([0, 0]), np.array([0, 3])
    assert weighted_f1(truth, pred) == pytest.approx(2 * 1 / (1 + 2))


def test_agrees_with_scikit_learn_on_random_cases():
    sklearn_metrics = pytest.importorskip("sklearn.metrics")
    rng = np.random.default_rng(0)
    for _ in range(5):
        truth = np.round(rng.uniform(-3, 3, 50) * 2) / 2          # includes exact zeros
        pred = rng.uniform(-3, 3, 50)
        m = regression_metrics(pred, truth, digits=None)
        assert m["f1_has0"] == pytest.approx(sklearn_metrics.f1_score(truth >= 0, pred >= 0, average="weighted"))
        nz = truth != 0
        assert m["f1_non0"] == pytest.approx(sklearn_metrics.f1_score(truth[nz] > 0, pred[nz] > 0, average="weighted"))
        labels, guesses = rng.integers(0, 7, 40), rng.integers(0, 7, 40)
        assert weighted_f1(labels, guesses) == pytest.approx(
            sklearn_metrics.f1_score(labels, guesses, average="weighted", zero_division=0))


def test_undefined_metrics_are_none_not_nan():
    m = regression_metrics(np.array([1.0, 1.0, 1.0]), np.array([0.0, 0.0, 0.0]))
    assert m["corr"] is None                   # constant predictions
    assert m["acc2_non0"] is None and m["f1_non0"] is None       # no non-zero truth
    assert m["acc2_has0"] == 1.0


def test_mean_over_draws_rounds_once():
    runs = [{"acc": 0.33333, "wf1": None}, {"acc": 0.66666, "wf1": 0.5}]
    assert mean_metrics(runs) == {"acc": 0.5, "wf1": None}


def test_weighted_rows_equal_metrics_on_explicitly_resampled_data():
    """A row of resampling counts gives exactly the metrics of the resampled arrays (both tasks, labels or
    logits). The bootstrap (trml/stats.py) rests on this."""
    rng = np.random.default_rng(0)
    truth = np.round(rng.uniform(-3, 3, 60) * 2) / 2                   # exact zeros included
    pred = truth + rng.normal(0, 1, 60)
    labels, guesses = rng.integers(0, 5, 60), rng.integers(0, 5, 60)
    logits = rng.normal(0, 1, (60, 5))
    for _ in range(5):
        idx = rng.integers(0, 60, 60)
        counts = np.bincount(idx, minlength=60)[None].astype(float)
        rows = metric_rows("regression", pred, truth, counts)
        direct = compute_metrics("regression", pred[idx], truth[idx], digits=None)
        assert {k: rows[k][0] for k in REGRESSION_KEYS} == pytest.approx(direct, abs=1e-9)
        rows = metric_rows("classification", guesses, labels, counts)
        direct = compute_metrics("classification", guesses[idx], labels[idx], digits=None)
        assert {k: rows[k][0] for k in CLASSIFICATION_KEYS} == pytest.approx(direct, abs=1e-9)
        rows = metric_rows("classification", logits, labels, counts)
        direct = compute_metrics("classification", logits[idx].argmax(1), labels[idx], digits=None)
        assert {k: rows[k][0] for k in CLASSIFICATION_KEYS} == pytest.approx(direct, abs=1e-9)


def test_one_row_per_weight_row_and_undefined_corr_in_a_constant_resample():
    truth, pred = np.array([-1.0, 0.5, 2.0, -2.0]), np.array([-0.5, 1.0, 1.5, 0.5])
    assert metric_rows("regression", pred, truth)["mae"].shape == (1,)
    # Row 0 counts every sample; row 1 takes sample 2 twice (constant on both sides); row 2 takes samples 0 and
    # 3, whose predictions rise while their truths fall.
    weights = np.array([[1, 1, 1, 1], [0, 0, 2, 0], [1, 0, 0, 1]], float)
    rows = metric_rows("regression", pred, truth, weights)
    assert rows["corr"][0] == pytest.approx(np.corrcoef(pred, truth)[0, 1])
    assert np.isnan(rows["corr"][1])                                   # one sample, twice: no correlation
    assert rows["corr"][2] == pytest.approx(-1.0)                      # two points on a falling line
    assert rows["mae"][1] == pytest.approx(0.5) and rows["mae"][2] == pytest.approx((0.5 + 2.5) / 2)
    # A resample of one truth value but two predictions: constant truth, corr undefined. In this one the
    # rounding leaves a covariance of -2.2e-16 over a variance of exactly 0: still undefined, never -inf.
    rows = metric_rows("regression", np.array([1.0, 2.0, 3.0]), np.array([1.0, 1.0, 3.0]),
                       np.array([[1.0, 1.0, 0.0]]))
    assert np.isnan(rows["corr"][0])
    rows = metric_rows("regression", np.array([1.9662155629226508, -0.5448051817850326, 0.29756212603835674,
                                               -2.83464532054159, 1.521078652048839]),
                       np.array([2.5, -2.0, 2.5, -1.0, -0.5]), np.array([[2.0, 0.0, 3.0, 0.0, 0.0]]))
    assert np.isnan(rows["corr"][0])


def test_a_prediction_of_exactly_zero_is_non_negative_for_has0_and_not_positive_for_non0():
    # MMSA: has0 splits at pred >= 0, non0 at pred > 0. A prediction of 0.0 against a negative truth is a
    # miss for has0 and a hit for non0; the F1 scores count it the same way.
    m = regression_metrics(np.array([0.0, 1.0]), np.array([-1.0, 1.0]))
    assert m["acc2_has0"] == 0.5 and m["acc2_non0"] == 1.0
    assert m["f1_non0"] == 1.0
    # has0: truth [F, T], pred [T, T]: F1(True) = 2/3 with support 1, F1(False) = 0 -> 1/3.
    assert m["f1_has0"] == round(1 / 3, 4)


def test_non0_scores_only_the_rows_with_non_zero_truth():
    # Truth 0 rows are left out whatever is predicted there; the one non-zero row is a miss.
    m = regression_metrics(np.array([-1.0, -1.0, 2.0]), np.array([0.0, 0.0, -1.0]))
    assert m["acc2_non0"] == 0.0 and m["f1_non0"] == 0.0
    # A single non-zero truth still gives a defined score.
    m = regression_metrics(np.array([1.0, -1.0]), np.array([0.0, 2.0]))
    assert m["acc2_non0"] == 0.0
    assert regression_metrics(np.array([1.0, -1.0]), np.array([0.0, -2.0]))["acc2_non0"] == 1.0


def test_acc7_clips_the_truth_too():
    # A truth above 3 (an unnormalised label) is class 3, as MMSA clips both sides.
    assert regression_metrics(np.array([3.0, -3.0]), np.array([3.6, -3.6]))["acc7"] == 1.0
    assert regression_metrics(np.array([2.0, -2.0]), np.array([2.6, -2.6]))["acc5"] == 1.0


def test_predictions_as_a_column_are_one_prediction_per_row():
    truth = np.array([-1.0, 0.5, 2.0])
    column = np.array([[-0.5], [1.0], [1.5]])
    assert regression_metrics(column, truth) == regression_metrics(column.reshape(-1), truth)
    labels = np.array([0, 1, 1])
    assert classification_metrics(np.array([[0], [1], [0]]), labels) == \
        classification_metrics(np.array([0, 1, 0]), labels)


def test_a_single_sample_has_metrics_and_an_empty_split_has_none():
    assert classification_metrics(np.array([1]), np.array([1])) == {"acc": 1.0, "wf1": 1.0}
    assert regression_metrics(np.array([0.5]), np.array([1.0]))["mae"] == 0.5
    assert set(classification_metrics(np.array([]), np.array([])).values()) == {None}
    assert set(regression_metrics(np.array([]), np.array([])).values()) == {None}


def test_metric_keys_per_task():
    assert metric_keys("regression") == REGRESSION_KEYS
    assert metric_keys("classification") == CLASSIFICATION_KEYS


def test_f1_of_a_label_neither_true_nor_predicted_is_zero():
    tp, n_true, n_pred = np.array([1.0, 0.0]), np.array([2.0, 0.0]), np.array([2.0, 0.0])
    assert _f1(tp, n_true, n_pred).tolist() == [0.5, 0.0]
