"""The field's baselines, in the same harness as TRML (trml/registry.py: construction, forward, masks).

    name     paper                                        here
    lf_dnn   late fusion DNN (Williams et al., ACL 2018   one subnet per modality (an MLP on the embedding or on the
             workshop "Recognizing emotions in video      time-averaged sequence, as MMSA's LF_DNN), their outputs
             using multimodal DNN feature fusion"; MMSA   concatenated at the end -> a post-fusion MLP
             LF_DNN)
    tfn      Tensor Fusion Network (Zadeh et al.,         subnets as lf_dnn, each output of width TFN_DIM with a 1
             EMNLP 2017)                                  appended; their outer product over all modalities,
                                                          flattened -> a post-fusion MLP
    mult     Multimodal Transformer (Tsai et al.,         each modality projected to MULT_DIM (a kernel-1 Conv1d)
             ACL 2019)                                    with sinusoidal positions; for each target modality a
                                                          cross-modal transformer from every other source (queries
                                                          from the target, keys and values from the source) over
                                                          the unaligned sequences, then a self-attention
                                                          transformer over their concatenation; the last valid
                                                          step of each target, concatenated -> an MLP

Missing modalities: none of the three papers handles them, so all three use the zero-fill convention: a
missing modality's input is zeros (length 1 for a sequence), as the harness's sanitize() gives every
model, and the network runs on it as it is (the same as TRML's zero_fill variant). An embedding (the
text vector) is a sequence of length 1 for MulT.

Where this differs from the papers: sizes are smaller than the papers' (TFN used 32/32/128-wide subnets for
three modalities; with four here the outer product would be 4.5 million wide, so TFN_DIM = 8 gives
6,561); MulT has MULT_LAYERS = 2 layers and MULT_HEADS = 4 heads (the paper: 4-5 layers, 8-10 heads) and
no attention or embedding dropout schedule beyond model.dropout. These are class constants on purpose:
the baselines' settings are part of their code, tracked by DVC with trml/.
"""
from __future__ import annotations

import math

import torch
import torch.nn as nn

from trml.config import ModelConfig
from trml.model import InputSpec, Output


def _mean_over_time(x: torch.Tensor, lengths: torch.Tensor | None) -> torch.Tensor:
    """(B, d) for an embedding; the mean of the valid steps of a sequence (padding is zeros)."""
    if lengths is None:
        return x
    return x.sum(1) / lengths.clamp(min=1).unsqueeze(-1).to(x.dtype)


def _subnet(dim: int, out: int, dropout: float) -> nn.Sequential:
    """MMSA's SubNet: normalise, then three linear layers."""
    return nn.Sequential(nn.LayerNorm(dim), nn.Dropout(dropout), nn.Linear(dim, out), nn.ReLU(),
                         nn.Linear(out, out), nn.ReLU(), nn.Linear(out, out), nn.ReLU())


def _head(width: int, hidden: int, n_outputs: int, dropout: float) -> nn.Sequential:
    return nn.Sequential(nn.Dropout(dropout), nn.Linear(width, hidden), nn.ReLU(), nn.Linear(hidden, n_outputs))


def _output(pred: torch.Tensor, n_outputs: int, mask: torch.Tensor) -> Output:
    return Output(pred=pred.squeeze(-1) if n_outputs == 1 else pred, mask=mask)


class LFDNN(nn.Module):
    """Late fusion: a subnet per modality, concatenated at the end (zero-fill for a missing modality)."""

    def __init__(self, cfg: ModelConfig, inputs: list[InputSpec], n_outputs: int):
        super().__init__()
        self.inputs, self.n_outputs = list(inputs), n_outputs
        self.subnets = nn.ModuleDict({s.name: _subnet(s.dim, cfg.hidden, cfg.dropout) for s in inputs})
        self.head = _head(len(inputs) * cfg.hidden, cfg.hidden, n_outputs, cfg.dropout)

    def forward(self, batch: dict, mask: torch.Tensor) -> Output:
        h = [self.subnets[s.name](_mean_over_time(*batch[s.name])) for s in self.inputs]
        return _output(self.head(torch.cat(h, -1)), self.n_outputs, mask)


class TFN(nn.Module):
    """Tensor fusion: the outer product of [h_m, 1] over the modalities (zero-fill for a missing one)."""

    TFN_DIM = 8

    def __init__(self, cfg: ModelConfig, inputs: list[InputSpec], n_outputs: int):
        super().__init__()
        self.inputs, self.n_outputs = list(inputs), n_outputs
        self.subnets = nn.ModuleDict({s.name: _subnet(s.dim, self.TFN_DIM, cfg.dropout) for s in inputs})
        self.head = _head((self.TFN_DIM + 1) ** len(inputs), cfg.hidden, n_outputs, cfg.dropout)

    def forward(self, batch: dict, mask: torch.Tensor) -> Output:
        fused = None
        for s in self.inputs:
            h = self.subnets[s.name](_mean_over_time(*batch[s.name]))
            h = torch.cat([h, torch.ones_like(h[:, :1])], -1)             # the appended 1 keeps unimodal terms
            fused = h if fused is None else (fused.unsqueeze(-1) * h.unsqueeze(1)).flatten(1)
        return _output(self.head(fused), self.n_outputs, mask)


def _positions(steps: int, dim: int, device: torch.device) -> torch.Tensor:
    pos = torch.arange(steps, device=device, dtype=torch.float32).unsqueeze(1)
    freq = torch.exp(torch.arange(0, dim, 2, device=device, dtype=torch.float32) * (-math.log(10000.0) / dim))
    pe = torch.zeros(steps, dim, device=device)
    pe[:, 0::2] = torch.sin(pos * freq)
    pe[:, 1::2] = torch.cos(pos * freq[: dim // 2])
    return pe


class _CrossBlock(nn.Module):
    """Pre-norm attention (queries from one sequence, keys and values from another) and a feed-forward."""

    def __init__(self, dim: int, heads: int, dropout: float):
        super().__init__()
        self.norm_q, self.norm_kv, self.norm_ff = nn.LayerNorm(dim), nn.LayerNorm(dim), nn.LayerNorm(dim)
        self.attn = nn.MultiheadAttention(dim, heads, dropout=dropout, batch_first=True)
        self.ff = nn.Sequential(nn.Linear(dim, 4 * dim), nn.ReLU(), nn.Dropout(dropout), nn.Linear(4 * dim, dim))

    def forward(self, q: torch.Tensor, kv: torch.Tensor, kv_padding: torch.Tensor) -> torch.Tensor:
        kv_n = self.norm_kv(kv)
        q = q + self.attn(self.norm_q(q), kv_n, kv_n, key_padding_mask=kv_padding, need_weights=False)[0]
        return q + self.ff(self.norm_ff(q))


class MulT(nn.Module):
    """Cross-modal attention over unaligned sequences (zero-fill for a missing modality)."""

    MULT_DIM, MULT_LAYERS, MULT_HEADS = 40, 2, 4

    def __init__(self, cfg: ModelConfig, inputs: list[InputSpec], n_outputs: int):
        super().__init__()
        self.inputs, self.n_outputs = list(inputs), n_outputs
        d = self.MULT_DIM
        self.proj = nn.ModuleDict({s.name: nn.Conv1d(s.dim, d, kernel_size=1, bias=False) for s in inputs})
        self.cross = nn.ModuleDict({
            f"{src.name}->{tgt.name}": nn.ModuleList(_CrossBlock(d, self.MULT_HEADS, cfg.dropout)
                                                     for _ in range(self.MULT_LAYERS))
            for tgt in inputs for src in inputs if src is not tgt})
        width = d * max(len(inputs) - 1, 1)
        self.self_attn = nn.ModuleDict({
            s.name: nn.ModuleList(_CrossBlock(width, 1 if width % self.MULT_HEADS else self.MULT_HEADS, cfg.dropout)
                                  for _ in range(self.MULT_LAYERS)) for s in inputs})
        self.head = _head(width * len(inputs), cfg.hidden, n_outputs, cfg.dropout)

    def forward(self, batch: dict, mask: torch.Tensor) -> Output:
        seqs, padding, last = {}, {}, {}
        for s in self.inputs:
            x, lengths = batch[s.name]
            if lengths is None:                                   # an embedding: one step
                x, lengths = x.unsqueeze(1), torch.ones(x.shape[0], dtype=torch.long, device=x.device)
            h = self.proj[s.name](x.transpose(1, 2)).transpose(1, 2)
            seqs[s.name] = h * math.sqrt(self.MULT_DIM) + _positions(h.shape[1], self.MULT_DIM, h.device)
            steps = torch.arange(h.shape[1], device=h.device)
            padding[s.name] = steps.unsqueeze(0) >= lengths.unsqueeze(1)              # True: not a step
            last[s.name] = (lengths - 1).clamp(min=0)
        outs = []
        for tgt in self.inputs:
            parts = []
            for src in self.inputs:
                if src is tgt:
                    continue
                h = seqs[tgt.name]
                for block in self.cross[f"{src.name}->{tgt.name}"]:
                    h = block(h, seqs[src.name], padding[src.name])
                parts.append(h)
            h = torch.cat(parts, -1) if parts else seqs[tgt.name]
            for block in self.self_attn[tgt.name]:
                h = block(h, h, padding[tgt.name])
            outs.append(h[torch.arange(h.shape[0], device=h.device), last[tgt.name]])
        return _output(self.head(torch.cat(outs, -1)), self.n_outputs, mask)
