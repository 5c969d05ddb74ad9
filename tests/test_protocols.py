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


def test_per_row_rates_are_checked_one_per_row_in_0_1():
    natural = torch.ones(4, 3, dtype=torch.bool)
    message = r"^per-row missing rates must be one per row \(4\) in \[0, 1\)$"
    for rates in (torch.tensor([0.1, 0.2, 0.3]), torch.tensor([0.0, 0.5, 1.0, 0.2]), torch.tensor([0.0, 1.5, 0.1, 0.2]),
                  torch.tensor([0.0, -0.1, 0.1, 0.2])):
        with pytest.raises(ValueError, match=message):
            drop_at_rate(natural, rates, 0)
    assert drop_at_rate(natural, torch.tensor([0.0, 0.0, 0.0, 0.999]), 0)[:3].all()       # rate 0: all kept


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


# ---------------------------------------------------------------- test protocols

def test_the_new_evaluate_key_stays_out_of_lineage_at_its_default():
    from trml.config import EvaluateConfig
    assert "protocol" not in EvaluateConfig().model_dump(mode="json")
    assert EvaluateConfig(protocol="subsets").model_dump(mode="json")["protocol"] == "subsets"
    with pytest.raises(ValueError, match="'modality' or 'subsets'"):
        EvaluateConfig(protocol="subset")


def test_subsets_are_every_non_empty_subset_by_size_with_initials():
    from trml.missing import subset_names
    names = ["text", "vision", "audio", "face"]
    subsets = subset_names(names)
    assert len(subsets) == 15 and len(set(subsets)) == 15
    assert subsets[:4] == ["avail_t", "avail_v", "avail_a", "avail_f"] and subsets[-1] == "avail_tvaf"
    assert subsets[4:7] == ["avail_tv", "avail_ta", "avail_tf"]
    assert subset_names(["text", "audio"]) == ["avail_t", "avail_a", "avail_ta"]
    assert subset_names(["vision"]) == ["avail_v"]


def test_a_subset_condition_removes_exactly_the_modalities_outside_it():
    from trml.missing import keep_subset, mask_for, subset_names
    names = ["text", "vision", "audio", "face"]
    g = torch.Generator().manual_seed(0)
    natural = torch.rand(200, 4, generator=g) < 0.8
    for cond in subset_names(names):
        inside = [n[0] in cond[len("avail_"):] for n in names]
        for seed in (0, 1):                                            # deterministic: no seed moves it
            mask = mask_for(natural, names, cond, seed)
            for k, keep in enumerate(inside):
                assert torch.equal(mask[:, k], natural[:, k] if keep else torch.zeros(200, dtype=torch.bool)), (cond, k)
    with pytest.raises(ValueError) as exc:
        keep_subset(natural, names, "tx")
    assert str(exc.value) == ("subset avail_tx: ['x'] modality initial(s) not among the enabled modalities "
                              "['text', 'vision', 'audio', 'face'] (initials tvaf)")
    with pytest.raises(ValueError, match=r"^subset avail_: no modality initial\(s\) not among"):
        keep_subset(natural, names, "")
    with pytest.raises(ValueError, match="avail_a"):
        mask_for(natural[:, :2], ["text", "vision"], "avail_a", 0)


def test_subsets_protocol_masks_are_shared_by_every_variant_and_seed_and_reported(fixture_dir, tmp_path):
    """Under evaluate.protocol subsets every (variant, seed) is tested on the same masks: the natural mask
    with the modalities outside the subset removed on every row. compare.json, results.md, the LaTeX table
    and the headline file name and summarise the protocol; an outside recomputation agrees."""
    from tests.mask_echo import decode
    from tests.recompute_compare import mismatches
    from trml.compare import compare
    from trml.config import CompareConfig, EvaluateConfig
    from trml.missing import keep_subset, subset_names
    from trml.report import render_latex
    echo = ["tests.mask_echo:MaskEcho", "tests.mask_echo:MaskEchoAgain"]
    ec = EvaluateConfig(protocol="subsets", seed=3)
    res = compare(DS, small_model(), small_train(epochs=1), ec,
                  CompareConfig(variants=["trml", *echo, "zero_fill"], seeds=[0, 1]), fixture_dir,
                  tmp_path / "models", tmp_path / "reports", tmp_path / "metrics", tmp_path / "plots")
    data = load_dataset(DS, small_model(), fixture_dir)
    natural = data.present().cpu()[data.indices("test")]
    subsets = subset_names(data.names)
    assert res["protocol"] == "subsets" and res["regime"] == "fixed"
    assert res["conditions"] == subsets + ["subset_mean"] and res["mean_of"] == {"subset_mean": subsets}
    assert res["rates"] == [] and res["method"]["family_size"] == 16
    given: dict[str, dict[tuple, list]] = {}
    for r in pq.read_table(tmp_path / "reports" / DS / "predictions.parquet").to_pylist():
        if r["variant"] in echo:
            assert r["draw"] == 0                                          # one mask per subset
            given.setdefault(r["condition"], {}).setdefault((r["variant"], r["seed"]), []).append(
                decode(r["pred"], len(data.names)))
    assert sorted(given) == sorted(subsets)
    for cond, by_run in given.items():
        assert len(by_run) == 4
        expected = keep_subset(natural, data.names, cond[len("avail_"):]).tolist()
        assert all(mask == expected for mask in by_run.values()), cond
    # subset_mean: its own paired interval, from the subsets' predictions.
    d = res["differences"]["zero_fill"]["subset_mean"]["mae"]
    assert d["ci95"] and d["ci95_adj"][0] <= d["ci95"][0]
    assert mismatches(tmp_path / "reports" / DS) == []
    headline = json.loads((tmp_path / "metrics" / f"{DS}.json").read_text())
    assert list(headline) == ["mae_full", "mae_subs", "acc2_full", "acc2_subs", "vs_zf_mae", "vs_zf_lo", "vs_zf_hi",
                              "rank"]
    assert max(len(k) for k in headline) <= 9                   # dvc exp show in 160 columns
    assert headline["mae_subs"] == res["variants"]["trml"]["subset_mean"]["mae"]["mean"]
    assert headline["vs_zf_mae"] == d["mean"] and "rank" in headline
    md = (tmp_path / "reports" / DS / "results.md").read_text()
    assert "Protocol: subsets" in md and "Training regime: fixed" in md and "| mean(subsets) |" in md
    # Every metric MMSA reports, at the protocol's mean and at the first condition, for every variant.
    every = md.split("Every metric at mean(subsets)")[1].split("\n\n")[1].splitlines()
    assert every[0] == "| variant | acc2_has0 | f1_has0 | acc2_non0 | f1_non0 | acc7 | acc5 | mae | corr |"
    assert [row.split(" | ")[0] for row in every[2:]] == ["| trml", *["| " + v for v in echo], "| zero_fill"]
    assert "Every metric at avail_t " in md and "Non0_F1_score" in md
    tex = render_latex(res)
    assert "Protocol: subsets" in tex.split("\\toprule")[1].split("Variant &")[0]      # a rendered row
    table = (tmp_path / "plots" / DS / "compare" / "mae.csv").read_text().splitlines()
    assert [row.split(",")[1] for row in table[1:16]] == subsets
    assert (tmp_path / "plots" / DS / "compare.png").read_bytes()[:4] == b"\x89PNG"


def test_modality_protocol_reports_name_it(tmp_path):
    from trml.report import render_latex, render_markdown
    from tests.test_results import REPORT_FIXTURE
    assert "Protocol: modality" in render_markdown(REPORT_FIXTURE) and "Protocol: modality" in render_latex(REPORT_FIXTURE)
    lnln = {**REPORT_FIXTURE, "regime": "lnln"}
    assert "Training regime: lnln (a rate per row from U(0, 1)" in render_markdown(lnln)
