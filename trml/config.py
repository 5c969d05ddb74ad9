"""Typed configuration of the model side of params.yaml: model, train, evaluate, compare.

The paper (arXiv 2401.13697) leaves most choices open; each one is a key here, documented
in params.yaml with the paper's wording where there is one. Every key has a `description`.
"""
from __future__ import annotations

from typing import Annotated, Literal

from pydantic import Field, ValidationInfo, field_validator

from common.config import Strict

from trml.metrics import CLASSIFICATION_KEYS, REGRESSION_KEYS

MODALITIES = ("text", "vision", "audio", "face")
Modality = Literal["text", "vision", "audio", "face"]
# A model name (trml/registry.py): TRML's variants, the baselines lf_dnn, tfn, mult, an entry point of group
# "trml.models", or an import path "package.module:Class". Resolved when a run starts, not here.
Variant = Annotated[str, Field(min_length=1, pattern=r"^[A-Za-z_][\w.]*(:[A-Za-z_]\w*)?$")]
# What can pick best.pt: the task loss or any metric key (fit checks that the key is one of the data's task).
EarlyStopOn = Literal[("loss", *REGRESSION_KEYS, *CLASSIFICATION_KEYS)]


class ModalitiesConfig(Strict):
    """Which feature set feeds each modality; null switches the modality off."""
    text: str | None = Field("text_minilm", description="paper: x_t = f_t(T), one vector per utterance")
    vision: str | None = Field("vision_clip", description="paper: x_v = f_v(V) in R^(n x d), one per frame")
    audio: str | None = Field("audio_librosa", description="our extension: librosa frame features")
    face: str | None = Field("face_mediapipe", description="our extension: blendshapes + head pose")

    def enabled(self) -> dict[str, str]:
        """{modality: feature_set} of the modalities switched on, in the fixed order of MODALITIES."""
        return {m: getattr(self, m) for m in MODALITIES if getattr(self, m) is not None}


class ModelConfig(Strict):
    modalities: ModalitiesConfig = Field(ModalitiesConfig(), description="feature set per modality; null = off")
    hidden: int = Field(128, ge=8, le=4096, description="width of every modality representation")
    rnn: Literal["gru", "lstm"] = Field("gru", description="temporal encoder of the sequence modalities")
    rnn_layers: int = Field(1, ge=1, le=8, description="stacked RNN layers per sequence encoder")
    dropout: float = Field(0.1, ge=0.0, lt=1.0, description="dropout in the encoders, MMI and head")
    mmi: Literal["pairwise", "concat"] = Field(
        "pairwise", description="MMI generator: pairwise translators averaged over the present modalities, "
                                "or one MLP over the concatenation of all of them")
    mmi_layers: int = Field(2, ge=1, le=8, description="layers of each MMI generator MLP")
    max_seq_len: int = Field(
        64, ge=1, le=100_000,
        description="a longer sequence is average-pooled in time into this many steps when loaded")
    standardize: list[Modality] = Field(
        default_factory=lambda: ["audio", "face"],
        description="modalities whose features are z-scored with train-split statistics "
                    "(CLIP/MiniLM embeddings are used as they are)")

    @field_validator("standardize")
    @classmethod
    def _unique(cls, v: list[str]) -> list[str]:
        if len(set(v)) != len(v):
            raise ValueError(f"standardize lists a modality twice: {v}")
        return v


def omitted_at(default):
    """Field(exclude_if=...) for a key added after runs were signed: left out of model_dump while it holds its
    default, so the run signatures, checkpoints and lineage files of runs that do not use it keep their bytes."""
    return lambda value: value == default


class TrainConfig(Strict):
    variant: Variant = Field("trml", description="the model: trml | zero_fill | no_sml | upper_bound | lf_dnn | "
                                                 "tfn | mult | an entry point | package.module:Class")
    alpha: float = Field(0.1, ge=0.0, description="weight of L_sml in L = L_task + alpha * L_sml")
    tau: float = Field(0.07, gt=0.0, le=10.0, description="SML temperature")
    sml_detach_real: bool = Field(
        False, description="SML moves only the MMI generators (real representations are fixed targets); "
                           "false: both sides move, as in CLIP's symmetric contrastive loss")
    missing_rate: float = Field(0.3, ge=0.0, lt=1.0, description="simulated modality-missing rate in training "
                                                                 "(regime fixed only)")
    regime: Literal["fixed", "complete", "lnln"] = Field(
        "fixed", exclude_if=omitted_at("fixed"),
        description="simulated missingness in training: fixed (every modality of every row dropped at "
                    "missing_rate) | complete (none) | lnln (LNLN, NeurIPS 2024: a rate per row from U(0, 1), "
                    "redrawn every epoch, complete_share of the rows complete)")
    complete_share: float = Field(0.5, ge=0.0, le=1.0, exclude_if=omitted_at(0.5),
                                  description="regime lnln: share of the train rows kept complete each epoch")
    lnln_mask: Literal["modality", "intra"] = Field(
        "modality", exclude_if=omitted_at("modality"),
        description="regime lnln: what each row's rate drops: modality (whole modalities, never all of a row) | "
                    "intra (each step of every present sequence modality, as LNLN masks tokens and frames; "
                    "embeddings and whole modalities untouched)")
    regression_loss: Literal["l1", "mse"] = Field("l1", description="task loss for regression")
    epochs: int = Field(30, ge=1, le=10_000, description="maximum epochs (early stopping may end sooner)")
    batch_size: int = Field(32, ge=1, le=65_536, description="utterances per optimiser step")
    lr: float = Field(1e-3, gt=0.0, le=1.0, description="AdamW learning rate")
    weight_decay: float = Field(1e-4, ge=0.0, description="AdamW weight decay")
    grad_clip: float = Field(1.0, ge=0.0, description="max gradient norm; 0 switches clipping off")
    patience: int = Field(8, ge=1, description="early stopping on the valid split")
    early_stop_on: EarlyStopOn = Field(
        "loss", description="valid-split score that picks best.pt: the task loss, or a metric key of the task")
    seed: int = Field(0, description="seeds the init, shuffling, missing masks and dropout of every epoch")
    device: Literal["auto", "cpu", "cuda"] = Field("auto", description="auto: CUDA when present, else CPU")
    amp: bool = Field(True, description="mixed precision on CUDA (bf16 where supported); ignored on CPU")
    resume: bool = Field(True, description="continue from last.pt when its config and data match")
    memmap_dir: str | None = Field(
        None, description="folder for disk-backed (memory-mapped) feature tensors, for tables larger than "
                          "RAM; null keeps them in memory. Results are the same either way")

    @field_validator("complete_share", "lnln_mask")
    @classmethod
    def _needs_lnln(cls, v, info: ValidationInfo):
        regime = info.data.get("regime", "lnln")          # absent: regime itself failed, and says so
        if v != cls.model_fields[info.field_name].default and regime != "lnln":
            raise ValueError(f"train.{info.field_name}={v} is read by train.regime lnln only (regime is "
                             f"{regime!r}); set train.regime: lnln or remove {info.field_name}")
        return v


class EvaluateConfig(Strict):
    protocol: Literal["modality", "subsets", "intra"] = Field(
        "modality", exclude_if=omitted_at("modality"),
        description="test conditions: modality (whole modalities missing at each test rate, plus the "
                    "single-modality patterns) | subsets (every non-empty subset of the enabled modalities "
                    "available on every row, MMIN / MoMKE: avail_t, avail_tv, ...) | intra (each step of every "
                    "present sequence modality zeroed with probability r at each test rate, TFR-Net / LNLN: "
                    "i0.0, i0.3, ...)")
    test_missing_rates: list[float] = Field(
        default_factory=lambda: [0.0, 0.1, 0.3, 0.5, 0.7],
        description="missing rates simulated at test time (one decimal: keys r0.0, r0.3, ...; protocol intra: "
                    "step-masking rates, keys i0.0, i0.3, ...)")
    patterns: bool = Field(True, description="also report each single-modality-missing pattern")
    mask_draws: int = Field(
        10, ge=1, le=1000,
        description="random masks drawn per missing rate; metrics are averaged over the draws")
    seed: int = Field(0, description="seeds the test masks (the same for every variant)")

    @field_validator("test_missing_rates")
    @classmethod
    def _rates(cls, v: list[float]) -> list[float]:
        bad = [r for r in v if not 0.0 <= r < 1.0]
        if bad:
            raise ValueError(f"missing rates must be in [0, 1); got {bad}")
        coarse = [r for r in v if abs(round(r, 1) - r) > 1e-9]
        if coarse:
            raise ValueError(f"rates are written with one decimal (r0.3); {coarse} would be misreported")
        if len(set(v)) != len(v):
            raise ValueError(f"a missing rate is listed twice: {v}")
        return v


class CompareConfig(Strict):
    variants: list[Variant] = Field(
        default_factory=lambda: ["trml", "zero_fill", "no_sml", "upper_bound"],
        description="models `trml compare` trains and evaluates on the same data and test masks (names as "
                    "train.variant); trml is compared with each of the others")
    model_code: str = Field(
        "trml", description="the folder (or file) of your own models' code, a DVC dependency of the train, "
                            "evaluate and compare stages (docs/models.md); trml: the built-in models only")
    seeds: list[int] = Field(
        default_factory=lambda: [0, 1, 2],
        description="train.seed of each training run: every variant is trained once per seed (a model already "
                    "trained with the same settings, data and seed is reused, the train stage's included)")
    bootstrap: int = Field(
        1000, ge=100, le=100_000,
        description="paired bootstrap resamples behind each 95% confidence interval of trml - baseline")

    @field_validator("variants")
    @classmethod
    def _has_trml(cls, v: list[str]) -> list[str]:
        if "trml" not in v:
            raise ValueError(f"must include trml, the model every other variant is compared with; got {v}")
        if len(set(v)) != len(v):
            raise ValueError(f"a variant is listed twice: {v}")
        return v

    @field_validator("seeds")
    @classmethod
    def _seeds(cls, v: list[int]) -> list[int]:
        if not v:
            raise ValueError("give at least one seed, e.g. [0, 1, 2]")
        if len(set(v)) != len(v):
            raise ValueError(f"a seed is listed twice: {v}")
        return v
