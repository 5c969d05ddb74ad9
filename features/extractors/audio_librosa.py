"""audio_librosa: per-frame librosa features at a fixed hop, on mono audio decoded with PyAV.

Per frame: MFCC (n_mfcc), f0 in Hz (0 when unvoiced), a voiced flag, RMS, spectral centroid,
bandwidth, rolloff, flatness and zero-crossing rate. One magnitude STFT feeds every spectral feature.
"""
from __future__ import annotations

import logging
from functools import lru_cache
from pathlib import Path

import numpy as np

from common.errors import ParamsError
from features.config import AudioConfig, ExtractConfig
from features.extractors.base import (Extractor, MediaItem, ModelInputs, guarded, status_row, truncation_detail,
                                      versions)
from features.extractors.decoding import DecoderSlot, decode_in_process
from features.media import AudioClip, read_audio
from features.store import FeatureRow, TableInfo

log = logging.getLogger(__name__)

SPECTRAL_NAMES = ["f0_hz", "voiced", "rms", "spectral_centroid_hz", "spectral_bandwidth_hz",
                  "spectral_rolloff_hz", "spectral_flatness", "zcr"]


def audio_feature_names(cfg: AudioConfig) -> list[str]:
    return [f"mfcc_{i}" for i in range(cfg.n_mfcc)] + SPECTRAL_NAMES


def check_audio_config(cfg: AudioConfig) -> None:
    """Settings librosa would reject only mid-run, named up front."""
    if cfg.fmin >= cfg.fmax:
        raise ParamsError(f"extract.audio_librosa: fmin ({cfg.fmin}) must be below fmax ({cfg.fmax})")
    if cfg.fmax >= cfg.sample_rate / 2:
        raise ParamsError(f"extract.audio_librosa: fmax ({cfg.fmax}) must be below the Nyquist frequency "
                         f"({cfg.sample_rate / 2}) of sample_rate {cfg.sample_rate}")
    # yin/pyin compare a window of n_fft // 2 samples against lags up to sr / fmin.
    if cfg.sample_rate / cfg.fmin >= cfg.n_fft // 2:
        raise ParamsError(f"extract.audio_librosa: n_fft ({cfg.n_fft}) is too short to find f0 down to fmin "
                         f"({cfg.fmin} Hz) at {cfg.sample_rate} Hz; needs n_fft > "
                         f"{int(2 * cfg.sample_rate / cfg.fmin) + 2}, or raise fmin")
    if cfg.hop_length > cfg.n_fft:
        raise ParamsError(f"extract.audio_librosa: hop_length ({cfg.hop_length}) must not exceed n_fft ({cfg.n_fft})")


def audio_features(y: np.ndarray, cfg: AudioConfig) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(features (frames, n_mfcc + 8) float32, frame times in s, RMS per frame) of mono audio at cfg.sample_rate.

    Frames are centred (frame k is centred on sample k * hop_length), as in librosa's defaults.
    """
    # These matrices are small: multi-threaded BLAS only adds hand-offs (60x slower on a busy 2-core box).
    with _blas_controller().limit(limits=1, user_api="blas"):
        return _audio_features(np.ascontiguousarray(y, dtype=np.float32), cfg)


@lru_cache(maxsize=1)
def _blas_controller():
    from threadpoolctl import ThreadpoolController
    return ThreadpoolController()


@lru_cache(maxsize=8)
def _mel_basis(sr: int, n_fft: int) -> np.ndarray:
    import librosa
    return librosa.filters.mel(sr=sr, n_fft=n_fft)   # librosa's default 128 Slaney mel bands


def _audio_features(y: np.ndarray, cfg: AudioConfig) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    import librosa

    sr, n_fft, hop = cfg.sample_rate, cfg.n_fft, cfg.hop_length
    mag = np.abs(librosa.stft(y, n_fft=n_fft, hop_length=hop, center=True))
    power = mag ** 2
    mel = _mel_basis(sr, n_fft) @ power       # = librosa.feature.melspectrogram(S=power), basis built once
    mfcc = librosa.feature.mfcc(S=librosa.power_to_db(mel), n_mfcc=cfg.n_mfcc)
    rms = librosa.feature.rms(S=mag, frame_length=n_fft)[0]
    centroid = librosa.feature.spectral_centroid(S=mag, sr=sr, n_fft=n_fft)[0]
    bandwidth = librosa.feature.spectral_bandwidth(S=mag, sr=sr, n_fft=n_fft)[0]
    rolloff = librosa.feature.spectral_rolloff(S=mag, sr=sr, n_fft=n_fft)[0]
    flatness = librosa.feature.spectral_flatness(S=mag)[0]
    zcr = librosa.feature.zero_crossing_rate(y, frame_length=n_fft, hop_length=hop, center=True)[0]
    if cfg.f0_method == "pyin":
        f0, voiced, _ = librosa.pyin(y, fmin=cfg.fmin, fmax=cfg.fmax, sr=sr, frame_length=n_fft,
                                     hop_length=hop, center=True)
        voiced = voiced.astype(bool)
    else:
        f0 = librosa.yin(y, fmin=cfg.fmin, fmax=cfg.fmax, sr=sr, frame_length=n_fft, hop_length=hop, center=True)
        voiced = _periodicity(y, f0, sr, n_fft, hop) >= cfg.voicing_threshold
    n = min(mfcc.shape[1], rms.size, zcr.size, f0.size)
    voiced = voiced[:n] & (_db(rms[:n]) > cfg.silence_db)
    f0 = np.where(voiced, np.nan_to_num(f0[:n], nan=0.0), 0.0)
    feats = np.column_stack([mfcc[:, :n].T, f0, voiced.astype(np.float32), rms[:n], centroid[:n],
                             bandwidth[:n], rolloff[:n], flatness[:n], zcr[:n]]).astype(np.float32)
    times = (np.arange(n) * hop / sr).astype(np.float32)
    return feats, times, rms[:n]


def _db(rms: np.ndarray) -> np.ndarray:
    return 20.0 * np.log10(np.maximum(rms, 1e-10))


def _periodicity(y: np.ndarray, f0: np.ndarray, sr: int, n_fft: int, hop: int) -> np.ndarray:
    """Normalised autocorrelation of each centred frame at the lag of its yin f0 (1 = perfectly periodic)."""
    import librosa

    frames = librosa.util.frame(np.pad(y, n_fft // 2), frame_length=n_fft, hop_length=hop)  # (n_fft, T)
    t = min(frames.shape[1], f0.size)
    lags = np.clip(np.rint(sr / np.maximum(f0[:t], 1e-3)).astype(np.int64), 1, n_fft - 1)
    out = np.zeros(t, dtype=np.float32)
    for lag in np.unique(lags):            # few distinct lags: vectorise over the frames sharing one
        cols = np.nonzero(lags == lag)[0]
        a, b = frames[:n_fft - lag, cols], frames[lag:, cols]
        num = np.einsum("ij,ij->j", a, b)
        den = np.sqrt(np.einsum("ij,ij->j", a, a) * np.einsum("ij,ij->j", b, b))
        out[cols] = np.where(den > 0, num / np.maximum(den, 1e-20), 0.0)
    return out


class AudioLibrosaExtractor(Extractor):
    feature_set = "audio_librosa"
    modality = "audio"
    kind = "seq"
    extractor_version = "1"

    def __init__(self, cfg: ExtractConfig, device: str = "cpu"):
        super().__init__(device)
        self.cfg = cfg.audio_librosa
        self.decode_workers = cfg.decode_workers
        check_audio_config(self.cfg)
        self.names = audio_feature_names(self.cfg)
        self._decoder = DecoderSlot()

    @classmethod
    def weights_identity(cls, cfg: ExtractConfig) -> dict:
        check_audio_config(cfg.audio_librosa)
        return {"weights_id": "none (signal processing)"}

    def info(self) -> TableInfo:
        params = {**self.cfg.model_dump(mode="json"), "center": True, "mfcc_input": "power mel in dB",
                  "f0_unvoiced": 0.0, "versions": versions("librosa", "numpy", "av")}
        # Not _table_info: that records the torch device, which librosa never uses; leaving it out keeps
        # audio tables identical on CPU and GPU machines.
        return TableInfo(feature_set=self.feature_set, modality=self.modality, kind=self.kind,
                         dim=len(self.names), extractor=f"{type(self).__module__}.{type(self).__name__}",
                         extractor_version=self.extractor_version, weights_id="none (signal processing)",
                         weights_sha256=None, feature_names=self.names, params=params)

    def decode(self, path: Path) -> AudioClip:
        return read_audio(path, self.cfg.sample_rate, self.cfg.max_seconds)

    def close(self) -> None:
        self._decoder.discard()

    def model_inputs(self, items: list[MediaItem]) -> ModelInputs:
        clips = [c.samples for c in self.decoded(items) if c.samples.size >= self.cfg.n_fft]
        return ModelInputs(clips, len(clips), sum(1 + y.size // self.cfg.hop_length for y in clips))

    def bare_forward(self, inputs: ModelInputs) -> None:
        for samples in inputs.data:
            audio_features(samples, self.cfg)

    def rows_for(self, item: MediaItem, clip: AudioClip) -> FeatureRow:
        cfg = self.cfg
        if clip.samples.size < cfg.n_fft:
            return status_row(item, "too_short", f"{clip.samples.size} samples at {cfg.sample_rate} Hz, fewer "
                              f"than one analysis window (n_fft={cfg.n_fft})")
        feats, times, rms = audio_features(clip.samples, cfg)
        peak_db = float(_db(rms).max())
        if peak_db < cfg.silence_db:
            return status_row(item, "silent", f"peak frame RMS {peak_db:.1f} dBFS is below silence_db "
                              f"{cfg.silence_db}")
        return FeatureRow(utterance_id=item.utterance_id, seq=feats, t=times,
                          detail=truncation_detail(clip, cfg.max_seconds))

    def extract(self, items: list[MediaItem]) -> list[FeatureRow]:
        rows: list[FeatureRow | None] = [None] * len(items)
        kwargs = {"sample_rate": self.cfg.sample_rate, "max_seconds": self.cfg.max_seconds}
        # A decoder process reads the next file while this one computes features (see DecoderProcess).
        for i, result in decode_in_process(self._decoder, items, lambda it: ("audio", str(it.media_path), kwargs),
                                           lambda it: guarded(it, self.decode)):
            rows[i] = result if isinstance(result, FeatureRow) else self.rows_for(items[i], result)
        return rows
