"""Scale-out: extraction on a Dask cluster with several worker processes (prefect-dask), surviving the
SIGKILL of a worker mid-run with no row lost."""
from __future__ import annotations

import os
import shutil
import signal
import threading
import time

import numpy as np
import pyarrow.parquet as pq
import pytest

from flows import runtime  # noqa: F401  (before prefect)
from prefect.settings import PREFECT_LOCAL_STORAGE_PATH, temporary_settings
from prefect.testing.utilities import prefect_test_harness

from flows.extract import CACHE_NAMESPACE, extract_dataset
from flows.params import Params
from tests.test_flows_extract import DATASET, sample  # noqa: F401  (the module-scoped sample fixture)

distributed = pytest.importorskip("distributed")
pytestmark = pytest.mark.slow

SETS = ["text_minilm", "audio_librosa"]


def test_dask_cluster_survives_a_killed_worker(tmp_path, sample):  # noqa: F811
    data = tmp_path / "data"
    (data / "index").mkdir(parents=True)
    shutil.copy(sample["manifest"], data / "index" / f"{DATASET}.parquet")
    cache = tmp_path / "cache"
    params = Params.model_validate({"datasets": {DATASET: {"layout": "mmsa", "root": str(sample["raw"])}},
                                    "extract": {"shard_size": 1, "device": "cpu"}})
    killed: list[int] = []

    def kill_one_worker(client, stop: threading.Event):
        """Once the first shards are done, SIGKILL one worker process (its nanny starts a new one)."""
        while not stop.is_set():
            if len(list((cache / CACHE_NAMESPACE).glob("*/*"))) >= 3:
                pids = client.run(os.getpid)
                pid = sorted(pids.values())[0]
                os.kill(pid, signal.SIGKILL)
                killed.append(pid)
                return
            time.sleep(0.05)

    with prefect_test_harness(server_startup_timeout=None), \
            temporary_settings(updates={PREFECT_LOCAL_STORAGE_PATH: cache}), \
            distributed.LocalCluster(n_workers=2, threads_per_worker=1, processes=True,
                                     dashboard_address=None) as cluster, \
            distributed.Client(cluster) as client:
        stop = threading.Event()
        killer = threading.Thread(target=kill_one_worker, args=(client, stop), daemon=True)
        killer.start()
        try:
            reports = extract_dataset(params, DATASET, SETS, runner="dask",
                                      dask_address=cluster.scheduler_address, data_dir=data)
        finally:
            stop.set()
            killer.join(timeout=30)
        assert killed, "no worker was killed: the run finished before the first shards were cached"

        # Every row is there, in manifest order, with the statuses a single-process run gives.
        ids = pq.read_table(sample["manifest"]).column("utterance_id").to_pylist()
        for report in reports:
            assert report.cached + report.computed == 12
            table = pq.read_table(report.path)
            assert table.column("utterance_id").to_pylist() == ids
        dask_tables = {r.feature_set: pq.read_table(r.path).to_pydict() for r in reports}

        reference = tmp_path / "reference"
        (reference / "index").mkdir(parents=True)
        shutil.copy(sample["manifest"], reference / "index" / f"{DATASET}.parquet")
        with temporary_settings(updates={PREFECT_LOCAL_STORAGE_PATH: tmp_path / "reference-cache"}):
            local = extract_dataset(params, DATASET, SETS, runner="thread", data_dir=reference)
    for report in local:
        ref, got = pq.read_table(report.path).to_pydict(), dask_tables[report.feature_set]
        assert got["status"] == ref["status"] and got["present"] == ref["present"]
        payload = "emb" if "emb" in ref else "seq"
        for a, b in zip(got[payload], ref[payload]):
            # Dask workers run BLAS single-threaded (OMP_NUM_THREADS=1), which changes float summation
            # order: equal to float32 rounding, not bit for bit.
            assert (a is None) == (b is None)
            if a is not None:
                np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-4, atol=1e-4)
