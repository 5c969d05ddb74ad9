"""vision_clip: n frames sampled uniformly per clip, through the CLIP image encoder, batched across clips.

Decoding runs in threads ahead of the model (base.prefetch), so the forward pass of one batch overlaps
the decoding of the next clips. Frames are resized to CLIP's input size inside the single YUV->RGB
conversion (swscale, bicubic) and centre-cropped in the threads; each batch is normalised as one tensor
just before the forward pass (on the GPU when there is one). These are the steps of open_clip's
inference transform, without a PIL round trip per frame.
"""
from __future__ import annotations

import math
from collections import deque
from pathlib import Path

import numpy as np

from common.device import amp_dtype, autocast, dtype_name
from features.config import ExtractConfig
from features.extractors.base import Extractor, MediaItem, ModelInputs, guarded, versions
from features.extractors.decoding import prefetch
from features.extractors.torch_utils import clip_embed_dim
from features.media import read_frames
from features.store import FeatureRow, TableInfo
from features.weights import clip_source, load_clip


class VisionClipExtractor(Extractor):
    feature_set = "vision_clip"
    modality = "vision"
    kind = "seq"
    extractor_version = "1"

    def __init__(self, cfg: ExtractConfig, device: str = "cpu"):
        super().__init__(device)
        import torch

        self.clip_cfg, self.cfg = cfg.clip, cfg.vision_clip
        self.decode_workers = cfg.decode_workers
        self.weights = load_clip(cfg.clip.model, cfg.clip.pretrained, cfg.clip.seed, device)
        self.dim = clip_embed_dim(cfg.clip.model)
        pp = dict(self.weights.model.visual.preprocess_cfg)
        size = pp["size"]
        self.size = (size, size) if isinstance(size, int) else tuple(size)
        self.resize_mode = pp.get("resize_mode", "shortest")
        self.preprocess_cfg = {k: (list(v) if isinstance(v, tuple) else v) for k, v in pp.items()}
        self.mean = torch.tensor(pp["mean"], dtype=torch.float32).view(1, 3, 1, 1)
        self.std = torch.tensor(pp["std"], dtype=torch.float32).view(1, 3, 1, 1)

    @classmethod
    def weights_identity(cls, cfg: ExtractConfig) -> dict:
        return clip_source(cfg.clip.model, cfg.clip.pretrained, cfg.clip.seed).identity()

    def info(self) -> TableInfo:
        # The count mode's record is what it was before rate sampling existed: default tables keep their bytes.
        params = {"clip": self.clip_cfg.model_dump(mode="json"),
                  **self.cfg.model_dump(mode="json", exclude={"n_frames", "fps", "max_frames"}),
                  **self.cfg.sampling_params(), "normalize": "l2", "sampling": self.cfg.sampling_record(),
                  "preprocess": {**self.preprocess_cfg, "resize": "swscale bicubic, shortest side"
                                 if self.fast_path else "open_clip PIL transform"},
                  "autocast": dtype_name(amp_dtype(self.device)),
                  "versions": versions("torch", "open_clip_torch", "av")}
        return self._table_info(self.dim, self.weights.weights_id, self.weights.sha256, None, params)

    @property
    def fast_path(self) -> bool:
        return self.resize_mode == "shortest" and self.size[0] == self.size[1]

    # -- decoding and cropping (runs in the prefetch threads)

    def decode(self, path: Path) -> tuple[np.ndarray, np.ndarray, list[str]]:
        """(model input pixels, frame times, notes); the decoded frames themselves are dropped here."""
        sample = read_frames(path, self.cfg.n_frames, short_side=self.size[0] if self.fast_path else None,
                             fps=self.cfg.fps, max_frames=self.cfg.max_frames)
        return self.crop(sample.frames), sample.times, sample.notes

    def crop(self, frames: np.ndarray):
        """The model's input pixels: uint8 (n, S, S, 3) on the fast path (normalised later, per batch,
        on the device), else open_clip's PIL transform per frame (float tensors, already normalised)."""
        if not self.fast_path:
            import torch
            from PIL import Image
            return torch.stack([self.weights.preprocess(Image.fromarray(f)) for f in frames])
        s = self.size[0]
        h, w = frames.shape[1:3]
        if (h, w) != (s, s):     # centre crop, rounding like torchvision's CenterCrop
            top, left = int(round((h - s) / 2.0)), int(round((w - s) / 2.0))
            frames = frames[:, top:top + s, left:left + s]
        return np.ascontiguousarray(frames)

    def to_model_input(self, frames: np.ndarray):
        """RGB uint8 (n, H, W, 3) with H, W >= S -> normalised float (n, 3, S, S), as open_clip's transform."""
        return self.normalize(self.as_tensor(self.crop(frames)))

    @staticmethod
    def as_tensor(x):
        import torch
        return x if isinstance(x, torch.Tensor) else torch.from_numpy(x)

    def normalize(self, batch):
        """uint8 (n, S, S, 3) -> float (n, 3, S, S) with CLIP's mean and std; float input passes through."""
        import torch

        if batch.dtype != torch.uint8:
            return batch
        x = batch.permute(0, 3, 1, 2).float().div_(255.0)
        return x.sub_(self.mean.to(x.device)).div_(self.std.to(x.device))

    # -- the model (main thread)

    def forward(self, batch):
        """L2-normalised image embeddings (float32 numpy) of a batch of crops or preprocessed tensors.

        On a GPU the batch travels as pinned uint8 (4x fewer bytes than float) and is normalised there.
        """
        import torch

        batch = self.as_tensor(batch)
        if self.device.startswith("cuda") and batch.device.type == "cpu":
            batch = batch.pin_memory().to(self.device, non_blocking=True)
        with torch.inference_mode():
            x = self.normalize(batch)
            with autocast(self.device, amp_dtype(self.device)):
                emb = self.weights.model.encode_image(x)
        return torch.nn.functional.normalize(emb.float(), dim=-1).cpu().numpy()

    def model_inputs(self, items: list[MediaItem]) -> ModelInputs:
        """Every ok item's frames, fully preprocessed (normalised float on the device), in one tensor."""
        import torch

        decoded = self.decoded(items)
        if not decoded:
            return ModelInputs(None, 0, 0)
        frames = self.normalize(torch.cat([self.as_tensor(x) for x, _, _ in decoded]).to(self.device))
        return ModelInputs(frames, len(decoded), int(frames.shape[0]))

    def bare_forward(self, inputs: ModelInputs) -> None:
        bs = self.cfg.batch_size
        for start in range(0, inputs.frames, bs):
            self.forward(inputs.data[start:start + bs])

    def extract(self, items: list[MediaItem]) -> list[FeatureRow]:
        bs = self.cfg.batch_size
        n = self.cfg.n_frames if self.cfg.fps is None else 50      # frames per clip, to size the look-ahead
        rows: list[FeatureRow | None] = [None] * len(items)
        meta: dict[int, tuple[np.ndarray, list[str]]] = {}     # row index -> (frame times, notes)
        embedded: dict[int, list[np.ndarray]] = {}
        queue: deque[tuple[int, np.ndarray]] = deque()       # (row index, frames not yet embedded)
        queued = 0

        def run_batch(limit: int) -> None:
            nonlocal queued
            take, parts, owners = limit, [], []     # parts: uint8 crops (or float tensors off the fast path)
            while take > 0 and queue:
                i, x = queue[0]
                part, rest = x[:take], x[take:]
                parts.append(part)
                owners.append((i, part.shape[0]))
                take -= part.shape[0]
                if rest.shape[0]:
                    queue[0] = (i, rest)
                else:
                    queue.popleft()
            emb = self.forward(concat(parts))
            queued -= emb.shape[0]
            pos = 0
            for i, k in owners:
                embedded[i].append(emb[pos:pos + k])
                pos += k
                if sum(e.shape[0] for e in embedded[i]) == meta[i][0].size:
                    times, notes = meta.pop(i)
                    rows[i] = FeatureRow(utterance_id=items[i].utterance_id, seq=np.concatenate(embedded.pop(i)),
                                         t=times, detail="; ".join(notes) or None)

        lookahead = self.decode_workers + math.ceil(2 * bs / n)   # two batches of frames in flight
        for i, result in prefetch(lambda it: guarded(it, self.decode), items, self.decode_workers, lookahead):
            if isinstance(result, FeatureRow):
                rows[i] = result
                continue
            x, times, notes = result
            meta[i], embedded[i] = (times, notes), []
            queue.append((i, x))
            queued += x.shape[0]
            while queued >= bs:
                run_batch(bs)
        while queued > 0:
            run_batch(bs)
        return rows


def concat(parts: list):
    """One batch from per-clip pieces (numpy uint8 crops or torch tensors), copying only when needed."""
    if len(parts) == 1:
        return parts[0]
    if isinstance(parts[0], np.ndarray):
        return np.concatenate(parts)
    import torch
    return torch.cat(parts)
