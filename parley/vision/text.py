"""Text in a frame (a sign, a page, a shared screen): PP-OCR detection and recognition as ONNX models,
shipped in the `rapidocr` wheel (Apache-2.0; model licences in the wheel's MODEL_LICENSES.md) and
run by onnxruntime. Nothing is downloaded: the wheel's own model files are loaded.

Invariant: lines come back in reading order (top to bottom, then left to right), only those read with
at least `min_score` confidence, and never more than `max_chars` characters in all.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from parley.local_models import LocalModelMissing

INSTALL = "pip install --no-deps rapidocr==3.10.0 pyclipper shapely omegaconf colorlog tqdm (and opencv-python-headless)"


class TextReader:
    name = "text"

    def __init__(self, *, threads: int = 1, min_score: float = 0.5, max_chars: int = 600) -> None:
        try:
            from rapidocr import RapidOCR
        except ImportError as exc:
            raise LocalModelMissing(f"the text reader (rapidocr) is not installed: {INSTALL}") from exc
        self.min_score = min_score
        self.max_chars = max_chars
        self.engine: Any = RapidOCR(
            params={
                "Global.log_level": "error",
                "Global.use_cls": False,  # upright text (a sign, a screen): the angle classifier costs a pass per line
                "Global.text_score": min_score,
                # Never upscale: rapidocr's default scales a frame's short side up to 736 px (a 640x480
                # camera frame to 981x736, 2.3x the work); a shared screen comes at up to 1280 px.
                "Det.limit_type": "max",
                "Det.limit_side_len": 1280,
                "EngineConfig.onnxruntime.intra_op_num_threads": threads,
                "EngineConfig.onnxruntime.inter_op_num_threads": 1,
            }
        )

    def read(self, rgb: np.ndarray) -> list[str]:
        """The lines of text in an RGB frame, in reading order."""
        result = self.engine(rgb)
        boxes, texts, scores = result.boxes, result.txts, result.scores
        if boxes is None or texts is None:
            return []
        found = [
            (float(np.mean(box[:, 1])), float(np.min(box[:, 0])), float(np.ptp(box[:, 1])), text.strip())
            for box, text, score in zip(np.asarray(boxes), texts, scores or [], strict=False)
            if score >= self.min_score and _words(text)
        ]
        lines = _reading_order(found)
        out: list[str] = []
        used = 0
        for line in lines:
            if used + len(line) > self.max_chars:
                break
            out.append(line)
            used += len(line)
        return out


def _words(text: str) -> bool:
    """Whether a read line is words or a number, not a stray mark (a lone "0" read off a cat's fur)."""
    letters = sum(c.isalpha() for c in text)
    digits = sum(c.isdigit() for c in text)
    return letters >= 2 or digits >= 2


def _reading_order(found: list[tuple[float, float, float, str]]) -> list[str]:
    """Boxes (centre y, left x, height, text) joined into lines: boxes whose centres lie within half a
    box height of each other are one line, read left to right."""
    lines: list[list[tuple[float, float, float, str]]] = []
    for box in sorted(found):
        if lines and abs(box[0] - lines[-1][0][0]) <= max(4.0, 0.5 * min(box[2], lines[-1][0][2])):
            lines[-1].append(box)
        else:
            lines.append([box])
    return [" ".join(text for _, _, _, text in sorted(line, key=lambda b: b[1])) for line in lines]
