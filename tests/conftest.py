"""Test-wide settings: offline, quiet, and every cache inside the workspace (never under $HOME)."""
from __future__ import annotations

import os
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
_CACHE = ROOT / ".cache"
for key, value in {
    "DO_NOT_TRACK": "1",
    "DVC_NO_ANALYTICS": "1",
    "HF_HUB_OFFLINE": "1",
    "TRANSFORMERS_OFFLINE": "1",
    "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
    "PREFECT_LOGGING_LEVEL": "WARNING",
    "PREFECT_HOME": str(_CACHE / "prefect-tests"),
    "PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS": "300",
    "XDG_CACHE_HOME": str(_CACHE),
    "MPLCONFIGDIR": str(_CACHE / "matplotlib"),
    "HF_HOME": str(_CACHE / "huggingface"),
    "NUMBA_CACHE_DIR": str(_CACHE / "numba"),
}.items():
    os.environ.setdefault(key, value)

# `make test` runs the suite on pytest-xdist workers, one per core (TEST_WORKERS). Each worker gets a Prefect
# home of its own, since two temporary Prefect servers must not share one SQLite database, and one BLAS/torch
# thread (inherited by the dvc and trml subprocesses it starts), since two workers of two threads each fight
# over two cores.
_WORKER = os.environ.get("PYTEST_XDIST_WORKER")
if _WORKER:
    os.environ["PREFECT_HOME"] = str(_CACHE / f"prefect-tests-{_WORKER}")
    for key in ("OMP_NUM_THREADS", "MKL_NUM_THREADS"):
        os.environ.setdefault(key, "1")

SHARED_MELD = ROOT.parent / "shared" / "data" / "meld"
