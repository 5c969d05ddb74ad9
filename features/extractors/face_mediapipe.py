"""face_mediapipe: the mediapipe Tasks FaceLandmarker on frames sampled per clip: n_frames uniformly in time (the
default), or at a rate (fps: 25 as MMSA-FET, or native). Dense frames go through mediapipe's VIDEO mode (tracking:
the detector runs only when the track is lost), with a fresh landmarker per clip; sparse ones through IMAGE mode.

Per frame: the 52 blendshape scores, head pose (yaw, pitch, roll in degrees) from the facial
transformation matrix, and a face_found flag. Frames without a face are zeros with face_found = 0;
a clip without a face in any sampled frame gets status no_face.
"""
from __future__ import annotations

import logging
import math
import os
import queue
import re
import sys
import tempfile
import threading
from collections import deque
from concurrent.futures import ThreadPoolExecutor
from contextlib import ExitStack, contextmanager
from pathlib import Path

import numpy as np

from features.config import ExtractConfig
from features.extractors.base import Extractor, MediaItem, ModelInputs, guarded, status_row, versions
from features.extractors.decoding import prefetch
from features.media import FrameSample, read_frames
from features.store import FeatureRow, TableInfo
from features.weights import WeightsError, face_landmarker_path

# The FaceLandmarker's blendshape categories, in the order the model emits them. Checked against the
# model's own category names on every detection, so a different model file can't shift columns silently.
BLENDSHAPES = [
    "_neutral", "browDownLeft", "browDownRight", "browInnerUp", "browOuterUpLeft", "browOuterUpRight",
    "cheekPuff", "cheekSquintLeft", "cheekSquintRight", "eyeBlinkLeft", "eyeBlinkRight", "eyeLookDownLeft",
    "eyeLookDownRight", "eyeLookInLeft", "eyeLookInRight", "eyeLookOutLeft", "eyeLookOutRight",
    "eyeLookUpLeft", "eyeLookUpRight", "eyeSquintLeft", "eyeSquintRight", "eyeWideLeft", "eyeWideRight",
    "jawForward", "jawLeft", "jawOpen", "jawRight", "mouthClose", "mouthDimpleLeft", "mouthDimpleRight",
    "mouthFrownLeft", "mouthFrownRight", "mouthFunnel", "mouthLeft", "mouthLowerDownLeft",
    "mouthLowerDownRight", "mouthPressLeft", "mouthPressRight", "mouthPucker", "mouthRight",
    "mouthRollLower", "mouthRollUpper", "mouthShrugLower", "mouthShrugUpper", "mouthSmileLeft",
    "mouthSmileRight", "mouthStretchLeft", "mouthStretchRight", "mouthUpperUpLeft", "mouthUpperUpRight",
    "noseSneerLeft", "noseSneerRight",
]
POSE = ["yaw_deg", "pitch_deg", "roll_deg"]
# auto running mode: tracking (VIDEO) holds when consecutive sampled frames are at most this far apart (10 fps and
# up); sparser frames, such as the default 8 per clip, are detected one by one (IMAGE).
TRACKING_MAX_GAP_S = 0.1
FEATURE_NAMES = BLENDSHAPES + POSE + ["face_found"]

log = logging.getLogger(__name__)

# What mediapipe's C++ prints on every landmarker creation: glog INFO/WARNING lines ("W0000 ... Sets
# FaceBlendshapesGraph acceleration to xnnpack"), TFLite's "INFO: Created ... delegate", and glog's note
# that it was not initialised. Anything else it writes (glog E/F lines, crashes) is passed through.
NATIVE_CHATTER = re.compile(r"^(?:[IW]\d{4} |INFO: |WARNING: Logging before InitGoogle\(\))")
_stderr_lock = threading.Lock()       # fd 2 is process-wide: one redirect at a time


@contextmanager
def native_chatter_to_debug_log():
    """Keep mediapipe's native start-up chatter out of the terminal, and everything else in it.

    The C++ side writes straight to file descriptor 2 and ignores GLOG_minloglevel and
    TF_CPP_MIN_LOG_LEVEL, so fd 2 is pointed at a temporary file for the duration; afterwards the known
    chatter goes to this module's logger at DEBUG and every other line back to stderr. At DEBUG
    (`trml -v`) nothing is redirected, so the native lines appear as mediapipe wrote them.
    """
    if log.isEnabledFor(logging.DEBUG):
        yield
        return
    with _stderr_lock, tempfile.TemporaryFile() as capture:
        sys.stderr.flush()
        saved = os.dup(2)
        os.dup2(capture.fileno(), 2)
        try:
            yield
        finally:
            sys.stderr.flush()        # Python writes from other threads in the window land in the capture too
            os.dup2(saved, 2)
            os.close(saved)
            capture.seek(0)
            passed = []
            for line in capture.read().decode("utf-8", errors="replace").splitlines():
                if NATIVE_CHATTER.match(line):
                    log.debug("mediapipe: %s", line)
                else:
                    passed.append(line + "\n")
            if passed:
                sys.stderr.write("".join(passed))
                sys.stderr.flush()


def head_pose_degrees(matrix: np.ndarray) -> tuple[float, float, float]:
    """(yaw, pitch, roll) in degrees of the 4x4 canonical-face-to-camera transform.

    With the rotation written R = Rz(roll) @ Ry(yaw) @ Rx(pitch): roll is the in-plane tilt (positive
    when the face turns counter-clockwise in the image), yaw turns about the vertical axis, pitch
    nods. Any uniform scale in the matrix is divided out first.
    """
    r = np.asarray(matrix, dtype=np.float64)[:3, :3]
    r = r / np.linalg.norm(r, axis=0, keepdims=True)
    yaw = math.degrees(math.asin(float(np.clip(-r[2, 0], -1.0, 1.0))))
    pitch = math.degrees(math.atan2(r[2, 1], r[2, 2]))
    roll = math.degrees(math.atan2(r[1, 0], r[0, 0]))
    return yaw, pitch, roll


class FaceMediapipeExtractor(Extractor):
    feature_set = "face_mediapipe"
    modality = "face"
    kind = "seq"
    extractor_version = "1"

    def __init__(self, cfg: ExtractConfig, device: str = "cpu"):
        super().__init__(device)
        self.cfg = cfg.face_mediapipe
        self.decode_workers = cfg.decode_workers
        self.landmarkers = cfg.landmarkers
        self.weights = face_landmarker_path(self.cfg.model_path)
        self.model_bytes = self.weights.path.read_bytes()
        with self.landmarker():      # fail at build time, not on the first clip, if the file is not a model
            pass

    @classmethod
    def weights_identity(cls, cfg: ExtractConfig) -> dict:
        weights = face_landmarker_path(cfg.face_mediapipe.model_path)
        return {"weights_id": weights.weights_id, "sha256": weights.sha256, "path": str(weights.path)}

    def info(self) -> TableInfo:
        # The count mode's record is what it was before rate sampling existed: default tables keep their bytes.
        params = {**self.cfg.model_dump(mode="json", exclude={"n_frames", "fps", "max_frames", "running_mode"}),
                  **self.cfg.sampling_params(), "running_mode": self.running_mode_record(), "num_faces": 1,
                  "sampling": self.cfg.sampling_record(),
                  "pose": "degrees; R = Rz(roll) Ry(yaw) Rx(pitch) of the facial transformation matrix",
                  "versions": versions("mediapipe", "av")}
        # mediapipe runs on the CPU here whatever extract.device says.
        return TableInfo(feature_set=self.feature_set, modality=self.modality, kind=self.kind,
                         dim=len(FEATURE_NAMES), extractor=f"{type(self).__module__}.{type(self).__name__}",
                         extractor_version=self.extractor_version, weights_id=self.weights.weights_id,
                         weights_sha256=self.weights.sha256, feature_names=list(FEATURE_NAMES), params=params)

    def running_mode_record(self) -> str:
        if self.cfg.running_mode == "auto" and self.cfg.fps is not None:
            return f"auto: VIDEO where the sampled frames are at most {TRACKING_MAX_GAP_S} s apart, else IMAGE"
        return "VIDEO" if self.cfg.running_mode == "video" else "IMAGE"

    def tracks(self, times: np.ndarray) -> bool:
        """Whether a clip's sampled frames go through VIDEO mode (tracking) rather than IMAGE mode."""
        if self.cfg.running_mode != "auto":
            return self.cfg.running_mode == "video"
        return self.cfg.fps is not None and times.size > 1 and float(np.median(np.diff(times))) <= TRACKING_MAX_GAP_S

    @contextmanager
    def landmarker(self, video: bool = False):
        """A FaceLandmarker in IMAGE mode, or in VIDEO mode (one per clip: its tracking state is that clip's).
        IMAGE landmarkers are reused across clips by one thread at a time, never shared between threads."""
        from mediapipe.tasks.python import BaseOptions, vision

        options = vision.FaceLandmarkerOptions(
            base_options=BaseOptions(model_asset_buffer=self.model_bytes),
            running_mode=vision.RunningMode.VIDEO if video else vision.RunningMode.IMAGE, num_faces=1,
            min_face_detection_confidence=self.cfg.min_face_detection_confidence,
            output_face_blendshapes=True, output_facial_transformation_matrixes=True)
        try:
            with native_chatter_to_debug_log():
                lm = vision.FaceLandmarker.create_from_options(options)
        except Exception as exc:
            raise WeightsError(f"face landmarker model {self.weights.path} could not be loaded by mediapipe: "
                               f"{exc}") from exc
        with lm:
            yield lm

    def decode(self, path: Path) -> FrameSample:
        return read_frames(path, self.cfg.n_frames, fps=self.cfg.fps, max_frames=self.cfg.max_frames)

    def model_inputs(self, items: list[MediaItem]) -> ModelInputs:
        import mediapipe as mp

        decoded = self.decoded(items)
        images = [mp.Image(image_format=mp.ImageFormat.SRGB, data=np.ascontiguousarray(f))
                  for sample in decoded for f in sample.frames]
        return ModelInputs(images, len(decoded), len(images))

    def bare_forward(self, inputs: ModelInputs) -> None:
        with self.landmarker() as lm:
            for image in inputs.data:
                lm.detect(image)

    @staticmethod
    def frame_vector(result) -> np.ndarray:
        """One frame's 56 features from a FaceLandmarkerResult (zeros, face_found = 0, without a face)."""
        vec = np.zeros(len(FEATURE_NAMES), dtype=np.float32)
        if not result.face_blendshapes:
            return vec
        shapes = result.face_blendshapes[0]
        names = [c.category_name for c in shapes]
        if names != BLENDSHAPES:
            raise WeightsError(f"the face landmarker returned blendshapes {names[:5]}... ({len(names)}), not "
                               "the 52 this table declares: the model file is not a standard face_landmarker")
        vec[:len(BLENDSHAPES)] = [c.score for c in shapes]
        if result.facial_transformation_matrixes:
            vec[len(BLENDSHAPES):len(BLENDSHAPES) + 3] = head_pose_degrees(result.facial_transformation_matrixes[0])
        vec[-1] = 1.0
        return vec

    def detect_frames(self, landmarker, frames: np.ndarray, times: np.ndarray | None = None) -> np.ndarray:
        """Each frame's features; with `times`, through a VIDEO-mode landmarker at those timestamps."""
        import mediapipe as mp

        images = (mp.Image(image_format=mp.ImageFormat.SRGB, data=np.ascontiguousarray(f)) for f in frames)
        if times is None:
            return np.stack([self.frame_vector(landmarker.detect(image)) for image in images])
        return np.stack([self.frame_vector(landmarker.detect_for_video(image, ms))
                         for image, ms in zip(images, video_timestamps_ms(times))])

    def row_for(self, item: MediaItem, sample: FrameSample, image_landmarkers: queue.SimpleQueue) -> FeatureRow:
        if self.tracks(sample.times):
            with self.landmarker(video=True) as lm:          # fresh tracking state for every clip
                seq = self.detect_frames(lm, sample.frames, sample.times)
        else:
            lm = image_landmarkers.get()
            try:
                seq = self.detect_frames(lm, sample.frames)
            finally:
                image_landmarkers.put(lm)
        found = int(seq[:, -1].sum())
        if found == 0:
            return status_row(item, "no_face", f"no face in any of {len(seq)} sampled frames")
        notes = list(sample.notes)
        if found < len(seq):
            notes.append(f"face found in {found} of {len(seq)} frames")
        return FeatureRow(utterance_id=item.utterance_id, seq=seq, t=sample.times, detail="; ".join(notes) or None)

    def extract(self, items: list[MediaItem]) -> list[FeatureRow]:
        """Decoding threads (extract.decode_workers) stay ahead of `landmarkers` detection threads, which work
        on different clips side by side (PyAV and mediapipe release the GIL). Each clip is detected by one
        thread, so a row never depends on which thread, or which clips, came before it."""
        rows: list[FeatureRow | None] = [None] * len(items)
        width = self.landmarkers
        with ExitStack() as stack:
            image_landmarkers: queue.SimpleQueue = queue.SimpleQueue()
            for _ in range(width):
                image_landmarkers.put(stack.enter_context(self.landmarker()))
            pool = stack.enter_context(ThreadPoolExecutor(max_workers=width, thread_name_prefix="landmarker"))
            pending: deque = deque()
            for i, result in prefetch(lambda it: guarded(it, self.decode), items, self.decode_workers,
                                      2 * self.decode_workers + width):
                if isinstance(result, FeatureRow):
                    rows[i] = result
                    continue
                pending.append((i, pool.submit(self.row_for, items[i], result, image_landmarkers)))
                while len(pending) > 2 * width:              # bounded: decoded frames wait for a free thread
                    j, done = pending.popleft()
                    rows[j] = done.result()
            for j, done in pending:
                rows[j] = done.result()
        return rows


def video_timestamps_ms(times: np.ndarray) -> list[int]:
    """VIDEO mode's timestamps: each frame's time in ms, made strictly increasing (a clip slower than the
    sampling rate repeats a frame, and with it its time)."""
    out: list[int] = []
    for t in times:
        ms = int(round(float(t) * 1000))
        out.append(ms if not out or ms > out[-1] else out[-1] + 1)
    return out
