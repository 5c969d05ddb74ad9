"""Offline, quiet defaults for Prefect and friends, applied before `prefect` is first imported.

Prefect reads its settings from the environment once, when it is imported, so every flows module
imports this first. Each value is a `setdefault`: anything the user (or the Makefile, or a test)
already exported wins.
"""
from __future__ import annotations

import logging
import os
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
    "HF_HUB_OFFLINE": "1",                            # fail fast instead of a minute of retries
    "TRANSFORMERS_OFFLINE": "1",
    "HF_HUB_DISABLE_PROGRESS_BARS": "1",              # no "Loading weights" bars in DVC logs
    "TOKENIZERS_PARALLELISM": "false",                # tokenizers warns (and can deadlock) with threads + fork
}


# Prefect's API client logs every HTTP request at INFO; under the CLI's INFO root logger that buries
# our progress lines. Raised only where nobody chose a level.
NOISY_LOGGERS = ("httpx", "httpcore")


def apply_defaults() -> None:
    for key, value in DEFAULTS.items():
        os.environ.setdefault(key, value)
    for name in NOISY_LOGGERS:
        logger = logging.getLogger(name)
        if logger.level == logging.NOTSET:
            logger.setLevel(logging.WARNING)


apply_defaults()
