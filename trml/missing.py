"""Simulated missing modalities, seeded, on top of the natural mask: one boolean mask for both.

A mask is (N, K) bool with True = the modality may be used. Natural missingness (present=False in
a feature table) is the starting point; simulation only ever turns True into False.

  random rate p: each modality of each row is dropped independently with probability p, but a row
                 never loses all of its modalities: where the draw would empty a row that had
                 something, one of its naturally present modalities (chosen at random) is kept.
  pattern:       one named modality dropped from every row ("miss_text", "miss_vision", ...).
"""
from __future__ import annotations

import numpy as np
import torch


def derive_seed(*parts: int | str) -> int:
    """A stable 63-bit seed from any mix of ints and names (Python's hash() is salted per process)."""
    words = [p if isinstance(p, int) else int.from_bytes(p.encode(), "little") % (1 << 32) for p in parts]
    return int(np.random.SeedSequence([w % (1 << 63) for w in words]).generate_state(1, np.uint64)[0] >> 1)


def drop_at_rate(natural: torch.Tensor, rate: float, seed: int) -> torch.Tensor:
    """natural (N, K) bool -> mask with each modality dropped with probability `rate`, never all of a row."""
    if not 0.0 <= rate < 1.0:
        raise ValueError(f"missing rate must be in [0, 1), got {rate}")
    g = torch.Generator().manual_seed(seed)
    natural = natural.cpu().bool()
    # Both draws always happen, so the random stream never depends on the data.
    drop = torch.rand(natural.shape, generator=g) < rate
    rescue_score = torch.rand(natural.shape, generator=g)
    mask = natural & ~drop
    emptied = ~mask.any(1) & natural.any(1)
    if emptied.any():
        keep = torch.where(natural, rescue_score, torch.full_like(rescue_score, -1.0)).argmax(1)
        rescue = torch.zeros_like(mask)
        rescue[torch.arange(len(mask)), keep] = True
        mask = torch.where(emptied.unsqueeze(1), rescue, mask)
    return mask


def drop_pattern(natural: torch.Tensor, names: list[str], missing: str) -> torch.Tensor:
    """The natural mask with modality `missing` removed from every row."""
    if missing not in names:
        raise ValueError(f"pattern miss_{missing}: modality {missing!r} is not enabled (enabled: {names})")
    mask = natural.cpu().bool().clone()
    mask[:, names.index(missing)] = False
    return mask


def pattern_names(names: list[str]) -> list[str]:
    """The single-modality-missing patterns worth reporting: none when only one modality is on."""
    return [f"miss_{n}" for n in names] if len(names) > 1 else []


def mask_for(natural: torch.Tensor, names: list[str], condition: str, seed: int) -> torch.Tensor:
    """The mask of one evaluation condition: "r0.3" (random rate) or "miss_text" (pattern)."""
    if condition.startswith("r"):
        return drop_at_rate(natural, float(condition[1:]), seed)
    if condition.startswith("miss_"):
        return drop_pattern(natural, names, condition[len("miss_"):])
    raise ValueError(f"unknown missing condition {condition!r}; expected 'r<rate>' or 'miss_<modality>'")


# The pseudo-condition of a comparison: each metric averaged over the test missing rates.
RATE_MEAN = "rate_mean"


def rate_key(rate: float) -> str:
    """The results key of a missing rate, with one decimal (docs/architecture.md, "Results")."""
    return f"r{rate:.1f}"
