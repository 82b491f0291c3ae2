"""Video frames from the browser as JPEG images the LLM can look at.

Invariant: colours go through FFmpeg's own YUV -> RGB conversion (`to_ndarray(format="rgb24")`),
never a hand-rolled one, and the image is only ever scaled down, keeping its aspect ratio, so its
longer side is at most `max_side`.
"""

from __future__ import annotations

import base64
import io

import av
from PIL import Image

DATA_URL_PREFIX = "data:image/jpeg;base64,"


def fitted_size(width: int, height: int, max_side: int) -> tuple[int, int]:
    """(width, height) scaled down so the longer side is at most `max_side`; unchanged if it fits."""
    if max_side < 1:
        raise ValueError(f"max_side must be at least 1, got {max_side}")
    longest = max(width, height)
    if longest <= max_side:
        return width, height
    scale = max_side / longest
    return max(1, round(width * scale)), max(1, round(height * scale))


def frame_to_jpeg(frame: av.VideoFrame, *, max_side: int = 1024, quality: int = 85) -> bytes:
    """The frame encoded as a JPEG, scaled down (aspect kept) if either side exceeds `max_side`.

    Scaling happens in the same swscale pass as the colour conversion, so a large desktop share
    costs one conversion. `quality` is PIL's JPEG quality (1-95 is the useful range).
    """
    width, height = fitted_size(frame.width, frame.height, max_side)
    rgb = frame.to_ndarray(format="rgb24", width=width, height=height)
    buffer = io.BytesIO()
    Image.fromarray(rgb, "RGB").save(buffer, format="JPEG", quality=quality)
    return buffer.getvalue()


def jpeg_data_url(jpeg: bytes) -> str:
    """A `data:image/jpeg;base64,...` URL carrying `jpeg`, as OpenAI-style image parts take it."""
    return DATA_URL_PREFIX + base64.b64encode(jpeg).decode("ascii")


def frame_to_data_url(frame: av.VideoFrame, *, max_side: int = 1024, quality: int = 85) -> str:
    """`frame_to_jpeg` then `jpeg_data_url`: the frame ready to put in a chat message."""
    return jpeg_data_url(frame_to_jpeg(frame, max_side=max_side, quality=quality))
