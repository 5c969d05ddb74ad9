"""The losses: L = L_task + alpha * L_sml (paper: "L = L_task + alpha * L_sml").

SML (Semantic Matching Learning) "aligns the semantic spaces of the generated and the real
modality" with a temperature tau. Our reading is a symmetric InfoNCE, as in CLIP: in a batch, the
virtual representation of sample i must match the real representation of sample i better than the
real representations of the other samples (and the other way round).

    z_v = normalize(virtual_k[S]),  z_r = normalize(real_k[S]),  logits = z_v z_r^T / tau
    L_sml,k = ( CE(logits, I) + CE(logits^T, I) ) / 2,           L_sml = mean over modalities k

S holds the samples where modality k is really present (so there is something to match) and at
least one other modality is present (so the virtual one was generated from something). A modality
with fewer than two such samples in the batch has no negatives and is left out of the mean.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F


def info_nce(virtual: torch.Tensor, real: torch.Tensor, tau: float) -> torch.Tensor:
    """Symmetric InfoNCE between row-paired (n, H) matrices; row i of each is a positive pair."""
    zv = F.normalize(virtual.float(), dim=-1)
    zr = F.normalize(real.float(), dim=-1)
    logits = zv @ zr.T / tau
    target = torch.arange(len(logits), device=logits.device)
    return 0.5 * (F.cross_entropy(logits, target) + F.cross_entropy(logits.T, target))


def sml_loss(real: torch.Tensor, virtual: torch.Tensor, mask: torch.Tensor, tau: float,
             detach_real: bool = False) -> torch.Tensor:
    """real, virtual (B, K, H); mask (B, K) bool. Mean InfoNCE over the modalities that can be matched.

    detach_real: the real representations are fixed targets, so SML moves only the generators.
    """
    mask = mask.bool()
    if detach_real:
        real = real.detach()
    terms = []
    for k in range(mask.shape[1]):
        others_present = torch.cat([mask[:, :k], mask[:, k + 1:]], 1).any(1)
        rows = mask[:, k] & others_present
        if int(rows.sum()) >= 2:
            terms.append(info_nce(virtual[rows, k], real[rows, k], tau))
    if not terms:
        return real.new_zeros((), dtype=torch.float32)
    return torch.stack(terms).mean()


def task_loss(pred: torch.Tensor, y: torch.Tensor, task: str, regression_loss: str = "l1") -> torch.Tensor:
    """L1 (or MSE) on the sentiment score for regression; cross-entropy on the logits for classification."""
    if task == "regression":
        fn = F.l1_loss if regression_loss == "l1" else F.mse_loss
        return fn(pred.float(), y.float())
    return F.cross_entropy(pred.float(), y.long())
