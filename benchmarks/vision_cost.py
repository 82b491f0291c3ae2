"""What each vision model costs and finds: memory at load, time per frame, and the note for each photo.

Loads each detector of the vision deployment alone (faces, objects, text), measuring the memory
its load added to this process, then runs it on the test photos (tests/support/photos.py, scaled to
640 px as a session sends them, plus a drawn sign and a drawn shared screen at 1280 px), printing
each one's time per frame and what it found; then the whole deployment's note for each photo. One
thread per detector, as the deployment runs them by default. A benchmark: it prints numbers and
passes or fails nothing.

    python benchmarks/vision_cost.py [--runs 3] [--threads 1]
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import av  # noqa: E402
import numpy as np  # noqa: E402

from deployments.vision import Vision, detectors, resident_mb  # noqa: E402
from media.image import frame_to_jpeg  # noqa: E402
from parley.config import VisionConfig  # noqa: E402
from parley.engine.types import FRAME_SIDE, VideoSource  # noqa: E402
from parley.vision.scene import decode  # noqa: E402
from tests.support import photos  # noqa: E402


def frames() -> dict[str, tuple[np.ndarray, VideoSource]]:
    """Each test picture as the vision replica receives it (JPEG at the session's size, decoded)."""
    pictures: dict[str, tuple[np.ndarray, VideoSource]] = {}
    for name in (*photos.FETCHED, *photos.IN_PACKAGE):
        if photos.path(name) is not None:
            pictures[name] = (photos.rgb(name, 1600), "camera")
    pictures["sign (drawn)"] = (photos.sign(), "camera")
    pictures["screen (drawn)"] = (photos.screen(), "screen")
    out = {}
    for name, (rgb, source) in pictures.items():
        side = FRAME_SIDE[source]
        jpeg = frame_to_jpeg(av.VideoFrame.from_ndarray(np.ascontiguousarray(rgb), format="rgb24"), max_side=side)
        out[name] = (decode(jpeg), source)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=int, default=3, help="timed runs per frame (after one warm-up)")
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    config = VisionConfig(threads=args.threads)
    pictures = frames()
    print(f"{len(pictures)} frames, {args.runs} timed runs each, {args.threads} thread(s) per detector\n")
    totals: dict[str, float] = {}
    for name, make in detectors(config).items():
        gc.collect()
        before = resident_mb()
        began = time.perf_counter()
        detector = make()
        load_s = time.perf_counter() - began
        memory = resident_mb() - before
        times: list[float] = []
        print(f"{name}: load {load_s:.2f} s, +{memory:.0f} MB resident")
        for picture, (rgb, _) in pictures.items():
            detector.find(rgb)
            runs = []
            for _ in range(max(1, args.runs)):
                began = time.perf_counter()
                found = detector.find(rgb)
                runs.append(1000 * (time.perf_counter() - began))
            times.append(statistics.median(runs))
            shown = ", ".join(f"{f.label} {f.score:.2f}" for f in found[:6]) or "-"
            print(f"  {picture:16s} {rgb.shape[1]:>4d}x{rgb.shape[0]:<4d} {statistics.median(runs):7.1f} ms  {shown[:100]}")
        totals[name] = statistics.median(times)
        print(f"  median {statistics.median(times):.1f} ms per frame\n")
    vision = Vision(config)
    print(
        f"the deployment: {vision.memory_mb:.0f} MB for all its models; per frame, medians: "
        + ", ".join(f"{k} {v:.0f} ms" for k, v in totals.items())
        + f"; together {sum(totals.values()):.0f} ms\n"
    )
    for picture, (rgb, source) in pictures.items():
        note = asyncio.run(vision._describe_batch([(rgb, source)]))[0]
        print(f"  {picture:16s} [{source}] {note.text or '(nothing found)'}")


if __name__ == "__main__":
    main()
