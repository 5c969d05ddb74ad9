"""Files are written atomically and fingerprinted one way, everywhere (feature tables, checkpoints, reports)."""
from __future__ import annotations

import contextlib
import hashlib
import json
import os
import uuid
from collections.abc import Iterator
from pathlib import Path


@contextlib.contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """Yield a new temporary file beside `path`; on success it is fsynced and replaces `path`, on any
    error it is removed. Whatever writes into it, `path` only ever holds a complete file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    # Created with O_EXCL and mode 0666 minus the umask, like any file a user writes (mkstemp would give 0600).
    # The name ends in .tmp, which is how the sample generator recognises a killed run's leftovers.
    tmp = path.parent / f".{path.name}.{uuid.uuid4().hex}.tmp"
    os.close(os.open(tmp, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o666))
    try:
        yield tmp
        with open(tmp, "rb") as fh:
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def write_text_atomic(text: str, path: str | Path) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(text, encoding="utf-8")


def write_json(obj: dict, path: str | Path) -> None:
    """JSON in a stable layout (insertion order is deterministic; no NaN), written atomically."""
    write_text_atomic(json.dumps(obj, indent=2, allow_nan=False) + "\n", path)


def sha256_file(path: str | Path) -> str:
    """Hex sha256 of a file's bytes, read in 1 MiB chunks: weights, media, pickles, feature tables."""
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        while block := fh.read(1 << 20):
            h.update(block)
    return h.hexdigest()
