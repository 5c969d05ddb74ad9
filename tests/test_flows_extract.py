"""The extraction flow on real files: real Prefect runs (temporary API), real extractors, real Parquet.

A 12-clip sample (features.sample, with its defective clips) is indexed once; each test extracts it with
its own cache folder, so what one test computes never turns into another test's cache hit.
"""
from __future__ import annotations

import shutil
import time
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from flows import runtime  # noqa: F401  (before prefect)
from prefect.settings import PREFECT_LOCAL_STORAGE_PATH, temporary_settings
from prefect.testing.utilities import prefect_test_harness

from features.adapters import index_dataset
from features.config import DatasetConfig, SampleConfig
from features.sample import generate_sample
from features.store import ManifestError, ManifestRow, read_metadata
from flows.extract import CACHE_NAMESPACE, ExtractionError, extract_dataset, shard_cache_key
from flows.params import Params

SETS = ["text_minilm", "audio_librosa"]
DATASET = "s12"


@pytest.fixture(scope="module")
def sample(tmp_path_factory) -> dict:
    """The generated sample (raw clips) and its manifest."""
    base = tmp_path_factory.mktemp("flows-sample")
    summary = generate_sample(base / "raw", SampleConfig(size=12))
    manifest = base / "index" / f"{DATASET}.parquet"
    index_dataset(DatasetConfig(name=DATASET, layout="mmsa", root=base / "raw"), manifest)
    return {"raw": base / "raw", "manifest": manifest, "defects": summary["defects"]}


@pytest.fixture(scope="module")
def prefect_api():
    with prefect_test_harness(server_startup_timeout=None):
        yield


@pytest.fixture
def workspace(tmp_path, sample, prefect_api) -> Path:
    """A data dir holding the manifest, and a shard cache of this test's own."""
    data = tmp_path / "data"
    (data / "index").mkdir(parents=True)
    shutil.copy(sample["manifest"], data / "index" / sample["manifest"].name)
    with temporary_settings(updates={PREFECT_LOCAL_STORAGE_PATH: tmp_path / "cache"}):
        yield data


def make_params(sample, **extract) -> Params:
    return Params.model_validate({
        "datasets": {DATASET: {"layout": "mmsa", "root": str(sample["raw"])}},
        "extract": {"shard_size": 4, "max_workers": 2, "device": "cpu", **extract}})


def by_set(reports) -> dict:
    return {r.feature_set: r for r in reports}


def cache_records(data: Path, feature_set: str) -> list[Path]:
    return sorted((data.parent / "cache" / CACHE_NAMESPACE / feature_set).glob("*"))


def test_extracts_one_row_per_manifest_row_with_statuses_and_metadata(workspace, sample):
    reports = by_set(extract_dataset(make_params(sample), DATASET, SETS, data_dir=workspace))
    manifest_ids = pq.read_table(sample["manifest"]).column("utterance_id").to_pylist()
    defects = sample["defects"]
    for fs in SETS:
        path = workspace / "features" / DATASET / f"{fs}.parquet"
        assert reports[fs].path == path and reports[fs].shards == 3 and reports[fs].computed == 3
        table = pq.read_table(path)
        assert table.column("utterance_id").to_pylist() == manifest_ids      # manifest order, none dropped
        assert read_metadata(path)["feature_set"] == fs
        assert not list(path.parent.glob(f".{path.name}.*")), "a temporary file was left beside the output"
    text = pq.read_table(workspace / "features" / DATASET / "text_minilm.parquet").to_pydict()
    audio = pq.read_table(workspace / "features" / DATASET / "audio_librosa.parquet").to_pydict()
    status = {fs: dict(zip(t["utterance_id"], t["status"])) for fs, t in (("text", text), ("audio", audio))}
    assert status["text"][defects["empty_text"]] == "empty_text"
    assert status["audio"][defects["corrupt_file"]] == "decode_error"
    assert status["audio"][defects["no_audio_stream"]] == "no_audio_stream"
    assert sum(s == "ok" for s in status["audio"].values()) == 10
    assert all(len(v) == 384 for v, ok in zip(text["emb"], text["present"]) if ok)
    assert reports["audio_librosa"].statuses == {"ok": 10, "decode_error": 1, "no_audio_stream": 1}
    # Details name the file as the manifest does (relative to the dataset root): the same bytes in any clone.
    detail = dict(zip(audio["utterance_id"], audio["detail"]))[defects["corrupt_file"]]
    assert detail.startswith(f"Raw/{defects['corrupt_file']}.mp4: ") and str(sample["raw"]) not in detail


def test_table_order_follows_an_unsorted_manifest(workspace, sample):
    """Rows come out in the manifest's order, not sorted by id: a manifest whose ids are out of order (the
    sample's are sorted) keeps its order through shards that finish in any order, in every feature set."""
    manifest = pq.read_table(workspace / "index" / f"{DATASET}.parquet")
    order = [5, 11, 0, 7, 2, 9, 1, 10, 3, 8, 4, 6]
    shuffled = manifest.take(order).replace_schema_metadata(manifest.schema.metadata)
    pq.write_table(shuffled, workspace / "index" / f"{DATASET}.parquet")
    ids = shuffled.column("utterance_id").to_pylist()
    assert ids != sorted(ids)
    extract_dataset(make_params(sample), DATASET, SETS, data_dir=workspace)
    for fs in SETS:
        table = pq.read_table(workspace / "features" / DATASET / f"{fs}.parquet")
        assert table.column("utterance_id").to_pylist() == ids, fs
    # The rows are the clips' own, not only in the right places: the same values as the sorted manifest's.
    text = dict(zip(*pq.read_table(workspace / "features" / DATASET / "text_minilm.parquet",
                                   columns=["utterance_id", "status"]).to_pydict().values()))
    assert text[sample["defects"]["empty_text"]] == "empty_text"


def count_cached_task_runs() -> int:
    from prefect import get_client
    from prefect.client.schemas.filters import TaskRunFilter, TaskRunFilterState, TaskRunFilterStateName
    with get_client(sync_client=True) as client:
        runs = client.read_task_runs(task_run_filter=TaskRunFilter(
            state=TaskRunFilterState(name=TaskRunFilterStateName(any_=["Cached"]))))
    return len(runs)


def test_rerun_recomputes_nothing_and_writes_identical_bytes(workspace, sample):
    params = make_params(sample)
    extract_dataset(params, DATASET, SETS, data_dir=workspace)
    out = workspace / "features" / DATASET
    first = {fs: (out / f"{fs}.parquet").read_bytes() for fs in SETS}
    for fs in SETS:
        (out / f"{fs}.parquet").unlink()
    cached_before = count_cached_task_runs()

    reports = by_set(extract_dataset(params, DATASET, SETS, data_dir=workspace))
    for fs in SETS:
        assert (reports[fs].computed, reports[fs].cached) == (0, 3)
        assert (out / f"{fs}.parquet").read_bytes() == first[fs]
    # The Prefect API agrees: six more task runs ended in state "Cached" (recorded asynchronously).
    deadline = time.monotonic() + 30
    while count_cached_task_runs() < cached_before + 6 and time.monotonic() < deadline:
        time.sleep(0.5)
    assert count_cached_task_runs() == cached_before + 6


def test_a_run_whose_shards_are_all_cached_loads_no_model(workspace, sample, monkeypatch):
    """The first run builds each extractor once for its 3 shards and 2 worker threads. The second run of the
    same extraction, in a fresh process (no extractor kept), builds none, and the tables are the same bytes.
    A weight that has gone missing since still fails first, in one line."""
    import flows.extract as extract
    from features.weights import WeightsError

    params = make_params(sample)
    monkeypatch.setattr(extract, "_extractors", {})
    real_build, first_builds = extract.build_extractor, []
    monkeypatch.setattr(extract, "build_extractor", lambda fs, *a, **k: first_builds.append(fs) or real_build(fs, *a, **k))
    extract_dataset(params, DATASET, SETS, data_dir=workspace)
    assert sorted(first_builds) == sorted(SETS)                # one build per feature set and process
    out = workspace / "features" / DATASET
    first = {fs: (out / f"{fs}.parquet").read_bytes() for fs in SETS}
    monkeypatch.setattr(extract, "_extractors", {})           # as a new process starts
    monkeypatch.setattr(extract, "_identities", {})
    built = []
    monkeypatch.setattr(extract, "build_extractor", lambda *a, **k: built.append(a) or pytest.fail("built a model"))
    reports = by_set(extract_dataset(params, DATASET, SETS, data_dir=workspace))
    assert built == [] and all((r.computed, r.cached) == (0, 3) for r in reports.values())
    assert {fs: (out / f"{fs}.parquet").read_bytes() for fs in SETS} == first
    gone = make_params(sample, text_minilm={"model_path": str(workspace / "no-such-minilm")})
    with pytest.raises(WeightsError, match="no-such-minilm.*extract.text_minilm.model_path"):
        extract_dataset(gone, DATASET, SETS, data_dir=workspace)
    assert built == []


def test_changing_one_extractors_params_recomputes_only_that_set(workspace, sample):
    extract_dataset(make_params(sample), DATASET, SETS, data_dir=workspace)
    changed = make_params(sample, audio_librosa={"n_mfcc": 13})
    reports = by_set(extract_dataset(changed, DATASET, SETS, data_dir=workspace))
    assert (reports["audio_librosa"].computed, reports["audio_librosa"].cached) == (3, 0)
    assert (reports["text_minilm"].computed, reports["text_minilm"].cached) == (0, 3)
    meta = read_metadata(workspace / "features" / DATASET / "audio_librosa.parquet")
    assert '"n_mfcc": 13' in meta["params"]
    # Going back to the old params is a cache hit again: both configurations stay cached side by side.
    back = by_set(extract_dataset(make_params(sample), DATASET, ["audio_librosa"], data_dir=workspace))
    assert (back["audio_librosa"].computed, back["audio_librosa"].cached) == (0, 3)


def test_a_cut_short_cache_record_is_recomputed_not_trusted(workspace, sample):
    params = make_params(sample)
    extract_dataset(params, DATASET, ["audio_librosa"], data_dir=workspace)
    path = workspace / "features" / DATASET / "audio_librosa.parquet"
    good = path.read_bytes()
    records = cache_records(workspace, "audio_librosa")
    assert len(records) == 3
    records[1].write_bytes(records[1].read_bytes()[: records[1].stat().st_size // 2])  # as a SIGKILL mid-write would

    report = extract_dataset(params, DATASET, ["audio_librosa"], data_dir=workspace)[0]
    assert (report.computed, report.cached) == (1, 2)
    assert path.read_bytes() == good


def test_dask_runner_matches_the_thread_runner(workspace, sample):
    distributed = pytest.importorskip("distributed")
    params = make_params(sample)
    with distributed.LocalCluster(n_workers=1, threads_per_worker=2, processes=False,
                                  dashboard_address=None) as cluster:
        reports = by_set(extract_dataset(params, DATASET, SETS, runner="dask",
                                         dask_address=cluster.scheduler_address, data_dir=workspace))
    assert all(r.computed == 3 for r in reports.values())
    out = workspace / "features" / DATASET
    dask_bytes = {fs: (out / f"{fs}.parquet").read_bytes() for fs in SETS}
    shutil.rmtree(workspace.parent / "cache")
    extract_dataset(params, DATASET, SETS, runner="thread", data_dir=workspace)
    for fs in SETS:
        assert (out / f"{fs}.parquet").read_bytes() == dask_bytes[fs]


# ---------------------------------------------------------------- no Prefect run needed

def test_shard_key_follows_exactly_what_the_extractor_reads(tmp_path):
    for name in "abc":
        (tmp_path / f"{name}.mp4").write_bytes(name.encode() * 100)
    rows = [ManifestRow(n, f"{n}.mp4", f"text {n}") for n in "abc"]

    def keys(uses_text, fingerprint="f1"):
        return [shard_cache_key("x", fingerprint, [r], tmp_path, uses_text) for r in rows]

    media, text = keys(False), keys(True)
    assert len(set(media)) == 3 and keys(False) == media
    (tmp_path / "b.mp4").write_bytes(b"changed")
    assert keys(False) == [media[0], keys(False)[1], media[2]] and keys(False)[1] != media[1]
    assert keys(True) == text                              # a text set ignores the media
    # Small files are keyed by content: rewriting the same bytes (a fresh checkout) is still a hit.
    before = keys(False)
    (tmp_path / "a.mp4").write_bytes(b"a" * 100)
    assert keys(False) == before
    rows[2] = ManifestRow("c", "c.mp4", "other words")
    assert keys(True)[2] != text[2] and keys(False)[2] == before[2]
    assert keys(False, fingerprint="f2")[0] != before[0]    # extractor config or code changed
    (tmp_path / "c.mp4").unlink()
    assert keys(False)[2] != before[2]                     # a file that went missing


def test_a_missing_manifest_names_the_fix(tmp_path, sample):
    with pytest.raises(ManifestError, match=r"trml index --dataset s12"):
        extract_dataset(make_params(sample), DATASET, SETS, data_dir=tmp_path)


def test_dask_runner_needs_an_address(tmp_path, sample):
    with pytest.raises(ExtractionError, match="dask-address"):
        extract_dataset(make_params(sample), DATASET, SETS, runner="dask", data_dir=tmp_path)
