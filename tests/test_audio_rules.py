"""The extractors' shared status rules (features/extractors/base.py) on exact cases: the loudest-frame level,
too_short and silent at their boundaries, bad media as status rows, and the shard cache key."""
import hashlib
import json
import math
from pathlib import Path

import numpy as np
import pytest

from features.extractors.base import (Extractor, audio_problem, guarded, peak_frame_db, split_by_text,
                                      truncation_detail, versions)
from features.media import AudioClip, MediaError
from features.store import FeatureRow, MediaItem, TableInfo

SR = 16_000
FRAME = 400                       # 25 ms at 16 kHz


def clip(samples, truncated=False, duration=None) -> AudioClip:
    return AudioClip(samples=np.asarray(samples, np.float32), sample_rate=SR, truncated=truncated,
                     source_duration_s=duration)


def test_peak_frame_db_is_the_loudest_aligned_frame():
    x = np.zeros(4 * FRAME, np.float32)
    x[FRAME:2 * FRAME] = 0.5                                        # exactly frame 1
    assert peak_frame_db(x, SR) == pytest.approx(20 * math.log10(0.5))
    # The same burst across a frame boundary: two frames of half the energy each.
    y = np.zeros(4 * FRAME, np.float32)
    y[FRAME // 2:FRAME // 2 + FRAME] = 0.5
    assert peak_frame_db(y, SR) == pytest.approx(20 * math.log10(0.5 * math.sqrt(0.5)))
    # A louder second frame wins over a quieter first.
    z = np.concatenate([np.full(FRAME, 0.1), np.full(FRAME, 0.2)]).astype(np.float32)
    assert peak_frame_db(z, SR) == pytest.approx(20 * math.log10(0.2))


def test_peak_frame_db_edges():
    assert peak_frame_db(np.zeros(2 * FRAME, np.float32), SR) == -200.0          # digital silence
    # Shorter than one frame: the whole clip is the frame.
    assert peak_frame_db(np.full(100, 0.5, np.float32), SR) == pytest.approx(20 * math.log10(0.5))
    # A trailing part frame is not a frame.
    tail = np.concatenate([np.zeros(FRAME), np.full(FRAME // 4, 0.9)]).astype(np.float32)
    assert peak_frame_db(tail, SR) == -200.0
    # At 40 Hz a 25 ms frame is one sample: the loudest sample.
    assert peak_frame_db(np.array([0.0, 1.0, 0.0, 0.0], np.float32), 40) == pytest.approx(0.0)
    # In double precision: the level of a noisy frame is exactly that of its float64 RMS.
    noise = np.random.default_rng(0).uniform(-0.3, 0.3, FRAME).astype(np.float32)
    exact = 20 * math.log10(math.sqrt(float(np.mean(noise.astype(np.float64) ** 2))))
    assert peak_frame_db(noise, SR) == pytest.approx(exact, rel=1e-12)
    # frame_s is honoured: 50 ms frames average the burst with its silent neighbour.
    assert peak_frame_db(np.concatenate([np.full(FRAME, 0.5), np.zeros(FRAME)]).astype(np.float32), SR,
                         frame_s=0.05) == pytest.approx(20 * math.log10(0.5 * math.sqrt(0.5)))


def test_too_short_is_fewer_samples_than_the_window():
    item = MediaItem("u1", Path("/media/u1.wav"))
    loud = np.full(FRAME, 0.5, np.float32)
    assert audio_problem(item, clip(loud), FRAME, "the 25 ms window", -60.0, "audio_ssl") is None
    row = audio_problem(item, clip(loud[:-1]), FRAME, "the 25 ms window", -60.0, "audio_ssl")
    assert (row.utterance_id, row.status, row.present) == ("u1", "too_short", False)
    assert row.detail == "399 samples at 16000 Hz, fewer than the 25 ms window (400 samples)"


def test_silent_is_a_peak_below_the_threshold():
    item = MediaItem("u2", Path("/media/u2.wav"))
    at = np.full(FRAME, 0.01, np.float32)                           # exactly -40 dBFS
    level = peak_frame_db(at, SR)
    assert audio_problem(item, clip(at), 1, "w", level, "audio_opensmile") is None          # at it: not silent
    row = audio_problem(item, clip(at), 1, "w", level + 0.1, "audio_opensmile")
    assert row.status == "silent" and not row.present
    assert row.detail == f"peak 25 ms frame RMS -40.0 dBFS is below audio_opensmile.silence_db {level + 0.1}"
    # Too short wins over silent.
    assert audio_problem(item, clip(np.zeros(10)), 400, "w", -60.0, "k").status == "too_short"


def test_truncation_detail():
    assert truncation_detail(clip(np.zeros(10)), 30.0) is None
    assert truncation_detail(clip(np.zeros(10), True, 95.24), 30.0) == \
        "audio truncated to max_seconds=30.0 (source: 95.2 s)"
    assert truncation_detail(clip(np.zeros(10), True, None), 30.0) == \
        "audio truncated to max_seconds=30.0 (source: longer)"


def test_guarded_turns_each_bad_file_into_its_status_row(caplog):
    item = MediaItem("u3", Path("/media/u3.mp4"))
    assert guarded(item, lambda p: ("decoded", p)) == ("decoded", Path("/media/u3.mp4"))
    missing = guarded(MediaItem("u4"), lambda p: pytest.fail("no file to load"))
    assert (missing.status, missing.detail) == ("missing_file", "no media file for this utterance in the manifest")

    def media_error(path):
        raise MediaError("no_audio_stream", f"{path}: no audio stream")
    row = guarded(item, media_error)
    assert (row.utterance_id, row.status, row.detail) == ("u3", "no_audio_stream", "/media/u3.mp4: no audio stream")

    def surprise(path):
        raise KeyError("moov")
    with caplog.at_level("WARNING", logger="features.extractors.base"):
        row = guarded(item, surprise)
    assert (row.status, row.detail) == ("decode_error", "/media/u3.mp4: KeyError: 'moov'")
    assert caplog.messages == ["u3: unexpected KeyError while decoding /media/u3.mp4: 'moov'"]

    def out_of_memory(path):
        raise MemoryError
    with pytest.raises(MemoryError):                                # the machine's problem, not the file's
        guarded(item, out_of_memory)


def test_split_by_text():
    items = [MediaItem("a", text="hello"), MediaItem("b", text=None), MediaItem("c", text=" \t"),
             MediaItem("d", text="x")]
    rows, todo = split_by_text(items)
    assert todo == [0, 3]
    assert rows[0] is None and rows[3] is None
    assert (rows[1].utterance_id, rows[1].status, rows[1].detail) == ("b", "empty_text", "no transcript")
    assert (rows[2].status, rows[2].detail) == ("empty_text", "transcript is empty or whitespace")


class Fixed(Extractor):
    """An extractor with a fixed description, for the cache key alone."""
    feature_set, modality, kind, extractor_version = "audio_x", "audio", "seq", "3"

    def __init__(self, **changes):
        super().__init__()                                          # the default device
        self.fields = {"dim": 4, "weights_id": "w:1", "weights_sha256": "ab", "feature_names": ["a", "b", "c", "d"],
                       "params": {"hop": 160}} | changes

    @classmethod
    def weights_identity(cls, cfg):
        return {}

    def info(self) -> TableInfo:
        f = self.fields
        return self._table_info(f["dim"], f["weights_id"], f["weights_sha256"], f["feature_names"], f["params"])

    def extract(self, items):
        return []

    def decode(self, path):
        if path.suffix != ".wav":
            raise MediaError("decode_error", f"{path}: not a wav")
        return path.stem

    def model_inputs(self, items):
        raise NotImplementedError

    def bare_forward(self, inputs):
        raise NotImplementedError


def test_the_shard_cache_key_is_stable_and_moves_with_every_field():
    key = Fixed().config_fingerprint()
    # Pinned: a new version of this code must not invalidate every user's cached shards by accident.
    payload = {"feature_set": "audio_x", "extractor": "tests.test_audio_rules.Fixed", "extractor_version": "3",
               "weights_id": "w:1", "weights_sha256": "ab", "dim": 4, "feature_names": ["a", "b", "c", "d"],
               "params": {"hop": 160, "device": "cpu"}}
    assert key == hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()
    assert key == Fixed().config_fingerprint()
    changed = [Fixed(dim=5), Fixed(weights_id="w:2"), Fixed(weights_sha256="cd"), Fixed(feature_names=None),
               Fixed(params={"hop": 320})]
    keys = {c.config_fingerprint() for c in changed}
    assert len(keys) == len(changed) and key not in keys
    bumped = type("Bumped", (Fixed,), {"extractor_version": "4", "__module__": Fixed.__module__})
    other_set = type("Fixed", (Fixed,), {"feature_set": "audio_y", "__module__": Fixed.__module__})
    assert len({key, bumped().config_fingerprint(), other_set().config_fingerprint()}) == 3
    info = Fixed().info()
    assert (info.feature_set, info.modality, info.kind, info.extractor_version) == ("audio_x", "audio", "seq", "3")
    assert info.params == {"hop": 160, "device": "cpu"}
    # A params value that JSON cannot hold (a path) still keys the cache, by its text.
    assert Fixed(params={"root": Path("/a")}).config_fingerprint() != Fixed(params={"root": Path("/b")}).config_fingerprint()
    with Fixed() as extractor:
        assert isinstance(extractor, Fixed)


def test_a_status_row_is_absent():
    row = FeatureRow(utterance_id="u", status="silent", detail="d")
    assert not row.present


def test_decoded_skips_bad_media():
    items = [MediaItem("a", Path("/m/a.wav")), MediaItem("b", Path("/m/b.mp3")), MediaItem("c"),
             MediaItem("d", Path("/m/d.wav"))]
    assert Fixed().decoded(items) == ["a", "d"]


def test_versions_names_each_library_or_says_it_is_missing():
    from importlib.metadata import version
    assert versions("numpy", "no-such-distribution-x") == {"numpy": version("numpy"),
                                                          "no-such-distribution-x": "not installed"}
