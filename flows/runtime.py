"""Quiet, project-local defaults for Prefect and friends, applied before `prefect` is first imported.

Prefect reads its settings from the environment once, when it is imported, so every flows module
imports this first. Each value is a `setdefault`: anything the user (or the Makefile, or a test)
already exported wins.

The network is never switched off here: users download real CLIP weights (features/weights.py fails in
seconds, in one line, when the hub cannot be reached). HF_HUB_OFFLINE=1 belongs to the demo, the tests
and CI, which export it themselves (Makefile, tests/conftest.py, .ci/run).
"""
from __future__ import annotations

import ctypes
import logging
import os
import sys
from pathlib import Path

# Project-local state: runs are reproducible from the repo and nothing is written under $HOME.
_PROJECT_CACHE = Path.cwd() / ".cache"

DEFAULTS: dict[str, str] = {
    "DO_NOT_TRACK": "1",                              # Prefect and friends: no telemetry
    "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
    "PREFECT_HOME": str(_PROJECT_CACHE / "prefect"),  # SQLite DB of the temporary server, results cache
    "PREFECT_LOGGING_LEVEL": "WARNING",               # our own progress goes through `logging` (trml.*)
    # On 2 busy cores the temporary API server can need minutes to start (a new SQLite DB is migrated first).
    "PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS": "300",
    "HF_HUB_DISABLE_PROGRESS_BARS": "1",              # no "Loading weights" bars in DVC logs
    "TOKENIZERS_PARALLELISM": "false",                # tokenizers warns (and can deadlock) with threads + fork
    # glibc gives each thread its own malloc arena (up to 8 per core). With the flow's worker threads and
    # the extractors' decode threads freeing large frame buffers in turn, `trml extract --all` grew from
    # 2.6 GiB (120 clips) to 3.7 GiB (1200 clips) from fragmentation alone; two arenas keep it flat.
    "MALLOC_ARENA_MAX": "2",
}
_M_ARENA_MAX = -8                                     # mallopt parameter number, from glibc's malloc.h


# Prefect's API client logs every HTTP request at INFO; under the CLI's INFO root logger that buries
# our progress lines. Raised only where nobody chose a level.
NOISY_LOGGERS = ("httpx", "httpcore")


def apply_defaults() -> None:
    for key, value in DEFAULTS.items():
        os.environ.setdefault(key, value)
    # Prefect's SQLite database cannot be opened in a folder that does not exist yet (a fresh clone,
    # or the temporary workspace of a queued `dvc exp run`).
    Path(os.environ["PREFECT_HOME"]).expanduser().mkdir(parents=True, exist_ok=True)
    if os.environ["MALLOC_ARENA_MAX"].isdigit():
        limit_malloc_arenas(int(os.environ["MALLOC_ARENA_MAX"]))
    for name in NOISY_LOGGERS:
        logger = logging.getLogger(name)
        if logger.level == logging.NOTSET:
            logger.setLevel(logging.WARNING)


def limit_malloc_arenas(n: int) -> None:
    """Child processes read MALLOC_ARENA_MAX when they start; this process already has, so tell glibc
    directly. It applies to threads started from now on, which is every worker and decode thread."""
    if not sys.platform.startswith("linux"):
        return
    try:
        ctypes.CDLL("libc.so.6").mallopt(_M_ARENA_MAX, n)
    except (OSError, AttributeError):  # not glibc (musl, ...): nothing to tune
        pass


apply_defaults()
