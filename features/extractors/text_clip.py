"""text_clip: the open_clip text encoder, one L2-normalised embedding per utterance."""
from __future__ import annotations

import numpy as np

from common.device import amp_dtype, autocast, dtype_name
from features.config import ExtractConfig
from features.extractors.base import Extractor, MediaItem, ModelInputs, split_by_text, versions
from features.extractors.torch_utils import clip_embed_dim
from features.store import FeatureRow, TableInfo
from features.weights import clip_source, load_clip


class TextClipExtractor(Extractor):
    feature_set = "text_clip"
    modality = "text"
    kind = "emb"
    extractor_version = "1"

    def __init__(self, cfg: ExtractConfig, device: str = "cpu"):
        super().__init__(device)
        self.clip_cfg, self.cfg = cfg.clip, cfg.text_clip
        self.weights = load_clip(cfg.clip.model, cfg.clip.pretrained, cfg.clip.seed, device)
        self.dim = clip_embed_dim(cfg.clip.model)

    @classmethod
    def weights_identity(cls, cfg: ExtractConfig) -> dict:
        return clip_source(cfg.clip.model, cfg.clip.pretrained, cfg.clip.seed).identity()

    def info(self) -> TableInfo:
        params = {"clip": self.clip_cfg.model_dump(mode="json"), **self.cfg.model_dump(mode="json"),
                  "normalize": "l2", "context_length": int(getattr(self.weights.tokenizer, "context_length", 0)),
                  "autocast": dtype_name(amp_dtype(self.device)),
                  "versions": versions("torch", "open_clip_torch")}
        return self._table_info(self.dim, self.weights.weights_id, self.weights.sha256, None, params)

    def extract(self, items: list[MediaItem]) -> list[FeatureRow]:
        import torch

        rows, todo = split_by_text(items)
        model = self.weights.model
        for start in range(0, len(todo), self.cfg.batch_size):
            idx = todo[start:start + self.cfg.batch_size]
            # The tokenizer truncates to the context length (77 for CLIP); non-ASCII is byte-level BPE.
            tokens = self.weights.tokenizer([items[i].text.strip() for i in idx]).to(self.device)
            with torch.inference_mode(), autocast(self.device, amp_dtype(self.device)):
                emb = model.encode_text(tokens)
            emb = torch.nn.functional.normalize(emb.float(), dim=-1).cpu().numpy().astype(np.float32)
            for j, i in enumerate(idx):
                rows[i] = FeatureRow(utterance_id=items[i].utterance_id, emb=emb[j])
        return rows

    def model_inputs(self, items: list[MediaItem]) -> ModelInputs:
        _, todo = split_by_text(items)
        texts = [items[i].text.strip() for i in todo]
        bs = self.cfg.batch_size
        batches = [self.weights.tokenizer(texts[s:s + bs]).to(self.device) for s in range(0, len(texts), bs)]
        return ModelInputs(batches, len(texts), len(texts))

    def bare_forward(self, inputs: ModelInputs) -> None:
        import torch

        with torch.inference_mode(), autocast(self.device, amp_dtype(self.device)):
            for tokens in inputs.data:
                self.weights.model.encode_text(tokens)
