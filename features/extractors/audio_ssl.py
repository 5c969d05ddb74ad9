"""audio_ssl: a self-supervised speech encoder (wav2vec 2.0, HuBERT, WavLM, ...) through transformers.

Audio is decoded as for audio_librosa (PyAV, mono) at the rate of the model's feature extractor, normalised
by that feature extractor, and run through the model one clip at a time: a clip's states never depend on
the clips beside it (wav2vec2-base takes no attention mask, so padding a batch would change them). The
sequence is one hidden state (extract.audio_ssl.layer) or the mean of the transformer layers, one step per
convolutional stride (20 ms for wav2vec 2.0), timed by the step's start.

Weights follow CLIP's rules (features.weights.hf_model_source): a Hub id or a local folder; random init only
with `weights: null`, recorded in every table. On CUDA the forward runs under autocast.

Reference: wav2vec 2.0, Baevski et al., NeurIPS 2020 (MMSA-FET's wav2vec2 extractor uses the same models).
"""
from __future__ import annotations

import logging
from pathlib import Path

import numpy as np

from common.device import amp_dtype, autocast, dtype_name
from common.errors import ParamsError
from features.config import AudioSSLConfig, ExtractConfig
from features.extractors.base import (Extractor, MediaItem, ModelInputs, audio_problem, guarded,
                                      truncation_detail, versions)
from features.extractors.decoding import DecoderSlot, decode_in_process
from features.media import AudioClip, read_audio
from features.store import FeatureRow, TableInfo
from features.weights import HFSource, hf_model_source, load_hf_model

log = logging.getLogger(__name__)

KEY = "extract.audio_ssl"


def audio_ssl_source(cfg: AudioSSLConfig) -> HFSource:
    return hf_model_source(KEY, cfg.model, cfg.weights, cfg.seed)


def receptive_field(config) -> tuple[int, int]:
    """(samples one output step sees, samples between steps) of a wav2vec2-style convolutional front end."""
    kernels, strides = list(config.conv_kernel), list(config.conv_stride)
    field, jump = 1, 1
    for k, s in zip(kernels, strides):
        field += (k - 1) * jump
        jump *= s
    return field, jump


class AudioSSLExtractor(Extractor):
    feature_set = "audio_ssl"
    modality = "audio"
    kind = "seq"
    extractor_version = "1"

    def __init__(self, cfg: ExtractConfig, device: str = "cpu"):
        super().__init__(device)
        from transformers import AutoFeatureExtractor

        self.cfg = cfg.audio_ssl
        self.source = audio_ssl_source(self.cfg)
        self.processor = AutoFeatureExtractor.from_pretrained(self.source.folder, local_files_only=True)
        self.sample_rate = int(self.processor.sampling_rate)
        self.model = load_hf_model(self.source, device, f"audio_ssl {self.cfg.model}")
        config = self.model.config
        if not hasattr(config, "conv_kernel"):
            raise ParamsError(f"{KEY}.model {self.cfg.model!r} is a {config.model_type} model, not a speech "
                              "encoder with a convolutional front end (wav2vec2, HuBERT, WavLM, data2vec-audio)")
        layers = int(config.num_hidden_layers)
        if self.cfg.layer != "mean" and not -layers - 1 <= self.cfg.layer <= layers:
            raise ParamsError(f"{KEY}.layer is {self.cfg.layer}, but {self.cfg.model!r} has hidden states 0..{layers}")
        self.min_samples, self.stride = receptive_field(config)
        self.dim = int(config.hidden_size)
        self.amp = amp_dtype(device)
        self._decoder = DecoderSlot()

    @classmethod
    def weights_identity(cls, cfg: ExtractConfig) -> dict:
        return audio_ssl_source(cfg.audio_ssl).identity()

    def info(self) -> TableInfo:
        params = {**self.cfg.model_dump(mode="json"), "sample_rate": self.sample_rate,
                  "step_s": self.stride / self.sample_rate, "random_init": self.source.random_init,
                  "normalize": bool(getattr(self.processor, "do_normalize", False)),
                  "autocast": dtype_name(self.amp), "versions": versions("torch", "transformers", "av")}
        return self._table_info(self.dim, self.source.weights_id, self.source.sha256, None, params)

    def decode(self, path: Path) -> AudioClip:
        return read_audio(path, self.sample_rate, self.cfg.max_seconds)

    def close(self) -> None:
        self._decoder.discard()

    def _inputs(self, samples: np.ndarray):
        values = self.processor(samples, sampling_rate=self.sample_rate, return_tensors="pt").input_values
        return values.to(self.device)

    def _forward(self, values):
        import torch

        with torch.inference_mode(), autocast(self.device, self.amp):
            hidden = self.model(values, output_hidden_states=True).hidden_states
            states = torch.stack(hidden[1:]).mean(0) if self.cfg.layer == "mean" else hidden[self.cfg.layer]
        return states[0].float()

    def rows_for(self, item: MediaItem, clip: AudioClip) -> FeatureRow:
        problem = audio_problem(item, clip, self.min_samples, "the model's receptive field",
                                self.cfg.silence_db, KEY)
        if problem is not None:
            return problem
        states = self._forward(self._inputs(clip.samples)).cpu().numpy()
        times = (np.arange(states.shape[0]) * self.stride / self.sample_rate).astype(np.float32)
        return FeatureRow(utterance_id=item.utterance_id, seq=states, t=times,
                          detail=truncation_detail(clip, self.cfg.max_seconds))

    def extract(self, items: list[MediaItem]) -> list[FeatureRow]:
        rows: list[FeatureRow | None] = [None] * len(items)
        kwargs = {"sample_rate": self.sample_rate, "max_seconds": self.cfg.max_seconds}
        for i, result in decode_in_process(self._decoder, items, lambda it: ("audio", str(it.media_path), kwargs),
                                           lambda it: guarded(it, self.decode)):
            rows[i] = result if isinstance(result, FeatureRow) else self.rows_for(items[i], result)
        return rows

    def model_inputs(self, items: list[MediaItem]) -> ModelInputs:
        clips = [c.samples for c in self.decoded(items) if c.samples.size >= self.min_samples]
        return ModelInputs([self._inputs(y) for y in clips], len(clips),
                           sum(1 + (y.size - self.min_samples) // self.stride for y in clips))

    def bare_forward(self, inputs: ModelInputs) -> None:
        for values in inputs.data:
            self._forward(values)
