"""Headless Chromium for the browser tests: fake devices, one way to launch it and one to open the page.

Invariant: `launched` yields Debian's Chromium with a fake microphone and camera (`chromium_args`),
on loopback only, and closes it on the way out; `opened` yields a page in a fresh browser profile
once the page says it is ready, closes that profile on the way out, and fails the test if the page
raised. The Chromium flags are also what benchmarks/browser_voice.py starts its browser with.
"""

from __future__ import annotations

import asyncio
import shutil
import wave
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import numpy as np

from tests.support.speech import speak

QUESTION = "What is the capital of France?"
SILENCE_S = 1.5
READY = "document.querySelector('#status').dataset.state === 'ready'"
"""The status the page shows once it is Ready."""


def write_question_wav(path: Path, question: str = QUESTION) -> float:
    """The question then silence, 16-bit 48 kHz; Chromium loops it. Returns the loop period."""
    audio = np.concatenate([speak(question, rate=48000), np.zeros(int(48000 * SILENCE_S), dtype=np.float32)])
    with wave.open(str(path), "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(48000)
        w.writeframes((np.clip(audio, -1, 1) * 32767).astype("<i2").tobytes())
    return len(audio) / 48000


def write_y4m(path: Path, width: int = 320, height: int = 240, frames: int = 15) -> None:
    """A small colour-bar video for the fake camera."""
    with path.open("wb") as f:
        f.write(f"YUV4MPEG2 W{width} H{height} F15:1 Ip A1:1 C420jpeg\n".encode())
        y = np.zeros((height, width), np.uint8)
        for i, level in enumerate((235, 160, 90, 16)):
            y[:, i * width // 4 : (i + 1) * width // 4] = level
        u = np.full((height // 2, width // 2), 90, np.uint8)
        v = np.full((height // 2, width // 2), 200, np.uint8)
        for _ in range(frames):
            f.write(b"FRAME\n" + y.tobytes() + u.tobytes() + v.tobytes())


def write_photo_y4m(path: Path, rgb: np.ndarray, frames: int = 15) -> None:
    """A still photo as the fake camera's video (its sides rounded down to even numbers)."""
    from PIL import Image

    height, width = (rgb.shape[0] // 2) * 2, (rgb.shape[1] // 2) * 2
    ycbcr = Image.fromarray(np.ascontiguousarray(rgb[:height, :width])).convert("YCbCr")
    y, cb, cr = (np.asarray(c) for c in ycbcr.split())
    u = cb.reshape(height // 2, 2, width // 2, 2).mean(axis=(1, 3)).round().astype(np.uint8)
    v = cr.reshape(height // 2, 2, width // 2, 2).mean(axis=(1, 3)).round().astype(np.uint8)
    with path.open("wb") as f:
        f.write(f"YUV4MPEG2 W{width} H{height} F15:1 Ip A1:1 C420jpeg\n".encode())
        for _ in range(frames):
            f.write(b"FRAME\n" + y.tobytes() + u.tobytes() + v.tobytes())


def write_fake_media(folder: Path) -> tuple[Path, Path, float]:
    """The fake microphone's and camera's files in `folder`, and the microphone's loop period."""
    period = write_question_wav(folder / "question.wav")
    write_y4m(folder / "camera.y4m")
    return folder / "question.wav", folder / "camera.y4m", period


def chromium_args(wav: Path | None, y4m: Path, *extra: str, prompts: bool = False) -> list[str]:
    """Headless Chromium with a fake microphone and camera playing these files, on loopback only.

    `wav` None: no file for the microphone (an init script's microphone replaces it); `prompts`:
    permission prompts are real (headless denies them)."""
    args = [
        "--headless=new",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-quic",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--use-fake-ui-for-media-stream",
        "--use-fake-device-for-media-stream",
        f"--use-file-for-fake-audio-capture={wav}",
        f"--use-file-for-fake-video-capture={y4m}",
        "--autoplay-policy=no-user-gesture-required",
        "--allow-loopback-in-peer-connection",
        *extra,
    ]
    return [
        a
        for a in args
        if not (wav is None and a.startswith("--use-file-for-fake-audio"))
        and not (prompts and a == "--use-fake-ui-for-media-stream")
    ]


@asynccontextmanager
async def launched(wav: Path | None, y4m: Path, *extra: str, prompts: bool = False) -> AsyncIterator[Any]:
    """Chromium with the fake devices (`chromium_args`), closed on the way out."""
    from playwright.async_api import async_playwright

    async with async_playwright() as p:
        chromium = await p.chromium.launch(
            executable_path=shutil.which("chromium"), args=chromium_args(wav, y4m, *extra, prompts=prompts)
        )
        try:
            yield chromium
        finally:
            await chromium.close()


@asynccontextmanager
async def opened(
    chromium: Any, url: str, *, ready: str = READY, init_script: str | None = None, **context: Any
) -> AsyncIterator[Any]:
    """A fresh browser profile (`context`: Playwright's new_context options) on the page at `url`,
    once `ready` holds there; fails the test if the page raised."""
    ctx = await chromium.new_context(**context)
    if init_script:
        await ctx.add_init_script(init_script)
    parts = urlsplit(url)
    await ctx.grant_permissions(
        ["clipboard-read", "clipboard-write", "microphone", "camera"], origin=f"{parts.scheme}://{parts.netloc}"
    )
    page = await ctx.new_page()
    errors: list[str] = []
    page.on("pageerror", lambda exc: errors.append(str(exc)))
    page.on("dialog", lambda dialog: asyncio.ensure_future(dialog.accept()))
    await page.goto(url)
    await until(page, ready, 30000)
    try:
        yield page
    finally:
        await ctx.close()
    assert not errors, f"the page raised: {errors}"


async def until(page: Any, js: str, timeout_ms: int = 30000) -> Any:
    """Poll `js` in the page until it is truthy (Playwright's wait_for_function uses eval, which the
    page's Content-Security-Policy rightly forbids; evaluate() is not subject to it)."""
    deadline = asyncio.get_running_loop().time() + timeout_ms / 1000
    while True:
        value = await page.evaluate(js)
        if value:
            return value
        if asyncio.get_running_loop().time() > deadline:
            raise TimeoutError(f"not true within {timeout_ms} ms: {js}")
        await asyncio.sleep(0.05)
