"""Typed configuration of the model side of params.yaml: model, train, evaluate, compare.

The paper (arXiv 2401.13697) leaves most choices open; each one is a key here, documented
in params.yaml with the paper's wording where there is one.
"""
from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


Variant = Literal["trml", "zero_fill", "no_sml", "upper_bound"]


class ModalitiesConfig(Strict):
    """Which feature set feeds each modality; null switches the modality off."""
    text: str | None = "text_minilm"
    vision: str | None = "vision_clip"
    audio: str | None = "audio_librosa"
    face: str | None = "face_mediapipe"


class ModelConfig(Strict):
    modalities: ModalitiesConfig = ModalitiesConfig()
    hidden: int = Field(128, ge=8, le=4096)
    rnn: Literal["gru", "lstm"] = "gru"
    rnn_layers: int = Field(1, ge=1, le=8)
    dropout: float = Field(0.1, ge=0.0, lt=1.0)


class TrainConfig(Strict):
    variant: Variant = "trml"
    alpha: float = Field(0.1, ge=0.0, description="weight of L_sml in L = L_task + alpha * L_sml")
    tau: float = Field(0.07, gt=0.0, le=10.0, description="SML temperature")
    missing_rate: float = Field(0.3, ge=0.0, lt=1.0, description="simulated modality-missing rate in training")
    epochs: int = Field(30, ge=1, le=10_000)
    batch_size: int = Field(32, ge=1, le=65_536)
    lr: float = Field(1e-3, gt=0.0, le=1.0)
    weight_decay: float = Field(1e-4, ge=0.0)
    patience: int = Field(8, ge=1, description="early stopping on the valid split")
    seed: int = 0
    device: Literal["auto", "cpu", "cuda"] = "auto"


class EvaluateConfig(Strict):
    test_missing_rates: list[float] = Field(default_factory=lambda: [0.0, 0.1, 0.3, 0.5, 0.7])
    patterns: bool = Field(True, description="also report each single-modality-missing pattern")
    seed: int = 0


class CompareConfig(Strict):
    variants: list[Variant] = Field(default_factory=lambda: ["trml", "zero_fill", "no_sml", "upper_bound"])
