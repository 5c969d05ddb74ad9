"""The extractor interface shared by every feature set, plus the helpers they all use.

An extractor is built once (weights loaded once), then `extract` is called on batches of items.
Bad media never raises out of `extract`: it becomes that item's row with a status and detail.
"""
from __future__ import annotations

import hashlib
import json
import logging
from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path
from typing import Any, ClassVar, TypeVar

import numpy as np

from features.config import ExtractConfig
from features.media import AudioClip, MediaError
from features.store import FeatureRow, MediaItem, TableInfo

log = logging.getLogger(__name__)

T = TypeVar("T")


@dataclass
class ModelInputs:
    """What an extractor's bare model runs on, and how much of it there is."""
    data: Any
    items: int       # items that reach the model
    frames: int      # model inputs: sampled frames, audio hop frames, or texts


class Extractor(ABC):
    """Turns MediaItems into FeatureRows for one feature set. Subclasses set the class attributes."""

    feature_set: ClassVar[str]
    modality: ClassVar[str]
    kind: ClassVar[str]                # "emb" | "seq"
    extractor_version: ClassVar[str]   # bump when the output for the same input and params changes

    def __init__(self, device: str = "cpu"):
        self.device = device

    @classmethod
    @abstractmethod
    def weights_identity(cls, cfg: ExtractConfig) -> dict:
        """Find and check this feature set's weights and settings without building the model: a wrong or
        unavailable weight raises its one-line WeightsError here. What it returns identifies the weights
        (id, sha256 or file identity) in the cache key of the table's description (flows/extract.py)."""

    @abstractmethod
    def info(self) -> TableInfo:
        """What the table holds and how it was made (weights id and sha256, feature names, params)."""

    @abstractmethod
    def extract(self, items: list[MediaItem]) -> list[FeatureRow]:
        """One row per item, in the same order. Per-item bad media gives a status row, never an exception."""

    # The bare model, for the benchmark (features.bench): `extract` minus decoding and result assembly.

    @abstractmethod
    def model_inputs(self, items: list[MediaItem]) -> ModelInputs:
        """The items' inputs, decoded and preprocessed as `extract` feeds them to the model (bad items
        left out), ready for `bare_forward`."""

    @abstractmethod
    def bare_forward(self, inputs: ModelInputs) -> None:
        """Run only the model on `inputs`, in the batches `extract` uses; the output is discarded."""

    def decoded(self, items: list[MediaItem]) -> list:
        """Each item's decoded media (what `extract`'s decoders produce), skipping bad media. For the
        media extractors, which define `decode(path)`."""
        return [r for r in (guarded(item, self.decode) for item in items) if not isinstance(r, FeatureRow)]

    def config_fingerprint(self) -> str:
        """sha256 of everything that decides the output besides the input: a cache key for shards."""
        info = self.info()
        payload = {
            "feature_set": info.feature_set, "extractor": info.extractor,
            "extractor_version": info.extractor_version, "weights_id": info.weights_id,
            "weights_sha256": info.weights_sha256, "dim": info.dim,
            "feature_names": info.feature_names, "params": info.params,
        }
        return hashlib.sha256(json.dumps(payload, sort_keys=True, default=str).encode()).hexdigest()

    def _table_info(self, dim: int, weights_id: str, weights_sha256: str | None,
                    feature_names: list[str] | None, params: dict[str, Any]) -> TableInfo:
        return TableInfo(feature_set=self.feature_set, modality=self.modality, kind=self.kind, dim=dim,
                         extractor=f"{type(self).__module__}.{type(self).__name__}",
                         extractor_version=self.extractor_version, weights_id=weights_id,
                         weights_sha256=weights_sha256, feature_names=feature_names,
                         params={**params, "device": self.device})

    def close(self) -> None:
        """Release resources held between calls (nothing by default)."""

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def versions(*dists: str) -> dict[str, str]:
    """Installed versions of the libraries that shape an extractor's floats (recorded in params)."""
    out = {}
    for dist in dists:
        try:
            out[dist] = metadata.version(dist)
        except metadata.PackageNotFoundError:
            out[dist] = "not installed"
    return out


def status_row(item: MediaItem, status: str, detail: str) -> FeatureRow:
    return FeatureRow(utterance_id=item.utterance_id, status=status, detail=detail)


def split_by_text(items: list[MediaItem]) -> tuple[list[FeatureRow | None], list[int]]:
    """The text extractors' rule: an `empty_text` row for each item without usable text (None elsewhere),
    and the indices of the items to embed."""
    rows: list[FeatureRow | None] = [None] * len(items)
    todo: list[int] = []
    for i, item in enumerate(items):
        if item.text is None or not item.text.strip():
            why = "no transcript" if item.text is None else "transcript is empty or whitespace"
            rows[i] = status_row(item, "empty_text", why)
        else:
            todo.append(i)
    return rows, todo


def guarded(item: MediaItem, load: Callable[[Path], T]) -> T | FeatureRow:
    """Run `load` on the item's media; a failure becomes the item's status row.

    Anything a single file can make the decoder raise is that file's problem, so unexpected decoder
    exceptions become decode_error too (with their type), and the rest of the shard carries on.
    """
    if item.media_path is None:
        return status_row(item, "missing_file", "no media file for this utterance in the manifest")
    try:
        return load(Path(item.media_path))
    except MediaError as exc:
        return status_row(item, exc.status, exc.detail)
    except MemoryError:
        raise
    except Exception as exc:  # noqa: BLE001 - see docstring
        log.warning("%s: unexpected %s while decoding %s: %s", item.utterance_id, type(exc).__name__,
                    item.media_path, exc)
        return status_row(item, "decode_error", f"{item.media_path}: {type(exc).__name__}: {exc}")


# ---------------------------------------------------------------- audio rules shared by the audio extractors

def peak_frame_db(samples: np.ndarray, sample_rate: int, frame_s: float = 0.025) -> float:
    """The loudest non-overlapping `frame_s` frame's RMS, in dBFS (-200 for digital silence)."""
    frame = max(1, int(round(frame_s * sample_rate)))
    n = samples.size // frame
    frames = samples[:n * frame].reshape(n, frame) if n else samples[None, :]
    rms = np.sqrt(np.mean(np.square(frames, dtype=np.float64), axis=1))
    return float(20.0 * np.log10(max(float(rms.max()), 1e-10)))


def audio_problem(item: MediaItem, clip: AudioClip, min_samples: int, why_min: str,
                  silence_db: float, key: str) -> FeatureRow | None:
    """The status row of a clip too short for the model (`why_min` says whose window) or silent, else None.
    audio_librosa keeps its own silence rule, on its STFT frames."""
    if clip.samples.size < min_samples:
        return status_row(item, "too_short", f"{clip.samples.size} samples at {clip.sample_rate} Hz, fewer than "
                          f"{why_min} ({min_samples} samples)")
    peak_db = peak_frame_db(clip.samples, clip.sample_rate)
    if peak_db < silence_db:
        return status_row(item, "silent", f"peak 25 ms frame RMS {peak_db:.1f} dBFS is below {key}.silence_db "
                          f"{silence_db}")
    return None


def truncation_detail(clip: AudioClip, max_seconds: float) -> str | None:
    """The detail of a row whose audio max_seconds cut, else None."""
    if not clip.truncated:
        return None
    total = f"{clip.source_duration_s:.1f} s" if clip.source_duration_s else "longer"
    return f"audio truncated to max_seconds={max_seconds} (source: {total})"
