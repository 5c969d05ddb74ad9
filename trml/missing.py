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
  intra rate p:  within every present sequence modality, each step dropped independently with probability p
                 ("i0.3"; evaluate.protocol intra, TFR-Net / EMT-DLFR / LNLN). The modality mask stays the
                 natural one; a StepMask adds (N, T) step masks, which the harness turns into zeros before any
                 layer sees them (trml/model.py drop_steps). An embedding (one vector, no steps) is untouched;
                 a row whose every step is dropped keeps its length and is all zeros, still "present".
"""
from __future__ import annotations

import itertools
from dataclasses import dataclass

import numpy as np
import torch


def derive_seed(*parts: int | str) -> int:
    """A stable 63-bit seed from any mix of ints and names (Python's hash() is salted per process)."""
    words = [p if isinstance(p, int) else int.from_bytes(p.encode(), "little") % (1 << 32) for p in parts]
    return int(np.random.SeedSequence([w % (1 << 63) for w in words]).generate_state(1, np.uint64)[0] >> 1)


def drop_at_rate(natural: torch.Tensor, rate: float | torch.Tensor, seed: int) -> torch.Tensor:
    """natural (N, K) bool -> mask with each modality dropped with probability `rate`, never all of a row.

    rate: one for every row, or a tensor (N,) of one per row."""
    threshold = _threshold(rate, natural.shape[0])
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


def _threshold(rate: float | torch.Tensor, n: int) -> float | torch.Tensor:
    """A checked rate to compare uniform draws with: the float, or per-row rates as an (n, 1) column."""
    if isinstance(rate, torch.Tensor):
        if rate.shape != (n,) or not bool(((rate >= 0) & (rate < 1)).all()):
            raise ValueError(f"per-row missing rates must be one per row ({n}) in [0, 1)")
        return rate.cpu().float().unsqueeze(1)
    if not 0.0 <= rate < 1.0:
        raise ValueError(f"missing rate must be in [0, 1), got {rate}")
    return rate


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


@dataclass(frozen=True)
class StepMask:
    """A mask that also drops steps within modalities: `modality` (N, K) bool as every other mask, and `steps`,
    {sequence modality: (N, T) bool, True = the step is kept}, T the width of that modality's data tensor."""
    modality: torch.Tensor
    steps: dict[str, torch.Tensor]

    def rows(self, sl: slice | torch.Tensor) -> "StepMask":
        return StepMask(self.modality[sl], {name: keep[sl] for name, keep in self.steps.items()})


def drop_steps_at_rate(n: int, widths: dict[str, int], rate: float | torch.Tensor, seed: int) -> dict[str, torch.Tensor]:
    """{modality: (n, T) bool}: each step of each sequence modality (widths: {modality: T}) kept with probability
    1 - rate; rate one for every row, or a tensor (n,) of one per row. Each modality draws from its own seed
    (seed, modality), so switching one modality on or off leaves the others' masks as they were."""
    threshold = _threshold(rate, n)
    return {name: torch.rand((n, t), generator=torch.Generator().manual_seed(derive_seed(seed, name))) >= threshold
            for name, t in widths.items()}


INTRA_PREFIX = "i"


def intra_key(rate: float) -> str:
    """The results key of an intra-modality masking rate, with one decimal: "i0.3" (protocol intra)."""
    return f"{INTRA_PREFIX}{rate:.1f}"


def condition_rate(condition: str) -> float | None:
    """The rate of a random-rate condition ("r0.3" -> 0.3, "i0.3" -> 0.3); None for a pattern or a subset."""
    if condition[:1] in ("r", INTRA_PREFIX) and condition[1:2].isdigit():
        return float(condition[1:])
    return None


def mask_for(natural: torch.Tensor, names: list[str], condition: str, seed: int,
             widths: dict[str, int] | None = None) -> torch.Tensor | StepMask:
    """The mask of one evaluation condition: "r0.3" (random rate), "miss_text" (pattern), "avail_tv" (subset),
    or "i0.3" (intra-modality rate: a StepMask over the sequence modalities of widths {modality: T})."""
    if condition.startswith(INTRA_PREFIX) and condition_rate(condition) is not None:
        if widths is None:
            raise ValueError(f"condition {condition!r} masks steps; give the sequence widths {{modality: T}}")
        return StepMask(natural.cpu().bool().clone(),
                        drop_steps_at_rate(len(natural), widths, condition_rate(condition), seed))
    if condition.startswith("r"):
        return drop_at_rate(natural, float(condition[1:]), seed)
    if condition.startswith("miss_"):
        return drop_pattern(natural, names, condition[len("miss_"):])
    if condition.startswith(SUBSET_PREFIX):
        return keep_subset(natural, names, condition[len(SUBSET_PREFIX):])
    raise ValueError(f"unknown missing condition {condition!r}; expected 'r<rate>', 'miss_<modality>', "
                     f"'avail_<initials>' or 'i<rate>'")


# The pseudo-conditions of a comparison: each metric averaged over the test missing rates (protocol modality),
# over the availability subsets (protocol subsets) or over the intra-modality rates (protocol intra), each with
# its own paired interval.
RATE_MEAN = "rate_mean"
SUBSET_MEAN = "subset_mean"
INTRA_MEAN = "intra_mean"


def rate_key(rate: float) -> str:
    """The results key of a missing rate, with one decimal (docs/architecture.md, "Results")."""
    return f"r{rate:.1f}"
