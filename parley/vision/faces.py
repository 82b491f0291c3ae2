"""Faces in a frame: MediaPipe's BlazeFace full-range detector (Apache-2.0), whose model ships in the
`mediapipe==0.10.21` wheel (the last release that ships its legacy solutions' models; installed with
--no-deps: it runs on the protobuf 7 the rest of Parley uses). ~5 ms a 640x480 frame on one core; it
finds the faces of a group a few metres away, which the short-range model misses.

Invariant: only faces scoring at least `min_score` are returned, highest score first.
"""

from __future__ import annotations

import contextlib
import io
import os
from typing import Any

import numpy as np

from parley.local_models import LocalModelMissing
from parley.vision.scene import Found

INSTALL = "pip install absl-py attrs flatbuffers matplotlib && pip install --no-deps mediapipe==0.10.21"


class FaceDetector:
    name = "faces"

    def __init__(self, *, min_score: float = 0.5, threads: int = 1) -> None:
        os.environ.setdefault("GLOG_minloglevel", "2")  # MediaPipe's C++ start-up chatter
        try:
            with contextlib.redirect_stdout(io.StringIO()):  # a harmless protobuf notice on import
                from mediapipe.python.solutions import face_detection
        except ImportError as exc:
            raise LocalModelMissing(f"the face detector (mediapipe) is not installed: {INSTALL}") from exc
        # model_selection 1: the full-range model (faces up to ~5 m away), in the wheel's modules folder
        self.detector: Any = face_detection.FaceDetection(model_selection=1, min_detection_confidence=min_score)
        self.min_score = min_score

    def find(self, rgb: np.ndarray) -> list[Found]:
        result = self.detector.process(np.ascontiguousarray(rgb))
        out = []
        for detection in result.detections or []:
            score = float(detection.score[0])
            if score < self.min_score:
                continue
            box = detection.location_data.relative_bounding_box
            x0, y0 = max(0.0, box.xmin), max(0.0, box.ymin)
            out.append(
                Found(label="face", score=round(score, 2), box=(x0, y0, min(1.0, x0 + box.width), min(1.0, y0 + box.height)))
            )
        return sorted(out, key=lambda f: -f.score)
