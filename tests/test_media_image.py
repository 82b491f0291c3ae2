"""frame_to_jpeg and data URLs: what the LLM sees of the user's camera or screen."""

from __future__ import annotations

import base64
import io

import av
import numpy as np
import pytest
from PIL import Image

from media.image import frame_to_data_url, frame_to_jpeg, jpeg_data_url

RED, GREEN, BLUE, WHITE = (255, 0, 0), (0, 255, 0), (0, 0, 255), (255, 255, 255)


def quadrants(width: int, height: int) -> np.ndarray:
    """An RGB image: red top-left, green top-right, blue bottom-left, white bottom-right."""
    rgb = np.zeros((height, width, 3), np.uint8)
    h, w = height // 2, width // 2
    rgb[:h, :w], rgb[:h, w:], rgb[h:, :w], rgb[h:, w:] = RED, GREEN, BLUE, WHITE
    return rgb


def camera_frame(rgb: np.ndarray) -> av.VideoFrame:
    """The frame as aiortc's decoder hands it over: yuv420p."""
    return av.VideoFrame.from_ndarray(rgb, format="rgb24").reformat(format="yuv420p")


def decode(jpeg: bytes) -> Image.Image:
    image = Image.open(io.BytesIO(jpeg))
    assert image.format == "JPEG"
    return image.convert("RGB")


def pixel(image: Image.Image, xy: tuple[int, int]) -> tuple[int, ...]:
    got = image.getpixel(xy)
    assert isinstance(got, tuple)
    return got


def test_colours_survive_yuv_and_jpeg() -> None:
    image = decode(frame_to_jpeg(camera_frame(quadrants(256, 192))))

    assert image.size == (256, 192)
    # Centres of the quadrants; swapped U/V or a wrong matrix would turn red blue or green pink.
    for (x, y), colour in {(64, 48): RED, (192, 48): GREEN, (64, 144): BLUE, (192, 144): WHITE}.items():
        got = pixel(image, (x, y))
        assert np.abs(np.subtract(got, colour)).max() <= 24, (colour, got)


def test_large_frames_are_scaled_down_keeping_aspect_and_colours() -> None:
    image = decode(frame_to_jpeg(camera_frame(quadrants(2560, 1440)), max_side=1024))

    assert image.size == (1024, 576)
    assert np.abs(np.subtract(pixel(image, (256, 144)), RED)).max() <= 24
    assert np.abs(np.subtract(pixel(image, (768, 432)), WHITE)).max() <= 24


def test_portrait_frames_are_limited_by_their_height() -> None:
    image = decode(frame_to_jpeg(camera_frame(quadrants(480, 640)), max_side=320))

    assert image.size == (240, 320)


def test_small_frames_are_not_enlarged() -> None:
    assert decode(frame_to_jpeg(camera_frame(quadrants(64, 48)), max_side=1024)).size == (64, 48)


def test_lower_quality_gives_a_smaller_file() -> None:
    rng = np.random.default_rng(0)
    frame = camera_frame(rng.integers(0, 256, (240, 320, 3), dtype=np.uint8))

    assert len(frame_to_jpeg(frame, quality=30)) < len(frame_to_jpeg(frame, quality=90))


def test_data_url_decodes_back_to_the_jpeg() -> None:
    frame = camera_frame(quadrants(128, 96))
    jpeg = frame_to_jpeg(frame)

    url = jpeg_data_url(jpeg)

    prefix = "data:image/jpeg;base64,"
    assert url.startswith(prefix)
    assert base64.b64decode(url[len(prefix) :], validate=True) == jpeg
    assert frame_to_data_url(frame) == url


def test_max_side_must_be_positive() -> None:
    with pytest.raises(ValueError, match="max_side"):
        frame_to_jpeg(camera_frame(quadrants(64, 48)), max_side=0)
