"""`trml bench` end to end on a small sample: throughput, overhead ratio and the peak RSS of a real
`trml extract --all` subprocess, printed and written as JSON."""
from __future__ import annotations

import json

import pytest

from flows.bench import run_bench
from flows.params import Params

pytestmark = pytest.mark.slow


def test_bench_reports_throughput_ratio_and_peak_memory(tmp_path, capsys):
    params = Params.model_validate({"datasets": {"sample": {"layout": "mmsa"}}, "sample": {"size": 12},
                                    "feature_sets": ["audio_librosa"], "extract": {"device": "cpu"}})
    out = tmp_path / "bench.json"
    report = run_bench(params, sizes=[12, 24], feature_sets=None, out=out)

    assert json.loads(out.read_text()) == json.loads(json.dumps(report))
    [audio] = report["feature_sets"]
    assert audio["feature_set"] == "audio_librosa" and audio["clips"] == 12
    assert audio["ok_clips"] == 10                      # all but the corrupt file and the clip without audio
    assert audio["frames"] > 0 and audio["clips_per_s"] > 0 and audio["ratio"] > 0
    assert [m["size"] for m in report["memory"]] == [12, 24]
    for run in report["memory"]:
        assert run["feature_sets"] == ["audio_librosa"]
        assert run["peak_rss_bytes"] > 100 << 20 and run["peak_tree_rss_bytes"] > 100 << 20
        assert run["wall_s"] > 0
    assert report["machine"]["cpu_count"] >= 1
    printed = capsys.readouterr().out
    assert "ratio" in printed and "peak RSS" in printed


def test_text_bench_times_trml_extract_per_shard_size_against_the_bare_model(tmp_path, capsys):
    from flows.bench import run_text_bench

    params = Params.model_validate({"datasets": {"sample": {"layout": "mmsa"}}, "extract": {"device": "cpu"}})
    out = tmp_path / "texts.json"
    report = run_text_bench(params, n_texts=40, shard_sizes=[8, 64], out=out, prefect_apis=("shared",))

    assert json.loads(out.read_text()) == json.loads(json.dumps(report))
    assert report["texts"] == 40 and report["embedded"] == 40 and report["feature_set"] == "text_minilm"
    assert len(report["bare_s"]) == 2 and min(report["bare_s"]) > 0
    assert [(r["shard_size"], r["prefect_api"]) for r in report["extract"]] == \
        [(8, "shared"), (64, "shared")]        # "temporary" is the same measure_extract without an API url
    for run in report["extract"]:
        assert run["wall_s"] > min(report["bare_s"])            # a whole process against the model alone
        assert run["ratio"] == run["wall_s"] / min(report["bare_s"])
        assert run["feature_sets"] == ["text_minilm"]
    assert "shards of 8" in capsys.readouterr().out
