"""face_mediapipe: the mediapipe Tasks FaceLandmarker on n frames sampled uniformly per clip.

Per frame: the 52 blendshape scores, head pose (yaw, pitch, roll in degrees) from the facial
transformation matrix, and a face_found flag. Frames without a face are zeros with face_found = 0;
a clip without a face in any sampled frame gets status no_face.
"""
from __future__ import annotations

import logging
import math
import os
import re
import sys
import tempfile
import threading
from contextlib import contextmanager
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
        self.weights = face_landmarker_path(self.cfg.model_path)
        self.model_bytes = self.weights.path.read_bytes()
        with self.landmarker():      # fail at build time, not on the first clip, if the file is not a model
            pass

    @classmethod
    def weights_identity(cls, cfg: ExtractConfig) -> dict:
        weights = face_landmarker_path(cfg.face_mediapipe.model_path)
        return {"weights_id": weights.weights_id, "sha256": weights.sha256, "path": str(weights.path)}

    def info(self) -> TableInfo:
        params = {**self.cfg.model_dump(mode="json"), "running_mode": "IMAGE", "num_faces": 1,
                  "sampling": "uniform: frame shown at (i+0.5)*duration/n_frames",
                  "pose": "degrees; R = Rz(roll) Ry(yaw) Rx(pitch) of the facial transformation matrix",
                  "versions": versions("mediapipe", "av")}
        # mediapipe runs on the CPU here whatever extract.device says.
        return TableInfo(feature_set=self.feature_set, modality=self.modality, kind=self.kind,
                         dim=len(FEATURE_NAMES), extractor=f"{type(self).__module__}.{type(self).__name__}",
                         extractor_version=self.extractor_version, weights_id=self.weights.weights_id,
                         weights_sha256=self.weights.sha256, feature_names=list(FEATURE_NAMES), params=params)

    @contextmanager
    def landmarker(self):
        """A FaceLandmarker in IMAGE mode. One per extract() call, so concurrent calls never share one."""
        from mediapipe.tasks.python import BaseOptions, vision

        options = vision.FaceLandmarkerOptions(
            base_options=BaseOptions(model_asset_buffer=self.model_bytes),
            running_mode=vision.RunningMode.IMAGE, num_faces=1,
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
        return read_frames(path, self.cfg.n_frames)

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

    def detect_frames(self, landmarker, frames: np.ndarray) -> np.ndarray:
        import mediapipe as mp

        return np.stack([self.frame_vector(landmarker.detect(
            mp.Image(image_format=mp.ImageFormat.SRGB, data=np.ascontiguousarray(f)))) for f in frames])

    def extract(self, items: list[MediaItem]) -> list[FeatureRow]:
        rows: list[FeatureRow | None] = [None] * len(items)
        with self.landmarker() as lm:
            for i, result in prefetch(lambda it: guarded(it, self.decode), items, self.decode_workers,
                                      2 * self.decode_workers):
                if isinstance(result, FeatureRow):
                    rows[i] = result
                    continue
                seq = self.detect_frames(lm, result.frames)
                found = int(seq[:, -1].sum())
                if found == 0:
                    rows[i] = status_row(items[i], "no_face", f"no face in any of {len(seq)} sampled frames")
                    continue
                notes = list(result.notes)
                if found < len(seq):
                    notes.append(f"face found in {found} of {len(seq)} frames")
                rows[i] = FeatureRow(utterance_id=items[i].utterance_id, seq=seq, t=result.times,
                                     detail="; ".join(notes) or None)
        return rows
