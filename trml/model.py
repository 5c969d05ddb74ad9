"""The TRML model (arXiv 2401.13697), readable top to bottom.

    paper                                         here
    x_t = f_t(T) in R^(1 x d)  (CLIP text)        EmbEncoder: projection of the text embedding
    x_v = f_v(V) in R^(n x d)  + an RNN            SeqEncoder: GRU (or LSTM) over the frame embeddings
    (extension) audio, face sequences              SeqEncoder each
    Missing Modality Inference (MMI)               MMIGenerator: virtual h_k from the present h_j, j != k
                                                   (default: a translator G_jk per pair, averaged)
    "uses it in place of a missing one"            h_k := mask_k ? real h_k : virtual h_k
    fusion + prediction                            concat of the K representations -> MLP head
    SML, L = L_task + alpha * L_sml                trml/losses.py (InfoNCE between virtual and real h_k)

The missing-modality contract: an input entry whose mask is False is replaced by zeros with
torch.where BEFORE any layer sees it (multiplying by 0 would still let NaN/inf through; a dropped step of a
sequence, evaluate.protocol intra, the same way: drop_steps), and a
missing modality's representation is then replaced by its virtual one, which is computed only from
the other, present modalities. A masked input therefore cannot change the output, whatever it holds.

Variants (train.variant):
    trml, upper_bound  MMI + SML (upper_bound is trained on complete data)
    no_sml             MMI without SML (same network, alpha ignored)
    zero_fill          no MMI: a missing modality's input is zeros and goes through its encoder as is
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn as nn
from torch.nn.utils.rnn import pack_padded_sequence

from trml.config import ModelConfig


@dataclass(frozen=True)
class InputSpec:
    """What one modality's tensors look like (from the feature table's metadata)."""
    name: str           # text | vision | audio | face
    kind: str           # emb: (B, d) | seq: (B, T, d) with lengths (B,)
    dim: int


class EmbEncoder(nn.Module):
    """A single embedding (the text) -> h in R^H."""

    def __init__(self, dim: int, hidden: int, dropout: float):
        super().__init__()
        self.net = nn.Sequential(nn.Linear(dim, hidden), nn.GELU(), nn.Dropout(dropout), nn.Linear(hidden, hidden))
        self.norm = nn.LayerNorm(hidden)

    def forward(self, x: torch.Tensor, lengths: torch.Tensor | None = None) -> torch.Tensor:
        return self.norm(self.net(x))


class SeqEncoder(nn.Module):
    """A sequence (frame embeddings, audio frames, face frames) -> the RNN's last hidden state in R^H."""

    def __init__(self, dim: int, hidden: int, rnn: str, layers: int, dropout: float):
        super().__init__()
        self.proj = nn.Sequential(nn.Linear(dim, hidden), nn.GELU(), nn.Dropout(dropout))
        rnn_cls = nn.GRU if rnn == "gru" else nn.LSTM
        self.rnn = rnn_cls(hidden, hidden, num_layers=layers, batch_first=True,
                           dropout=dropout if layers > 1 else 0.0)
        self.norm = nn.LayerNorm(hidden)

    def forward(self, x: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        # Packing makes the RNN stop at each row's last real step: padding never enters the state.
        packed = pack_padded_sequence(self.proj(x), lengths.cpu(), batch_first=True, enforce_sorted=False)
        _, state = self.rnn(packed)
        last = state[0] if isinstance(state, tuple) else state       # LSTM returns (h_n, c_n)
        return self.norm(last[-1])


def _mlp(dims: list[int], dropout: float) -> nn.Sequential:
    blocks: list[nn.Module] = []
    for i, (a, b) in enumerate(zip(dims[:-1], dims[1:])):
        blocks.append(nn.Linear(a, b))
        if i < len(dims) - 2:
            blocks += [nn.GELU(), nn.Dropout(dropout)]
    return nn.Sequential(*blocks)


class MMIGenerator(nn.Module):
    """Missing Modality Inference for modality k: the present h_j (j != k) -> virtual h_k.

    concat:   one MLP over [h_j * present_j, present_j for all j != k] (sees every combination at once).
    pairwise: one translator G_jk per source modality, averaged over the present sources:
              virtual h_k = LayerNorm( mean_{j present} G_jk(h_j) ). Each G_jk learns from every sample
              where j and k are both there, whatever else is missing, which suits small datasets.
    """

    def __init__(self, n_others: int, hidden: int, layers: int, dropout: float, kind: str):
        super().__init__()
        self.kind = kind
        if kind == "concat":
            self.net = _mlp([n_others * (hidden + 1)] + [hidden] * layers, dropout)
        else:
            self.nets = nn.ModuleList(_mlp([hidden] * (layers + 1), dropout) for _ in range(n_others))
        self.norm = nn.LayerNorm(hidden)       # the same output scale as a real representation

    def forward(self, others: torch.Tensor, others_mask: torch.Tensor) -> torch.Tensor:
        # others (B, K-1, H) with absent rows already zeroed; others_mask (B, K-1) bool.
        if self.kind == "concat":
            return self.norm(self.net(torch.cat([others.flatten(1), others_mask.to(others.dtype)], dim=1)))
        translated = torch.stack([net(others[:, j]) for j, net in enumerate(self.nets)], 1)    # (B, K-1, H)
        translated = torch.where(others_mask.unsqueeze(-1), translated, torch.zeros_like(translated))
        n_present = others_mask.sum(1, keepdim=True).clamp(min=1)      # an integer count: / keeps h's dtype
        return self.norm(translated.sum(1) / n_present)


@dataclass
class Output:
    """What every model returns (trml/registry.py); real and virtual are TRML's, for SML."""
    pred: torch.Tensor                        # (B,) regression | (B, C) class logits
    mask: torch.Tensor | None = None          # (B, K) bool, the mask the forward pass used
    real: torch.Tensor | None = None          # (B, K, H): encoder outputs (meaningful where mask is True)
    virtual: torch.Tensor | None = None       # (B, K, H): MMI outputs (zeros for zero_fill or a single modality)
    aux_loss: torch.Tensor | None = None      # a model's own extra loss, added to the task loss as it is


class TRML(nn.Module):
    def __init__(self, cfg: ModelConfig, inputs: list[InputSpec], n_outputs: int, variant: str = "trml"):
        super().__init__()
        self.inputs = list(inputs)
        self.names = [s.name for s in inputs]
        self.n_outputs = n_outputs
        self.use_mmi = variant != "zero_fill" and len(inputs) > 1   # MMI needs another modality to infer from
        h, k = cfg.hidden, len(inputs)
        self.encoders = nn.ModuleDict({
            s.name: EmbEncoder(s.dim, h, cfg.dropout) if s.kind == "emb"
            else SeqEncoder(s.dim, h, cfg.rnn, cfg.rnn_layers, cfg.dropout)
            for s in inputs
        })
        self.mmi = nn.ModuleDict({
            s.name: MMIGenerator(k - 1, h, cfg.mmi_layers, cfg.dropout, cfg.mmi) for s in inputs
        }) if self.use_mmi else None
        self.head = nn.Sequential(nn.Dropout(cfg.dropout), nn.Linear(k * h, h), nn.GELU(),
                                  nn.Dropout(cfg.dropout), nn.Linear(h, n_outputs))

    def forward(self, batch: dict[str, tuple[torch.Tensor, torch.Tensor | None]], mask: torch.Tensor) -> Output:
        """batch: {modality: (x, lengths)} as TRMLData.batch gives; mask (B, K) bool, True = use it."""
        mask = mask.bool()
        # 1. Encode each modality from its sanitised input (masked rows and padding are zeros); the harness
        #    leaves this to TRML (trml/registry.py forward), so it is done once per batch.
        batch = sanitize(self.inputs, batch, mask)
        real = torch.stack([self._encode(s, *batch[s.name]) for s in self.inputs], 1)

        # 2. MMI: the virtual representation of modality k from the present ones only.
        if self.use_mmi:
            known = torch.where(mask.unsqueeze(-1), real, torch.zeros_like(real))
            virtual = torch.stack([
                self.mmi[name](_drop_column(known, k), _drop_column(mask, k))
                for k, name in enumerate(self.names)
            ], 1)
            # A missing modality's representation is REPLACED by its virtual one.
            fused = torch.where(mask.unsqueeze(-1), real, virtual)
        else:
            virtual = torch.zeros_like(real)
            fused = real                 # zero_fill: the encoder of a zero input stands in

        # 3. Fusion and the task head.
        pred = self.head(fused.flatten(1))
        if self.n_outputs == 1:
            pred = pred.squeeze(-1)
        return Output(pred=pred, real=real, virtual=virtual, mask=mask)

    def _encode(self, spec: InputSpec, x: torch.Tensor, lengths: torch.Tensor | None) -> torch.Tensor:
        return self.encoders[spec.name](x) if spec.kind == "emb" else self.encoders[spec.name](x, lengths)


def sanitize(inputs: list[InputSpec], batch: dict[str, tuple[torch.Tensor, torch.Tensor | None]],
             mask: torch.Tensor) -> dict[str, tuple[torch.Tensor, torch.Tensor | None]]:
    """The batch as every model sees it (the harness calls it before every forward): a masked modality is zeros (length 1), padding is zeros.

    torch.where, not a product: a NaN or inf in a masked entry must not survive as NaN * 0."""
    out = {}
    for k, spec in enumerate(inputs):
        x, lengths = batch[spec.name]
        present = mask[:, k].bool()
        if spec.kind == "emb":
            out[spec.name] = (torch.where(present.unsqueeze(-1), x, torch.zeros_like(x)), None)
            continue
        steps = torch.arange(x.shape[1], device=x.device)
        valid = present.unsqueeze(1) & (steps.unsqueeze(0) < lengths.unsqueeze(1))
        out[spec.name] = (torch.where(valid.unsqueeze(-1), x, torch.zeros_like(x)),
                          torch.where(present, lengths.clamp(1, x.shape[1]), torch.ones_like(lengths)))
    return out


def drop_steps(inputs: list[InputSpec], batch: dict[str, tuple[torch.Tensor, torch.Tensor | None]],
               steps: dict[str, torch.Tensor]) -> dict[str, tuple[torch.Tensor, torch.Tensor | None]]:
    """The batch with the dropped steps of each sequence modality zeroed (steps: {modality: (B, T) bool, True =
    kept}, trml/missing.py StepMask), by torch.where as sanitize. Lengths stay: a dropped step is a zero frame
    or token state inside the sequence (TFR-Net and LNLN zero frames; they replace a token by [UNK], which a
    table of precomputed token states cannot, so a token state is zeroed too). An embedding has no steps."""
    out = dict(batch)
    for spec in inputs:
        if spec.kind != "seq" or spec.name not in steps:
            continue
        x, lengths = batch[spec.name]
        keep = steps[spec.name][:, :x.shape[1]].to(x.device)       # the batch is trimmed to its longest row
        out[spec.name] = (torch.where(keep.unsqueeze(-1), x, torch.zeros_like(x)), lengths)
    return out


def _drop_column(t: torch.Tensor, k: int) -> torch.Tensor:
    """t without column k along dim 1 (the other modalities)."""
    return torch.cat([t[:, :k], t[:, k + 1:]], dim=1)

