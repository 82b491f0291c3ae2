"""One frame in, a short factual scene note out, from the detectors that are installed.

Invariants:
- The note names only what a detector found with at least its threshold's confidence; it never
  guesses. An empty frame (a blank camera, a black screen) gives an empty note.
- A detector that cannot load (its package is missing) is left out with its reason in `missing`;
  the others still work. The note is then the part the loaded ones can say.
- A frame is described once, where it is taken (a turn's start); nothing here runs continuously.
"""

from __future__ import annotations

import io
import logging
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Protocol

import numpy as np
from PIL import Image

from parley.engine.types import SceneNote, VideoSource
from parley.local_models import LocalModelMissing

log = logging.getLogger("parley.vision")

SURE = 0.5
"""An object the detector scores below this (but above its threshold) is named as "maybe" one."""


@dataclass(frozen=True)
class Found:
    """One detection: what it is, how sure the detector is, and where (x0, y0, x1, y1 in 0..1)."""

    label: str
    score: float
    box: tuple[float, float, float, float]
    detail: tuple[str, ...] = ()
    """Words about it: a face's expression, a raised hand."""


class Detector(Protocol):
    name: str
    """What it finds, in words ("faces", "objects", "text")."""

    def find(self, rgb: np.ndarray) -> list[Found]:
        """Its detections in an RGB uint8 frame (H, W, 3), above its threshold."""
        ...


@dataclass
class Scene:
    """The loaded detectors, and the note they make together."""

    detectors: list[Detector]
    missing: dict[str, str] = field(default_factory=dict)
    max_objects: int = 6

    @classmethod
    def load(cls, makers: dict[str, Callable[[], Detector]], *, max_objects: int = 6) -> Scene:
        """Load each detector; one that cannot (a missing package) is logged once and left out."""
        scene = cls([], max_objects=max_objects)
        for name, make in makers.items():
            try:
                scene.detectors.append(make())
            except (LocalModelMissing, ImportError, OSError, RuntimeError) as exc:
                scene.missing[name] = str(exc)
                log.warning("vision: no %s: %s", name, exc)
        return scene

    @property
    def finds(self) -> list[str]:
        return [d.name for d in self.detectors]

    def describe(self, rgb: np.ndarray, source: VideoSource = "camera") -> SceneNote:
        """The note for one frame; each detector's time goes in `ms`."""
        found: dict[str, list[Found]] = {}
        ms: dict[str, float] = {}
        if rgb.size == 0 or float(rgb.std()) < 2.0:  # a blank frame: nothing to find, no time spent
            return SceneNote(text="", source=source, ms=ms)
        for detector in self.detectors:
            began = time.perf_counter()
            try:
                found[detector.name] = detector.find(rgb)
            except Exception:
                log.exception("vision: the %s detector failed on a frame", detector.name)
                found[detector.name] = []
            ms[detector.name] = round(1000 * (time.perf_counter() - began), 1)
        return SceneNote(text=note(found, source, self.max_objects), source=source, ms=ms)


def note(found: dict[str, list[Found]], source: VideoSource = "camera", max_objects: int = 6) -> str:
    """The words of a scene note, to follow "I see": people, objects, then the words read (the words
    first for a shared screen). E.g. '1 person, a dog and a horse'; "" when nothing was found."""
    items: list[str] = []
    faces = found.get("faces", [])
    objects = [f for f in found.get("objects", []) if f.label != "person"]
    people = max(len(faces), sum(1 for f in found.get("objects", []) if f.label == "person"))
    if people:
        details = Counter(d for f in faces for d in f.detail)
        said = [f"{count} {word}" if people > 1 else word for word, count in details.most_common()]
        if faces and len(faces) < people:
            said.insert(0, f"{len(faces)} face{'s' if len(faces) > 1 else ''} visible")
        items.append(("1 person" if people == 1 else f"{people} people") + (f" ({', '.join(said)})" if said else ""))
    if objects:
        counts = Counter(f.label for f in objects)
        best = {label: max(f.score for f in objects if f.label == label) for label in counts}
        for label in sorted(counts, key=lambda label: -best[label])[:max_objects]:
            items.append(("" if best[label] >= SURE else "maybe ") + _count(label, counts[label]))
    lines = [f.label for f in found.get("text", [])]
    if lines:
        words = "the words " + " / ".join(f'"{line}"' for line in lines)
        items.insert(0 if source == "screen" else len(items), words)
    if len(items) > 1:
        return ", ".join(items[:-1]) + " and " + items[-1]
    return items[0] if items else ""


_PLURAL = {
    "person": "people",
    "mouse": "mice",
    "knife": "knives",
    "bus": "buses",
    "glass": "glasses",
    "wine glass": "wine glasses",
    "sheep": "sheep",
    "skis": "skis",
    "scissors": "scissors",
    "bench": "benches",
    "couch": "couches",
    "sandwich": "sandwiches",
    "toothbrush": "toothbrushes",
    "dining table": "dining tables",
    "cup": "cups",
}


def _count(label: str, n: int) -> str:
    if n == 1:
        return ("an " if label[0] in "aeiou" else "a ") + label
    plural = _PLURAL.get(label) or (label + "es" if label.endswith(("s", "sh", "ch", "x")) else label + "s")
    return f"{n} {plural}"


def decode(jpeg: bytes) -> np.ndarray:
    """A JPEG (or PNG) as an RGB uint8 array. Raises ValueError for bytes that are no image."""
    try:
        with Image.open(io.BytesIO(jpeg)) as image:
            return np.asarray(image.convert("RGB"))
    except Exception as exc:
        raise ValueError(f"that frame is not an image the vision service can read ({type(exc).__name__})") from exc


def sample_frame(width: int = 640, height: int = 480) -> np.ndarray:
    """A frame with something in it for the detectors to chew on (a warm-up and cost measure)."""
    rng = np.random.default_rng(0)
    frame = rng.integers(0, 255, (height, width, 3), dtype=np.uint8)
    frame[height // 4 : height // 2, width // 4 : 3 * width // 4] = 255
    return frame


def as_text(lines: list[str]) -> list[Found]:
    """OCR lines as findings (the note's text part)."""
    return [Found(label=line, score=1.0, box=(0.0, 0.0, 1.0, 1.0)) for line in lines]


class TextDetector:
    """`parley.vision.text.TextReader` as a Detector."""

    name = "text"

    def __init__(self, **options: Any) -> None:
        from parley.vision.text import TextReader

        self.reader = TextReader(**options)

    def find(self, rgb: np.ndarray) -> list[Found]:
        return as_text(self.reader.read(rgb))
