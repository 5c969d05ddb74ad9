"""A cut mp4 (an interrupted download or copy) whose header still claims the full duration: the detail says
how much was decoded of what the container claims, not that the clip is short."""
from __future__ import annotations

from pathlib import Path

import av
import numpy as np
import pytest

from features.config import ExtractConfig
from features.extractors.base import MediaItem
from features.extractors.face_mediapipe import FaceMediapipeExtractor
from features.media import read_frames, write_clip

FPS, SECONDS = 10, 20


def faststart_copy(src: Path, dst: Path) -> Path:
    """Remux with the index (moov) first, as streaming-ready files are: cut, the file still opens."""
    with av.open(str(src)) as inp, av.open(str(dst), "w", format="mp4", options={"movflags": "+faststart"}) as out:
        streams = {s.index: out.add_stream_from_template(s) for s in inp.streams}
        for packet in inp.demux():
            if packet.dts is not None:
                packet.stream = streams[packet.stream.index]
                out.mux(packet)
    return dst


@pytest.fixture(scope="module")
def clips(tmp_path_factory) -> dict[str, Path]:
    folder = tmp_path_factory.mktemp("cut")
    from skimage.data import astronaut
    from skimage.transform import resize
    face = (resize(astronaut(), (160, 160), anti_aliasing=True) * 255).astype(np.uint8)  # the landmarker finds it
    frames = np.stack([np.clip(face.astype(np.int16) + (i % 20) - 10, 0, 255).astype(np.uint8)
                       for i in range(FPS * SECONDS)])
    full = faststart_copy(write_clip(folder / "raw.mp4", frames, fps=FPS, gop=FPS), folder / "full.mp4")
    cut = folder / "cut.mp4"
    data = full.read_bytes()
    cut.write_bytes(data[:int(len(data) * 0.3)])
    short = write_clip(folder / "short.mp4", frames[:1], fps=FPS)            # really one frame long
    return {"full": full, "cut": cut, "short": short}


def test_a_cut_file_says_how_much_was_decoded(clips):
    sample = read_frames(clips["cut"], 8)
    (note,) = sample.notes
    decoded = float(note.split("decoded ")[1].split(" s")[0])
    last = float(sample.times.max())
    assert note.startswith("file cut short: decoded ")
    assert f"of the {SECONDS:.3f} s that the container claims" in note
    assert decoded == pytest.approx(last + 1 / FPS, abs=1e-3) and 1 < decoded < 0.5 * SECONDS
    unseen = int(note.split("stands in for ")[1].split(" of")[0])
    assert unseen == sum((i + 0.5) * SECONDS / 8 > decoded for i in range(8))
    assert "shorter than one sampling step" not in note


def test_complete_and_really_short_clips_keep_their_notes(clips):
    assert read_frames(clips["full"], 8).notes == []
    (note,) = read_frames(clips["short"], 8).notes
    assert note.startswith("clip shorter than one sampling step: 1 distinct frame(s) for 8 samples")


def test_the_feature_row_carries_it(clips):
    """Through a real extractor: the row is present (its frames are real) and its detail says it was cut."""
    extractor = FaceMediapipeExtractor(ExtractConfig())
    (row,) = extractor.extract([MediaItem("cut", clips["cut"])])
    assert row.status == "ok" and "file cut short: decoded" in row.detail and "container claims" in row.detail
