"""End to end in headless Chromium: fake mic and camera, Space held, answer seen and heard.

Runs only in a network namespace whose only interface is loopback (scripts/test.sh makes one),
so every packet of the call stays on 127.0.0.1.
"""

from __future__ import annotations

import asyncio
import shutil
import wave
from collections.abc import AsyncIterator
from pathlib import Path

import numpy as np
import pytest

from tests.conftest import loopback_only
from tests.speech import speak

pytestmark = [
    pytest.mark.browser,
    pytest.mark.serve,
    pytest.mark.skipif(not shutil.which("chromium"), reason="Debian chromium is not installed"),
    pytest.mark.skipif(not loopback_only(), reason="needs a loopback-only network namespace (run scripts/test.sh as root)"),
]

QUESTION = "What is the capital of France?"
SILENCE_S = 1.5


def write_question_wav(path: Path) -> float:
    """The question then silence, 16-bit 48 kHz; Chromium loops it. Returns the loop period."""
    audio = np.concatenate([speak(QUESTION, rate=48000), np.zeros(int(48000 * SILENCE_S), dtype=np.float32)])
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


@pytest.fixture(scope="module")
def fake_media(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, float]:
    folder = tmp_path_factory.mktemp("media")
    period = write_question_wav(folder / "question.wav")
    write_y4m(folder / "camera.y4m")
    return folder / "question.wav", folder / "camera.y4m", period


@pytest.fixture
async def page(serve_app, fake_media) -> AsyncIterator[object]:
    from playwright.async_api import async_playwright

    wav, y4m, _ = fake_media
    async with async_playwright() as p:
        browser = await p.chromium.launch(
            executable_path=shutil.which("chromium"),
            args=[
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
            ],
        )
        page = await browser.new_page()
        errors: list[str] = []
        page.on("pageerror", lambda exc: errors.append(str(exc)))
        await page.goto(serve_app.url)
        await page.wait_for_function(
            "window.parley && window.parley.pc && window.parley.pc.connectionState === 'connected'", timeout=30000
        )
        yield page
        await browser.close()
        assert not errors, f"the page raised: {errors}"


ENERGY_JS = """async () => {
    let energy = 0;
    (await window.parley.pc.getStats()).forEach(r => {
        if (r.type === 'inbound-rtp' && r.kind === 'audio') energy += r.totalAudioEnergy || 0;
    });
    return energy;
}"""
"""Total energy of the audio the page has received (getStats inbound-rtp)."""


async def inbound_audio_energy(page) -> float:
    return float(await page.evaluate(ENERGY_JS))


async def audio_heard(page, timeout_ms: int) -> None:
    await page.wait_for_function(f"async () => (await ({ENERGY_JS})()) > 0.001", timeout=timeout_ms)


async def test_hold_space_ask_and_hear_the_answer(page, fake_media) -> None:
    _, _, period = fake_media
    await page.keyboard.down("Space")
    await asyncio.sleep(period + 0.6)  # the user speaks for one full loop of the fake microphone
    await page.keyboard.up("Space")

    user = page.locator('#chat [data-role="user"] .text').first
    await user.wait_for(timeout=30000)
    text = (await user.text_content() or "").lower()
    assert "capital" in text and "france" in text, text

    await page.locator('#chat [data-role="assistant"][data-state="done"]').first.wait_for(timeout=90000)
    answer = await page.locator('#chat [data-role="assistant"] .text').first.text_content()
    assert answer and answer.strip()
    await audio_heard(page, 30000)


async def test_stop_interrupts_speech_and_text(page) -> None:
    await page.fill("#text-input", "Tell me a long story about a dragon who learns to bake bread.")
    await page.click("#send")
    streaming = page.locator('#chat [data-role="assistant"][data-state="streaming"]').first
    await streaming.wait_for(timeout=30000)
    await audio_heard(page, 60000)
    await page.click("#stop")
    message = page.locator('#chat [data-role="assistant"]').last
    await page.locator('#chat [data-role="assistant"][data-state="interrupted"]').last.wait_for(timeout=5000)
    text_then = await message.locator(".text").text_content()
    await asyncio.sleep(0.5)  # let audio already in the jitter buffer finish playing
    energy_then = await inbound_audio_energy(page)
    await asyncio.sleep(1.5)  # nothing may arrive after the interruption: absence takes waiting
    assert await message.locator(".text").text_content() == text_then, "text kept streaming after Stop"
    assert await inbound_audio_energy(page) - energy_then < 1e-4, "speech kept playing after Stop"
    assert await message.get_attribute("data-state") == "interrupted"


async def test_reload_reconnects_and_shows_the_conversation(page) -> None:
    await page.fill("#text-input", "Remember the word pineapple.")
    await page.press("#text-input", "Enter")
    await page.locator('#chat [data-role="assistant"][data-state="done"]').first.wait_for(timeout=60000)
    session_id = await page.evaluate("window.parley.sessionId")
    await page.reload()
    await page.wait_for_function(
        "window.parley && window.parley.pc && window.parley.pc.connectionState === 'connected'", timeout=30000
    )
    assert await page.evaluate("window.parley.sessionId") == session_id
    user = page.locator('#chat [data-role="user"] .text').first
    assert await user.text_content() == "Remember the word pineapple."
    assert await page.locator('#chat [data-role="assistant"]').count() == 1
