"""A test model that predicts its own mask: pred = sum_k mask_k * 2**k, so that predictions.parquet shows
which modalities each (variant, seed) was given under each condition. Registered by import path
("tests.mask_echo:MaskEcho"), the documented route for a model from outside trml/."""
from __future__ import annotations

import torch
import torch.nn as nn


class MaskEcho(nn.Module):
    def __init__(self, model_cfg, inputs, n_outputs):
        super().__init__()
        self.weight = nn.Parameter(torch.zeros(1))      # something for the optimiser; it never moves the output
        self.register_buffer("place", 2.0 ** torch.arange(len(inputs), dtype=torch.float32), persistent=False)

    def forward(self, batch, mask):
        from trml.model import Output
        return Output(pred=(mask.float() * self.place).sum(1) + 0.0 * self.weight)


class MaskEchoAgain(MaskEcho):
    """A second variant name, so that masks drawn per variant would show as well as masks drawn per seed."""


def decode(pred: float, k: int) -> list[bool]:
    """The mask a MaskEcho prediction encodes."""
    value = int(round(pred))
    return [bool(value >> j & 1) for j in range(k)]


class MaskRecorder(MaskEcho):
    """MaskEcho that also keeps every mask it is given in training (model.train()), in order: the masks a
    training regime really drew, batch after batch, epoch after epoch."""
    seen: list[torch.Tensor] = []

    def forward(self, batch, mask):
        if self.training:
            MaskRecorder.seen.append(mask.detach().cpu().clone())
        return super().forward(batch, mask)
