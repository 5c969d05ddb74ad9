"""Models in the harness (trml/registry.py): the baselines learn, every model keeps the masked-input contract,
and a model from outside the project's packages runs by the documented route (docs/models.md)."""
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
import torch
import yaml

from common.errors import ParamsError
from tests.conftest import ROOT
from tests.test_results import _one_modality_carries_the_label
from tests.test_trml import DS, one_thread, small_model, small_train, write_fixture  # noqa: F401 (one_thread: autouse)
from trml.config import EvaluateConfig, ModelConfig
from trml.data import load_dataset
from trml.model import InputSpec, Output
from trml.registry import BASELINES, build_model, forward, model_class

BIN = Path(sys.executable).parent
MODELS = ["trml", "zero_fill", *BASELINES]


@pytest.mark.parametrize("name", list(BASELINES))
def test_each_baseline_learns_the_label_beating_the_constant_predictor(tmp_path, name):
    from trml.evaluate import evaluate
    from trml.train import train
    root = _one_modality_carries_the_label(tmp_path / "fx")
    mc = ModelConfig(hidden=32, max_seq_len=8, modalities={"text": "text_minilm", "vision": None,
                                                           "audio": "audio_librosa", "face": None})
    tc = small_train(epochs=25, patience=25, lr=3e-3, variant=name)
    train(DS, mc, tc, root, tmp_path / "models")
    res = evaluate(DS, mc, tc, EvaluateConfig(test_missing_rates=[0.0]), root, tmp_path / "models",
                   tmp_path / "reports", tmp_path / "plots")
    man = pq.read_table(root / "index" / f"{DS}.parquet").to_pydict()
    y, split = np.array(man["label"]), np.array(man["split"])
    constant = float(np.mean(np.abs(y[split == "test"] - y[split == "train"].mean())))
    assert res["test"]["r0.0"]["mae"] < 0.6 * constant, (name, res["test"]["r0.0"]["mae"], constant)


def _poisoned(batch: dict, mask: torch.Tensor, names: list[str]) -> dict:
    """Masked entries and padding set to NaN, inf and huge values: nothing of it may reach the output."""
    out = {}
    for k, name in enumerate(names):
        x, lengths = batch[name]
        x = x.clone()
        gone = ~mask[:, k]
        x[gone] = torch.tensor(float("nan"))
        if lengths is not None:
            x[gone, :1] = 1e6
            steps = torch.arange(x.shape[1])
            x[(steps[None] >= lengths[:, None]) & mask[:, k:k + 1]] = float("inf")
            lengths = torch.where(gone, torch.full_like(lengths, 10_000), lengths)
        out[name] = (x, lengths)
    return out


@pytest.fixture(scope="module")
def fixture_data(tmp_path_factory):
    return load_dataset(DS, small_model(), write_fixture(tmp_path_factory.mktemp("models_fx")))


@pytest.mark.parametrize("name", MODELS)
def test_every_model_keeps_the_masked_input_contract(fixture_data, name):
    data = fixture_data
    specs = [InputSpec(m.name, m.kind, m.dim) for m in data.modalities]
    torch.manual_seed(0)
    model = build_model(name, small_model(), specs, data.n_outputs).eval()
    idx = data.indices("train")[:24]
    batch = data.batch(idx)
    mask = torch.rand(len(idx), len(specs), generator=torch.Generator().manual_seed(1)) > 0.4
    mask[:, 0] = True                                          # at least one modality present per row
    with torch.no_grad():
        clean = forward(model, specs, batch, mask).pred
        dirty = forward(model, specs, _poisoned(batch, mask, [s.name for s in specs]), mask).pred
    assert torch.isfinite(clean).all() and torch.equal(clean, dirty), name


class ReadsEverything(torch.nn.Module):
    """A planted model that sums its raw inputs, masked ones included: only the harness can protect it."""

    def __init__(self, model_cfg, inputs, n_outputs):
        super().__init__()
        self.inputs, self.w = inputs, torch.nn.Parameter(torch.ones(()))

    def forward(self, batch, mask):
        return Output(pred=self.w * sum(batch[s.name][0].flatten(1).sum(1) for s in self.inputs))


def test_the_harness_not_the_model_keeps_the_contract(fixture_data):
    data = fixture_data
    specs = [InputSpec(m.name, m.kind, m.dim) for m in data.modalities]
    model = ReadsEverything(None, specs, 1)
    idx = data.indices("train")[:8]
    batch = data.batch(idx)
    mask = torch.ones(len(idx), len(specs), dtype=torch.bool)
    mask[::2, 1] = False
    poisoned = _poisoned(batch, mask, [s.name for s in specs])
    with torch.no_grad():
        assert torch.equal(forward(model, specs, batch, mask).pred, forward(model, specs, poisoned, mask).pred)
        assert not torch.isfinite(model(poisoned, mask).pred).all()        # called bare, the poison gets in


def test_unknown_model_names_fail_in_one_line_naming_the_fix():
    with pytest.raises(ParamsError, match="'nope' is not known: use one of trml, no_sml, zero_fill"):
        model_class("nope")
    with pytest.raises(ParamsError, match="module 'no_such_pkg.nets' cannot be imported"):
        model_class("no_such_pkg.nets:Net")
    with pytest.raises(ParamsError, match="has no torch.nn.Module class 'Nothing'"):
        model_class("trml.baselines:Nothing")


def docs_example() -> tuple[str, dict, list[str]]:
    """docs/models.md's example: the class (the python block), params (the yaml block), the command (bash)."""
    text = (ROOT / "docs" / "models.md").read_text()
    section = text[text.index("## Adding your own model"):]
    blocks = dict((lang, body) for lang, body in re.findall(r"```(python|yaml|bash)\n(.*?)```", section, re.S))
    return blocks["python"], yaml.safe_load(blocks["yaml"]), blocks["bash"].split()


def test_a_model_from_outside_the_project_runs_by_the_documented_route(tmp_path):
    """Exactly docs/models.md's example, in a project folder of its own: trained, evaluated, compared and
    reported with intervals beside trml, by the documented command (on the test fixture's dataset)."""
    code, registration, command = docs_example()
    assert len(code.splitlines()) <= 25 and command[:3] == ["trml", "compare", "--dataset"]
    project = tmp_path / "project"
    (project / "mypkg").mkdir(parents=True)
    (project / "mypkg" / "__init__.py").write_text("")
    (project / "mypkg" / "nets.py").write_text(code)
    data = write_fixture(project / "data")
    params = yaml.safe_load((ROOT / "params.yaml").read_text())
    params["datasets"] = {DS: {"layout": "mmsa", "task": "regression"}}
    params["compare"].update(registration["compare"], seeds=[0, 1])
    params["model"].update(hidden=16, max_seq_len=16)
    params["train"].update(epochs=2, device="cpu")
    params["evaluate"].update(test_missing_rates=[0.0, 0.5], mask_draws=2)
    (project / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    env = {**os.environ, "PATH": f"{BIN}:{os.environ['PATH']}"}
    env.pop("PYTHONPATH", None)
    proc = subprocess.run([*command[:3], DS, "--data-dir", str(data)], cwd=project, env=env,
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    res = json.loads((project / "reports" / DS / "compare.json").read_text())
    name = "mypkg.nets:MeanNet"
    assert list(res["variants"]) == ["trml", "zero_fill", name]
    diff = res["differences"][name]["rate_mean"]["mae"]
    assert diff["ci95"] is not None and diff["ci95_adj"][0] <= diff["ci95"][0]
    assert name in res["ranks"]["rate_mean"]
    md = (project / "reports" / DS / "results.md").read_text()
    assert f"| {name} |" in md and "Rank by mean mae" in md
    summary = json.loads((project / "models" / DS / "mypkg.nets.MeanNet" / "seed0" / "summary.json").read_text())
    assert summary["variant"] == name
