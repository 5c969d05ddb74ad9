"""Feature extractors: one interface, five feature sets.

    ext = build_extractor("vision_clip", params.extract, device=resolve_device(params.extract.device))
    rows = ext.extract([MediaItem(uid, path, text), ...])   # one FeatureRow per item, same order
    table = rows_to_table(rows, ext.info())                 # features.store
    key = ext.config_fingerprint()                          # changes with version, params or weights

Modules are imported on demand, so building one feature set doesn't import the others' libraries.
"""
from __future__ import annotations

import importlib

from features.config import FEATURE_SETS, ExtractConfig
from features.extractors.base import Extractor, MediaItem
from features.extractors.torch_utils import resolve_device

_CLASSES = {
    "text_clip": ("features.extractors.text_clip", "TextClipExtractor"),
    "text_minilm": ("features.extractors.text_minilm", "TextMiniLMExtractor"),
    "vision_clip": ("features.extractors.vision_clip", "VisionClipExtractor"),
    "audio_librosa": ("features.extractors.audio_librosa", "AudioLibrosaExtractor"),
    "face_mediapipe": ("features.extractors.face_mediapipe", "FaceMediapipeExtractor"),
}
assert set(_CLASSES) == set(FEATURE_SETS), "every feature set in features.config needs an extractor"


def extractor_class(feature_set: str) -> type[Extractor]:
    if feature_set not in _CLASSES:
        raise ValueError(f"unknown feature set {feature_set!r}; known: {list(_CLASSES)}")
    module, name = _CLASSES[feature_set]
    return getattr(importlib.import_module(module), name)


def build_extractor(feature_set: str, extract_cfg: ExtractConfig, device: str = "cpu") -> Extractor:
    """The extractor for `feature_set`, with its weights loaded (CLIP is loaded once and shared)."""
    return extractor_class(feature_set)(extract_cfg, device)


__all__ = ["Extractor", "MediaItem", "build_extractor", "extractor_class", "resolve_device"]
