"""Small torch helpers shared by the CLIP extractors: device choice, autocast and embedding width."""
from __future__ import annotations

import contextlib


class DeviceUnavailableError(RuntimeError):
    """extract.device asks for a device that is not there; the message names the key and the fix."""


def resolve_device(setting: str) -> str:
    """'auto' -> 'cuda' when a GPU is visible, else 'cpu'. 'cuda' without a GPU is an error, not a fallback."""
    import torch

    if setting == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if setting == "cuda" and not torch.cuda.is_available():
        raise DeviceUnavailableError("extract.device is 'cuda' but torch sees no GPU (torch.cuda.is_available() "
                                     "is False); set extract.device to 'auto' or 'cpu' in params.yaml")
    if setting not in ("cpu", "cuda"):
        raise ValueError(f"extract.device must be auto, cpu or cuda, got {setting!r}")
    return setting


def autocast(device: str):
    """bf16 autocast on GPUs that support it (fp16 otherwise); full precision on the CPU."""
    import torch

    if device.startswith("cuda"):
        dtype = torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
        return torch.autocast("cuda", dtype=dtype)
    return contextlib.nullcontext()


def autocast_name(device: str) -> str | None:
    import torch

    if not device.startswith("cuda"):
        return None
    return "bfloat16" if torch.cuda.is_bf16_supported() else "float16"


def clip_embed_dim(model_name: str) -> int:
    import open_clip

    cfg = open_clip.get_model_config(model_name)
    if not cfg or "embed_dim" not in cfg:
        raise ValueError(f"open_clip has no config with embed_dim for {model_name!r}")
    return int(cfg["embed_dim"])
