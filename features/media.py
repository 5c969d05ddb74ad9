"""Media decoding with PyAV: stream probing, uniform frame sampling and mono audio at a fixed rate.

Every failure is a `MediaError` whose `status` is one of the feature-table statuses
(missing_file, decode_error, no_video_stream, no_audio_stream, too_short), so extractors can turn
bad media into a row instead of an exception. There is no system ffmpeg here: PyAV bundles
FFmpeg's libraries, which is also why audio is not read with librosa.load.
"""
from __future__ import annotations

import itertools
import math
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

import av
import numpy as np

# When the next sampled time lies this far beyond the last decoded frame, seek to it instead of
# decoding everything in between: a seek costs at most one GOP, so long clips are never decoded whole.
SEEK_GAP_S = 4.0

# FFmpeg's own decoder threading (slice and frame threads, as many as there are cores).
VIDEO_THREAD_TYPE = "AUTO"

# Rate sampling: a frame stamped within this of a sampling time counts as on screen at it.
RATE_EPS_S = 1e-6


class MediaError(Exception):
    """A media file can't give what was asked; `status` is the feature-table status for it."""

    def __init__(self, status: str, detail: str):
        super().__init__(f"{status}: {detail}")
        self.status = status
        self.detail = detail


@dataclass(frozen=True)
class VideoStreamInfo:
    width: int
    height: int
    fps: float | None
    frames: int | None          # as declared by the container (0 or None when unknown)
    codec: str


@dataclass(frozen=True)
class AudioStreamInfo:
    sample_rate: int
    channels: int
    codec: str


@dataclass(frozen=True)
class MediaInfo:
    path: Path
    duration_s: float | None
    video: VideoStreamInfo | None
    audio: AudioStreamInfo | None


@dataclass
class FrameSample:
    """Frames sampled from a clip: RGB uint8 (n, H, W, 3), their presentation times (s) and notes."""
    frames: np.ndarray
    times: np.ndarray
    decoded: int = 0            # frames the decoder produced (long clips: far fewer than the clip has)
    notes: list[str] = field(default_factory=list)

    @property
    def distinct(self) -> int:
        return int(np.unique(self.times).size)


@dataclass
class AudioClip:
    """Mono float32 samples in [-1, 1] at `sample_rate`; `truncated` when max_seconds cut it."""
    samples: np.ndarray
    sample_rate: int
    truncated: bool
    source_duration_s: float | None


def _open(path: str | Path, options: dict[str, str] | None = None) -> av.container.InputContainer:
    path = Path(path)
    if not path.is_file():
        raise MediaError("missing_file", f"{path}: no such file")
    if path.stat().st_size == 0:
        raise MediaError("decode_error", f"{path}: empty file (0 bytes)")
    try:
        return av.open(str(path), mode="r", options=options or {})
    except av.FFmpegError as exc:
        raise MediaError("decode_error", f"{path}: not readable as media ({exc})") from None


def probe(path: str | Path) -> MediaInfo:
    """Streams and duration of a media file, from its headers (nothing is decoded)."""
    with _open(path) as container:
        video = audio = None
        if container.streams.video:
            vs = container.streams.video[0]
            rate = vs.average_rate or vs.base_rate
            video = VideoStreamInfo(width=vs.codec_context.width, height=vs.codec_context.height,
                                    fps=float(rate) if rate else None, frames=vs.frames or None,
                                    codec=vs.codec_context.name)
        if container.streams.audio:
            aus = container.streams.audio[0]
            audio = AudioStreamInfo(sample_rate=aus.codec_context.sample_rate,
                                    channels=aus.codec_context.channels, codec=aus.codec_context.name)
        duration = container.duration / av.time_base if container.duration else None
        return MediaInfo(Path(path), duration, video, audio)


def _stream_span(container, stream) -> tuple[float, float | None]:
    """(start, duration) of a stream in seconds; duration from the stream, the container, or a demux pass."""
    tb = stream.time_base
    start = float(stream.start_time * tb) if stream.start_time is not None else 0.0
    if stream.duration:
        return start, float(stream.duration * tb)
    if container.duration:
        return start, container.duration / av.time_base
    # No duration in the headers: read packet timestamps (demuxing is cheap, nothing is decoded).
    end = None
    for packet in container.demux(stream):
        if packet.pts is not None:
            pend = float((packet.pts + (packet.duration or 0)) * tb)
            end = pend if end is None else max(end, pend)
    container.seek(0)
    return start, (end - start) if end is not None else None


def _target_size(width: int, height: int, short_side: int | None) -> tuple[int, int] | None:
    """The (width, height) that makes the shorter side `short_side`, keeping the aspect ratio."""
    if short_side is None or min(width, height) == short_side:
        return None
    scale = short_side / min(width, height)
    return max(short_side, round(width * scale)), max(short_side, round(height * scale))


def _decoded(container, stream, errors: list[str]):
    """The decoded frames of one stream (video or audio) from the current position to the end.

    A damaged packet is skipped and a broken tail ends the stream early; each is noted in `errors`, so a
    partly readable file still gives what it has."""
    try:
        for packet in container.demux(stream):
            try:
                frames = packet.decode()
            except av.FFmpegError as exc:
                errors.append(str(exc))
                continue
            yield from frames
    except av.FFmpegError as exc:
        errors.append(str(exc))


def _decoded_frames(container, stream, errors: list[str]):
    """(frame, time in s) of a video stream from the current position to the end (see _decoded)."""
    rate = stream.average_rate or stream.base_rate
    for count, frame in enumerate(_decoded(container, stream, errors), start=1):
        if frame.time is not None:
            yield frame, float(frame.time)
        elif rate:                              # no timestamps (raw streams): count frames instead
            yield frame, (count - 1) / float(rate)


def read_frames(path: str | Path, n: int, *, short_side: int | None = None, fps: float | str | None = None,
                max_frames: int = 500) -> FrameSample:
    """Sample frames: `n` uniformly in time (the frame on screen at (i + 0.5) * duration / n), or with `fps`
    the frame on screen every 1/fps s from the first (fps "native": the stream's average rate). A clip that
    would give more than `max_frames` at that rate gets `max_frames` uniformly instead, noted in `notes`.

    The clip is decoded once, front to back; when the next sampled time is more than SEEK_GAP_S
    ahead, it seeks there instead (hours-long clips cost n short decodes). Only the chosen frames are
    converted to RGB, and `short_side` folds a resize into that single conversion (swscale, bicubic).
    A clip with fewer frames than asked for repeats its frames and says so in `notes`.
    """
    if n < 1:
        raise ValueError(f"n must be >= 1, got {n}")
    with _open(path) as container:
        if not container.streams.video:
            kinds = [s.type for s in container.streams] or ["none"]
            raise MediaError("no_video_stream", f"{path}: no video stream (streams: {', '.join(kinds)})")
        vs = container.streams.video[0]
        vs.thread_type = VIDEO_THREAD_TYPE
        try:
            start, duration = _stream_span(container, vs)
        except av.FFmpegError as exc:
            raise MediaError("decode_error", f"{path}: unreadable while scanning timestamps ({exc})") from None
        duration = duration if duration and duration > 0 else 0.0
        notes: list[str] = []
        rate_fps = None
        if fps is not None:
            declared = vs.average_rate or vs.base_rate
            rate_fps = float(declared) if fps == "native" and declared else (None if fps == "native" else float(fps))
            count = max(1, math.ceil(duration * rate_fps - RATE_EPS_S * rate_fps)) if rate_fps else 0
            if not rate_fps or count > max_frames:
                notes.append(f"{count} frames at {rate_fps:g} fps exceed max_frames={max_frames}: {max_frames} sampled "
                             "uniformly instead" if rate_fps else f"fps native: the stream declares no frame rate; "
                             f"{max_frames} frames sampled uniformly instead")
                rate_fps, n = None, max_frames
        if rate_fps:
            # The frame on screen at k / rate; the tolerance keeps a frame stamped exactly there from losing
            # to its predecessor by float rounding.
            targets = [start + k / rate_fps + RATE_EPS_S for k in range(count)]
        else:
            targets = [start + (i + 0.5) * duration / n for i in range(n)]
        picker = _FramePicker(targets, short_side)
        errors: list[str] = []
        sought = -1                  # the target we last sought; never seek twice for one (GOP > gap)
        while not picker.done:
            jumped = False
            for frame, t in _decoded_frames(container, vs, errors):
                picker.offer(frame, t)
                if picker.done:
                    break
                if picker.gap_to_next(t) > SEEK_GAP_S and sought != picker.next:
                    sought = picker.next
                    container.seek(int(picker.target / vs.time_base), stream=vs, backward=True)
                    picker.after_seek()
                    jumped = True
                    break
            if not jumped:
                picker.end_of_stream()
                break
        if picker.decoded == 0:
            if errors:
                raise MediaError("decode_error", f"{path}: no video frame could be decoded ({errors[-1]})")
            raise MediaError("too_short", f"{path}: the video stream has no frames")
        frames = np.stack([arr for arr, _ in picker.chosen])
        times = np.asarray([t - start for _, t in picker.chosen], dtype=np.float32)
        sample = FrameSample(frames=frames, times=times, decoded=picker.decoded, notes=notes)
        if errors:
            sample.notes.append(f"{len(errors)} damaged packet(s) skipped")
        # The last decoded frame is on screen until one frame period later; sampled times beyond that were
        # never decoded: the file ends before the duration its container claims (a cut download or copy).
        rate = vs.average_rate or vs.base_rate
        decoded_s = picker.last[1] - start + (1 / float(rate) if rate else 0.0)
        unseen = sum(target > start + decoded_s for target in targets)
        if unseen:
            sample.notes.append(f"file cut short: decoded {decoded_s:.3f} s of the {duration:.3f} s that the "
                                f"container claims; the last frame stands in for {unseen} of {len(targets)} samples")
        elif rate_fps and sample.distinct < len(targets):
            sample.notes.append(f"{sample.distinct} distinct frame(s) for {len(targets)} samples at {rate_fps:g} fps: "
                                "the clip's own rate is lower, so frames repeat")
        elif sample.distinct < n and not rate_fps:
            sample.notes.append(f"clip shorter than one sampling step: {sample.distinct} distinct frame(s) "
                                f"for {n} samples over {duration:.3f} s")
        return sample


class _FramePicker:
    """Given decoded frames in presentation order, keeps the one on screen at each target time."""

    def __init__(self, targets: list[float], short_side: int | None):
        self.targets = targets
        self.short_side = short_side
        self.chosen: list[tuple[np.ndarray, float]] = []
        self.decoded = 0
        self.size: tuple[int, int] | None = None     # (width, height) of every output frame
        self.prev = None                             # (frame, time) last seen since the last seek
        self.last = None                             # (frame, time) last seen at all
        self._converted = (None, None)               # (frame, array): convert a frame only once

    @property
    def next(self) -> int:
        return len(self.chosen)

    @property
    def done(self) -> bool:
        return self.next >= len(self.targets)

    @property
    def target(self) -> float:
        return self.targets[self.next]

    def gap_to_next(self, t: float) -> float:
        return self.target - t

    def offer(self, frame, t: float) -> None:
        self.decoded += 1
        # Targets before this frame are shown by the previous frame (or by this one, if it is the first).
        while not self.done and self.target < t:
            self._take(*(self.prev or (frame, t)))
        self.prev = self.last = (frame, t)

    def after_seek(self) -> None:
        self.prev = None

    def end_of_stream(self) -> None:
        """Targets past the last frame show the last frame."""
        while not self.done and self.last is not None:
            self._take(*self.last)

    def _take(self, frame, t: float) -> None:
        if self._converted[0] is not frame:
            self._converted = (frame, self._rgb(frame))
        self.chosen.append((self._converted[1], t))

    def _rgb(self, frame) -> np.ndarray:
        if self.size is None:
            self.size = _target_size(frame.width, frame.height, self.short_side) or (frame.width, frame.height)
        if (frame.width, frame.height) == self.size:
            return frame.to_ndarray(format="rgb24")
        return frame.to_ndarray(format="rgb24", width=self.size[0], height=self.size[1], interpolation="BICUBIC")


def sample_frames(path: str | Path, n: int, *, short_side: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    """`n` RGB frames (n, H, W, 3) uint8 sampled uniformly in time, and their times in seconds."""
    sample = read_frames(path, n, short_side=short_side)
    return sample.frames, sample.times


def read_audio(path: str | Path, sample_rate: int, max_seconds: float | None = None) -> AudioClip:
    """Decode the first audio stream to mono float32 at `sample_rate`, stopping after `max_seconds`.

    Mono is the mean of the channels. Frames already float32 at `sample_rate` skip libswresample.
    """
    # skip_frame=all: while probing the streams, FFmpeg need not decode video frames we won't use
    # (on short clips that probe cost more than decoding the audio itself).
    with _open(path, options={"skip_frame": "all"}) as container:
        if not container.streams.audio:
            kinds = [s.type for s in container.streams] or ["none"]
            raise MediaError("no_audio_stream", f"{path}: no audio stream (streams: {', '.join(kinds)})")
        stream = container.streams.audio[0]
        stream_duration = float(stream.duration * stream.time_base) if stream.duration else None
        source_duration = stream_duration or (container.duration / av.time_base if container.duration else None)
        limit = None if max_seconds is None else int(round(max_seconds * sample_rate))
        resampler = None          # created only when a frame is not float32 at `sample_rate`
        chunks: list[np.ndarray] = []
        total = 0
        errors: list[str] = []
        truncated = False

        def add(frame) -> None:
            nonlocal total
            mono = _mono_float32(frame)
            chunks.append(mono)
            total += mono.size

        def convert(frame) -> None:
            nonlocal resampler
            if frame.sample_rate == sample_rate and frame.format.name in ("fltp", "flt"):
                add(frame)        # the common case (AAC, MP3, Opus at the target rate): no filter graph
                return
            if resampler is None:
                resampler = av.AudioResampler(format="fltp", layout=frame.layout.name, rate=sample_rate)
            for out in resampler.resample(frame):
                add(out)

        try:
            for frame in _decoded(container, stream, errors):
                convert(frame)
                if limit is not None and total > limit:
                    truncated = True
                    break
            if resampler is not None and not truncated:
                for out in resampler.resample(None):      # flush the resampler's delay line
                    add(out)
        except av.FFmpegError as exc:
            errors.append(str(exc))
        if total == 0:
            if errors:
                raise MediaError("decode_error", f"{path}: no audio could be decoded ({errors[-1]})")
            raise MediaError("too_short", f"{path}: the audio stream has no samples")
        samples = np.concatenate(chunks).astype(np.float32, copy=False)
        if stream_duration:
            # Encoders pad the last frame (AAC: to 1024 samples); keep only the stream's declared duration.
            samples = samples[:max(1, int(round(stream_duration * sample_rate)))]
        if limit is not None and samples.size > limit:
            samples, truncated = samples[:limit], True
        return AudioClip(samples=np.ascontiguousarray(samples), sample_rate=sample_rate,
                         truncated=truncated, source_duration_s=source_duration)


def _mono_float32(frame) -> np.ndarray:
    """A float32 audio frame as mono samples: the mean of its channels."""
    arr = frame.to_ndarray()
    channels = len(frame.layout.channels)
    if not frame.format.is_planar:            # interleaved: (1, n * channels)
        arr = arr.reshape(-1, channels).T
    return arr[0] if channels == 1 else arr.mean(axis=0, dtype=np.float32)


def write_clip(path: str | Path, frames: Iterable[np.ndarray] | None = None, *, fps: int = 10,
               audio: np.ndarray | None = None, sample_rate: int = 16_000, gop: int | None = None,
               audio_bit_rate: int | None = None) -> Path:
    """Encode an mp4: H.264 video from RGB uint8 frames of shape (H, W, 3) (an array (T, H, W, 3), or any
    iterable, so a clip need not be in memory at once) and/or AAC mono audio in [-1, 1].

    The same inputs give the same bytes: x264 runs on one thread and '+bitexact' keeps FFmpeg's version
    strings out of the file. Odd widths or heights can't be 4:2:0, so they are encoded 4:4:4. `gop` caps
    the keyframe interval (in frames; x264's default is 250); `audio_bit_rate` is in bit/s (None: the
    encoder's default). It writes the sample benchmark's clips and the tests' media.
    """
    if frames is None and audio is None:
        raise ValueError("write_clip needs frames, audio, or both")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    frames = None if frames is None else iter(frames)
    first = None if frames is None else _rgb24(next(frames, None))
    with av.open(str(path), mode="w", format="mp4", options={"fflags": "+bitexact"}) as container:
        vstream = astream = None
        if first is not None:
            vstream = container.add_stream("libx264", rate=fps, options={"crf": "23", "preset": "veryfast"})
            vstream.height, vstream.width = first.shape[:2]
            odd = first.shape[0] % 2 or first.shape[1] % 2
            vstream.pix_fmt = "yuv444p" if odd else "yuv420p"
            vstream.codec_context.thread_count = 1
            if gop is not None:
                vstream.codec_context.gop_size = gop
        if audio is not None:
            astream = container.add_stream("aac", rate=sample_rate, layout="mono")
            if audio_bit_rate is not None:
                astream.bit_rate = audio_bit_rate
            astream.codec_context.flags |= av.codec.context.Flags.bitexact  # no encoder version in the stream
        if vstream is not None:
            for i, rgb in enumerate(itertools.chain([first], frames)):
                frame = av.VideoFrame.from_ndarray(_rgb24(rgb), format="rgb24")
                frame.pts = i
                container.mux(vstream.encode(frame))
            container.mux(vstream.encode())
        if astream is not None:
            pcm = np.clip(np.asarray(audio, dtype=np.float32).reshape(1, -1), -1.0, 1.0)
            step = 1024                                                      # the AAC frame size
            for i in range(0, pcm.shape[1], step):
                frame = av.AudioFrame.from_ndarray(np.ascontiguousarray(pcm[:, i:i + step]), format="fltp",
                                                   layout="mono")
                frame.sample_rate = sample_rate
                frame.pts = i
                container.mux(astream.encode(frame))
            container.mux(astream.encode())
    return path


def _rgb24(rgb) -> np.ndarray:
    """One video frame as a contiguous (H, W, 3) uint8 array; anything else is an error that says so."""
    arr = None if rgb is None else np.ascontiguousarray(rgb, dtype=np.uint8)
    if arr is None or arr.ndim != 3 or arr.shape[-1] != 3:
        raise ValueError(f"frames must be RGB uint8 arrays of shape (H, W, 3), got "
                         f"{'no frame' if arr is None else f'shape {arr.shape}'}")
    return arr


# ------------------------------------------------------------------ decoding in a separate process

DECODERS = {"audio": read_audio, "frames": read_frames}


def serve_decode_requests(read_fd: int, write_fd: int) -> None:
    """The loop of a decoder process (see features.extractors.base.DecoderProcess).

    Requests (kind, path, kwargs) come in on `read_fd`; each gets one reply, in order, on `write_fd`:
    ("ok", result) or ("error", status, detail). It returns at end of input, which is also what it
    sees when its parent dies, however abruptly. Only this module's imports are needed here.
    """
    from multiprocessing.connection import Connection

    requests, replies = Connection(read_fd, writable=False), Connection(write_fd, readable=False)
    while True:
        try:
            kind, path, kwargs = requests.recv()
        except (EOFError, OSError):
            return
        try:
            reply = ("ok", DECODERS[kind](path, **kwargs))
        except MediaError as exc:
            reply = ("error", exc.status, exc.detail)
        except MemoryError:
            raise
        except Exception as exc:  # noqa: BLE001 - one bad file must not end the decoder
            reply = ("error", "decode_error", f"{path}: {type(exc).__name__}: {exc}")
        try:
            replies.send(reply)
        except (BrokenPipeError, OSError):
            return
