"""Results a researcher can trust: the statistics on known cases, model reuse across stages, the compact
metrics file, the report in Markdown and LaTeX, and a model that really learns."""
import json
from pathlib import Path

import numpy as np
import pytest
import yaml

from features.store import FeatureRow, TableInfo, rows_to_table, write_atomic
from tests.conftest import ROOT
from tests.test_trml import DS, one_thread, small_model, small_train, write_fixture  # noqa: F401 (one_thread: autouse)
from trml.config import CompareConfig, EvaluateConfig, ModelConfig
from trml.metrics import CLASSIFICATION_KEYS, REGRESSION_KEYS
from trml.stats import PairedBootstrap, paired_difference, seed_values, summarize


# ---------------------------------------------------------------- statistics on known cases

def test_ci_contains_a_known_difference_and_is_tight_with_much_data():
    # |N(0, s)| has mean s * sqrt(2 / pi): model a (noise sd 1) beats b (sd 2) on MAE by exactly this much.
    rng = np.random.default_rng(1)
    n, true_diff = 4000, (1.0 - 2.0) * np.sqrt(2 / np.pi)
    truth = rng.uniform(-3, 3, n)
    a = truth + rng.normal(0, 1.0, (3, 2, n))
    b = truth + rng.normal(0, 2.0, (3, 2, n))
    d = paired_difference("regression", a, b, truth, resamples=1000, seed=0)["mae"]
    lo, hi = d["ci95"]
    assert lo < true_diff < hi and hi - lo < 0.08
    assert d["mean"] == pytest.approx(true_diff, abs=0.03)


def test_a_metric_undefined_at_every_seed_has_no_mean_or_sd():
    assert summarize([None, None]) == {"mean": None, "sd": None, "n": 0, "values": [None, None]}
    assert summarize([0.5, None]) == {"mean": 0.5, "sd": None, "n": 1, "values": [0.5, None]}


def test_the_bootstrap_is_seeded():
    rng = np.random.default_rng(2)
    truth = rng.uniform(-3, 3, 40)
    a, b = truth + rng.normal(0, 1, (2, 1, 40)), truth + rng.normal(0, 1.5, (2, 1, 40))
    once = paired_difference("regression", a, b, truth, resamples=200, seed=7)["mae"]
    assert paired_difference("regression", a, b, truth, resamples=200, seed=7)["mae"] == once
    assert paired_difference("regression", a, b, truth, resamples=200, seed=8)["mae"]["ci95"] != once["ci95"]


# Coverage at the nominal rate, and planted wrong intervals that miss it: tests/test_intervals.py.


def test_identical_models_differ_by_exactly_zero():
    rng = np.random.default_rng(3)
    truth = rng.uniform(-3, 3, 50)
    a = truth + rng.normal(0, 1, (2, 3, 50))
    for metric, d in paired_difference("regression", a, a.copy(), truth, resamples=200, seed=0).items():
        if d["mean"] is not None:
            assert d["mean"] == 0.0 and d["ci95"] == [0.0, 0.0], metric


def test_identical_seeds_have_sd_zero_and_summaries_keep_every_value():
    rng = np.random.default_rng(4)
    truth = rng.uniform(-3, 3, 40)
    one = truth + rng.normal(0, 1, (1, 2, 40))
    same = np.repeat(one, 3, axis=0)                                    # three seeds, identical predictions
    values = seed_values("regression", same, truth)
    for key, per_seed in values.items():
        s = summarize(per_seed)
        if s["mean"] is not None:
            assert s["sd"] == 0.0 and s["n"] == 3 and s["values"] == per_seed, key
    assert summarize([0.5]) == {"mean": 0.5, "sd": None, "n": 1, "values": [0.5]}
    assert summarize([1.0, 2.0, None]) == {"mean": 1.5, "sd": pytest.approx(0.70710678), "n": 2,
                                           "values": [1.0, 2.0, None]}


def test_seeds_carry_training_spread_into_the_interval():
    """Two seeds that disagree widen the interval compared with the same seed twice."""
    rng = np.random.default_rng(5)
    truth = rng.uniform(-3, 3, 200)
    b = truth + rng.normal(0, 1, (1, 1, 200))
    a_same = np.repeat(truth + rng.normal(0, 1, (1, 1, 200)), 2, axis=0)
    a_apart = np.concatenate([truth + rng.normal(0, 0.5, (1, 1, 200)), truth + rng.normal(0, 1.5, (1, 1, 200))])
    boot = PairedBootstrap("regression", truth, 500, seed=0)
    same = boot.difference([("same", 0, a_same)], [("b", 0, np.repeat(b, 2, axis=0))])["mae"]["ci95"]
    apart = boot.difference([("apart", 0, a_apart)], [("b", 0, np.repeat(b, 2, axis=0))])["mae"]["ci95"]
    assert apart[1] - apart[0] > same[1] - same[0]


# ---------------------------------------------------------------- reuse across stages

def test_compare_reuses_the_model_the_train_stage_trained(tmp_path, monkeypatch):
    import trml.compare as compare_module
    from trml.train import train
    root = write_fixture(tmp_path / "fx")
    mc, tc = small_model(), small_train(epochs=1)
    train(DS, mc, tc, root, tmp_path / "models")                      # the train stage: trml at train.seed 0
    trained = tmp_path / "models" / DS / "trml"
    before = {p.name: p.read_bytes() for p in trained.iterdir()}
    calls = []
    real_fit = compare_module.fit
    monkeypatch.setattr(compare_module, "fit", lambda data, m, cfg, *a, **k: (calls.append((cfg.variant, cfg.seed)),
                                                                            real_fit(data, m, cfg, *a, **k))[1])
    args = (DS, mc, tc, EvaluateConfig(test_missing_rates=[0.0, 0.5], mask_draws=1),
            CompareConfig(variants=["trml", "zero_fill"], seeds=[0, 1]), root, tmp_path / "models" / "variants",
            tmp_path / "reports", tmp_path / "metrics", tmp_path / "plots")
    compare_module.compare(*args, trained_dir=tmp_path / "models")
    assert calls == [("trml", 1), ("zero_fill", 0), ("zero_fill", 1)]          # trml seed 0: no second training
    assert not (tmp_path / "models" / "variants" / DS / "trml" / "seed0").exists()
    lineage = json.loads((tmp_path / "reports" / DS / "compare_lineage.json").read_text())
    assert lineage["trml"]["seed0"]["checkpoint"] == str(trained / "best.pt")
    assert {p.name: p.read_bytes() for p in trained.iterdir()} == before        # read, never written
    # Again: every run is found finished, nothing trains, and the results are the same bytes.
    first = (tmp_path / "reports" / DS / "compare.json").read_bytes()
    calls.clear()
    compare_module.compare(*args, trained_dir=tmp_path / "models")
    assert calls == [] and (tmp_path / "reports" / DS / "compare.json").read_bytes() == first
    # Other settings are not the same model: a changed learning rate trains everything again.
    compare_module.compare(DS, mc, small_train(epochs=1, lr=0.01), *args[3:], trained_dir=tmp_path / "models")
    assert calls == [("trml", 0), ("trml", 1), ("zero_fill", 0), ("zero_fill", 1)]


def test_a_subsets_comparison_writes_its_method_headline_ranks_and_tables(tmp_path):
    """compare.json's schema and method, the headline under protocol subsets, the ranks, the predictions'
    column types and the DVC plot tables, on one small real comparison (regime complete, so that the
    regime it names is not the default)."""
    import pyarrow.parquet as pq
    from trml.compare import compare
    from trml.missing import derive_seed
    from trml.stats import CI_LEVEL, CORRECTION, METHOD
    root = write_fixture(tmp_path / "fx")
    ec = EvaluateConfig(protocol="subsets", seed=3)
    cc = CompareConfig(variants=["trml", "zero_fill", "lf_dnn", "upper_bound"], seeds=[0, 1], bootstrap=100)
    res = compare(DS, small_model(), small_train(epochs=1, regime="complete"), ec, cc, root, tmp_path / "models",
                  tmp_path / "reports", tmp_path / "metrics", tmp_path / "plots")
    assert list(res) == ["dataset", "task", "headline", "protocol", "regime", "seeds", "conditions", "rates",
                         "mean_of", "split_sizes", "method", "variants", "differences", "reference", "ranks",
                         "provenance"]
    assert (res["protocol"], res["regime"], res["rates"]) == ("subsets", "complete", [])
    subsets = res["mean_of"]["subset_mean"]
    assert len(subsets) == 15 and subsets[-1] == "avail_tvaf" and res["conditions"] == subsets + ["subset_mean"]
    assert res["method"] == {"spread": "sd over seeds (n - 1)", "ci": METHOD, "level": CI_LEVEL,
                             "correction": CORRECTION, "family_size": 16, "seed_level": True, "resamples": 100,
                             "seed": derive_seed(3, "bootstrap")}
    trml = res["variants"]["trml"]
    for cond, order in res["ranks"].items():                # best first: the lowest mean MAE
        maes = [res["variants"][v][cond]["mae"]["mean"] for v in order]
        assert sorted(order) == ["lf_dnn", "trml", "zero_fill"] and maes == sorted(maes), cond
    assert len({tuple(order) for order in res["ranks"].values()}) > 1     # the ranks differ between subsets
    zf = res["differences"]["zero_fill"]["subset_mean"]["mae"]
    headline = json.loads((tmp_path / "metrics" / f"{DS}.json").read_text())
    assert headline == {"mae_r0.0": trml["avail_tvaf"]["mae"]["mean"], "mae_mean": trml["subset_mean"]["mae"]["mean"],
                        "acc2_r0.0": trml["avail_tvaf"]["acc2_non0"]["mean"],
                        "acc2_mean": trml["subset_mean"]["acc2_non0"]["mean"], "vs_zf_mae": zf["mean"],
                        "vs_zf_lo": zf["ci95_adj"][0], "vs_zf_hi": zf["ci95_adj"][1],
                        "rank": float(res["ranks"]["subset_mean"].index("trml") + 1)}
    predictions = pq.read_schema(tmp_path / "reports" / DS / "predictions.parquet")
    assert [(f.name, str(f.type)) for f in predictions] == [
        ("variant", "string"), ("seed", "int64"), ("condition", "string"), ("draw", "int32"),
        ("utterance_id", "string"), ("truth", "double"), ("pred", "double")]
    table = (tmp_path / "plots" / DS / "compare" / "mae.csv").read_bytes().decode()
    assert "\r" not in table
    rows = [line.split(",") for line in table.splitlines()]
    assert rows[0] == ["variant", "rate", "mean", "sd", "lo", "hi"]
    [reference] = [r for r in rows if r[0] == "upper_bound"]
    assert reference[1] == "avail_tvaf"                      # the reference sits at the full subset
    assert [r[1] for r in rows if r[0] == "trml"] == subsets


# ---------------------------------------------------------------- the compact metrics file

def _fake_results(task: str, rates: list[str]) -> dict:
    keys = REGRESSION_KEYS if task == "regression" else CLASSIFICATION_KEYS
    cell = {k: {"mean": 0.5, "sd": 0.01, "n": 3, "values": [0.5] * 3} for k in keys}
    conds = rates + ["rate_mean", "miss_text", "miss_vision", "miss_audio", "miss_face"]
    diff = {k: {"mean": -0.01, "ci95": [-0.02, 0.0], "ci95_adj": [-0.03, 0.01]} for k in keys}
    return {"task": task, "variants": {"trml": {c: cell for c in conds}, "zero_fill": {c: cell for c in conds}},
            "differences": {"zero_fill": {c: diff for c in conds}, "no_sml": {c: diff for c in conds}}}


@pytest.mark.parametrize("task", ["regression", "classification"])
def test_the_headline_file_holds_at_most_12_flat_numbers(task):
    from trml.compare import headline
    rates = ["r0.0", "r0.1", "r0.3", "r0.5", "r0.7"]
    h = headline(_fake_results(task, rates), rates)
    assert len(h) <= 12 and all(isinstance(v, float) for v in h.values())
    if task == "regression":
        assert list(h) == ["mae_r0.0", "mae_r0.7", "mae_mean", "acc2_r0.0", "acc2_r0.7", "acc2_mean",
                           "vs_zf_mae", "vs_zf_lo", "vs_zf_hi"]
    else:
        assert list(h) == ["wf1_r0.0", "wf1_r0.7", "wf1_mean", "acc_r0.0", "acc_r0.7", "acc_mean",
                           "vs_zf_wf1", "vs_zf_lo", "vs_zf_hi"]
    # Short enough for `dvc exp show` in 160 columns: 9 columns of at most 9 characters.
    assert max(len(k) for k in h) <= 9


def test_dvc_declares_only_the_headline_files_as_metrics():
    stages = yaml.safe_load((ROOT / "dvc.yaml").read_text())["stages"]
    declared = []
    for name, stage in stages.items():
        body = stage.get("do", stage)
        for entry in body.get("metrics", []):
            declared.append((name, entry if isinstance(entry, str) else next(iter(entry))))
    assert declared and all(path == "metrics/${key}.json" for _, path in declared), declared
    assert {name for name, _ in declared} == {"compare", "compare_mmsa"}


# ---------------------------------------------------------------- the report

REPORT_FIXTURE = {
    "dataset": "toy", "task": "regression", "headline": "mae", "seeds": [0, 1, 2],
    "conditions": ["r0.0", "r0.5", "rate_mean", "miss_text"], "rates": ["r0.0", "r0.5"],
    "split_sizes": {"train": 60, "valid": 18, "test": 18},
    "method": {"spread": "sd over seeds (n - 1)", "ci": "seed-t interval", "resamples": 1000, "seed": 1,
               "correction": "Bonferroni", "family_size": 4},
    "variants": {
        "trml": {"r0.0": {"mae": {"mean": 0.61, "sd": 0.01, "n": 3, "values": [0.6, 0.61, 0.62]}},
                 "r0.5": {"mae": {"mean": 0.80, "sd": 0.02, "n": 3, "values": [0.78, 0.8, 0.82]}},
                 "rate_mean": {"mae": {"mean": 0.705, "sd": 0.015, "n": 3, "values": [0.69, 0.705, 0.72]}},
                 "miss_text": {"mae": {"mean": 1.2, "sd": 0.1, "n": 3, "values": [1.1, 1.2, 1.3]}}},
        "zero_fill": {"r0.0": {"mae": {"mean": 0.60, "sd": 0.03, "n": 3, "values": [0.57, 0.6, 0.63]}},
                      "r0.5": {"mae": {"mean": 0.95, "sd": 0.05, "n": 3, "values": [0.9, 0.95, 1.0]}},
                      "rate_mean": {"mae": {"mean": 0.775, "sd": 0.04, "n": 3, "values": [0.735, 0.775, 0.815]}},
                      "miss_text": {"mae": {"mean": 1.3, "sd": 0.1, "n": 3, "values": [1.2, 1.3, 1.4]}}},
    },
    "differences": {"zero_fill": {
        # rate_mean: the raw interval excludes 0, the adjusted one does not, so it gets no dagger.
        "r0.0": {"mae": {"mean": 0.01, "ci95": [-0.02, 0.04], "ci95_adj": [-0.03, 0.05]}},
        "r0.5": {"mae": {"mean": -0.15, "ci95": [-0.25, -0.05], "ci95_adj": [-0.28, -0.02]}},
        "rate_mean": {"mae": {"mean": -0.07, "ci95": [-0.12, -0.02], "ci95_adj": [-0.14, 0.001]}},
        "miss_text": {"mae": {"mean": -0.1, "ci95": [-0.3, 0.1], "ci95_adj": [-0.35, 0.15]}}}},
    "reference": {"upper_bound": {"mae": {"mean": 0.55, "sd": 0.02, "n": 3, "values": [0.53, 0.55, 0.57]}}},
    "provenance": {"manifest_sha256": "ab" * 32, "modalities": {
        "text": {"feature_set": "text_clip", "weights_id": "ViT-B-32:random-init(seed=0)"},
        "audio": {"feature_set": "audio_librosa", "weights_id": "librosa-0.11.0"}}},
}


def test_report_renders_markdown_with_best_in_bold_reference_row_cis_and_lineage(tmp_path):
    from trml.report import render_markdown, write_report
    md = render_markdown(REPORT_FIXTURE)
    lines = md.splitlines()
    header = next(line for line in lines if line.startswith("| variant |"))
    assert header == "| variant | r0.0 | r0.5 | mean(r) | miss_text |"
    trml = next(line for line in lines if line.startswith("| trml |"))
    zero = next(line for line in lines if line.startswith("| zero_fill |"))
    # Lower MAE is better: zero_fill wins r0.0, trml the rest.
    assert trml == "| trml | 0.610 ± 0.010 | **0.800 ± 0.020** | **0.705 ± 0.015** | **1.200 ± 0.100** |"
    assert zero == "| zero_fill | **0.600 ± 0.030** | 0.950 ± 0.050 | 0.775 ± 0.040 | 1.300 ± 0.100 |"
    ref = next(line for line in lines if line.startswith("| upper_bound"))
    assert "0.550 ± 0.020" in ref and ref.count("±") == 1                   # once, not in every column
    adjusted, raw = [line for line in lines if line.startswith("| zero_fill | +")]
    assert adjusted == ("| zero_fill | +0.010 [−0.030, 0.050] | −0.150 [−0.280, −0.020] † | −0.070 [−0.140, 0.001] "
                        "| −0.100 [−0.350, 0.150] |")
    assert raw == ("| zero_fill | +0.010 [−0.020, 0.040] | −0.150 [−0.250, −0.050] | −0.070 [−0.120, −0.020] "
                   "| −0.100 [−0.300, 0.100] |")                # unadjusted: printed, never marked
    assert "Bonferroni-adjusted over 4 conditions" in md and "correction: Bonferroni" in md
    assert "With 3 seeds the training part of each interval has 2 degrees of freedom (t = 4.30" in md
    assert "seeds: 0, 1, 2" in md and "train 60, valid 18, test 18" in md
    assert "WARNING: text features come from randomly initialised weights" in md
    # trml report reads compare.json from the reports folder and writes the same text.
    (tmp_path / "toy").mkdir()
    (tmp_path / "toy" / "compare.json").write_text(json.dumps(REPORT_FIXTURE))
    assert write_report(tmp_path, "toy", "markdown", None).read_text() == md


def test_report_renders_a_booktabs_tabular(tmp_path):
    from trml.report import ReportError, write_report
    (tmp_path / "toy").mkdir()
    (tmp_path / "toy" / "compare.json").write_text(json.dumps(REPORT_FIXTURE))
    tex = write_report(tmp_path, "toy", "latex", None).read_text()
    assert (tmp_path / "toy" / "results.tex").read_text() == tex
    body = [line for line in tex.splitlines() if not line.startswith("%")]
    assert body[0] == "\\begin{tabular}{lcccc}" and body[-1] == "\\end{tabular}"
    assert body[1] == "\\toprule" and body[-2] == "\\bottomrule" and "\\midrule" in body
    assert "Variant & r0.0 & r0.5 & mean(r) & miss\\_text \\\\" in body
    assert "zero\\_fill & $\\mathbf{0.600 \\pm 0.030}$ & $0.950 \\pm 0.050$ & $0.775 \\pm 0.040$ & $1.300 \\pm 0.100$ \\\\" in body
    assert "upper\\_bound (complete data) & \\multicolumn{4}{l}{$0.550 \\pm 0.020$} \\\\" in body
    assert "$-$ zero\\_fill & $+0.010 [-0.030, 0.050]$ & $-0.150 [-0.280, -0.020]^\\dagger$ & $-0.070 [-0.140, 0.001]$" in tex
    assert tex.count("&") == tex.count("\\&") + sum(line.count("&") for line in body)   # no stray & in comments
    with pytest.raises(ReportError, match=r"nothing/compare.json: not found; run `trml compare --dataset nothing`"):
        write_report(tmp_path, "nothing", "latex", None)


# ---------------------------------------------------------------- a model that learns

def _one_modality_carries_the_label(root: Path, n: int = 240) -> Path:
    """Text embeddings are the label along one direction plus noise; audio is noise only."""
    import pyarrow as pa
    rng = np.random.default_rng(7)
    ids = [f"v{i:04d}" for i in range(n)]
    split = ["train"] * (n * 6 // 10) + ["valid"] * (n * 2 // 10) + ["test"] * (n - n * 8 // 10)
    label = np.round(rng.uniform(-3, 3, n), 1)
    manifest = pa.table({
        "utterance_id": pa.array(ids, pa.string()), "dataset": pa.array([DS] * n, pa.string()),
        "split": pa.array(split, pa.string()), "media_path": pa.array([f"{u}.mp4" for u in ids], pa.string()),
        "text": pa.array(["words"] * n, pa.string()), "label": pa.array(label, pa.float64()),
        "label_class": pa.array([None] * n, pa.int64()),
    }).replace_schema_metadata({b"trml.dataset": DS.encode(), b"trml.layout": b"mmsa",
                                b"trml.root": str(root).encode(), b"trml.task": b"regression",
                                b"trml.class_names": b"[]"})
    write_atomic(manifest, root / "index" / f"{DS}.parquet")
    direction = rng.normal(size=16)
    text = [FeatureRow(u, emb=label[i] / 3 * direction + 0.1 * rng.normal(size=16)) for i, u in enumerate(ids)]
    audio = [FeatureRow(u, seq=rng.normal(size=(5, 6)), t=np.arange(5) * 0.1) for u in ids]
    for rows, (fs, modality, kind, dim) in ((text, ("text_minilm", "text", "emb", 16)),
                                            (audio, ("audio_librosa", "audio", "seq", 6))):
        info = TableInfo(fs, modality, kind, dim, extractor="fixture", extractor_version="1", weights_id="fixture",
                         feature_names=[f"f{j}" for j in range(dim)])
        write_atomic(rows_to_table(rows, info), root / "features" / DS / f"{fs}.parquet")
    return root


def test_trml_learns_the_label_from_the_one_modality_that_carries_it(tmp_path):
    from trml.evaluate import evaluate
    from trml.train import train
    root = _one_modality_carries_the_label(tmp_path / "fx")
    mc = ModelConfig(hidden=32, max_seq_len=8, modalities={"text": "text_minilm", "vision": None,
                                                           "audio": "audio_librosa", "face": None})
    tc = small_train(epochs=25, patience=25, lr=3e-3)
    train(DS, mc, tc, root, tmp_path / "models")
    res = evaluate(DS, mc, tc, EvaluateConfig(test_missing_rates=[0.0]), root, tmp_path / "models",
                   tmp_path / "reports", tmp_path / "plots")
    import pyarrow.parquet as pq
    man = pq.read_table(root / "index" / f"{DS}.parquet").to_pydict()
    y = np.array(man["label"])
    split = np.array(man["split"])
    constant = float(np.mean(np.abs(y[split == "test"] - y[split == "train"].mean())))
    mae = res["test"]["r0.0"]["mae"]
    assert mae < 0.5 * constant, (mae, constant)
    assert res["test"]["r0.0"]["corr"] > 0.8
    # Without the modality that carries the label it can only guess: no better than the constant by much.
    assert res["test"]["miss_text"]["mae"] > 0.8 * constant


def test_classification_gets_the_same_treatment(tmp_path):
    """MELD-like: acc and wf1 over seeds, CIs, the headline file and the report, for a classification task."""
    from trml.compare import compare
    from trml.report import render_latex
    root = write_fixture(tmp_path / "cls", task="classification")
    mc = small_model(modalities={"text": "text_minilm", "vision": None, "audio": "audio_librosa", "face": None})
    res = compare(DS, mc, small_train(epochs=1, early_stop_on="wf1"), EvaluateConfig(test_missing_rates=[0.0, 0.5],
                  mask_draws=2), CompareConfig(variants=["trml", "zero_fill", "upper_bound"], seeds=[0, 1]), root,
                  tmp_path / "models", tmp_path / "reports", tmp_path / "metrics", tmp_path / "plots")
    assert res["headline"] == "wf1" and set(res["variants"]["trml"]["r0.0"]) == {"acc", "wf1"}
    assert set(res["reference"]["upper_bound"]) == {"acc", "wf1"}
    d = res["differences"]["zero_fill"]["rate_mean"]["wf1"]
    assert d["ci95"][0] <= d["mean"] <= d["ci95"][1]
    headline = json.loads((tmp_path / "metrics" / f"{DS}.json").read_text())
    assert list(headline) == ["wf1_r0.0", "wf1_r0.5", "wf1_mean", "acc_r0.0", "acc_r0.5", "acc_mean",
                              "vs_zf_wf1", "vs_zf_lo", "vs_zf_hi"]
    assert headline["vs_zf_wf1"] == d["mean"] and [headline["vs_zf_lo"], headline["vs_zf_hi"]] == d["ci95_adj"]
    md = (tmp_path / "reports" / DS / "results.md").read_text()
    assert md.startswith(f"# {DS}: wf1 (higher is better)") and "positive favours trml" in md
    assert "\\begin{tabular}" in render_latex(res)


def test_show_metrics_prints_the_headline_and_the_results_table(tmp_path, capsys):
    """What `make demo` ends with: the headline numbers of each dataset, then its results table."""
    from flows.cli import main
    from trml.compare import headline
    rates = ["r0.0", "r0.7"]
    (tmp_path / "metrics").mkdir()
    (tmp_path / "metrics" / "toy.json").write_text(json.dumps(headline(_fake_results("regression", rates), rates)))
    (tmp_path / "reports" / "toy").mkdir(parents=True)
    (tmp_path / "reports" / "toy" / "results.md").write_text("# toy: mae table\n")
    assert main(["show-metrics", "--metrics-dir", str(tmp_path / "metrics"),
                 "--reports-dir", str(tmp_path / "reports")]) == 0
    out = capsys.readouterr().out
    assert "mae_r0.0 0.5000" in out and "vs_zf_lo -0.0300" in out and "# toy: mae table" in out
