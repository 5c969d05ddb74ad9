"""Kill `trml extract` with SIGKILL mid-run: the next run recomputes only unfinished shards, and the output
path never holds a partial file."""
from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pyarrow.parquet as pq
import pytest
import yaml

from flows import runtime  # noqa: F401  (before prefect)
from prefect.settings import PREFECT_LOCAL_STORAGE_PATH, temporary_settings
from prefect.testing.utilities import prefect_test_harness

from flows.extract import CACHE_NAMESPACE, extract_dataset
from flows.params import Params
from tests.test_flows_extract import DATASET, sample  # noqa: F401  (the module-scoped sample fixture)

pytestmark = pytest.mark.slow

SET = "audio_librosa"
N_SHARDS = 12                      # shard_size 1 on the 12-clip sample


class OutputWatcher(threading.Thread):
    """Polls the output path: whenever a file is there, it must be a complete table."""

    def __init__(self, path: Path, rows: int):
        super().__init__(daemon=True)
        self.path, self.rows, self.seen, self.bad = path, rows, 0, []
        self.stop = threading.Event()

    def run(self):
        while not self.stop.is_set():
            if self.path.exists():
                try:
                    n = pq.read_metadata(self.path).num_rows
                    self.seen += 1
                    if n != self.rows:
                        self.bad.append(f"{n} rows")
                except FileNotFoundError:
                    pass
                except Exception as exc:  # a partial file would land here
                    self.bad.append(repr(exc))
            time.sleep(0.005)


def records(cache: Path) -> list[Path]:
    folder = cache / CACHE_NAMESPACE / SET
    return sorted(folder.glob("*")) if folder.is_dir() else []


def test_sigkill_mid_run_then_resume(tmp_path, sample):  # noqa: F811
    project = tmp_path / "project"
    (project / "data" / "index").mkdir(parents=True)
    shutil.copy(sample["manifest"], project / "data" / "index" / f"{DATASET}.parquet")
    spec = {"datasets": {DATASET: {"layout": "mmsa", "root": str(sample["raw"])}},
            "extract": {"shard_size": 1, "max_workers": 1, "device": "cpu"}}
    (project / "params.yaml").write_text(yaml.safe_dump(spec))
    cache = tmp_path / "cache"
    env = {**os.environ, "PREFECT_LOCAL_STORAGE_PATH": str(cache), "PREFECT_HOME": str(tmp_path / "prefect")}
    env.pop("PREFECT_API_URL", None)
    out = project / "data" / "features" / DATASET / f"{SET}.parquet"

    watcher = OutputWatcher(out, rows=12)
    watcher.start()
    proc = subprocess.Popen([sys.executable, "-m", "flows.cli", "--params", "params.yaml", "extract",
                             "--dataset", DATASET, "--feature-set", SET], cwd=project, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        deadline = time.monotonic() + 240
        while len(records(cache)) < 2 and proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.01)
        assert proc.poll() is None, "extraction finished (or died) before it could be killed:\n" + \
            proc.stdout.read().decode(errors="replace")[-3000:]
        os.killpg(proc.pid, signal.SIGKILL)     # the CLI and its temporary Prefect server, at once
        proc.wait(timeout=30)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    at_kill = len(records(cache))
    assert 2 <= at_kill < N_SHARDS
    assert not out.exists(), "the killed run left a file at the output path"

    params = Params.model_validate(spec)
    with prefect_test_harness(server_startup_timeout=None), \
            temporary_settings(updates={PREFECT_LOCAL_STORAGE_PATH: cache}):
        report = extract_dataset(params, DATASET, [SET], data_dir=project / "data")[0]
        resumed = out.read_bytes()
        # The same table as a run that was never interrupted (and whose shards were laid out differently).
        clean = tmp_path / "clean"
        (clean / "index").mkdir(parents=True)
        shutil.copy(sample["manifest"], clean / "index" / f"{DATASET}.parquet")
        with temporary_settings(updates={PREFECT_LOCAL_STORAGE_PATH: tmp_path / "clean-cache"}):
            other = Params.model_validate({**spec, "extract": {**spec["extract"], "shard_size": 5}})
            extract_dataset(other, DATASET, [SET], data_dir=clean)
        assert (clean / "features" / DATASET / f"{SET}.parquet").read_bytes() == resumed
    watcher.stop.set()
    watcher.join()
    # Every record that was complete when the process died is reused; a record cut short by the kill (at
    # most one: max_workers is 1) is recomputed along with the shards that never ran.
    assert report.cached + report.computed == N_SHARDS
    assert at_kill - 1 <= report.cached <= at_kill
    assert report.computed >= 1
    assert watcher.bad == [] and watcher.seen > 0
    table = pq.read_table(out)
    assert table.num_rows == 12
    assert table.column("utterance_id").to_pylist() == pq.read_table(sample["manifest"]).column(
        "utterance_id").to_pylist()
