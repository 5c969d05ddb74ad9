"""Where CLIP weights come from, on a user's machine: the product never switches the network off, an
open_clip `hf-hub:` model id loads through open_clip's own hub code (here from a real Hugging Face cache
folder, offline), a download that cannot happen fails in one line that names the key and the fix, and a
local checkpoint in weights/ is a DVC dependency of the extract stages."""
from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
import yaml

from features.store import read_metadata
from features.weights import WeightsError, load_clip, sha256_file
from tests.conftest import ROOT
from tests.test_adapters import tiny_mp4

BIN = Path(sys.executable).parent
OFFLINE_VARS = ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE")
HUB_REPO = "trml-tests/tiny-clip"
# A real open_clip CLIP, small enough to write in a test (what a Hub repo's open_clip_config.json holds).
TINY_CLIP = {"embed_dim": 16,
             "vision_cfg": {"image_size": 32, "layers": 1, "width": 32, "head_width": 16, "patch_size": 16},
             "text_cfg": {"context_length": 77, "vocab_size": 49408, "width": 32, "heads": 2, "layers": 1}}


def env_without_offline(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in OFFLINE_VARS}
    return {**env, "PATH": f"{BIN}:{env['PATH']}", **extra}


def trml(args: list[str], cwd: Path, env: dict[str, str], timeout: int = 600) -> subprocess.CompletedProcess:
    return subprocess.run([str(BIN / "trml"), *args], cwd=cwd, env=env, capture_output=True, text=True,
                          timeout=timeout)


# ---------------------------------------------------------------- no offline switch in the product

def test_importing_every_module_sets_no_offline_variable(tmp_path):
    code = """
import importlib, json, os, pkgutil
import features, flows, trml
names = []
for package in (trml, features, flows):
    names.append(package.__name__)
    names += [m.name for m in pkgutil.walk_packages(package.__path__, package.__name__ + ".")]
for name in names:
    importlib.import_module(name)
import huggingface_hub.constants
print(json.dumps({"modules": names, "env": {k: os.environ.get(k) for k in %r},
                  "hub_offline": huggingface_hub.constants.HF_HUB_OFFLINE}))
""" % (OFFLINE_VARS,)
    proc = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, env=env_without_offline(),
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    assert {"flows.runtime", "flows.cli", "flows.extract", "features.weights", "trml.train"} <= set(out["modules"])
    assert out["env"] == {k: None for k in OFFLINE_VARS}
    assert out["hub_offline"] is False


# ---------------------------------------------------------------- hf-hub: model ids

def hub_cache(hf_home: Path, seed: int = 0) -> tuple[Path, object]:
    """A Hugging Face cache holding HUB_REPO (config + weights) in the hub's own folder layout, as a download
    leaves it. Returns the weights file and the model those weights came from."""
    import open_clip
    import torch

    torch.manual_seed(seed)
    model = open_clip.model.CLIP(**TINY_CLIP).eval()
    commit = hashlib.sha1(f"{HUB_REPO}@{seed}".encode()).hexdigest()
    repo = hf_home / "hub" / f"models--{HUB_REPO.replace('/', '--')}"
    snapshot = repo / "snapshots" / commit
    snapshot.mkdir(parents=True)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(commit)
    (snapshot / "open_clip_config.json").write_text(json.dumps({"model_cfg": TINY_CLIP, "preprocess_cfg": {}}))
    weights = snapshot / "open_clip_pytorch_model.bin"
    torch.save(model.state_dict(), weights)
    return weights, model


def folder_project(tmp_path: Path, clip: dict) -> Path:
    """A project folder: a folder-layout dataset of two real clips with transcripts, its manifest, params
    whose extract.clip block is `clip` (keys left out take the built-in defaults)."""
    project = tmp_path / "project"
    raw = project / "raw"
    for name, text in (("a", "a quiet morning"), ("b", "what a loud day!")):
        tiny_mp4(raw / f"{name}.mp4")
        (raw / f"{name}.txt").write_text(text, encoding="utf-8")
    params = yaml.safe_load((ROOT / "params.yaml").read_text())
    params["datasets"] = {"mine": {"layout": "folder", "root": "raw"}}
    params["extract"]["clip"] = clip
    (project / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    proc = trml(["index", "--dataset", "mine"], project, env_without_offline())
    assert proc.returncode == 0, proc.stderr
    return project


def test_hf_hub_model_id_loads_the_repo_weights_through_open_clip(tmp_path):
    """`model: hf-hub:<org>/<repo>` via the real `trml extract`, offline, from a Hugging Face cache."""
    import open_clip
    import torch

    hf_home = tmp_path / "hf"
    weights, model = hub_cache(hf_home)
    project = folder_project(tmp_path, {"model": f"hf-hub:{HUB_REPO}"})     # as a user writes it
    proc = trml(["extract", "--dataset", "mine", "--feature-set", "text_clip"], project,
                env_without_offline(HF_HUB_OFFLINE="1", HF_HOME=str(hf_home)))
    assert proc.returncode == 0, proc.stderr[-3000:]
    table = project / "data/features/mine/text_clip.parquet"
    meta = read_metadata(table)
    assert meta["weights_id"] == f"hf-hub:{HUB_REPO}" and "random-init" not in meta["weights_id"]
    assert meta["weights_sha256"] == sha256_file(weights)
    rows = pq.read_table(table).to_pylist()
    got = np.array([r["emb"] for r in rows], np.float32)
    with torch.no_grad():   # the repo's weights, not a random init: the same embeddings as that model gives
        want = model.encode_text(open_clip.get_tokenizer("ViT-B-32")(["a quiet morning", "what a loud day!"]))
        want = torch.nn.functional.normalize(want, dim=-1).numpy()
    assert got.shape == (2, TINY_CLIP["embed_dim"])
    np.testing.assert_allclose(got, want, atol=1e-5)


@pytest.fixture(scope="module")
def offline_not_cached(tmp_path_factory) -> subprocess.CompletedProcess:
    """`trml extract` with an hf-hub model id that is in no cache, under HF_HUB_OFFLINE=1."""
    tmp_path = tmp_path_factory.mktemp("offline")
    project = folder_project(tmp_path, {"model": "hf-hub:trml-tests/not-in-any-cache"})
    proc = trml(["extract", "--dataset", "mine", "--feature-set", "text_clip"], project,
                env_without_offline(HF_HUB_OFFLINE="1", HF_HOME=str(tmp_path / "empty-hf")))
    assert not (project / "data/features/mine/text_clip.parquet").exists()
    return proc


def test_hf_hub_offline_and_not_cached_ends_in_one_line_naming_the_key(offline_not_cached):
    proc = offline_not_cached
    assert proc.returncode == 2, proc.stderr[-3000:]
    last = proc.stderr.strip().splitlines()[-1]
    assert last.startswith("error: CLIP model hf-hub:trml-tests/not-in-any-cache (extract.clip.model): "
                           "HF_HUB_OFFLINE=1 and the weights are not in the local Hugging Face cache. Fix: ")
    assert "local checkpoint file" in last


def test_hf_hub_offline_and_not_cached_prints_no_traceback(offline_not_cached):
    assert "Traceback" not in offline_not_cached.stderr, offline_not_cached.stderr[-3000:]


def test_without_network_a_download_fails_in_one_line(tmp_path):
    """No HF_HUB_OFFLINE: what a user without a network gets (on a machine with one, the repo is missing)."""
    code = ("from features.weights import load_clip, WeightsError\n"
            "try:\n    load_clip('hf-hub:trml-tests/no-such-repo-7f3a', None)\n"
            "except WeightsError as e:\n    print(e)\n")
    proc = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, capture_output=True, text=True,
                          env=env_without_offline(HF_HOME=str(tmp_path / "hf")), timeout=120)
    message = proc.stdout.strip()
    assert proc.returncode == 0 and len(message.splitlines()) == 1, proc.stdout + proc.stderr[-2000:]
    assert message.startswith("CLIP model hf-hub:trml-tests/no-such-repo-7f3a (extract.clip.model): ")
    assert "HF_HUB_OFFLINE=1" in message and "local checkpoint file" in message


@pytest.mark.parametrize("model, pretrained, words", [
    ("hf-hub:laion", None, "expected hf-hub:<org>/<repo>"),
    ("hf-hub:org/repo", "openai", "extract.clip.pretrained is 'openai'"),
    ("ViT-B-32", "hf-hub:org/repo", "Set extract.clip.model: hf-hub:org/repo"),
])
def test_hf_hub_settings_that_cannot_work_are_named(model, pretrained, words):
    with pytest.raises(WeightsError, match=re.escape(words)):
        load_clip(model, pretrained)


# ---------------------------------------------------------------- the built-in default is real weights

def test_the_built_in_default_asks_for_real_weights():
    from features.config import ClipConfig, ExtractConfig
    from flows.params import Params

    assert Params().extract.clip == ExtractConfig().clip == ClipConfig(model="ViT-B-32", pretrained="openai")
    # An hf-hub: model brings its weights: the default tag does not apply to it ...
    assert ClipConfig.model_validate({"model": "hf-hub:org/repo"}).pretrained is None
    # ... but a tag written beside it is kept, and refused when loading, not silently dropped.
    written = ClipConfig.model_validate({"model": "hf-hub:org/repo", "pretrained": "openai"})
    with pytest.raises(WeightsError, match=re.escape("extract.clip.pretrained is 'openai'")):
        load_clip(written.model, written.pretrained)


def test_offline_outside_a_project_the_default_clip_is_a_one_line_error_not_random_init(tmp_path):
    """`trml extract --feature-set text_clip` with no params.yaml and no weights in the cache: the default
    asks for ViT-B-32:openai, so it fails naming the key, before the Prefect API starts; no table."""
    from features.adapters import index_dataset
    from features.config import DatasetConfig

    work = tmp_path / "work"
    tiny_mp4(work / "videos" / "a.mp4")
    (work / "videos" / "a.txt").write_text("a sentence", encoding="utf-8")
    assert not any((p / "params.yaml").exists() for p in [work, *work.parents])
    index_dataset(DatasetConfig(name="mine", layout="folder", root=work / "videos"), work / "data/index/mine.parquet")
    proc = trml(["extract", "--dataset", "mine", "--feature-set", "text_clip"], work,
                env_without_offline(HF_HUB_OFFLINE="1", HF_HOME=str(tmp_path / "empty-hf"),
                                    PREFECT_HOME=str(tmp_path / "prefect")))
    assert proc.returncode == 2, proc.stderr[-3000:]
    [line] = proc.stderr.strip().splitlines()
    assert line.startswith("error: CLIP weights ViT-B-32:openai (extract.clip.pretrained): HF_HUB_OFFLINE=1 and "
                           "the weights are not in the local Hugging Face cache. Fix: "), line
    assert "local checkpoint file" in line
    assert not (work / "data/features/mine/text_clip.parquet").exists()
    # Before the Prefect API started (it would have created its database in PREFECT_HOME).
    assert not list((tmp_path / "prefect").glob("*.db")), "the Prefect API started before the weights were checked"


# ---------------------------------------------------------------- a local checkpoint is a DVC dependency

def save_checkpoint(path: Path, model_name: str, seed: int) -> str:
    """A real open_clip state dict (random init under `seed`), as a user saves a fine-tuned CLIP."""
    import open_clip
    import torch

    torch.manual_seed(seed)
    model = open_clip.create_model(model_name, pretrained=None)
    torch.save(model.state_dict(), path)
    return sha256_file(path)


@pytest.mark.slow
def test_replacing_a_local_checkpoint_reruns_the_clip_extract_stages(tmp_path):
    from tests.test_pipeline import copy_project, ran_stages, run

    project = copy_project(tmp_path)
    params = yaml.safe_load((project / "params.yaml").read_text())
    params["sample"]["size"] = 12
    params["extract"]["vision_clip"]["n_frames"] = 2
    params["extract"]["clip"].update(model="ViT-S-32-alt", pretrained="weights/clip.pt")
    (project / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    stages = ["extract@sample-text_clip", "extract@sample-vision_clip"]
    first = save_checkpoint(project / "weights" / "clip.pt", "ViT-S-32-alt", seed=1)
    run(["trml", "with-prefect", "--", "dvc", "repro", *stages], project, timeout=900)
    assert not (set(json.loads(run(["dvc", "status", "--json", *stages], project).stdout)))

    second = save_checkpoint(project / "weights" / "clip.pt", "ViT-S-32-alt", seed=2)   # same path, new weights
    assert second != first
    status = json.loads(run(["dvc", "status", "--json"], project).stdout)
    for stage in stages:
        assert {"changed deps": {"weights": "modified"}} in status[stage], status.get(stage)
    proc = run(["trml", "with-prefect", "--", "dvc", "repro", *stages], project, timeout=900)
    assert ran_stages(proc.stdout) == set(stages), proc.stdout[-2000:]
    for name in ("text_clip", "vision_clip"):
        meta = read_metadata(project / f"data/features/sample/{name}.parquet")
        assert meta["weights_id"] == "ViT-S-32-alt:file:clip.pt" and meta["weights_sha256"] == second
