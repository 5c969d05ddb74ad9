"""Simulated missing modalities, seeded, on top of the natural mask: one boolean mask for both.

A mask is (N, K) bool with True = the modality may be used. Natural missingness (present=False in
a feature table) is the starting point; simulation only ever turns True into False.

  random rate p: each modality of each row is dropped independently with probability p, but a row
                 never loses all of its modalities: where the draw would empty a row that had
                 something, one of its naturally present modalities (chosen at random) is kept.
  per-row rate:  the same with one rate per row (train.regime lnln: LNLN's U(0, 1) rates, lnln_rates).
  pattern:       one named modality dropped from every row ("miss_text", "miss_vision", ...).
  subset:        only the modalities of a named subset kept on every row ("avail_t", "avail_tv", ...;
                 evaluate.protocol subsets). A row whose subset is naturally absent keeps nothing, as in
                 MMIN and MoMKE, where every row of a condition has the same modalities.
"""
from __future__ import annotations

import itertools

import numpy as np
import torch


def derive_seed(*parts: int | str) -> int:
    """A stable 63-bit seed from any mix of ints and names (Python's hash() is salted per process)."""
    words = [p if isinstance(p, int) else int.from_bytes(p.encode(), "little") % (1 << 32) for p in parts]
    return int(np.random.SeedSequence([w % (1 << 63) for w in words]).generate_state(1, np.uint64)[0] >> 1)


def drop_at_rate(natural: torch.Tensor, rate: float | torch.Tensor, seed: int) -> torch.Tensor:
    """natural (N, K) bool -> mask with each modality dropped with probability `rate`, never all of a row.

    rate: one for every row, or a tensor (N,) of one per row."""
    if isinstance(rate, torch.Tensor):
        if rate.shape != natural.shape[:1] or not bool(((rate >= 0) & (rate < 1)).all()):
            raise ValueError(f"per-row missing rates must be one per row ({natural.shape[0]}) in [0, 1)")
        threshold = rate.cpu().float().unsqueeze(1)
    elif not 0.0 <= rate < 1.0:
        raise ValueError(f"missing rate must be in [0, 1), got {rate}")
    else:
        threshold = rate
    g = torch.Generator().manual_seed(seed)
    natural = natural.cpu().bool()
    # Both draws always happen, so the random stream never depends on the data.
    drop = torch.rand(natural.shape, generator=g) < threshold
    rescue_score = torch.rand(natural.shape, generator=g)
    mask = natural & ~drop
    emptied = ~mask.any(1) & natural.any(1)
    if emptied.any():
        keep = torch.where(natural, rescue_score, torch.full_like(rescue_score, -1.0)).argmax(1)
        rescue = torch.zeros_like(mask)
        rescue[torch.arange(len(mask)), keep] = True
        mask = torch.where(emptied.unsqueeze(1), rescue, mask)
    return mask


def lnln_rates(n: int, complete_share: float, seed: int) -> torch.Tensor:
    """LNLN's training rates (NeurIPS 2024): one rate per row from U(0, 1), and round(complete_share * n)
    rows, chosen at random, at 0 (kept complete). Drawn anew for every epoch's seed."""
    g = torch.Generator().manual_seed(seed)
    rates = torch.rand(n, generator=g)
    rates[torch.randperm(n, generator=g)[:round(complete_share * n)]] = 0.0
    return rates


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


SUBSET_PREFIX = "avail_"


def subset_names(names: list[str]) -> list[str]:
    """Every non-empty subset of the enabled modalities, by size, then in the order of `names`: "avail_" and
    each kept modality's initial (t text, v vision, a audio, f face): avail_t, ..., avail_tv, ..., avail_tvaf."""
    subsets = [c for k in range(1, len(names) + 1) for c in itertools.combinations(names, k)]
    return [SUBSET_PREFIX + "".join(n[0] for n in c) for c in subsets]


def keep_subset(natural: torch.Tensor, names: list[str], letters: str) -> torch.Tensor:
    """The natural mask with every modality outside the subset `letters` (initials, as subset_names) removed."""
    by_letter = {n[0]: i for i, n in enumerate(names)}
    unknown = [c for c in letters if c not in by_letter]
    if unknown or not letters:
        raise ValueError(f"subset {SUBSET_PREFIX}{letters}: {unknown or 'no'} modality initial(s) not among the "
                         f"enabled modalities {names} (initials {''.join(by_letter)})")
    keep = torch.zeros(len(names), dtype=torch.bool)
    keep[[by_letter[c] for c in letters]] = True
    return natural.cpu().bool() & keep


def mask_for(natural: torch.Tensor, names: list[str], condition: str, seed: int) -> torch.Tensor:
    """The mask of one evaluation condition: "r0.3" (random rate), "miss_text" (pattern) or "avail_tv" (subset)."""
    if condition.startswith("r"):
        return drop_at_rate(natural, float(condition[1:]), seed)
    if condition.startswith("miss_"):
        return drop_pattern(natural, names, condition[len("miss_"):])
    if condition.startswith(SUBSET_PREFIX):
        return keep_subset(natural, names, condition[len(SUBSET_PREFIX):])
    raise ValueError(f"unknown missing condition {condition!r}; expected 'r<rate>', 'miss_<modality>' or "
                     f"'avail_<initials>'")


# The pseudo-conditions of a comparison: each metric averaged over the test missing rates (protocol modality)
# or over the availability subsets (protocol subsets), each with its own paired interval.
RATE_MEAN = "rate_mean"
SUBSET_MEAN = "subset_mean"


def rate_key(rate: float) -> str:
    """The results key of a missing rate, with one decimal (docs/architecture.md, "Results")."""
    return f"r{rate:.1f}"
