"""What the CLIP extractors share beyond the device rules (those are common/device.py): the embedding width."""
from __future__ import annotations


def clip_embed_dim(model_name: str) -> int:
    import open_clip

    cfg = open_clip.get_model_config(model_name)
    if not cfg or "embed_dim" not in cfg:
        raise ValueError(f"open_clip has no config with embed_dim for {model_name!r}")
    return int(cfg["embed_dim"])
