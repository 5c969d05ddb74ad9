"""audio_opensmile: openSMILE's eGeMAPS v02 or ComParE 2016 features, on audio decoded as audio_librosa's.

The `opensmile` wheel (audEERING) carries openSMILE's native library, so nothing is installed beside it.
Audio comes from the project's own decoder (PyAV, mono, resampled to extract.audio_opensmile.sample_rate),
and `opensmile.Smile.process_signal` runs on those samples: the values are exactly the library's own on
the same signal. Low-level descriptors (every 10 ms) are the sequence, timed by each frame's start;
functionals are one vector. Feature names are openSMILE's.

References: eGeMAPS, Eyben et al., IEEE Trans. Affective Computing 2016; ComParE 2016, Schuller et al.,
Interspeech 2016; openSMILE, Eyben et al., ACM MM 2010.
"""
from __future__ import annotations

import logging
import warnings
from pathlib import Path

import numpy as np

from features.config import ExtractConfig
from features.extractors.base import (Extractor, MediaItem, ModelInputs, audio_problem, guarded, status_row,
                                      truncation_detail, versions)
from features.extractors.decoding import DecoderSlot, decode_in_process
from features.media import AudioClip, read_audio
from features.store import FeatureRow, TableInfo

log = logging.getLogger(__name__)

# Both configurations' longest analysis window is 60 ms (the pitch and voice-quality frames): below that,
# openSMILE has no complete frame and fills its output with NaN.
MIN_SECONDS = 0.06


class AudioOpenSmileExtractor(Extractor):
    feature_set = "audio_opensmile"
    modality = "audio"
    kind = "seq"
    extractor_version = "1"

    def __init__(self, cfg: ExtractConfig, device: str = "cpu"):
        super().__init__(device)
        self.cfg = cfg.audio_opensmile
        self.kind = "seq" if self.cfg.level == "lld" else "emb"
        self.smile = build_smile(self.cfg.feature_set, self.cfg.level)
        self.names = list(self.smile.feature_names)
        self.min_samples = int(np.ceil(MIN_SECONDS * self.cfg.sample_rate))
        self._decoder = DecoderSlot()

    @classmethod
    def weights_identity(cls, cfg: ExtractConfig) -> dict:
        return {"weights_id": f"none (openSMILE {cfg.audio_opensmile.feature_set}, signal processing)",
                "versions": versions("opensmile")}

    def info(self) -> TableInfo:
        params = {**self.cfg.model_dump(mode="json"), "feature_level": self.smile.feature_level.value,
                  "t": "start of each 10 ms frame, s" if self.kind == "seq" else None,
                  "versions": versions("opensmile", "numpy", "av")}
        # Like audio_librosa: no torch device in the params, so tables are identical on CPU and GPU machines.
        return TableInfo(feature_set=self.feature_set, modality=self.modality, kind=self.kind,
                         dim=len(self.names), extractor=f"{type(self).__module__}.{type(self).__name__}",
                         extractor_version=self.extractor_version,
                         weights_id=f"none (openSMILE {self.cfg.feature_set}, signal processing)",
                         weights_sha256=None, feature_names=self.names, params=params)

    def decode(self, path: Path) -> AudioClip:
        return read_audio(path, self.cfg.sample_rate, self.cfg.max_seconds)

    def close(self) -> None:
        self._decoder.discard()

    def features(self, samples: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(values (frames, dim) float32, frame start times in s) of mono samples at cfg.sample_rate."""
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)     # "Segment too short": a row status here instead
            frame = self.smile.process_signal(samples, self.cfg.sample_rate)
        starts = frame.index.get_level_values("start").to_numpy().astype("timedelta64[ns]").astype(np.int64)
        return frame.to_numpy(dtype=np.float32), (starts / 1e9).astype(np.float32)

    def rows_for(self, item: MediaItem, clip: AudioClip) -> FeatureRow:
        problem = audio_problem(item, clip, self.min_samples, "openSMILE's 60 ms analysis window",
                                self.cfg.silence_db, "extract.audio_opensmile")
        if problem is not None:
            return problem
        values, times = self.features(clip.samples)
        if values.shape[0] == 0 or not np.isfinite(values).all():
            return status_row(item, "too_short", f"openSMILE gave no finite {self.cfg.level} for this "
                              f"{clip.samples.size / clip.sample_rate:.2f} s clip")
        detail = truncation_detail(clip, self.cfg.max_seconds)
        if self.kind == "emb":
            return FeatureRow(utterance_id=item.utterance_id, emb=values[0], detail=detail)
        return FeatureRow(utterance_id=item.utterance_id, seq=values, t=times, detail=detail)

    def extract(self, items: list[MediaItem]) -> list[FeatureRow]:
        rows: list[FeatureRow | None] = [None] * len(items)
        kwargs = {"sample_rate": self.cfg.sample_rate, "max_seconds": self.cfg.max_seconds}
        # A decoder process reads the next file while openSMILE works on this one (as audio_librosa).
        for i, result in decode_in_process(self._decoder, items, lambda it: ("audio", str(it.media_path), kwargs),
                                           lambda it: guarded(it, self.decode)):
            rows[i] = result if isinstance(result, FeatureRow) else self.rows_for(items[i], result)
        return rows

    def model_inputs(self, items: list[MediaItem]) -> ModelInputs:
        clips = [c.samples for c in self.decoded(items) if c.samples.size >= self.min_samples]
        hop = self.cfg.sample_rate // 100                     # openSMILE's 10 ms frame step
        return ModelInputs(clips, len(clips), sum(1 + y.size // hop for y in clips))

    def bare_forward(self, inputs: ModelInputs) -> None:
        for samples in inputs.data:
            self.smile.process_signal(samples, self.cfg.sample_rate)


def build_smile(feature_set: str, level: str):
    """The bare `opensmile.Smile` for a configuration and level ('lld' or 'functionals')."""
    import opensmile

    return opensmile.Smile(feature_set=getattr(opensmile.FeatureSet, feature_set),
                           feature_level=opensmile.FeatureLevel.LowLevelDescriptors if level == "lld"
                           else opensmile.FeatureLevel.Functionals)
