"""The field's protocols (issue 16): training regimes (train.regime: fixed, complete, lnln; train.lnln_mask) and
test protocols (evaluate.protocol: modality, subsets, intra), each seeded, shared by every (variant, seed), and the
defaults byte-identical to the runs made before the keys existed; text as a token sequence in every model. Masks
are observed through the models of tests/mask_echo.py: MaskRecorder keeps what a regime gave it in training,
MaskEcho predicts its test mask, StepEcho predicts (and keeps) which steps of its input are zeros."""
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


def test_lnln_intra_masks_steps_at_each_rows_rate_and_keeps_every_modality(fixture_dir, tmp_path):
    """train.lnln_mask intra: each epoch, each train row's U(0, 1) rate (complete_share of them 0) drops steps
    of its sequence modalities, seeded as the modality regime; the model sees zeros there, and the modality mask
    it is given is the natural one."""
    from tests.mask_echo import StepEcho, zeroed_steps_code
    from trml.missing import drop_steps_at_rate
    from trml.train import fit, sequence_widths
    data = load_dataset(DS, small_model(), fixture_dir)
    cfg = small_train(variant="tests.mask_echo:StepEcho", epochs=2, patience=2, regime="lnln", lnln_mask="intra")
    StepEcho.seen.clear()
    fit(data, small_model(), cfg, tmp_path / "models")
    train_idx, natural = data.indices("train"), data.present().cpu()
    lengths = {m.name: m.lengths for m in data.modalities if m.kind == "seq"}
    given = [s for s in StepEcho.seen if s["training"]]
    for e in range(2):
        g = torch.Generator().manual_seed(derive_seed(0, "shuffle", e))
        perm = train_idx[torch.randperm(len(train_idx), generator=g)]
        seed = derive_seed(0, "mask", e)
        rates = lnln_rates(N_TRAIN, 0.5, derive_seed(seed, "lnln"))
        steps = drop_steps_at_rate(N_TRAIN, sequence_widths(data), rates, seed)
        batches = given[e * 4:(e + 1) * 4]                             # 60 rows in batches of 16
        assert torch.equal(torch.cat([b["mask"] for b in batches]), natural[perm])
        codes = torch.cat([zeroed_steps_code(b["batch"], data.names) for b in batches]).tolist()
        assert codes == expected_code(natural[perm], {k: v[perm] for k, v in lengths.items()}, data.names, steps)
        complete = (rates == 0) & natural[perm].all(1)
        assert all(c == 0 for c, keep in zip(codes, complete.tolist()) if keep)     # the complete share
        assert sum(c > 0 for c in codes) > N_TRAIN // 3                           # the others lose steps
    assert TrainConfig(regime="lnln", lnln_mask="intra").model_dump()["lnln_mask"] == "intra"
    assert "lnln_mask" not in TrainConfig(regime="lnln").model_dump()
    with pytest.raises(ValueError, match=r"^1 validation error[\s\S]*train\.lnln_mask=intra is read by train\.regime "
                                         r"lnln only \(regime is 'fixed'\); set train\.regime: lnln or remove lnln_mask"):
        TrainConfig(lnln_mask="intra")


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
    with pytest.raises(ValueError, match="'modality', 'subsets' or 'intra'"):
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
    # The names every protocol shares (dvc exp show puts runs of different protocols in the same columns):
    # r0.0, every enabled modality available, and the protocol's mean.
    assert list(headline) == ["mae_r0.0", "mae_mean", "acc2_r0.0", "acc2_mean", "vs_zf_mae", "vs_zf_lo", "vs_zf_hi",
                              "rank"]
    assert max(len(k) for k in headline) <= 9                   # dvc exp show in 160 columns
    assert headline["mae_mean"] == res["variants"]["trml"]["subset_mean"]["mae"]["mean"]
    assert headline["mae_r0.0"] == res["variants"]["trml"][subsets[-1]]["mae"]["mean"]
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


# ---------------------------------------------------------------- protocol intra (masked steps)

STEP_ECHO = ["tests.mask_echo:StepEcho", "tests.mask_echo:StepEchoAgain"]
CODE_SCALE = 2.0 ** -16                         # tests/mask_echo.py zeroed_steps_code


def expected_code(natural: torch.Tensor, lengths: dict[str, torch.Tensor], names: list[str],
                  steps: dict[str, torch.Tensor]) -> list[float]:
    """zeroed_steps_code computed from a StepMask and the data alone: the dropped steps inside each present
    row's length, and the one zero step a naturally absent sequence is sanitised to."""
    code = torch.zeros(len(natural), dtype=torch.float64)
    for m, name in enumerate(names):
        if name not in steps:
            continue
        keep = steps[name]
        t = torch.arange(keep.shape[1])
        present = natural[:, m].unsqueeze(1)
        zero = (present & (t < lengths[name].unsqueeze(1)) & ~keep) | (~present & (t == 0))
        code += (zero.double() * (t + 1)).sum(1) * 100.0 ** m
    return (code * CODE_SCALE).tolist()


def test_the_intra_protocol_names_its_conditions_by_rate():
    from trml.config import EvaluateConfig
    from trml.evaluate import averaged, conditions
    from trml.missing import condition_rate, intra_key
    ec = EvaluateConfig(protocol="intra", test_missing_rates=[0.0, 0.3, 0.9])
    assert ec.model_dump(mode="json")["protocol"] == "intra"
    names = ["text", "vision", "audio"]
    assert conditions(names, ec) == ["i0.0", "i0.3", "i0.9"]              # no whole-modality patterns
    assert averaged(names, ec) == ("intra_mean", ["i0.0", "i0.3", "i0.9"])
    assert intra_key(0.3) == "i0.3" and condition_rate("i0.3") == 0.3 and condition_rate("r0.7") == 0.7
    assert condition_rate("miss_text") is None and condition_rate("intra_mean") is None


def test_intra_drops_steps_at_about_the_rate_and_never_an_embedding_or_a_modality(fixture_dir):
    from trml.config import EvaluateConfig
    from trml.evaluate import condition_masks
    from trml.missing import StepMask, drop_steps_at_rate
    big = drop_steps_at_rate(20_000, {"vision": 10, "audio": 3}, 0.3, seed=5)
    assert abs(1 - float(big["vision"].float().mean()) - 0.3) < 0.005
    assert abs(1 - float(big["audio"].float().mean()) - 0.3) < 0.005
    assert bool(drop_steps_at_rate(50, {"vision": 10}, 0.0, 1)["vision"].all())
    per_row = drop_steps_at_rate(4, {"vision": 5000}, torch.tensor([0.0, 0.2, 0.6, 0.9]), 2)["vision"]
    assert [round(1 - float(r.float().mean()), 1) for r in per_row] == [0.0, 0.2, 0.6, 0.9]
    data = load_dataset(DS, small_model(), fixture_dir)
    idx = data.indices("test")
    natural = data.present().cpu()[idx]
    ec = EvaluateConfig(protocol="intra", test_missing_rates=[0.0, 0.3, 0.7], mask_draws=20)
    masks = condition_masks(data, "test", ["i0.0", "i0.3", "i0.7"], ec)
    assert len(masks["i0.0"]) == 1 and len(masks["i0.3"]) == 20
    seq = [m for m in data.modalities if m.kind == "seq"]
    for cond, rate in (("i0.0", 0.0), ("i0.3", 0.3), ("i0.7", 0.7)):
        dropped = kept = 0
        for mask in masks[cond]:
            assert isinstance(mask, StepMask) and torch.equal(mask.modality, natural)   # whole modalities stay
            assert sorted(mask.steps) == sorted(m.name for m in seq)                      # text is a vector
            for m in seq:
                valid = (torch.arange(m.x.shape[1]) < m.lengths[idx].cpu().unsqueeze(1)) & m.present[idx].cpu().unsqueeze(1)
                dropped += int((valid & ~mask.steps[m.name]).sum())
                kept += int((valid & mask.steps[m.name]).sum())
        assert abs(dropped / (dropped + kept) - rate) < 0.04, (cond, dropped, kept)


def test_intra_masks_are_seeded_shared_by_every_variant_and_seed_and_reported(fixture_dir, tmp_path):
    """Every (variant, seed) sees the same zeroed steps, drawn from (evaluate.seed, split, condition, draw)
    alone; compare.json, results.md, the LaTeX table and the headline name and summarise the protocol."""
    from tests.recompute_compare import mismatches
    from trml.compare import compare
    from trml.config import CompareConfig, EvaluateConfig
    from trml.missing import mask_for
    from trml.report import render_latex
    ec = EvaluateConfig(protocol="intra", test_missing_rates=[0.0, 0.5, 0.9], mask_draws=2, seed=4)
    res = compare(DS, small_model(), small_train(epochs=1), ec,
                  CompareConfig(variants=["trml", *STEP_ECHO, "zero_fill"], seeds=[0, 1]), fixture_dir,
                  tmp_path / "models", tmp_path / "reports", tmp_path / "metrics", tmp_path / "plots")
    data = load_dataset(DS, small_model(), fixture_dir)
    idx = data.indices("test")
    natural = data.present().cpu()[idx]
    lengths = {m.name: m.lengths[idx].cpu() for m in data.modalities if m.kind == "seq"}
    widths = {m.name: m.x.shape[1] for m in data.modalities if m.kind == "seq"}
    assert res["protocol"] == "intra" and res["conditions"] == ["i0.0", "i0.5", "i0.9", "intra_mean"]
    assert res["mean_of"] == {"intra_mean": ["i0.0", "i0.5", "i0.9"]} and res["rates"] == ["i0.0", "i0.5", "i0.9"]
    given: dict[tuple, dict[tuple, list]] = {}
    for r in pq.read_table(tmp_path / "reports" / DS / "predictions.parquet").to_pylist():
        if r["variant"] in STEP_ECHO:
            given.setdefault((r["condition"], r["draw"]), {}).setdefault((r["variant"], r["seed"]), []).append(r["pred"])
    assert sorted(given) == [("i0.0", 0), ("i0.5", 0), ("i0.5", 1), ("i0.9", 0), ("i0.9", 1)]
    for (cond, draw), by_run in given.items():
        assert len(by_run) == 4
        mask = mask_for(natural, data.names, cond, derive_seed(4, "test", cond, draw), widths)
        expected = expected_code(natural, lengths, data.names, mask.steps)
        assert all(codes == expected for codes in by_run.values()), (cond, draw)
    assert given[("i0.5", 0)][(STEP_ECHO[0], 0)] != given[("i0.5", 1)][(STEP_ECHO[0], 0)]    # draws differ
    d = res["differences"]["zero_fill"]["intra_mean"]["mae"]
    assert d["ci95"] and d["ci95_adj"][0] <= d["ci95"][0]
    assert mismatches(tmp_path / "reports" / DS) == []
    headline = json.loads((tmp_path / "metrics" / f"{DS}.json").read_text())
    # i0.0 drops nothing, so it is r0.0 (the same predictions: test_intra_at_rate_0_predicts_exactly_as_...).
    # The field reports intra by its mean over the rates (TFR-Net, LNLN); each rate is in results.md.
    assert list(headline) == ["mae_r0.0", "mae_mean", "acc2_r0.0", "acc2_mean", "vs_zf_mae", "vs_zf_lo", "vs_zf_hi",
                              "rank"]
    assert max(len(k) for k in headline) <= 9 and len(headline) <= 12
    assert headline["mae_r0.0"] == res["variants"]["trml"]["i0.0"]["mae"]["mean"]
    assert headline["mae_mean"] == res["variants"]["trml"]["intra_mean"]["mae"]["mean"] and headline["vs_zf_mae"] == d["mean"]
    md = (tmp_path / "reports" / DS / "results.md").read_text()
    assert "Protocol: intra" in md and "| mean(i) |" in md and "Every metric at mean(i)" in md
    assert "Protocol: intra" in render_latex(res)
    table = (tmp_path / "plots" / DS / "compare" / "mae.csv").read_text().splitlines()
    assert [row.split(",")[1] for row in table[1:4]] == ["0.0", "0.5", "0.9"]


def test_a_model_sees_zeros_at_dropped_steps_and_nothing_they_held(fixture_dir, tmp_path):
    """The masked-input contract under intra: every model is given zeros at the dropped steps (the rest as it
    is, lengths kept), and TRML's output does not move whatever a dropped step held (NaN included)."""
    from tests.mask_echo import StepEcho
    from trml.missing import mask_for
    from trml.registry import build_model
    from trml.train import fit, input_specs, predict
    data = load_dataset(DS, small_model(), fixture_dir)
    idx = data.indices("test")
    widths = {m.name: m.x.shape[1] for m in data.modalities if m.kind == "seq"}
    mask = mask_for(data.present().cpu()[idx], data.names, "i0.5", 11, widths)
    StepEcho.seen.clear()
    predict(build_model("tests.mask_echo:StepEcho", small_model(), input_specs(data), 1), data, idx, mask, 64)
    (seen,) = [s["batch"] for s in StepEcho.seen]
    for m in data.modalities:
        x, lengths = seen[m.name]
        if m.kind == "emb":
            assert torch.equal(x, torch.where(m.present[idx].unsqueeze(1), m.x[idx], 0.0))
            continue
        present = m.present[idx]
        assert torch.equal(lengths, torch.where(present, m.lengths[idx], 1))
        keep = mask.steps[m.name][:, :x.shape[1]] & present.unsqueeze(1)
        assert bool((x[~keep] == 0).all()) and torch.equal(x[keep], m.x[idx, :x.shape[1]][keep])
        assert int((~mask.steps[m.name][:, :x.shape[1]] & present.unsqueeze(1)
                    & (torch.arange(x.shape[1]) < lengths.unsqueeze(1))).sum()) > 0       # something was dropped
    fit(data, small_model(), small_train(epochs=1), tmp_path / "models")
    from trml.evaluate import load_model
    model, _ = load_model(tmp_path / "models" / DS / "trml" / "best.pt", small_model(), small_train(epochs=1), data)
    before = predict(model, data, idx, mask, 64)
    for m in data.modalities:
        if m.kind == "seq":
            rows = m.x[idx]
            rows[~mask.steps[m.name]] = float("nan")
            m.x[idx] = rows
    after = predict(model, data, idx, mask, 64)
    assert torch.equal(torch.from_numpy(before), torch.from_numpy(after))


def test_intra_at_rate_0_predicts_exactly_as_modality_at_rate_0(fixture_dir, tmp_path):
    """i0.0 and r0.0 give every model the same predictions, naturally missing modalities included (some test rows
    are made absent here: the fixture's test split has none); a positive step rate does change them."""
    from trml.config import EvaluateConfig
    from trml.evaluate import condition_masks, load_model, predict_masks
    from trml.train import fit
    data = load_dataset(DS, small_model(), fixture_dir)
    idx = data.indices("test")
    for k, m in enumerate(data.modalities):                # a different absent row per modality, two for text
        gone = idx[[k, 5]] if m.name == "text" else idx[[k]]
        m.present[gone] = False
        if m.lengths is not None:
            m.lengths[gone] = 0
    ec = EvaluateConfig(protocol="intra", test_missing_rates=[0.0, 0.5], mask_draws=1)
    masks = condition_masks(data, "test", ["i0.0", "r0.0", "i0.5"], ec)
    for variant in ("trml", "zero_fill", "lf_dnn"):
        cfg = small_train(epochs=1, variant=variant)
        fit(data, small_model(), cfg, tmp_path / "models")
        model, _ = load_model(tmp_path / "models" / DS / variant / "best.pt", small_model(), cfg, data)
        (i0,), (r0,), (i5,) = (predict_masks(model, data, idx, masks[c]) for c in ("i0.0", "r0.0", "i0.5"))
        assert i0.tobytes() == r0.tobytes(), variant
        assert not (i5 == i0).all(), variant


# ---------------------------------------------------------------- text as a token sequence

def token_text_fixture(root):
    """The fixture with its text table replaced by token states (a sequence of 3 to 9 steps per utterance, as
    text_hf output: tokens gives), carrying the label as the vector text did; the same naturally missing rows."""
    import numpy as np

    from features.store import FeatureRow, TableInfo, rows_to_table, write_atomic
    from tests.test_trml import ABSENT, DIMS, SETS
    write_fixture(root)
    ids = pq.read_table(root / "index" / f"{DS}.parquet").column("utterance_id").to_pylist()
    labels = pq.read_table(root / "index" / f"{DS}.parquet").column("label").to_pylist()
    rng = np.random.default_rng(1)
    direction = rng.normal(size=DIMS["text"])
    rows = [FeatureRow(uid, status=ABSENT["text"][i], detail="fixture") if i in ABSENT["text"] else
            FeatureRow(uid, seq=labels[i] / 3 * direction + 0.5 * rng.normal(size=(3 + i % 7, DIMS["text"])),
                       t=np.arange(3 + i % 7, dtype=float))
            for i, uid in enumerate(ids)]
    info = TableInfo(SETS["text"], "text", "seq", DIMS["text"], extractor="fixture-text-tokens",
                     extractor_version="1", weights_id="text-tokens:v1",
                     feature_names=[f"text{j}" for j in range(DIMS["text"])])
    write_atomic(rows_to_table(rows, info), root / "features" / DS / f"{SETS['text']}.parquet")
    return root


@pytest.mark.parametrize("variant", ["trml", "zero_fill", "no_sml", "upper_bound", "lf_dnn", "tfn", "mult"])
def test_every_model_trains_and_is_tested_on_token_level_text(tmp_path, variant):
    """A text table of token states (kind seq) goes through every built-in model: it trains, its predictions
    are finite, and under intra its text tokens are masked too (the predictions move when only text's are)."""
    from trml.config import EvaluateConfig
    from trml.evaluate import condition_masks, evaluate_split, load_model, predict_masks
    from trml.missing import StepMask
    from trml.train import fit
    data = load_dataset(DS, small_model(), token_text_fixture(tmp_path / "data"))
    assert [(m.name, m.kind) for m in data.modalities][0] == ("text", "seq")
    cfg = small_train(epochs=1, variant=variant)
    fit(data, small_model(), cfg, tmp_path / "models")
    model, _ = load_model(tmp_path / "models" / DS / variant / "best.pt", small_model(), cfg, data)
    ec = EvaluateConfig(protocol="intra", test_missing_rates=[0.0, 0.5], mask_draws=1)
    idx = data.indices("test")
    results = evaluate_split(model, data, "test", ["i0.0", "i0.5"], ec)
    assert all(v is None or v == v for v in results["i0.5"].values()) and results["i0.5"]["mae"] is not None
    (mask,) = condition_masks(data, "test", ["i0.5"], ec)["i0.5"]
    assert "text" in mask.steps
    text_only = StepMask(mask.modality, {n: (keep if n == "text" else torch.ones_like(keep))
                                         for n, keep in mask.steps.items()})
    full = StepMask(mask.modality, {n: torch.ones_like(keep) for n, keep in mask.steps.items()})
    (masked,), (whole,) = predict_masks(model, data, idx, [text_only]), predict_masks(model, data, idx, [full])
    assert torch.isfinite(torch.from_numpy(masked)).all() and not (masked == whole).all()


def test_every_protocol_calls_its_no_missing_point_r0_0_and_its_mean_mean():
    """The headline names that runs of different protocols share in `dvc exp show` (trml/compare.py)."""
    from trml.compare import headline_name
    assert [headline_name(c, "rate_mean") for c in ("r0.0", "r0.1", "r0.7", "rate_mean")] == \
        ["r0.0", "r0.1", "r0.7", "mean"]
    assert [headline_name(c, "intra_mean") for c in ("i0.0", "i0.1", "i0.9", "intra_mean")] == \
        ["r0.0", "i0.1", "i0.9", "mean"]
    assert [headline_name(c, "subset_mean") for c in ("avail_tvaf", "subset_mean")] == ["r0.0", "mean"]


def test_each_sequence_modality_draws_its_own_step_mask():
    """Two modalities of the same width are not masked alike (each draws from (seed, its name))."""
    from trml.missing import drop_steps_at_rate
    masks = drop_steps_at_rate(50, {"vision": 8, "audio": 8}, 0.5, seed=3)
    assert not torch.equal(masks["vision"], masks["audio"])
    assert torch.equal(drop_steps_at_rate(50, {"audio": 8}, 0.5, seed=3)["audio"], masks["audio"])


def test_an_intra_condition_without_sequence_widths_says_what_to_give():
    from trml.missing import mask_for
    with pytest.raises(ValueError, match=r"condition 'i0\.3' masks steps; give the sequence widths"):
        mask_for(torch.ones(4, 2, dtype=torch.bool), ["text", "vision"], "i0.3", 0)


def test_the_subset_of_every_modality_is_the_r0_0_condition(fixture_dir):
    """Why a subsets run may call its full subset mae_r0.0: its mask is r0.0's (nothing dropped), and a smaller
    subset's is not."""
    from trml.config import EvaluateConfig
    from trml.evaluate import condition_masks
    from trml.missing import subset_names
    data = load_dataset(DS, small_model(), fixture_dir)
    subsets = subset_names(data.names)
    masks = condition_masks(data, "test", [subsets[-1], subsets[-2], "r0.0"], EvaluateConfig(protocol="subsets"))
    assert len(masks[subsets[-1]]) == len(masks["r0.0"]) == 1
    assert torch.equal(masks[subsets[-1]][0], masks["r0.0"][0])
    assert not torch.equal(masks[subsets[-2]][0], masks["r0.0"][0])
