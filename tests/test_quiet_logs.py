"""mediapipe's native start-up chatter ("W0000 ... Sets FaceBlendshapesGraph acceleration to xnnpack", TFLite's
"INFO: Created ... delegate") stays out of the terminal by default; `trml -v` brings it back; anything
else written to stderr meanwhile (a real native error) still reaches it.
"""
from __future__ import annotations

import logging
import os
import subprocess
import sys

from tests.conftest import ROOT

# A real FaceLandmarker, created the way extraction creates it, under the CLI's logging setup.
BUILD = """
import sys
from flows.cli import configure_logging
configure_logging(verbose=sys.argv[1] == "verbose")
from features.config import ExtractConfig
from features.extractors.face_mediapipe import FaceMediapipeExtractor
extractor = FaceMediapipeExtractor(ExtractConfig())
with extractor.landmarker():
    pass
print("built", file=sys.stderr)
"""


def build_landmarker(mode: str) -> str:
    proc = subprocess.run([sys.executable, "-c", BUILD, mode], cwd=ROOT, capture_output=True, text=True,
                          timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    return proc.stderr


def test_landmarker_chatter_is_hidden_by_default_and_shown_verbose():
    quiet = build_landmarker("default")
    assert quiet.strip() == "built", quiet
    loud = build_landmarker("verbose")
    assert "Sets FaceBlendshapesGraph acceleration to xnnpack" in loud
    assert loud.count("FaceBlendshapesGraph") >= 2       # the build-time check and the second landmarker


def test_other_stderr_output_passes_through(capfd, caplog):
    from features.extractors.face_mediapipe import native_chatter_to_debug_log

    caplog.set_level(logging.INFO, logger="features.extractors.face_mediapipe")   # not verbose

    with native_chatter_to_debug_log():
        os.write(2, b"W0000 00:00:1.0 1 face_landmarker_graph.cc:181] Sets FaceBlendshapesGraph acceleration\n")
        os.write(2, b"INFO: Created TensorFlow Lite XNNPACK delegate for CPU.\n")
        os.write(2, b"E0000 00:00:1.0 1 calculator_graph.cc:928] a real failure\n")
        print("a Python warning meanwhile", file=sys.stderr)
    err = capfd.readouterr().err
    assert "a real failure" in err and "a Python warning meanwhile" in err
    assert "FaceBlendshapesGraph" not in err and "XNNPACK" not in err
