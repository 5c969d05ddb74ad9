"""The built-in sample benchmark: a small, generated, deterministic dataset in MMSA layout.

`generate_sample(out_dir, cfg)` writes

    <out_dir>/label.csv                      video_id,clip_id,text,label,label_T,label_A,label_V,annotation,mode
    <out_dir>/Raw/<video_id>/<clip_id>.mp4   H.264 (yuv420p) video + AAC mono audio, written with PyAV

so that the whole pipeline (index, extract, train, evaluate) runs offline on real media files.

How the label reaches each modality (all synthetic; the README says so):
- Every clip has a sentiment `label` in [-3, 3]. Each modality sees its own noisy copy of it
  (`label_T`, `label_A`, `label_V`, as CH-SIMS annotates unimodal labels), drawn with independent
  noise, so no single modality predicts `label` perfectly and fusing them helps.
- text: a sentence whose sentiment words follow the sign and strength of `label_T`, mixed with
  neutral filler and, sometimes, a contrasting clause.
- audio: a voice-like harmonic tone with vibrato and a syllable-like envelope; its pitch, loudness
  and speaking rate rise with `label_A`. Each video has its own "speaker" pitch; background noise varies.
- vision: the astronaut face photo from scikit-image. Warping the mouth does not move mediapipe's
  blendshapes (checked: moving the mouth corners or jaw by up to 40 px leaves mouthSmile and
  jawOpen as they were), so the label is carried by what the landmarker and CLIP do see: head roll
  (about 6.5 degrees per label unit, so +-20 degrees at the ends), face scale, brightness and colour
  warmth. Small per-frame sway and flicker make every frame different.

A few clips are defective on purpose (a corrupt file, a clip without an audio stream, a clip without
a face, a row with empty text) so that the natural-missingness path runs in every demo. Their rows
stay in label.csv; `generate_sample` reports which utterances they are.

Determinism: every random draw comes from a generator seeded by (cfg.seed, clip index, modality), and
x264 runs single-threaded, so the same config gives byte-identical files. Files are written to a
temporary name and renamed, and label.csv is written last, so an interrupted run never leaves a
half-written file at a final path (and no label.csv that points at missing clips).
"""
from __future__ import annotations

import csv
import io
import logging
import math
import time
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import numpy as np

from common.files import atomic_path
from features.config import SampleConfig
from features.media import write_clip

log = logging.getLogger("features.sample")

LABEL_COLUMNS = ("video_id", "clip_id", "text", "label", "label_T", "label_A", "label_V", "annotation", "mode")
SPLITS = ("train", "valid", "test")
SPLIT_FRACTIONS = (0.70, 0.15, 0.15)
AUDIO_BIT_RATE = 48_000          # AAC mono: small files, and plenty for a synthetic voice
DEFECT_KINDS = ("corrupt_file", "no_audio_stream", "no_face", "empty_text")
# Where each defect goes: the train split gets two, so training always meets natural missingness,
# and valid/test get one each, so evaluation does too.
DEFECT_SPLITS = {"corrupt_file": "train", "no_face": "train", "empty_text": "valid", "no_audio_stream": "test"}

# Standard deviation of each modality's own copy of the label (label_T/A/V = label + noise).
# With labels roughly uniform on [-3, 3] (variance 3), sd 0.9 gives r ~ 0.89 per modality,
# while the mean of the three gives r ~ 0.96: fusion helps.
MODALITY_NOISE_SD = {"T": 0.9, "A": 0.9, "V": 0.9}

# Vision: how the label is drawn into the frame.
ROLL_DEG_PER_UNIT = 6.5          # +-19.5 degrees at |label_V| = 3; the landmarker still finds the face
BRIGHTNESS_LOG2_PER_UNIT = 0.10  # gain 2**(0.1 * label_V): x0.81 .. x1.23
WARMTH_PER_UNIT = 0.04           # red gain up, blue gain down as label_V rises
SCALE_PER_UNIT = 0.04            # the face is shown slightly larger when positive

# Audio: how the label is voiced.
BASE_F0_HZ = 165.0
F0_OCTAVES_PER_UNIT = 1 / 6      # 2**(label_A / 6): x0.71 .. x1.41 -> about 115 .. 235 Hz
RMS_DB_AT_ZERO = -22.0
RMS_DB_PER_UNIT = 2.5
SYLLABLES_PER_S_AT_ZERO = 4.0
SYLLABLES_PER_S_PER_UNIT = 0.5

# Text: word lists by polarity and strength. Exposed so tests (and users) can check the text signal.
STRONG_POSITIVE = ("amazing", "brilliant", "fantastic", "wonderful", "outstanding", "superb", "excellent", "magnificent")
MILD_POSITIVE = ("good", "nice", "pleasant", "enjoyable", "decent", "charming", "fun", "solid")
MILD_NEGATIVE = ("boring", "dull", "weak", "mediocre", "bland", "slow", "disappointing", "forgettable")
STRONG_NEGATIVE = ("terrible", "awful", "horrible", "dreadful", "unbearable", "pathetic", "atrocious", "painful")
POSITIVE_WORDS = STRONG_POSITIVE + MILD_POSITIVE
NEGATIVE_WORDS = STRONG_NEGATIVE + MILD_NEGATIVE
_SUBJECTS = ("the movie", "the film", "the acting", "the story", "the plot", "the soundtrack",
             "the main character", "the ending", "the dialogue", "the cast", "the pacing", "the camera work")
_OPENERS = ("i think", "honestly", "well", "so", "um", "i mean", "to be fair", "basically", "you know", "")
_NEUTRAL_CLAUSES = ("it was about two hours long", "i saw it last weekend", "it is based on a book",
                    "there were a lot of people in it", "i watched it with my brother",
                    "it came out a few years ago", "the theater was pretty full", "it had a sequel")
_MILD_ADVERBS = ("kind of", "pretty", "fairly", "somewhat", "quite")
_STRONG_ADVERBS = ("really", "extremely", "absolutely", "truly", "incredibly")
_NEUTRAL_VERDICTS = ("okay", "fine i guess", "neither good nor bad", "average", "alright")


@dataclass(frozen=True)
class _Clip:
    index: int
    video_id: str
    clip_id: str
    split: str
    label: float
    label_t: float
    label_a: float
    label_v: float

    @property
    def utterance_id(self) -> str:
        return f"{self.video_id}/{self.clip_id}"


def generate_sample(out_dir: Path, cfg: SampleConfig) -> dict:
    """Write the sample benchmark under `out_dir` (MMSA layout) and return a JSON-able summary."""
    started = time.perf_counter()
    out_dir = Path(out_dir)
    _check_out_dir(out_dir)
    # An old label.csv would describe clips that are about to be rewritten: drop it until the end.
    (out_dir / "label.csv").unlink(missing_ok=True)
    raw_dir = out_dir / "Raw"
    clips = _plan_clips(cfg)
    defects = _choose_defects(clips, cfg.seed)
    defect_of = {index: kind for kind, index in defects.items()}
    log.info("sample: writing %d clips (%d videos, %.1f s each, %dx%d @ %d fps, audio %d Hz) to %s",
             len(clips), len({c.video_id for c in clips}), cfg.duration_s, cfg.width, cfg.height, cfg.fps,
             cfg.sample_rate, out_dir)

    rows = []
    progress_step = max(1, math.ceil(len(clips) / 10))
    for n_done, clip in enumerate(clips, start=1):
        kind = defect_of.get(clip.index)
        path = raw_dir / clip.video_id / f"{clip.clip_id}.mp4"
        path.parent.mkdir(parents=True, exist_ok=True)
        _write_clip(path, clip, cfg, kind)
        text = "" if kind == "empty_text" else _sentence(clip.label_t, _rng(cfg.seed, clip.index, "text"))
        rows.append(_label_row(clip, text))
        if n_done % progress_step == 0 or n_done == len(clips):
            log.info("sample: %d/%d clips written (%d%%), %.1f s", n_done, len(clips),
                     round(100 * n_done / len(clips)), time.perf_counter() - started)

    _remove_stale_clips(raw_dir, {raw_dir / c.video_id / f"{c.clip_id}.mp4" for c in clips})
    # label.csv last: its presence means every clip it lists is complete.
    with atomic_path(out_dir / "label.csv") as tmp:
        tmp.write_bytes(_csv_bytes(rows))

    splits = {s: sum(c.split == s for c in clips) for s in SPLITS}
    summary = {
        "n_clips": len(clips),
        "n_videos": len({c.video_id for c in clips}),
        "splits": splits,
        "defects": {kind: clips[index].utterance_id for kind, index in defects.items()},
        "seed": cfg.seed,
        "out_dir": str(out_dir.resolve()),
        "elapsed_s": round(time.perf_counter() - started, 3),
    }
    log.info("sample: done in %.1f s: %s, defects %s", summary["elapsed_s"], splits, summary["defects"])
    return summary


# ----------------------------------------------------------------------------------------------
# Layout: videos, splits, labels, defects


def _rng(seed: int, index: int, stream: str) -> np.random.Generator:
    """An independent generator per (seed, clip, purpose): clips do not depend on generation order,
    and the noise of one modality is independent of another's."""
    return np.random.default_rng([seed, index, int.from_bytes(stream.encode(), "little") % (2**63)])


def _plan_clips(cfg: SampleConfig) -> list[_Clip]:
    """Group clips into videos, give whole videos to splits (~70/15/15 of clips), draw the labels."""
    rng = np.random.default_rng([cfg.seed, 0x5A4D])
    n = cfg.size
    # About 10 clips per video at the default size; smaller per video for tiny samples so that
    # every split still gets several videos.
    mean_per_video = int(np.clip(n // 12, 1, 10))
    group_sizes = []
    while sum(group_sizes) < n:
        low, high = max(1, mean_per_video - mean_per_video // 3), mean_per_video + mean_per_video // 3
        group_sizes.append(int(min(rng.integers(low, high + 1), n - sum(group_sizes))))
    n_videos = len(group_sizes)
    width = max(4, len(str(n_videos - 1)))
    video_ids = [f"vid{v:0{width}d}" for v in range(n_videos)]

    # Whole videos go to one split, in a shuffled order, until each split's share of clips is reached.
    order = rng.permutation(n_videos)
    split_of = {}
    targets = np.cumsum(SPLIT_FRACTIONS) * n
    assigned, previous = 0, 0
    for rank, v in enumerate(order):
        remaining_videos = n_videos - rank
        # The split whose share the video's middle clip falls in (closest to the target fractions),
        # never skipping a split, and leaving at least one video for each later split.
        split_index = int(np.searchsorted(targets, assigned + group_sizes[v] / 2, side="right"))
        split_index = min(split_index, previous + 1, len(SPLITS) - 1)
        split_index = max(split_index, len(SPLITS) - remaining_videos)
        split_of[v] = SPLITS[split_index]
        assigned, previous = assigned + group_sizes[v], split_index

    # Stratified labels: one draw in each of n equal bins over [-3, 3], shuffled, so any size
    # covers the whole range (like MOSI's, rounded to one decimal).
    labels = (rng.permutation(n) + rng.random(n)) / n * 6.0 - 3.0
    clips = []
    index = 0
    for v, size in enumerate(group_sizes):
        for c in range(size):
            label = _round_label(labels[index])
            noise = _rng(cfg.seed, index, "unimodal-labels").normal(0.0, 1.0, 3)
            label_t, label_a, label_v = (
                _round_label(label + MODALITY_NOISE_SD[m] * z) for m, z in zip("TAV", noise))
            clips.append(_Clip(index, video_ids[v], str(c + 1), split_of[v], label, label_t, label_a, label_v))
            index += 1
    return clips


def _round_label(x: float) -> float:
    return float(np.round(np.clip(x, -3.0, 3.0), 1)) + 0.0  # + 0.0 turns -0.0 into 0.0


def _choose_defects(clips: list[_Clip], seed: int) -> dict[str, int]:
    """One clip per defect kind, in the split DEFECT_SPLITS names, all distinct."""
    rng = np.random.default_rng([seed, 0xDEFEC7])
    taken: set[int] = set()
    chosen = {}
    for kind in DEFECT_KINDS:
        candidates = [c.index for c in clips if c.split == DEFECT_SPLITS[kind] and c.index not in taken]
        if not candidates:  # a tiny sample: take any clip not yet used
            candidates = [c.index for c in clips if c.index not in taken]
        pick = int(candidates[rng.integers(len(candidates))])
        taken.add(pick)
        chosen[kind] = pick
    return chosen


def _label_row(clip: _Clip, text: str) -> list[str]:
    annotation = "Positive" if clip.label > 0 else "Negative" if clip.label < 0 else "Neutral"
    return [clip.video_id, clip.clip_id, text, f"{clip.label:.1f}", f"{clip.label_t:.1f}",
            f"{clip.label_a:.1f}", f"{clip.label_v:.1f}", annotation, clip.split]


def _csv_bytes(rows: list[list[str]]) -> bytes:
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(LABEL_COLUMNS)
    writer.writerows(rows)
    return buffer.getvalue().encode("utf-8")


# ----------------------------------------------------------------------------------------------
# Files


def _check_out_dir(out_dir: Path) -> None:
    """Refuse to write into a folder that holds anything but a previous sample (no clobbering)."""
    if out_dir.exists() and not out_dir.is_dir():
        raise NotADirectoryError(f"sample output {out_dir} exists and is not a folder; choose another --out")
    if out_dir.is_dir():
        foreign = sorted(p.name for p in out_dir.iterdir() if p.name not in {"label.csv", "Raw"})
        if foreign:
            raise FileExistsError(
                f"sample output {out_dir} holds files that are not a sample benchmark ({', '.join(foreign[:5])}); "
                "choose an empty or new folder, or delete it first")


def _remove_stale_clips(raw_dir: Path, keep: set[Path]) -> None:
    """Delete clips (and temporary files) left by an earlier, larger or interrupted run."""
    stale = [p for p in raw_dir.glob("*/*") if p.is_file() and p not in keep
             and (p.suffix == ".mp4" or p.name.endswith(".tmp"))]
    for p in stale:
        p.unlink()
    for d in raw_dir.iterdir():
        if d.is_dir() and not any(d.iterdir()):
            d.rmdir()
    if stale:
        log.info("sample: removed %d stale files from an earlier run under %s", len(stale), raw_dir)


def _write_clip(path: Path, clip: _Clip, cfg: SampleConfig, defect: str | None) -> None:
    frames = _frames(clip, cfg, face=defect != "no_face")
    audio = None if defect == "no_audio_stream" else _voice(clip, cfg)
    with atomic_path(path) as tmp:        # a killed run's leftover .tmp files go in the next run
        write_clip(tmp, frames, fps=cfg.fps, audio=audio, sample_rate=cfg.sample_rate,
                   audio_bit_rate=AUDIO_BIT_RATE)
        if defect == "corrupt_file":
            _corrupt(tmp, _rng(cfg.seed, clip.index, "corrupt"))


def _corrupt(path: Path, rng: np.random.Generator) -> None:
    """Keep the mp4 header but lose the index: truncate to about half and scramble a run of bytes,
    like an interrupted download. Opening or decoding it fails."""
    data = bytearray(path.read_bytes())
    cut = len(data) // 2
    data = data[:cut]
    start = 64
    data[start:start + 256] = rng.integers(0, 256, 256, dtype=np.uint8).tobytes()
    path.write_bytes(bytes(data))


# ----------------------------------------------------------------------------------------------
# Text


def _sentence(label_t: float, rng: np.random.Generator) -> str:
    """A spoken-style review sentence whose sentiment words follow label_t's sign and strength."""
    strength = abs(label_t)
    positive = label_t > 0
    strong, mild = (STRONG_POSITIVE, MILD_POSITIVE) if positive else (STRONG_NEGATIVE, MILD_NEGATIVE)
    opener = str(rng.choice(_OPENERS))
    parts = [opener] if opener else []
    if strength < 0.5:
        parts += [str(rng.choice(_SUBJECTS)), "was", str(rng.choice(_NEUTRAL_VERDICTS))]
    else:
        n_words = 1 if strength < 1.5 else 2 if strength < 2.5 else 3
        for k in range(n_words):
            # Stronger labels use strong words (and intensifiers) more often.
            is_strong = rng.random() < strength / 3.0
            word = str(rng.choice(strong if is_strong else mild))
            adverb = (str(rng.choice(_STRONG_ADVERBS)) if is_strong and strength >= 2.0 and rng.random() < 0.6 else
                      str(rng.choice(_MILD_ADVERBS)) if not is_strong and rng.random() < 0.4 else "")
            clause = [str(rng.choice(_SUBJECTS)), "was"] + ([adverb] if adverb else []) + [word]
            parts += (["and"] if k else []) + clause
        # Noise: sometimes a contrasting remark, so the words alone do not give the label away.
        if rng.random() < 0.2:
            other = MILD_NEGATIVE if positive else MILD_POSITIVE
            parts += ["but", str(rng.choice(_SUBJECTS)), "was", str(rng.choice(other))]
    if rng.random() < 0.5:
        parts += ["and", str(rng.choice(_NEUTRAL_CLAUSES))]
    return " ".join(parts)


# ----------------------------------------------------------------------------------------------
# Audio


def _voice(clip: _Clip, cfg: SampleConfig) -> np.ndarray:
    """A voice-like signal: a harmonic tone with vibrato and a falling contour, shaped into syllables.
    Pitch, loudness and speaking rate rise with label_A; speaker pitch and noise level are nuisances."""
    rng = _rng(cfg.seed, clip.index, "audio")
    speaker = _rng(cfg.seed, _video_number(clip.video_id), "speaker")
    sr, n = cfg.sample_rate, int(round(cfg.duration_s * cfg.sample_rate))
    t = np.arange(n) / sr
    la = clip.label_a

    # Syllables: onsets at the speaking rate with jitter and occasional pauses.
    rate = max(1.5, SYLLABLES_PER_S_AT_ZERO + SYLLABLES_PER_S_PER_UNIT * la + rng.normal(0, 0.3))
    envelope = np.zeros(n)
    accent = np.ones(n)
    onset = rng.uniform(0.03, 0.15)
    while onset < cfg.duration_s - 0.08:
        length = rng.uniform(0.6, 0.85) / rate
        i0, i1 = int(onset * sr), min(n, int((onset + length) * sr))
        if i1 - i0 > 8:
            envelope[i0:i1] = rng.uniform(0.6, 1.0) * np.sin(np.linspace(0, np.pi, i1 - i0)) ** 0.7
            accent[i0:i1] = 1.0 + rng.normal(0, 0.03)
        onset += 1.0 / rate + (rng.uniform(0.12, 0.3) if rng.random() < 0.12 else 0.0)

    # Pitch: label, speaker, vibrato, declination across the utterance, per-syllable accents.
    speaker_factor = 2.0 ** speaker.normal(0, 0.12)
    f0_mean = BASE_F0_HZ * 2.0 ** (F0_OCTAVES_PER_UNIT * la) * speaker_factor
    vibrato = 1.0 + 0.025 * np.sin(2 * np.pi * rng.uniform(4.5, 6.5) * t + rng.uniform(0, 2 * np.pi))
    declination = 1.0 + 0.06 * (0.5 - t / cfg.duration_s)
    f0 = f0_mean * vibrato * declination * accent
    phase = 2 * np.pi * np.cumsum(f0) / sr
    # Harmonics with a spectral tilt and two vowel-like formant bumps; none above Nyquist.
    formants = (rng.uniform(550, 800), rng.uniform(1100, 1900))
    voiced = np.zeros(n)
    for k in range(1, 30):
        fk = k * f0_mean
        if fk * 1.1 >= sr / 2:
            break
        gain = k ** -1.1 * (1 + 2.0 * np.exp(-((fk - formants[0]) / 180) ** 2)
                            + 1.2 * np.exp(-((fk - formants[1]) / 260) ** 2))
        voiced += gain * np.sin(k * phase + rng.uniform(0, 2 * np.pi))
    voiced /= np.sqrt(np.mean(voiced ** 2)) + 1e-12

    breath = rng.normal(0, 0.08, n)
    speech = (voiced + breath) * envelope
    speech /= np.sqrt(np.mean(speech ** 2)) + 1e-12
    level = 10 ** ((RMS_DB_AT_ZERO + RMS_DB_PER_UNIT * la + rng.normal(0, 1.0)) / 20)
    snr_db = rng.uniform(15, 30)
    background = rng.normal(0, 1.0, n) * level * 10 ** (-snr_db / 20)
    return np.clip(speech * level + background, -1.0, 1.0).astype(np.float32)


def _video_number(video_id: str) -> int:
    """A stable integer per video id (Python's hash() is salted per process)."""
    return int.from_bytes(video_id.encode(), "little") % (2**63)


# ----------------------------------------------------------------------------------------------
# Vision


@lru_cache(maxsize=1)
def _face_source() -> np.ndarray:
    """The astronaut photo cropped around the face, as float32 RGB in [0, 1] (320 x 320 px)."""
    from skimage import data  # local import: only the generator needs scikit-image

    return data.astronaut()[0:320, 100:420].astype(np.float32) / 255.0


def _frames(clip: _Clip, cfg: SampleConfig, face: bool):
    """Yield the clip's RGB frames (uint8, height x width x 3), one at a time (memory stays flat)."""
    rng = _rng(cfg.seed, clip.index, "vision")
    n_frames = max(1, int(round(cfg.duration_s * cfg.fps)))
    lv = clip.label_v
    if not face:
        texture = _texture(rng, cfg.height, cfg.width)
    # Per clip: the label plus nuisances (framing, exposure) that differ between clips.
    roll = ROLL_DEG_PER_UNIT * lv + rng.normal(0, 1.5)
    scale = (1.0 + SCALE_PER_UNIT * lv) * rng.uniform(0.95, 1.05)
    shift = rng.normal(0, 0.03, 2) * (cfg.width, cfg.height)
    brightness = 2.0 ** (BRIGHTNESS_LOG2_PER_UNIT * lv + rng.normal(0, 0.03))
    warmth = WARMTH_PER_UNIT * lv + rng.normal(0, 0.01)
    channel_gain = np.array([1 + warmth, 1.0, 1 - warmth], dtype=np.float32) * brightness
    # Per frame: a slow sway of the head and a little flicker, so no two frames are equal.
    sway_hz, sway_phase = rng.uniform(0.3, 0.8), rng.uniform(0, 2 * np.pi)
    for i in range(n_frames):
        t = i / cfg.fps
        sway = np.sin(2 * np.pi * sway_hz * t + sway_phase)
        if face:
            image = _warp_face(roll + 2.0 * sway + rng.normal(0, 0.3), scale,
                               shift + (1.5 * sway, 0.8 * sway), cfg.height, cfg.width)
        else:
            image = np.roll(texture, (int(round(2 * sway)), i), axis=(0, 1))
        flicker = 1.0 + rng.normal(0, 0.01)
        yield (np.clip(image * channel_gain * flicker, 0.0, 1.0) * 255.0 + 0.5).astype(np.uint8)


def _warp_face(roll_deg: float, scale: float, shift, height: int, width: int) -> np.ndarray:
    """The face crop rotated by roll_deg (counter-clockwise on screen) about its centre, scaled and shifted,
    rendered at height x width in one bilinear resampling."""
    # cv2 is installed by mediapipe (opencv-contrib-python); it warps ~15x faster than scipy.ndimage.
    import cv2

    src = _face_source()
    sh, sw = src.shape[:2]
    zoom = min(sh / height, sw / width) / scale
    a = math.radians(roll_deg)
    # Inverse map, in (x, y) pixel coordinates: output pixel -> source pixel.
    rot = zoom * np.array([[math.cos(a), -math.sin(a)], [math.sin(a), math.cos(a)]])
    out_centre = np.array([(width - 1) / 2 + shift[0], (height - 1) / 2 + shift[1]])
    src_centre = np.array([(sw - 1) / 2, (sh - 1) / 2])
    inverse = np.hstack([rot, (src_centre - rot @ out_centre)[:, None]])
    return cv2.warpAffine(src, inverse, (width, height), flags=cv2.INTER_LINEAR | cv2.WARP_INVERSE_MAP,
                          borderMode=cv2.BORDER_REPLICATE)


def _texture(rng: np.random.Generator, height: int, width: int) -> np.ndarray:
    """A smooth coloured noise pattern with no face. Low-pass filtered in the Fourier domain, so it
    tiles seamlessly and frames can drift across it with np.roll."""
    noise = rng.random((height, width, 3))
    fy = np.fft.fftfreq(height)[:, None, None]
    fx = np.fft.rfftfreq(width)[None, :, None]
    lowpass = np.exp(-((fy ** 2 + fx ** 2) * (2 * np.pi * 6.0) ** 2) / 2)  # a Gaussian blur of sigma 6 px
    smooth = np.fft.irfft2(np.fft.rfft2(noise, axes=(0, 1)) * lowpass, s=(height, width), axes=(0, 1))
    smooth = (smooth - smooth.min()) / (np.ptp(smooth) + 1e-9)
    return (0.25 + 0.5 * smooth).astype(np.float32)
