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


CODE_SCALE = 2.0 ** -16


def zeroed_steps_code(batch: dict, names: list[str]) -> torch.Tensor:
    """(B,) sum over sequence modalities m (m-th in `names`) of 100**m * sum of (t + 1) over the all-zero steps
    t < length, times CODE_SCALE: which steps were zeroed, as one exact float32 number while each modality's sum
    stays under 100 (sequences of at most 13 steps, as the fixture's test rows; its features are never exactly
    zero). The scale, a power of two, keeps it exact and of the labels' size, so the statistics stay tame."""
    code = None
    for m, name in enumerate(names):
        x, lengths = batch[name]
        if lengths is None:
            continue
        steps = torch.arange(x.shape[1], device=x.device)
        zero = (x == 0).all(-1) & (steps.unsqueeze(0) < lengths.unsqueeze(1))
        term = (zero.float() * (steps + 1).float()).sum(1) * 100.0 ** m
        code = term if code is None else code + term
    return code * CODE_SCALE if code is not None else torch.zeros(len(next(iter(batch.values()))[0]))


class StepEcho(MaskEcho):
    """Predicts which steps of its (sanitised) input are zeros (zeroed_steps_code), and keeps every batch and
    mask it is given, in order, with whether it was training: what a model really sees when steps are masked
    (evaluate.protocol intra, train.lnln_mask intra)."""
    seen: list[dict] = []

    def __init__(self, model_cfg, inputs, n_outputs):
        super().__init__(model_cfg, inputs, n_outputs)
        self.names = [s.name for s in inputs]

    def forward(self, batch, mask):
        from trml.model import Output
        StepEcho.seen.append({"training": self.training, "mask": mask.detach().cpu().clone(),
                              "batch": {k: (x.detach().clone(), n if n is None else n.detach().clone())
                                        for k, (x, n) in batch.items()}})
        return Output(pred=zeroed_steps_code(batch, self.names) + 0.0 * self.weight)


class StepEchoAgain(StepEcho):
    """A second variant name, so that step masks drawn per variant would show."""
