"""Checkpoints: where a run's files live, what a checkpoint holds, and how a run resumes from one.

    models/<dataset>/<variant>/best.pt   the weights with the best valid score (what evaluate uses)
    models/<dataset>/<variant>/last.pt   the same fields plus the optimizer: everything needed to resume

A checkpoint is a plain dict of tensors and JSON-able values (torch.load(weights_only=True) reads it);
CHECKPOINT_FORMAT changes whenever its fields do, so an old file asks for a retrain instead of misloading.
"""
from __future__ import annotations

import hashlib
import json
import logging
from pathlib import Path

import torch

from common.errors import MissingInputError, UserError
from common.files import atomic_path
from trml.config import ModelConfig, TrainConfig
from trml.data import TRMLData
from trml.model import InputSpec
from trml.registry import code_fingerprint

log = logging.getLogger(__name__)

CHECKPOINT_FORMAT = 1


def run_signature(model_cfg: ModelConfig, train_cfg: TrainConfig, data: TRMLData) -> str:
    """What must match for last.pt to be resumed: every setting but epochs/device/resume, and the data.
    train.regime and train.complete_share are in it only when not at their defaults (TrainConfig's dump
    leaves them out), so every run signed before they existed keeps its signature."""
    t = train_cfg.model_dump(mode="json")
    for k in ("epochs", "device", "resume", "memmap_dir"):
        t.pop(k)
    content = {"model": model_cfg.model_dump(mode="json"), "train": t, "data": data.fingerprint()}
    code = code_fingerprint(train_cfg.variant)          # a model outside trml/: its source is part of the run
    if code is not None:
        content["code"] = code
    blob = json.dumps(content, sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()


def checkpoint_payload(model: torch.nn.Module, specs: list[InputSpec], model_cfg: ModelConfig, train_cfg: TrainConfig,
                       data: TRMLData, signature: str, state: dict) -> dict:
    """best.pt's fields (last.pt adds "optimizer"). The key order is part of the bytes: keep it."""
    return {
        "format": CHECKPOINT_FORMAT,
        "model": model.state_dict(),
        "epoch": state["epoch"],
        "state": json.loads(json.dumps(state)),
        "signature": signature,
        "config": {"model": model_cfg.model_dump(mode="json"), "train": train_cfg.model_dump(mode="json")},
        "inputs": [{"name": s.name, "kind": s.kind, "dim": s.dim} for s in specs],
        "n_outputs": data.n_outputs,
        "task": data.task,
        "class_names": list(data.class_names),
        "provenance": data.provenance(),
        "data_fingerprint": data.fingerprint(),
        "standardization": {k: {s: t.cpu() for s, t in v.items()} for k, v in data.standardization.items()},
    }


def save_checkpoint(payload: dict, path: Path) -> None:
    """torch.save to a temporary file beside `path`, then rename: never a half-written checkpoint."""
    with atomic_path(path) as tmp:
        # Through a file object: given a path, torch names the zip's inner folder after the (pid-stamped)
        # temporary file, and equal checkpoints would differ in bytes from run to run.
        with open(tmp, "wb") as fh:
            torch.save(payload, fh)


class CheckpointError(UserError):
    """A checkpoint file is unreadable or of another format; the message names the file and says retrain."""


def load_checkpoint(path: Path, device: torch.device | str = "cpu") -> dict:
    if not Path(path).is_file():
        raise MissingInputError(f"{path}: no checkpoint. Run `trml train` (or `trml compare`) first.")
    try:
        ckpt = torch.load(path, map_location=device, weights_only=True)
    except Exception as exc:      # torch raises RuntimeError, UnpicklingError, EOFError, ... for a bad file
        raise CheckpointError(f"{path}: not a readable checkpoint ({type(exc).__name__}); delete it and retrain "
                              f"(`trml train`, or `dvc repro`)") from None
    if not isinstance(ckpt, dict) or ckpt.get("format") != CHECKPOINT_FORMAT:
        found = ckpt.get("format") if isinstance(ckpt, dict) else type(ckpt).__name__
        raise CheckpointError(f"{path}: checkpoint format {found!r}, expected {CHECKPOINT_FORMAT}; retrain "
                              f"(`trml train`, or `dvc repro`)")
    return ckpt


def completed_run(folder: Path, signature: str, epochs: int) -> bool:
    """Whether `folder` holds a finished run of this signature (same settings but device/resume, same data):
    its last.pt stopped early or ran every epoch, and best.pt is there. Read-only: another stage's run
    folder can be checked without writing to it."""
    last = Path(folder) / "last.pt"
    if not last.is_file() or not (Path(folder) / "best.pt").is_file():
        return False
    try:
        ckpt = load_checkpoint(last)
    except Exception:                  # unreadable: not a run that can be reused
        return False
    state, trained_for = ckpt.get("state", {}), ckpt.get("config", {}).get("train", {}).get("epochs")
    return (ckpt.get("signature") == signature and trained_for == epochs
            and bool(state.get("stopped") or state.get("epoch", -1) + 1 >= epochs))


def resume(path: Path, signature: str, model: torch.nn.Module, opt: torch.optim.Optimizer, fresh: dict) -> dict:
    """Load last.pt into model and opt and return its training state; `fresh` where there is nothing to resume."""
    if not path.is_file():
        return fresh
    try:
        ckpt = load_checkpoint(path)
    except Exception as exc:           # a half-written or foreign file must not block a fresh run
        log.warning("%s: cannot be read (%s); training from scratch", path, exc)
        return fresh
    if ckpt.get("signature") != signature:
        log.info("%s: config or data changed since it was written; training from scratch", path)
        return fresh
    model.load_state_dict(ckpt["model"])
    opt.load_state_dict(ckpt["optimizer"])
    log.info("%s: resuming after epoch %d", path, ckpt["epoch"])
    return ckpt["state"]
