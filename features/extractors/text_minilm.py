"""text_minilm: all-MiniLM-L6-v2 sentence embeddings (mean pooling, L2-normalised, 384-d)."""
from __future__ import annotations

import numpy as np

from features.config import ExtractConfig
from features.extractors.base import Extractor, MediaItem, ModelInputs, split_by_text, versions
from features.store import FeatureRow, TableInfo
from features.weights import minilm_weights


class TextMiniLMExtractor(Extractor):
    feature_set = "text_minilm"
    modality = "text"
    kind = "emb"
    extractor_version = "1"

    def __init__(self, cfg: ExtractConfig, device: str = "cpu"):
        super().__init__(device)
        from sentence_transformers import SentenceTransformer

        self.cfg = cfg.text_minilm
        self.weights = minilm_weights(self.cfg.model_path)
        # The folder's modules.json defines the pipeline: BERT, mean pooling, L2 normalisation.
        self.model = SentenceTransformer(str(self.weights.path), device=device, local_files_only=True)
        self.model.eval()
        dim_of = getattr(self.model, "get_embedding_dimension", None) or self.model.get_sentence_embedding_dimension
        self.dim = int(dim_of())

    @classmethod
    def weights_identity(cls, cfg: ExtractConfig) -> dict:
        weights = minilm_weights(cfg.text_minilm.model_path)
        return {"weights_id": weights.weights_id, "sha256": weights.sha256, "path": str(weights.path)}

    def info(self) -> TableInfo:
        params = {**self.cfg.model_dump(mode="json"), "pooling": "mean", "normalize": "l2",
                  "max_seq_length": int(self.model.max_seq_length),
                  "versions": versions("torch", "transformers", "sentence-transformers")}
        return self._table_info(self.dim, self.weights.weights_id, self.weights.sha256, None, params)

    def extract(self, items: list[MediaItem]) -> list[FeatureRow]:
        rows, todo = split_by_text(items)
        if todo:
            emb = self.model.encode([items[i].text.strip() for i in todo], batch_size=self.cfg.batch_size,
                                    convert_to_numpy=True, show_progress_bar=False)
            emb = np.asarray(emb, dtype=np.float32)
            for j, i in enumerate(todo):
                rows[i] = FeatureRow(utterance_id=items[i].utterance_id, emb=emb[j])
        return rows

    def model_inputs(self, items: list[MediaItem]) -> ModelInputs:
        """Token batches as `encode` builds them: longest text first, `batch_size` at a time."""
        _, todo = split_by_text(items)
        texts = [items[i].text.strip() for i in todo]
        texts = [texts[i] for i in np.argsort([-len(t) for t in texts])]
        tokenize = getattr(self.model, "preprocess", None) or self.model.tokenize  # `tokenize`: deprecated in 6.x
        batches = []
        for start in range(0, len(texts), self.cfg.batch_size):
            features = tokenize(texts[start:start + self.cfg.batch_size])
            # Besides tensors, the tokenizer output may carry plain entries (e.g. which keys held text).
            batches.append({k: v.to(self.device) if hasattr(v, "to") else v for k, v in features.items()})
        return ModelInputs(batches, len(texts), len(texts))

    def bare_forward(self, inputs: ModelInputs) -> None:
        import torch

        with torch.inference_mode():
            for features in inputs.data:
                self.model(features)
