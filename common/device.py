"""The device rules of extraction and training: which device a run uses, and how it computes there.

'auto' is CUDA when torch sees it, else the CPU; 'cuda' without CUDA is an error naming the key, never a
fallback. Autocast is bfloat16 on CUDA (float16 where bf16 is not supported), full precision elsewhere.
torch is imported inside each function, so that importing this module costs nothing.
"""
from __future__ import annotations

import contextlib

from common.errors import UserError

DEVICES = ("auto", "cpu", "cuda")


class DeviceUnavailableError(UserError):
    """A device setting asks for a device that is not there; the message names the key and the fix."""


def resolve_device(setting: str, key: str) -> str:
    """'cpu' or 'cuda' for the setting of params key `key` (extract.device, train.device)."""
    import torch

    if setting not in DEVICES:
        raise DeviceUnavailableError(f"{key} must be one of {', '.join(DEVICES)}, got {setting!r}")
    if setting == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if setting == "cuda" and not torch.cuda.is_available():
        raise DeviceUnavailableError(f"{key} is 'cuda' but torch sees no CUDA device (torch.cuda.is_available() "
                                     f"is False); set {key} to 'auto' or 'cpu' in params.yaml")
    return setting


def amp_dtype(device, enabled: bool = True):
    """The autocast dtype on `device` (a name or a torch.device), or None for full precision."""
    import torch

    if not enabled or not str(device).startswith("cuda"):
        return None
    return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16


def autocast(device, dtype):
    """torch.autocast with `dtype` on `device`, or nothing when dtype is None (see amp_dtype)."""
    if dtype is None:
        return contextlib.nullcontext()
    import torch

    return torch.autocast(str(device).split(":")[0], dtype=dtype)


def dtype_name(dtype) -> str | None:
    """'bfloat16', 'float16' or None: how a table or checkpoint records the precision it was made in."""
    return None if dtype is None else str(dtype).removeprefix("torch.")


@contextlib.contextmanager
def deterministic(device):
    """Deterministic kernels on CPU for the duration of a run (restored afterwards)."""
    import torch

    if not str(device).startswith("cpu"):
        torch.backends.cudnn.benchmark = False
        yield
        return
    before = torch.are_deterministic_algorithms_enabled()
    torch.use_deterministic_algorithms(True)
    try:
        yield
    finally:
        torch.use_deterministic_algorithms(before)
