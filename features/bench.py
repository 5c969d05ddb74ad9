"""Extraction benchmark: end-to-end `extract()` against the bare model on the same inputs, in one run.

For one feature set and a list of items, this times
  (a) `extractor.extract(items)`: decoding, preprocessing, the model, result assembly;
  (b) the bare computation on the same already-decoded inputs:
      vision_clip     CLIP `encode_image` on the preprocessed frame tensors, same batches;
      face_mediapipe  `landmarker.detect` on the same frames (mp.Image objects built beforehand);
      audio_librosa   `audio_features` on the same decoded audio arrays;
      text_clip       CLIP `encode_text` on the same token batches;
      text_minilm     the sentence-transformers forward on the same tokenised batches;
and reports clips/s, frames/s and the ratio (a)/(b). A ratio near 1 means decoding and I/O are hidden
behind (or negligible next to) the model. The two sides alternate chunk by chunk (a shard's worth of
items), `repeats` times, and each chunk keeps its fastest run: on a shared machine, load that comes
and goes then hits both sides alike.
"""
from __future__ import annotations

import time
from dataclasses import asdict, dataclass, field
from typing import Callable

import numpy as np

from features.config import ExtractConfig
from features.extractors import Extractor, MediaItem, build_extractor
from features.extractors.base import guarded, split_by_text
from features.store import FeatureRow

# Targets from issue 3: end-to-end at most this many times the bare model on the same inputs.
TARGET_RATIO = {"vision_clip": 1.3, "face_mediapipe": 1.3, "audio_librosa": 1.3}


@dataclass
class BenchResult:
    feature_set: str
    device: str
    clips: int                  # items given
    ok_clips: int               # items that reached the model
    frames: int                 # model inputs: sampled frames, audio hop frames, or texts
    end_to_end_s: float
    bare_s: float
    repeats: int
    end_to_end_runs_s: list[float] = field(default_factory=list)
    bare_runs_s: list[float] = field(default_factory=list)

    @property
    def clips_per_s(self) -> float:
        return self.clips / self.end_to_end_s if self.end_to_end_s else float("inf")

    @property
    def frames_per_s(self) -> float:
        return self.frames / self.end_to_end_s if self.end_to_end_s else float("inf")

    @property
    def bare_frames_per_s(self) -> float:
        return self.frames / self.bare_s if self.bare_s else float("inf")

    @property
    def ratio(self) -> float:
        """End-to-end time over bare model time on the same inputs (1.0 = no overhead)."""
        return self.end_to_end_s / self.bare_s if self.bare_s else float("inf")

    @property
    def target(self) -> float | None:
        return TARGET_RATIO.get(self.feature_set)

    @property
    def meets_target(self) -> bool | None:
        return None if self.target is None else self.ratio <= self.target

    def to_dict(self) -> dict:
        out = asdict(self)
        out.update(clips_per_s=self.clips_per_s, frames_per_s=self.frames_per_s,
                   bare_frames_per_s=self.bare_frames_per_s, ratio=self.ratio, target=self.target,
                   meets_target=self.meets_target)
        return out


def _decode_ok(extractor: Extractor, items: list[MediaItem]) -> list:
    """Each item's decoded media (what the extractor's threads produce), skipping bad media."""
    out = []
    for item in items:
        result = guarded(item, extractor.decode)
        if not isinstance(result, FeatureRow):
            out.append(result)
    return out


def bare_runner(extractor: Extractor, items: list[MediaItem]) -> tuple[Callable[[], None], int, int]:
    """(a function running the bare computation on pre-decoded inputs, ok items, model inputs)."""
    fs = extractor.feature_set
    if fs == "vision_clip":
        import torch

        decoded = _decode_ok(extractor, items)
        if not decoded:
            return (lambda: None), 0, 0
        # The model's input, fully preprocessed (normalised float): only the forward pass is timed.
        frames = extractor.normalize(torch.cat([extractor.as_tensor(x) for x, _, _ in decoded]).to(extractor.device))
        bs = extractor.cfg.batch_size

        def run():
            for start in range(0, frames.shape[0], bs):
                extractor.forward(frames[start:start + bs])
        return run, len(decoded), int(frames.shape[0])

    if fs == "face_mediapipe":
        import mediapipe as mp

        decoded = _decode_ok(extractor, items)
        images = [mp.Image(image_format=mp.ImageFormat.SRGB, data=np.ascontiguousarray(f))
                  for sample in decoded for f in sample.frames]

        def run():
            with extractor.landmarker() as lm:
                for image in images:
                    lm.detect(image)
        return run, len(decoded), len(images)

    if fs == "audio_librosa":
        from features.extractors.audio_librosa import audio_features

        clips = [c for c in _decode_ok(extractor, items) if c.samples.size >= extractor.cfg.n_fft]
        n_frames = sum(1 + c.samples.size // extractor.cfg.hop_length for c in clips)

        def run():
            for clip in clips:
                audio_features(clip.samples, extractor.cfg)
        return run, len(clips), n_frames

    texts = [items[i].text.strip() for i in split_by_text(items)[1]]
    if fs == "text_clip":
        import torch

        from features.extractors.torch_utils import autocast

        bs = extractor.cfg.batch_size
        batches = [extractor.weights.tokenizer(texts[s:s + bs]).to(extractor.device)
                   for s in range(0, len(texts), bs)]

        def run():
            with torch.inference_mode(), autocast(extractor.device):
                for tokens in batches:
                    extractor.weights.model.encode_text(tokens)
        return run, len(texts), len(texts)

    if fs == "text_minilm":
        import torch

        model, bs = extractor.model, extractor.cfg.batch_size
        tokenize = getattr(model, "preprocess", None) or model.tokenize   # `tokenize` is deprecated in 6.x
        batches = []
        for s in range(0, len(texts), bs):
            features = tokenize(texts[s:s + bs])
            # Besides tensors, the tokenizer output may carry plain entries (e.g. which keys held text).
            batches.append({k: v.to(extractor.device) if hasattr(v, "to") else v for k, v in features.items()})

        def run():
            with torch.inference_mode():
                for features in batches:
                    model(features)
        return run, len(texts), len(texts)

    raise ValueError(f"no bare benchmark for feature set {fs!r}")


def bench_extractor(extractor: Extractor, items: list[MediaItem], repeats: int = 3, chunk_size: int = 16,
                    warmup_items: int = 4) -> BenchResult:
    """Time extractor.extract against the bare computation on the same inputs, chunk by chunk.

    Items are taken in chunks of `chunk_size` (use extract.shard_size: the flow calls extract once per
    shard, so per-call start-up counts). Each chunk is timed end-to-end and then bare, back to back, so
    both see the same load on a shared machine; each chunk keeps its fastest of `repeats` runs.
    """
    if not items:
        raise ValueError("bench needs at least one item")
    extractor.extract(items[:warmup_items])        # lazy init, numba compiles, decoder processes, allocator
    chunks = [items[i:i + chunk_size] for i in range(0, len(items), max(1, chunk_size))]
    bares = [bare_runner(extractor, chunk) for chunk in chunks]
    bares[0][0]()                                  # warm the bare path the same way
    e2e = [[] for _ in chunks]
    bare = [[] for _ in chunks]
    for _ in range(max(1, repeats)):
        for c, chunk in enumerate(chunks):
            started = time.perf_counter()
            extractor.extract(chunk)
            e2e[c].append(time.perf_counter() - started)
            started = time.perf_counter()
            bares[c][0]()
            bare[c].append(time.perf_counter() - started)
    e2e_runs = [sum(run[r] for run in e2e) for r in range(len(e2e[0]))]
    bare_runs = [sum(run[r] for run in bare) for r in range(len(bare[0]))]
    return BenchResult(feature_set=extractor.feature_set, device=extractor.device, clips=len(items),
                       ok_clips=sum(b[1] for b in bares), frames=sum(b[2] for b in bares),
                       end_to_end_s=sum(min(x) for x in e2e), bare_s=sum(min(x) for x in bare),
                       repeats=max(1, repeats), end_to_end_runs_s=e2e_runs, bare_runs_s=bare_runs)


def bench_feature_set(feature_set: str, items: list[MediaItem], extract_cfg: ExtractConfig,
                      device: str = "cpu", repeats: int = 3) -> BenchResult:
    """Build the extractor (not timed) and benchmark it on `items`, in chunks of extract.shard_size."""
    extractor = build_extractor(feature_set, extract_cfg, device=device)
    try:
        return bench_extractor(extractor, items, repeats=repeats, chunk_size=extract_cfg.shard_size)
    finally:
        extractor.close()


def format_result(r: BenchResult) -> str:
    target = f" (target <= {r.target})" if r.target else ""
    verdict = "" if r.meets_target is None else (" ok" if r.meets_target else " MISSED")
    return (f"{r.feature_set:15s} {r.clips:5d} clips {r.frames:7d} frames  "
            f"{r.clips_per_s:8.2f} clips/s {r.frames_per_s:9.1f} frames/s  "
            f"end-to-end {r.end_to_end_s:7.2f} s  bare {r.bare_s:7.2f} s  ratio {r.ratio:5.2f}{target}{verdict}")
