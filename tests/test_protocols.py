"""The field's protocols (issue 16): training regimes (train.regime: fixed, complete, lnln) and test protocols
(evaluate.protocol: modality, subsets), each seeded, shared by every (variant, seed), and the defaults
byte-identical to the runs made before the keys existed. Masks are observed through the models of
tests/mask_echo.py: MaskRecorder keeps what a regime gave it in training, MaskEcho predicts its test mask."""
import json

import pyarrow.parquet as pq
import pytest
import torch

from tests.test_trml import DS, one_thread, small_model, small_train, write_fixture  # noqa: F401 (autouse)
from trml.config import TrainConfig
from trml.data import load_dataset
from trml.missing import derive_seed, drop_at_rate, lnln_rates

RECORDER = "tests.mask_echo:MaskRecorder"
N_TRAIN = 60                                    # the fixture's train rows
# TrainConfig's dump before train.regime existed: what every run signature and checkpoint was made of.
KEYS_BEFORE = ["variant", "alpha", "tau", "sml_detach_real", "missing_rate", "regression_loss", "epochs",
               "batch_size", "lr", "weight_decay", "grad_clip", "patience", "early_stop_on", "seed", "device",
               "amp", "resume", "memmap_dir"]


@pytest.fixture(scope="module")
def fixture_dir(tmp_path_factory):
    return write_fixture(tmp_path_factory.mktemp("protocols"))


def training_masks(fixture_dir, tmp_path, epochs=3, **train_kw) -> tuple[list[torch.Tensor], torch.Tensor]:
    """The masks MaskRecorder was given in each training epoch (rows in shuffled order), and the natural
    mask of the train rows in that same order per epoch."""
    from tests.mask_echo import MaskRecorder
    from trml.train import fit
    data = load_dataset(DS, small_model(), fixture_dir)
    cfg = small_train(variant=RECORDER, epochs=epochs, patience=epochs, **train_kw)
    MaskRecorder.seen.clear()
    fit(data, small_model(), cfg, tmp_path / "models")
    seen = torch.cat(MaskRecorder.seen)
    assert len(seen) == epochs * N_TRAIN
    natural, train_idx = data.present().cpu(), data.indices("train")
    naturals = []
    for e in range(epochs):
        g = torch.Generator().manual_seed(derive_seed(cfg.seed, "shuffle", e))
        naturals.append(natural[train_idx[torch.randperm(len(train_idx), generator=g)]])
    return [seen[e * N_TRAIN:(e + 1) * N_TRAIN] for e in range(epochs)], naturals


# ---------------------------------------------------------------- training regimes

def test_new_train_keys_stay_out_of_signatures_and_checkpoints_at_their_defaults():
    assert list(TrainConfig().model_dump(mode="json")) == KEYS_BEFORE
    assert list(TrainConfig(regime="fixed", complete_share=0.5).model_dump(mode="json")) == KEYS_BEFORE
    assert TrainConfig(regime="lnln").model_dump()["regime"] == "lnln"
    assert TrainConfig(regime="lnln", complete_share=0.2).model_dump()["complete_share"] == 0.2


def test_a_non_default_regime_is_part_of_the_run_signature(fixture_dir):
    from trml.checkpoint import run_signature
    data = load_dataset(DS, small_model(), fixture_dir)
    sigs = {r: run_signature(small_model(), small_train(regime=r), data) for r in ("fixed", "complete", "lnln")}
    assert len(set(sigs.values())) == 3
    assert run_signature(small_model(), small_train(regime="lnln", complete_share=0.3), data) != sigs["lnln"]


def test_the_fixed_regime_trains_on_the_masks_it_always_did(fixture_dir, tmp_path):
    """Default regime: epoch e's mask is drop_at_rate(natural rows, train.missing_rate, (seed, "mask", e))."""
    masks, naturals = training_masks(fixture_dir, tmp_path, missing_rate=0.4)
    for e, (mask, natural) in enumerate(zip(masks, naturals)):
        assert torch.equal(mask, drop_at_rate(natural, 0.4, derive_seed(0, "mask", e)))


def test_the_complete_regime_trains_on_the_natural_masks(fixture_dir, tmp_path):
    masks, naturals = training_masks(fixture_dir, tmp_path, regime="complete", missing_rate=0.4)
    assert all(torch.equal(m, n) for m, n in zip(masks, naturals))


def test_lnln_rates_are_uniform_per_row_with_the_complete_share():
    rates = lnln_rates(4000, 0.5, seed=1)
    assert int((rates == 0).sum()) == 2000                            # exactly the share, kept complete
    rest = rates[rates > 0]
    assert 0.0 < float(rest.min()) and float(rest.max()) < 1.0
    assert abs(float(rest.mean()) - 0.5) < 0.02 and abs(float((rest < 0.25).float().mean()) - 0.25) < 0.03
    assert torch.equal(rates, lnln_rates(4000, 0.5, seed=1)) and not torch.equal(rates, lnln_rates(4000, 0.5, 2))
    assert int((lnln_rates(10, 0.3, seed=0) == 0).sum()) == 3 and bool((lnln_rates(10, 0.0, 0) > 0).all())


def test_lnln_trains_on_per_row_rates_redrawn_every_epoch_never_emptying_a_row(fixture_dir, tmp_path):
    from trml.train import simulated_mask
    masks, naturals = training_masks(fixture_dir, tmp_path, epochs=4, regime="lnln", complete_share=0.5)
    cfg = small_train(variant=RECORDER, regime="lnln")
    for e, (mask, natural) in enumerate(zip(masks, naturals)):
        seed = derive_seed(0, "mask", e)
        rates = lnln_rates(N_TRAIN, 0.5, derive_seed(seed, "lnln"))
        assert torch.equal(mask, drop_at_rate(natural, rates, seed))              # seeded, per row
        assert torch.equal(mask, simulated_mask(natural, cfg, seed))
        assert torch.equal(mask[rates == 0], natural[rates == 0])                # the complete half
        assert not (mask & ~natural).any()                                       # only ever removes
        assert bool(mask[natural.any(1)].any(1).all())                           # never a whole row
    # A new draw every epoch: the rows kept complete and the rates differ.
    rates = [lnln_rates(N_TRAIN, 0.5, derive_seed(derive_seed(0, "mask", e), "lnln")) for e in range(4)]
    assert len({tuple((r == 0).tolist()) for r in rates}) == 4
    assert not torch.equal(masks[0], masks[1])
    # Per-row rates, not one rate: at a fixed rate p the number of dropped cells is Binomial(4N, p);
    # here the complete rows drop nothing while the rows drawn near 1 lose all but one.
    dropped = (naturals[0] & ~masks[0]).sum(1).float()
    assert float(dropped[rates[0] == 0].max()) == 0 and float(dropped[rates[0] > 0.8].mean()) >= 2


def test_complete_share_without_lnln_fails_naming_the_key(tmp_path):
    import yaml

    from flows.params import ParamsError, load_params
    from tests.conftest import ROOT
    params = yaml.safe_load((ROOT / "params.yaml").read_text())
    params["train"].update(complete_share=0.2)
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params))
    with pytest.raises(ParamsError, match=r"train\.complete_share=0\.2 is read by train\.regime lnln only") as exc:
        load_params(tmp_path / "params.yaml")
    assert "\n" not in str(exc.value) and "set train.regime: lnln" in str(exc.value)
    with pytest.raises(ValueError, match=r"train\.complete_share=0\.2 is read by train\.regime lnln only"):
        TrainConfig(complete_share=0.2)
    with pytest.raises(ValueError, match="regime"):
        TrainConfig(regime="lnl")
