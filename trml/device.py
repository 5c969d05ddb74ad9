"""Which device a run uses, and how it computes there: deterministic kernels on CPU, autocast on CUDA."""
from __future__ import annotations

import contextlib

import torch


class DeviceUnavailableError(RuntimeError):
    """train.device asks for a device that is not there; the message names the key and the fix."""


def pick_device(choice: str) -> torch.device:
    """train.device: 'auto' is CUDA when torch sees it, else the CPU; 'cuda' without CUDA is an error, not a fallback."""
    if choice == "cuda" and not torch.cuda.is_available():
        raise DeviceUnavailableError("train.device is 'cuda' but torch sees no CUDA device (torch.cuda.is_available() "
                                     "is False); set train.device to 'auto' or 'cpu' in params.yaml")
    if choice == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(choice)


@contextlib.contextmanager
def deterministic(device: torch.device):
    """Deterministic kernels on CPU for the duration of a run (restored afterwards)."""
    if device.type != "cpu":
        torch.backends.cudnn.benchmark = False
        yield
        return
    before = torch.are_deterministic_algorithms_enabled()
    torch.use_deterministic_algorithms(True)
    try:
        yield
    finally:
        torch.use_deterministic_algorithms(before)


def amp_dtype(device: torch.device, amp: bool) -> torch.dtype | None:
    """train.amp: bfloat16 (or float16 where bf16 is not supported) on CUDA; None (full precision) elsewhere."""
    if device.type != "cuda" or not amp:
        return None
    return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16


def autocast(device: torch.device, dtype: torch.dtype | None):
    return torch.autocast(device.type, dtype=dtype) if dtype is not None else contextlib.nullcontext()
