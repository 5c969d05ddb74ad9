"""trml/checkpoint.py: the run signature (the contract with every run already on disk), reading a checkpoint and
its one-line errors, when a finished run is reused, and when a run resumes.

These run on small real checkpoints written with torch.save through save_checkpoint, not on a training run, so
each contract is pinned on its own and in a second.
"""
import hashlib
import json
import logging

import pytest
import torch

from common.errors import MissingInputError, UserError
from trml.checkpoint import (CHECKPOINT_FORMAT, CheckpointError, completed_run, load_checkpoint, resume,
                             run_signature, save_checkpoint)
from trml.config import ModelConfig, TrainConfig

FINGERPRINT = "0" * 64


class Data:
    """What run_signature reads of a dataset: its fingerprint (one hash of every input file)."""

    def __init__(self, fingerprint: str = FINGERPRINT):
        self._fingerprint = fingerprint

    def fingerprint(self) -> str:
        return self._fingerprint


def signature(model=None, train=None, data=None) -> str:
    return run_signature(model or ModelConfig(), train or TrainConfig(), data or Data())


def test_the_default_signature_is_pinned():
    """Every run on disk was signed this way: a changed signature retrains every model of every user, and a
    new key that is not left out of the dump at its default (trml/config.py omitted_at) changes it. This is
    the value signed before train.regime existed (522c2a3)."""
    assert signature() == "0f2c76bdc0238a5b8cd23f9c6e3e6c9f0f06f789f15df68af8c63756adcca8f1"


def test_the_signature_is_the_hash_of_model_train_and_data():
    train = TrainConfig().model_dump(mode="json")
    for key in ("epochs", "device", "resume", "memmap_dir"):
        del train[key]
    content = {"model": ModelConfig().model_dump(mode="json"), "train": train, "data": FINGERPRINT}
    assert signature() == hashlib.sha256(json.dumps(content, sort_keys=True).encode()).hexdigest()


@pytest.mark.parametrize("key,value", [("epochs", 7), ("device", "cpu"), ("resume", False), ("memmap_dir", "mm")])
def test_the_signature_ignores_what_does_not_change_the_model(key, value):
    assert signature(train=TrainConfig(**{key: value})) == signature()


@pytest.mark.parametrize("key,value", [("seed", 1), ("lr", 0.01), ("missing_rate", 0.5), ("variant", "zero_fill"),
                                       ("alpha", 0.2), ("regime", "complete"), ("patience", 3)])
def test_every_other_train_key_moves_the_signature(key, value):
    assert signature(train=TrainConfig(**{key: value})) != signature()


def test_the_model_and_the_data_move_the_signature():
    assert signature(model=ModelConfig(hidden=64)) != signature()
    assert signature(data=Data("1" * 64)) != signature()


def test_a_model_from_outside_trml_signs_its_source():
    """Its code is not versioned with trml/, so a changed file must not reuse the old run."""
    from tests import mask_echo
    outside = TrainConfig(variant="tests.mask_echo:MaskEcho")
    source = hashlib.sha256(open(mask_echo.__file__, "rb").read()).hexdigest()
    train = outside.model_dump(mode="json")
    for key in ("epochs", "device", "resume", "memmap_dir"):
        del train[key]
    content = {"model": ModelConfig().model_dump(mode="json"), "train": train, "data": FINGERPRINT, "code": source}
    assert signature(train=outside) == hashlib.sha256(json.dumps(content, sort_keys=True).encode()).hexdigest()


def checkpoint(path, **fields):
    payload = {"format": CHECKPOINT_FORMAT, "signature": "sig", "epoch": 2,
               "state": {"epoch": 2, "stopped": False}, "config": {"train": {"epochs": 5}}}
    payload.update(fields)
    save_checkpoint(payload, path)
    return payload


def test_a_checkpoint_reads_back_as_written(tmp_path):
    written = checkpoint(tmp_path / "last.pt", model={"w": torch.arange(3.0)})
    read = load_checkpoint(tmp_path / "last.pt")
    assert read.keys() == written.keys()
    assert torch.equal(read["model"]["w"], torch.arange(3.0))
    assert read["state"] == written["state"]
    assert [p.name for p in tmp_path.iterdir()] == ["last.pt"]      # no temporary file left beside it


def test_a_missing_checkpoint_says_what_to_run(tmp_path):
    with pytest.raises(MissingInputError) as err:
        load_checkpoint(tmp_path / "best.pt")
    assert str(err.value) == f"{tmp_path / 'best.pt'}: no checkpoint. Run `trml train` (or `trml compare`) first."


def test_an_unreadable_checkpoint_is_one_line_naming_the_file(tmp_path):
    (tmp_path / "best.pt").write_bytes(b"not a zip at all")
    with pytest.raises(CheckpointError) as err:
        load_checkpoint(tmp_path / "best.pt")
    message = str(err.value)
    assert message.startswith(f"{tmp_path / 'best.pt'}: not a readable checkpoint (")
    assert message.endswith("); delete it and retrain (`trml train`, or `dvc repro`)")
    assert "\n" not in message and isinstance(err.value, UserError)
    assert err.value.__cause__ is None and err.value.__suppress_context__


def test_a_checkpoint_of_another_format_asks_for_a_retrain(tmp_path):
    checkpoint(tmp_path / "old.pt", format=CHECKPOINT_FORMAT + 1)
    with pytest.raises(CheckpointError) as err:
        load_checkpoint(tmp_path / "old.pt")
    assert str(err.value) == (f"{tmp_path / 'old.pt'}: checkpoint format {CHECKPOINT_FORMAT + 1!r}, expected "
                              f"{CHECKPOINT_FORMAT}; retrain (`trml train`, or `dvc repro`)")
    torch.save({"weights": 1}, tmp_path / "none.pt")
    with pytest.raises(CheckpointError, match=r"none.pt: checkpoint format None, expected 1;"):
        load_checkpoint(tmp_path / "none.pt")
    torch.save([1, 2], tmp_path / "list.pt")
    with pytest.raises(CheckpointError, match=r"list.pt: checkpoint format 'list', expected 1;"):
        load_checkpoint(tmp_path / "list.pt")


def test_a_checkpoint_is_read_onto_the_device_asked_for(tmp_path):
    checkpoint(tmp_path / "best.pt", model={"w": torch.arange(3.0)})
    assert load_checkpoint(tmp_path / "best.pt", device="meta")["model"]["w"].device.type == "meta"
    assert load_checkpoint(tmp_path / "best.pt")["model"]["w"].device.type == "cpu"


def finished(folder, best: bool = True, **fields):
    folder.mkdir(exist_ok=True)
    checkpoint(folder / "last.pt", **fields)
    if best:
        checkpoint(folder / "best.pt")
    return folder


def test_a_finished_run_is_one_that_ran_every_epoch_or_stopped(tmp_path):
    ran_all = {"epoch": 4, "stopped": False}
    assert completed_run(finished(tmp_path / "a", state=ran_all), "sig", 5)
    assert completed_run(finished(tmp_path / "b", state={"epoch": 1, "stopped": True}), "sig", 5)
    assert not completed_run(finished(tmp_path / "c", state={"epoch": 3, "stopped": False}), "sig", 5)
    assert not completed_run(finished(tmp_path / "d", state={"stopped": False}), "sig", 5)   # no epoch yet


def test_a_run_of_other_settings_or_epochs_is_not_finished(tmp_path):
    folder = finished(tmp_path / "a", state={"epoch": 4, "stopped": False})
    assert not completed_run(folder, "other", 5)
    assert not completed_run(folder, "sig", 6)            # asked for more epochs than it was trained for
    assert not completed_run(folder, "sig", 4)            # fewer: a longer run is not this one either
    assert not completed_run(finished(tmp_path / "b", config={}, state={"epoch": 4}), "sig", 5)
    # A checkpoint of this format without the fields a run writes (another tool's file): not a finished run.
    folder.joinpath("last.pt").unlink()
    save_checkpoint({"format": CHECKPOINT_FORMAT, "signature": "sig"}, folder / "last.pt")
    assert not completed_run(folder, "sig", 5)
    save_checkpoint({"format": CHECKPOINT_FORMAT, "signature": "sig", "config": {"train": {"epochs": 5}}},
                    folder / "last.pt")
    assert not completed_run(folder, "sig", 5)


def test_a_run_without_best_or_with_an_unreadable_last_is_not_finished(tmp_path):
    assert not completed_run(finished(tmp_path / "a", best=False, state={"epoch": 4}), "sig", 5)
    broken = finished(tmp_path / "b", state={"epoch": 4})
    (broken / "last.pt").write_bytes(b"truncated")
    assert not completed_run(broken, "sig", 5)
    assert not completed_run(tmp_path / "none", "sig", 5)


def model_and_optimizer(seed: int):
    torch.manual_seed(seed)
    model = torch.nn.Linear(3, 1)
    opt = torch.optim.AdamW(model.parameters(), lr=0.1)
    model(torch.ones(2, 3)).sum().backward()
    opt.step()
    return model, opt


def test_resume_loads_the_weights_the_optimizer_and_the_state(tmp_path, caplog):
    saved, saved_opt = model_and_optimizer(0)
    state = {"epoch": 3, "best": 0.5}
    checkpoint(tmp_path / "last.pt", model=saved.state_dict(), optimizer=saved_opt.state_dict(), state=state,
               epoch=3)
    model, opt = model_and_optimizer(1)
    with caplog.at_level(logging.INFO, logger="trml.checkpoint"):
        assert resume(tmp_path / "last.pt", "sig", model, opt, fresh={"epoch": -1}) == state
    assert caplog.messages == [f"{tmp_path / 'last.pt'}: resuming after epoch 3"]
    assert torch.equal(model.weight, saved.weight)
    assert torch.equal(opt.state_dict()["state"][0]["exp_avg"], saved_opt.state_dict()["state"][0]["exp_avg"])


def test_resume_starts_fresh_without_a_matching_readable_last(tmp_path, caplog):
    fresh = {"epoch": -1}
    model, opt = model_and_optimizer(1)
    before = model.weight.clone()
    assert resume(tmp_path / "last.pt", "sig", model, opt, fresh) is fresh
    saved, saved_opt = model_and_optimizer(0)
    checkpoint(tmp_path / "last.pt", model=saved.state_dict(), optimizer=saved_opt.state_dict())
    with caplog.at_level(logging.INFO, logger="trml.checkpoint"):
        assert resume(tmp_path / "last.pt", "changed", model, opt, fresh) is fresh
    path = tmp_path / "last.pt"
    assert caplog.messages == [f"{path}: config or data changed since it was written; training from scratch"]
    path.write_bytes(b"half")
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="trml.checkpoint"):
        assert resume(path, "sig", model, opt, fresh) is fresh
    [message] = caplog.messages
    assert message.startswith(f"{path}: cannot be read ({path}: not a readable checkpoint (")
    assert message.endswith("); training from scratch")
    assert torch.equal(model.weight, before)
