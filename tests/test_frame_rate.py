"""Frames by rate (fps) as well as by count, and mediapipe's VIDEO mode (tracking) where frames are dense:
the right frames on real mp4 files of known frame rate, no tracking state shared between clips, and the
default sampling recorded exactly as before (so default tables keep their bytes)."""
from __future__ import annotations

import numpy as np
import pytest
from skimage.transform import rotate

from features.config import ExtractConfig
from features.extractors import MediaItem, build_extractor
from features.media import read_frames, write_clip
from tests.test_bad_media import face_frames

FPS = 25


@pytest.fixture(scope="module")
def clips(tmp_path_factory):
    d = tmp_path_factory.mktemp("rate")
    faces = face_frames(50, size=192)
    turned = np.stack([(rotate(f, 25, mode="edge") * 255).astype(np.uint8) for f in faces[:, ::-1]])
    return {"a": write_clip(d / "a.mp4", faces, fps=FPS),                 # 2 s at 25 fps
            "b": write_clip(d / "b.mp4", turned, fps=FPS),
            "slow": write_clip(d / "slow.mp4", faces[:10], fps=5)}        # 2 s at 5 fps


def on_screen(k: int, rate: float, native: int = FPS) -> float:
    """The time of the frame on screen at k / rate, for a clip with frames at j / native."""
    return np.floor(k / rate * native + 1e-9) / native


def test_rate_sampling_takes_the_frame_on_screen_every_step(clips):
    at25 = read_frames(clips["a"], 8, fps=25)
    np.testing.assert_allclose(at25.times, np.arange(50) / FPS, atol=1e-6)     # every frame, once
    assert at25.distinct == 50 and not at25.notes
    at10 = read_frames(clips["a"], 8, fps=10)
    np.testing.assert_allclose(at10.times, [on_screen(k, 10) for k in range(20)], atol=1e-6)
    np.testing.assert_array_equal(at10.frames[2], at25.frames[5])             # 0.2 s: frame 5, not frame 4
    native = read_frames(clips["slow"], 8, fps="native")
    np.testing.assert_allclose(native.times, np.arange(10) / 5, atol=1e-6)
    faster = read_frames(clips["slow"], 8, fps=25)
    assert len(faster.times) == 50 and faster.distinct == 10 and "frames repeat" in faster.notes[0]
    capped = read_frames(clips["a"], 8, fps=25, max_frames=20)
    assert len(capped.times) == 20 and "exceed max_frames=20" in capped.notes[0]
    np.testing.assert_allclose(capped.times, read_frames(clips["a"], 20).times)  # = 20 uniformly
    # The count mode is what it was: (i + 0.5) * duration / n.
    np.testing.assert_allclose(read_frames(clips["a"], 4).times, [on_screen(k + 0.5, 2.0) for k in range(4)],
                               atol=1e-6)


def test_both_video_sets_sample_by_rate(clips):
    cfg = ExtractConfig.model_validate({"clip": {"pretrained": None},
                                        "vision_clip": {"fps": 10, "batch_size": 7},   # batches straddle clips
                                        "face_mediapipe": {"fps": 10}})
    items = [MediaItem(n, clips[n]) for n in ("a", "slow")]
    for fs in ("vision_clip", "face_mediapipe"):
        with build_extractor(fs, cfg) as extractor:
            rows = extractor.extract(items)
            params = extractor.info().params
        np.testing.assert_allclose(rows[0].t, [on_screen(k, 10) for k in range(20)], atol=1e-6)
        assert rows[0].seq.shape[0] == 20 and rows[1].seq.shape[0] == 20, fs
        assert params["fps"] == 10 and params["sampling"].startswith("rate:") and "n_frames" not in params


def test_the_default_sampling_is_recorded_as_before():
    """What default tables record, and so their bytes and dvc.lock, did not change with rate sampling."""
    cfg = ExtractConfig.model_validate({"clip": {"pretrained": None}})
    with build_extractor("face_mediapipe", cfg) as face, build_extractor("vision_clip", cfg) as vision:
        face_params, vision_params = face.info().params, vision.info().params
    for params in (face_params, vision_params):
        assert params["n_frames"] == 8 and params["sampling"] == "uniform: frame shown at (i+0.5)*duration/n_frames"
        assert not {"fps", "max_frames", "landmarkers"} & set(params)
    assert face_params["running_mode"] == "IMAGE" and "running_mode" not in vision_params


@pytest.mark.parametrize("landmarkers", [1, 2])
def test_video_mode_never_carries_a_track_from_one_clip_to_the_next(clips, landmarkers):
    cfg = ExtractConfig.model_validate({"face_mediapipe": {"fps": 25}, "landmarkers": landmarkers})
    a, b = MediaItem("a", clips["a"]), MediaItem("b", clips["b"])
    with build_extractor("face_mediapipe", cfg) as extractor:
        assert extractor.tracks(read_frames(clips["a"], 8, fps=25).times)        # auto: 0.04 s apart, VIDEO
        forward = extractor.extract([a, b])
        backward = extractor.extract([b, a])[::-1]
        alone = [extractor.extract([item])[0] for item in (a, b)]
    for one, two, three in zip(forward, backward, alone):
        assert one.status == "ok"
        np.testing.assert_array_equal(one.seq, two.seq)
        np.testing.assert_array_equal(one.seq, three.seq)


def test_a_landmarker_shared_between_clips_would_change_the_rows(clips):
    """The check above has teeth: tracking state carried over from clip a changes clip b's features."""
    cfg = ExtractConfig.model_validate({"face_mediapipe": {"fps": 25}})
    with build_extractor("face_mediapipe", cfg) as extractor:
        a, b = (read_frames(clips[n], 8, fps=25) for n in ("a", "b"))
        with extractor.landmarker(video=True) as shared:
            extractor.detect_frames(shared, a.frames, a.times)
            carried = extractor.detect_frames(shared, b.frames, b.times + 2.0)
        fresh = extractor.extract([MediaItem("b", clips["b"])])[0].seq
    assert np.abs(carried - fresh).max() > 1e-3


def test_video_mode_agrees_with_image_mode_on_the_face(clips):
    cfg = ExtractConfig.model_validate({"face_mediapipe": {"fps": 25}})
    image_cfg = ExtractConfig.model_validate({"face_mediapipe": {"fps": 25, "running_mode": "image"}})
    with build_extractor("face_mediapipe", cfg) as tracked, build_extractor("face_mediapipe", image_cfg) as single:
        video = tracked.extract([MediaItem("a", clips["a"])])[0].seq
        image = single.extract([MediaItem("a", clips["a"])])[0].seq
        assert single.info().params["running_mode"] == "IMAGE"
    np.testing.assert_array_equal(video[:, -1], image[:, -1])                   # the face found in every frame
    assert np.abs(video[:, :52] - image[:, :52]).mean() < 0.05
