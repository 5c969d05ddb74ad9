"""Bad media: every defect becomes its row's status and detail, the shard completes, and the good rows
come out exactly as they do on their own. All files are real, written with PyAV in the test."""
from __future__ import annotations

import os
import time
from pathlib import Path

import av
import numpy as np
import pytest
from skimage.data import astronaut
from skimage.transform import resize

from features.bench import face_at_rate
from features.config import ExtractConfig
from features.extractors import MediaItem, build_extractor
from features.media import SEEK_GAP_S, MediaError, read_audio, read_frames, write_clip
from features.store import STATUSES, rows_to_table
from tests.hf_models import tiny_wav2vec2

SR = 16_000
FPS = 10


def face_frames(n: int, size: int = 192) -> np.ndarray:
    face = (resize(astronaut(), (size, size), anti_aliasing=True) * 255).astype(np.uint8)
    gains = np.linspace(0.9, 1.1, n)
    return np.stack([np.clip(face * g, 0, 255).astype(np.uint8) for g in gains])


def voice(seconds: float, f0: float = 150.0, amp: float = 0.3) -> np.ndarray:
    t = np.arange(int(seconds * SR)) / SR
    tone = sum(np.sin(2 * np.pi * f0 * k * t) / k for k in (1, 2, 3))
    return (amp * tone / 1.8 * (0.6 + 0.4 * np.sin(2 * np.pi * 3 * t) ** 2)).astype(np.float32)


@pytest.fixture(scope="module")
def media(tmp_path_factory) -> dict[str, Path | None]:
    d = tmp_path_factory.mktemp("bad_media")
    good = write_clip(d / "good.mp4", face_frames(20), fps=FPS, audio=voice(2.0), sample_rate=SR)
    data = good.read_bytes()
    rng = np.random.default_rng(0)

    corrupt = bytearray(data)   # container intact, every video and audio packet replaced by noise
    start, end = corrupt.find(b"mdat") + 4, corrupt.find(b"moov") - 4
    assert 0 < start < end, "expected mdat before moov in PyAV's mp4"
    corrupt[start:end] = rng.integers(0, 256, end - start, dtype=np.uint8).tobytes()
    (d / "corrupt.mp4").write_bytes(bytes(corrupt))
    (d / "truncated.mp4").write_bytes(data[: len(data) // 3])        # an interrupted download
    (d / "zero.mp4").write_bytes(b"")
    (d / "text.mp4").write_text("this is a transcript, not a video\n" * 20)

    noise = rng.integers(0, 256, (20, 64, 64, 3), dtype=np.uint8)
    return {
        "good": good,
        "corrupt": d / "corrupt.mp4",
        "truncated": d / "truncated.mp4",
        "zero": d / "zero.mp4",
        "text": d / "text.mp4",
        "missing": d / "does_not_exist.mp4",
        "absent": None,
        "video_only": write_clip(d / "video_only.mp4", face_frames(20), fps=FPS),
        "audio_only": write_clip(d / "audio_only.mp4", None, audio=voice(2.0), sample_rate=SR),
        "silent": write_clip(d / "silent.mp4", face_frames(20), fps=FPS, audio=np.zeros(2 * SR, np.float32),
                             sample_rate=SR),
        "no_face": write_clip(d / "no_face.mp4", noise, fps=FPS, audio=voice(2.0), sample_rate=SR),
        # One video frame (0.1 s, shorter than one sampling step) and 20 ms of audio (< one n_fft window).
        "short": write_clip(d / "short.mp4", face_frames(1), fps=FPS, audio=voice(0.02), sample_rate=SR),
        "odd": write_clip(d / "odd.mp4", face_frames(20, size=97)[:, :61], fps=FPS, audio=voice(2.0),
                          sample_rate=SR),
        # 3 minutes at 5 fps: sampled with seeks, not decoded whole; audio longer than max_seconds.
        # A keyframe every 5 s, as in typical long recordings.
        "long": write_clip(d / "long.mp4", np.repeat(face_frames(30, size=96), 30, axis=0), fps=5,
                           audio=voice(180.0, amp=0.2), sample_rate=SR, gop=25),
    }


# What each feature set must say about each file (None: a present row).
EXPECTED = {
    "vision_clip": {"good": None, "corrupt": "decode_error", "truncated": "decode_error", "zero": "decode_error",
                    "text": "decode_error", "missing": "missing_file", "absent": "missing_file",
                    "video_only": None, "audio_only": "no_video_stream", "silent": None, "no_face": None,
                    "short": None, "odd": None, "long": None},
    "face_mediapipe": {"good": None, "corrupt": "decode_error", "truncated": "decode_error", "zero": "decode_error",
                       "text": "decode_error", "missing": "missing_file", "absent": "missing_file",
                       "video_only": None, "audio_only": "no_video_stream", "silent": None, "no_face": "no_face",
                       "short": None, "long": None},
    "audio_librosa": {"good": None, "corrupt": "decode_error", "truncated": "decode_error", "zero": "decode_error",
                      "text": "decode_error", "missing": "missing_file", "absent": "missing_file",
                      "video_only": "no_audio_stream", "audio_only": None, "silent": "silent", "no_face": None,
                      "short": "too_short", "odd": None, "long": None},
}
# The other audio sets follow audio_librosa's rules: same statuses for the same files.
EXPECTED["audio_opensmile"] = EXPECTED["audio_ssl"] = EXPECTED["audio_librosa"]
# ... and the face at 25 fps (VIDEO mode, landmarkers side by side) the face's.
EXPECTED["face_mediapipe@25fps"] = EXPECTED["face_mediapipe"]


@pytest.fixture(scope="module")
def cfg(tmp_path_factory) -> ExtractConfig:
    return ExtractConfig.model_validate({
        "audio_ssl": {"model": str(tiny_wav2vec2(tmp_path_factory.mktemp("models") / "wav2vec2-tiny"))},
        "clip": {"pretrained": None},                         # tests are offline: random init
        "decode_workers": 2,
        "vision_clip": {"n_frames": 4, "batch_size": 6},      # batches straddle clips
        "face_mediapipe": {"n_frames": 4},
        "audio_librosa": {"max_seconds": 30.0},
    })


@pytest.mark.parametrize("feature_set", list(EXPECTED))
def test_each_defect_gets_its_status_and_good_rows_are_unaffected(feature_set, media, cfg):
    expected = EXPECTED[feature_set]
    items = [MediaItem(name, media[name], None) for name in expected]
    feature_set, _, setting = feature_set.partition("@")
    cfg = face_at_rate(cfg) if setting else cfg
    with build_extractor(feature_set, cfg) as extractor:
        rows = extractor.extract(items)
        alone = extractor.extract([MediaItem("good", media["good"], None)])[0]
        info = extractor.info()
    assert [r.utterance_id for r in rows] == list(expected)
    for row in rows:
        want = expected[row.utterance_id] or "ok"
        assert row.status == want, f"{feature_set} {row.utterance_id}: {row.status} ({row.detail})"
        assert row.status in STATUSES
        if row.status != "ok":
            assert row.detail, f"{row.utterance_id}: a failed row must say why"
            assert row.seq is None
        else:
            assert row.seq.shape[1] == info.dim and np.isfinite(row.seq).all()
    good = rows[0]
    # The good clip comes out the same whether it shares its shard with broken files or not.
    if feature_set == "vision_clip":   # different batch neighbours: same up to float summation order
        np.testing.assert_allclose(good.seq, alone.seq, atol=2e-5)
    else:
        np.testing.assert_array_equal(good.seq, alone.seq)
    np.testing.assert_array_equal(good.t, alone.t)
    table = rows_to_table(rows, info)             # and the whole shard is a valid feature table
    assert table.num_rows == len(items)
    assert table.column("present").to_pylist() == [r.status == "ok" for r in rows]


def test_details_name_the_problem(media, cfg):
    with build_extractor("audio_librosa", cfg) as audio:
        rows = {r.utterance_id: r for r in audio.extract(
            [MediaItem(n, media[n], None) for n in ("zero", "video_only", "silent", "short", "long", "missing")])}
    assert "0 bytes" in rows["zero"].detail
    assert "no audio stream" in rows["video_only"].detail and "video" in rows["video_only"].detail
    assert "silence_db" in rows["silent"].detail
    assert "n_fft" in rows["short"].detail
    assert rows["long"].status == "ok" and "truncated to max_seconds=30.0" in rows["long"].detail
    assert rows["long"].seq.shape[0] == 1 + int(30.0 * SR) // cfg.audio_librosa.hop_length
    assert str(media["missing"]) in rows["missing"].detail


def test_short_and_odd_and_long_clips_are_sampled_sensibly(media):
    short = read_frames(media["short"], 8)
    assert short.frames.shape == (8, 192, 192, 3) and short.distinct == 1
    assert any("shorter than one sampling step" in n for n in short.notes)

    odd = read_frames(media["odd"], 5)
    assert odd.frames.shape == (5, 61, 97, 3) and odd.frames.dtype == np.uint8
    assert read_frames(media["odd"], 2, short_side=224).frames.shape == (2, 224, 356, 3)

    long = read_frames(media["long"], 6)
    assert long.frames.shape == (6, 96, 96, 3)
    step = 180.0 / 6
    assert step > SEEK_GAP_S
    np.testing.assert_allclose(long.times, (np.arange(6) + 0.5) * step, atol=0.21)
    assert long.decoded <= 6 * 25 + 6, f"decoded {long.decoded} of 900 frames: long clips must seek, not decode all"
    # ... and the seeks land on the right frames: compare with a full sequential decode.
    with av.open(str(media["long"])) as container:
        every = [f.to_ndarray(format="rgb24") for f in container.decode(video=0)]
    for frame, t in zip(long.frames, long.times):
        np.testing.assert_array_equal(frame, every[int(round(t * 5))])


def test_media_errors_carry_statuses(media):
    for name, status in [("zero", "decode_error"), ("text", "decode_error"), ("missing", "missing_file"),
                         ("audio_only", "no_video_stream"), ("corrupt", "decode_error")]:
        with pytest.raises(MediaError) as err:
            read_frames(media[name], 4)
        assert err.value.status == status, name
    with pytest.raises(MediaError) as err:
        read_audio(media["video_only"], SR)
    assert err.value.status == "no_audio_stream"


@pytest.mark.parametrize("feature_set", ["text_clip", "text_minilm"])
def test_empty_and_non_ascii_text(feature_set, cfg):
    texts = {"en": "I loved every minute of it.", "empty": "", "blank": " \t\n ", "none": None,
             "fr": "C'était très émouvant, vraiment génial !", "ja": "この映画は本当に素晴らしかった",
             "emoji": "😡😡 worst. film. ever. 👎"}
    with build_extractor(feature_set, cfg) as extractor:
        rows = extractor.extract([MediaItem(k, None, v) for k, v in texts.items()])
    status = {r.utterance_id: r.status for r in rows}
    assert status == {"en": "ok", "empty": "empty_text", "blank": "empty_text", "none": "empty_text",
                      "fr": "ok", "ja": "ok", "emoji": "ok"}
    embs = np.stack([r.emb for r in rows if r.status == "ok"])
    np.testing.assert_allclose(np.linalg.norm(embs, axis=1), 1.0, atol=1e-5)
    assert len({e.tobytes() for e in embs}) == len(embs), "different texts must embed differently"


def test_a_dying_decoder_process_costs_one_row_not_the_shard(media, cfg):
    """If the decoder process dies (as FFmpeg can on a hostile file), that file gets decode_error, a new
    process decodes the rest, and nothing is lost or reordered."""
    import signal

    from features.extractors.decoding import DecoderSlot, decode_in_process

    names = ["good", "odd", "absent", "audio_only", "video_only"]
    items = [MediaItem(n, media[n], None) for n in names]
    slot = DecoderSlot()
    first = slot.get()
    os.kill(first.proc.pid, signal.SIGKILL)        # dies before it answers the first request
    first.proc.wait()
    kwargs = {"sample_rate": SR, "max_seconds": 30.0}
    out = dict(decode_in_process(slot, items, lambda it: ("audio", str(it.media_path), kwargs),
                                 lambda it: pytest.fail("must not fall back to inline decoding")))
    try:
        assert slot.decoder is not None and slot.decoder is not first
        assert out[0].status == "decode_error" and "decoder process died" in out[0].detail
        assert out[2].status == "missing_file" and out[4].status == "no_audio_stream"
        assert out[1].samples.size == 2 * SR and out[3].samples.size == 2 * SR
    finally:
        slot.discard()


def test_decoder_process_exits_when_its_parent_is_killed(media, tmp_path):
    import signal
    import subprocess
    import sys

    script = tmp_path / "parent.py"
    script.write_text(
        "import sys, time\n"
        "from pathlib import Path\n"
        "from features.config import ExtractConfig\n"
        "from features.extractors import MediaItem, build_extractor\n"
        "ext = build_extractor('audio_librosa', ExtractConfig())\n"
        f"ext.extract([MediaItem('a', Path({str(media['good'])!r}))])\n"
        "print(ext._decoder.decoder.proc.pid, flush=True)\n"
        "time.sleep(120)\n")
    root = Path(__file__).resolve().parents[1]
    parent = subprocess.Popen([sys.executable, str(script)], stdout=subprocess.PIPE, text=True, cwd=root,
                              env={**os.environ, "PYTHONPATH": str(root)})
    try:
        child = int(parent.stdout.readline())
        os.kill(child, 0)                                  # alive while the parent is
        parent.send_signal(signal.SIGKILL)                 # no chance to clean up
        parent.wait(timeout=30)
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline and Path(f"/proc/{child}").exists() and \
                Path(f"/proc/{child}/stat").read_text().split()[2] != "Z":
            time.sleep(0.1)
        alive = Path(f"/proc/{child}").exists() and Path(f"/proc/{child}/stat").read_text().split()[2] != "Z"
        assert not alive, "the decoder process outlived its killed parent"
    finally:
        parent.kill()
