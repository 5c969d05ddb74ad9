"""A training run as a user meets it: the early-stopping count, what `trml train` writes (summary.json,
train.memmap_dir), the lnln intra error, and the progress bar on a terminal."""
import io
import json
import re
import sys

import pytest
import torch

from tests.test_trml import DS, one_thread, small_model, small_train, write_fixture  # noqa: F401 (autouse)
from trml.data import load_dataset


@pytest.fixture(scope="module")
def fixture_dir(tmp_path_factory):
    return write_fixture(tmp_path_factory.mktemp("training_run"))


class Terminal(io.StringIO):
    def isatty(self):
        return True


def terminal(monkeypatch) -> Terminal:
    """Make stderr (where tqdm writes) a terminal; returns what the progress bar shows there. Called in the test
    body: pytest's capture resets sys.stderr between a fixture's setup and the test."""
    import tqdm
    term = Terminal()
    monkeypatch.setattr(sys, "stderr", term)
    # No monitor thread: a bar shown in this process would otherwise leave one running, and a process forked
    # from it later (mutmut forks one per mutant) can hang on the lock that thread holds.
    monkeypatch.setattr(tqdm.tqdm, "monitor_interval", 0)
    return term


def test_patience_counts_the_epochs_since_the_last_improvement():
    """Valid losses best, worse, better, worse, worse with patience 2 stop after the last epoch, not before it."""
    from trml.train import record_epoch
    state = {"epoch": -1, "best_epoch": -1, "best_score": None, "bad_epochs": 0, "stopped": False, "log": []}
    cfg = small_train(patience=2)
    stopped = []
    for epoch, loss in enumerate([1.0, 2.0, 0.5, 2.0, 2.0]):
        record_epoch(state, epoch, {"train_loss": 1.0}, loss, {}, cfg)
        stopped.append(state["stopped"])
    assert stopped == [False, False, False, False, True], stopped
    assert state["best_epoch"] == 2


def test_a_train_run_writes_its_summary_and_keeps_its_tensors_in_train_memmap_dir(fixture_dir, tmp_path):
    """`trml train`: summary.json says which dataset the run trained on, and with train.memmap_dir the dataset's
    feature tensors are .npy files in <memmap_dir>/<dataset>. One test, so that whatever runs train() checks both
    (mutmut runs only the tests that call the mutated function)."""
    from trml.train import train
    train(DS, small_model(), small_train(epochs=1, memmap_dir=str(tmp_path / "mm")), fixture_dir, tmp_path / "models")
    summary = json.loads((tmp_path / "models" / DS / "trml" / "summary.json").read_text())
    assert summary.get("dataset") == DS, sorted(summary)
    mm = tmp_path / "mm" / DS
    names = sorted(p.name for p in mm.iterdir()) if mm.is_dir() else []
    assert names == [f"{DS}.{s}.npy" for s in
                     ("audio_librosa", "face_mediapipe", "text_minilm", "vision_clip")], names


def test_lnln_intra_without_sequence_widths_says_what_to_give():
    """train.lnln_mask intra needs the sequence widths, and the error says so."""
    from trml.train import simulated_mask
    cfg = small_train(regime="lnln", lnln_mask="intra")
    with pytest.raises(ValueError, match=r"train\.lnln_mask intra masks steps: give the sequence widths"):
        simulated_mask(torch.ones(4, 3, dtype=torch.bool), cfg, seed=0)


def test_a_resumed_run_shows_its_name_and_the_epochs_done_on_a_terminal(monkeypatch, tmp_path):
    """On a terminal, a run resumed after 5 of 30 epochs shows "train <name>" at 5/30; a finished run shows none."""
    from trml.train import epoch_bar
    term = terminal(monkeypatch)
    epoch_bar({"epoch": 4, "stopped": False, "best_epoch": 3}, small_train(epochs=30), "fx/trml", tmp_path).close()
    shown = term.getvalue()
    assert "train fx/trml" in shown and "5/30" in shown, repr(shown)
    term.seek(0), term.truncate()
    epoch_bar({"epoch": 29, "stopped": False, "best_epoch": 3}, small_train(epochs=30), "fx/trml", tmp_path).close()
    assert term.getvalue() == ""


def test_a_training_run_shows_its_valid_loss_on_a_terminal(fixture_dir, monkeypatch, tmp_path):
    """On a terminal, the training bar shows the epoch's valid loss ("valid=<number>")."""
    from trml.train import fit
    data = load_dataset(DS, small_model(), fixture_dir)
    term = terminal(monkeypatch)
    fit(data, small_model(), small_train(epochs=1), tmp_path)
    shown = term.getvalue()
    assert re.search(r"valid=\d+\.\d{4}", shown), repr(shown)
