"""Feature extractors: one interface, one module per feature set (features/config.py FEATURE_SET_SPECS).

    ext = build_extractor("vision_clip", params.extract, device=resolve_device(params.extract.device, "extract.device"))
    rows = ext.extract([MediaItem(uid, path, text), ...])   # one FeatureRow per item, same order
    table = rows_to_table(rows, ext.info())                 # features.store
    key = ext.config_fingerprint()                          # changes with version, params or weights

A feature set's extractor is the class FEATURE_SET_SPECS names, in features/extractors/<feature set>.py
(the module dvc.yaml's extract stage depends on). Modules are imported on demand, so building one
feature set doesn't import the others' libraries.
"""
from __future__ import annotations

import importlib

from common.errors import UserError
from features.config import FEATURE_SET_SPECS, FEATURE_SETS, ExtractConfig
from features.extractors.base import Extractor, MediaItem


def extractor_module(feature_set: str) -> str:
    return f"{__name__}.{feature_set}"


def extractor_class(feature_set: str) -> type[Extractor]:
    if feature_set not in FEATURE_SET_SPECS:
        raise UserError(f"unknown feature set {feature_set!r}; choose from {list(FEATURE_SETS)}")
    return getattr(importlib.import_module(extractor_module(feature_set)), FEATURE_SET_SPECS[feature_set].extractor)


def build_extractor(feature_set: str, extract_cfg: ExtractConfig, device: str = "cpu") -> Extractor:
    """The extractor for `feature_set`, with its weights loaded (CLIP is loaded once and shared)."""
    return extractor_class(feature_set)(extract_cfg, device)


__all__ = ["Extractor", "MediaItem", "build_extractor", "extractor_class", "extractor_module"]
