"""The vision deployment: one camera or screen frame (JPEG) in, a short factual scene note out, for a
language model that reads text only (the embedded default).

Invariants:
- The replica's event loop never blocks on a model: frames are described in a worker thread, in
  batches (`Batcher`, as the ASR does): frames that arrive while a batch runs share the next one,
  and a lone frame runs at once.
- What it can find, what it lacks (a missing package: one log line, and the page's banner says it, in
  Parley's words: a model that failed to load for another reason is logged with the library's text,
  and the banner only says it could not load),
  the memory its models took and each detector's time per frame are measured when it loads, logged,
  and given by `info()`.
- A frame is described only when a session asks (a turn's start); nothing here runs on its own.
"""

from __future__ import annotations

import asyncio
import logging
import os
import time
from collections.abc import Callable
from typing import Any

import numpy as np

from deployments.batching import Batcher
from parley.config import VisionConfig
from parley.engine.types import FRAME_SIDE, SceneNote, VideoSource, VisionInfo
from parley.local_models import LocalModelMissing
from parley.logs import setup_logging, starting
from parley.vision.scene import Detector, Scene, TextDetector, decode, sample_frame

log = logging.getLogger("parley.vision")

MAX_JPEG_BYTES = 8 << 20
"""A frame larger than this is refused (a 4K screen as JPEG is ~1-2 MB)."""


def detectors(config: VisionConfig) -> dict[str, Callable[[], Detector]]:
    """Each detector's loader, in the order the note names what they find."""
    from parley.vision.faces import FaceDetector
    from parley.vision.objects import ObjectDetector

    makers: dict[str, Callable[[], Detector]] = {
        "faces": lambda: FaceDetector(min_score=max(0.5, config.min_score), threads=config.threads),
        "objects": lambda: ObjectDetector(min_score=config.min_score, threads=config.threads),
    }
    if config.read_text:
        makers["text"] = lambda: TextDetector(threads=config.threads, min_score=max(0.5, config.min_score))
    return makers


def _plainly(name: str, make: Callable[[], Detector]) -> Callable[[], Detector]:
    """`make`, whose failure to load is told in Parley's words (`VisionInfo.missing` reaches the page's
    banner): a missing package keeps its install hint; any other failure's own text (a path, a
    runtime's message) goes to the log only."""

    def load() -> Detector:
        try:
            return make()
        except LocalModelMissing:
            raise
        except (ImportError, OSError, RuntimeError) as exc:
            log.warning("vision: the %s detector could not load: %r", name, exc)
            raise LocalModelMissing(f"the {name} detector could not load (the vision service's log says why)") from exc

    return load


def resident_mb() -> float:
    """This process's resident memory in MB (Linux; 0 elsewhere)."""
    try:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 1e6
    except (OSError, ValueError, IndexError):
        return 0.0


class Vision:
    """The Vision deployment: `describe(jpeg, source) -> SceneNote`, `info() -> VisionInfo`."""

    def __init__(self, config: VisionConfig, makers: dict[str, Callable[[], Detector]] | None = None) -> None:
        setup_logging()
        start = time.perf_counter()
        self.config = config
        with starting(log):
            before = resident_mb()
            makers = makers if makers is not None else detectors(config)
            self.scene = Scene.load({name: _plainly(name, make) for name, make in makers.items()}, max_objects=config.max_objects)
            self.costs = self._measure()
            self.memory_mb = max(0.0, resident_mb() - before)
        self._batcher: Batcher[tuple[np.ndarray, VideoSource], SceneNote] = Batcher(
            self._describe_batch, max_size=config.batch_size
        )
        finds = ", ".join(self.scene.finds) or "nothing (no detector loaded)"
        costs = ", ".join(f"{name} {ms:.0f} ms" for name, ms in self.costs.items())
        log.info(
            "ready in %.2f s: finds %s; models took %.0f MB; per 640x480 frame: %s",
            time.perf_counter() - start,
            finds,
            self.memory_mb,
            costs or "-",
        )

    def _measure(self) -> dict[str, float]:
        """Each detector's time on a 640x480 frame (the second run: the first warms it up)."""
        frame = sample_frame()
        self.scene.describe(frame)
        return self.scene.describe(frame).ms

    async def describe(self, jpeg: bytes, source: VideoSource = "camera") -> SceneNote:
        """The scene note of one frame. Raises ValueError for bytes that are no image."""
        if not isinstance(jpeg, bytes | bytearray) or not jpeg:
            raise ValueError("the frame must be non-empty JPEG bytes")
        if len(jpeg) > MAX_JPEG_BYTES:
            raise ValueError(f"the frame is too large ({len(jpeg) >> 20} MB); the most is {MAX_JPEG_BYTES >> 20} MB")
        if source not in ("camera", "screen"):
            raise ValueError(f"source must be camera or screen, not {source!r}")
        rgb = await asyncio.to_thread(decode, bytes(jpeg))
        return await self._batcher((rgb, source))

    async def info(self) -> VisionInfo:
        return VisionInfo(
            finds=self.scene.finds, missing=self.scene.missing, memory_mb=round(self.memory_mb, 1), ms_per_frame=self.costs
        )

    async def _describe_batch(self, frames: list[tuple[np.ndarray, VideoSource]]) -> list[SceneNote]:
        return await asyncio.to_thread(lambda: [self.scene.describe(rgb, source) for rgb, source in frames])


def main(argv: list[str] | None = None) -> None:
    """`python -m deployments.vision IMAGE... [--screen]`: print each image's scene note and the detectors' costs."""
    import argparse
    from pathlib import Path

    parser = argparse.ArgumentParser(description="Describe images as Parley's vision deployment does, then exit.")
    parser.add_argument("images", nargs="+")
    parser.add_argument("--screen", action="store_true", help="the images are shared screens")
    parser.add_argument("--min-score", type=float, default=VisionConfig().min_score)
    parser.add_argument("--json", action="store_true", help="print the replica's info, then each note, as JSON lines")
    ns = parser.parse_args(argv)
    vision = Vision(VisionConfig(min_score=ns.min_score))
    if ns.json:
        print(asyncio.run(vision.info()).model_dump_json(), flush=True)

    async def run() -> list[Any]:
        # as a session sends them: scaled to the camera's or the screen's side, as JPEG
        source: VideoSource = "screen" if ns.screen else "camera"
        return [await vision.describe(as_jpeg(Path(p), FRAME_SIDE[source]), source) for p in ns.images]

    for path, scene in zip(ns.images, asyncio.run(run()), strict=True):
        if ns.json:
            print(scene.model_dump_json(), flush=True)
            continue
        print(f"{path}: {scene.text or '(nothing found)'}  [{', '.join(f'{k} {v:.0f} ms' for k, v in scene.ms.items())}]")


def as_jpeg(path: Any, side: int) -> bytes:
    """An image file as a session sends it: its longest side at most `side`, JPEG."""
    import io

    from PIL import Image

    with Image.open(path) as image:
        rgb = image.convert("RGB")
    rgb.thumbnail((side, side))
    out = io.BytesIO()
    rgb.save(out, format="JPEG", quality=85)
    return out.getvalue()


if __name__ == "__main__":
    main()
