"""End to end in headless Chromium: fake mic and camera, Space held, answer seen and heard.

Runs only in a network namespace whose only interface is loopback (scripts/test.sh makes one),
so every packet of the call stays on 127.0.0.1.
"""

from __future__ import annotations

import asyncio
import shutil
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.support.chromium import QUESTION, launched, opened, write_fake_media
from tests.support.network import loopback_only
from tests.support.speech import speak

pytestmark = [
    pytest.mark.browser,
    pytest.mark.serve,
    pytest.mark.skipif(not shutil.which("chromium"), reason="Debian chromium is not installed"),
    pytest.mark.skipif(not loopback_only(), reason="needs a loopback-only network namespace (run scripts/test.sh as root)"),
]


@pytest.fixture(scope="module")
def fake_media(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, float]:
    return write_fake_media(tmp_path_factory.mktemp("media"))


CONNECTED = "window.parley && window.parley.pc && window.parley.status === 'ready'"
"""The page says Ready: welcomed, WebRTC connected and Parley's audio arriving (talking is allowed)."""


@pytest.fixture
async def page(serve_app, fake_media) -> AsyncIterator[object]:
    wav, y4m, _ = fake_media
    # Playwright's wait_for_function evaluates its predicate with eval, which the page's
    # Content-Security-Policy forbids; these tests are about voice, tests/test_page.py keeps the policy on.
    async with launched(wav, y4m) as chromium, opened(chromium, serve_app.url, ready=CONNECTED, bypass_csp=True) as page:
        yield page


ENERGY_JS = """async () => {
    let energy = 0;
    (await window.parley.pc.getStats()).forEach(r => {
        if (r.type === 'inbound-rtp' && r.kind === 'audio') energy += r.totalAudioEnergy || 0;
    });
    return energy;
}"""
"""Total energy of the audio the page has received (getStats inbound-rtp)."""


VIDEO_SENT_JS = """async () => {
    let frames = 0;
    (await window.parley.pc.getStats()).forEach(r => {
        if (r.type === 'outbound-rtp' && r.kind === 'video') frames += r.framesEncoded || 0;
    });
    return frames >= 3;
}"""
"""The page is sending the camera."""


async def inbound_audio_energy(page) -> float:
    return float(await page.evaluate(ENERGY_JS))


async def audio_heard(page, timeout_ms: int) -> None:
    await page.wait_for_function(f"async () => (await ({ENERGY_JS})()) > 0.001", timeout=timeout_ms)


async def ask_aloud_and_hear_the_answer(page, period: float) -> None:
    """Hold Space through one loop of the fake microphone's question; the words and the spoken answer come back."""
    from playwright.async_api import expect

    answers = await page.locator('#chat [data-role="assistant"]').count()
    await page.evaluate("document.activeElement && document.activeElement.blur()")  # Space in the text box types a space
    await page.keyboard.down("Space")
    await asyncio.sleep(period + 0.6)  # the user speaks for one full loop of the fake microphone
    await page.keyboard.up("Space")

    user = page.locator('#chat [data-role="user"] .text').last
    answer = page.locator('#chat [data-role="assistant"]').nth(answers)
    await answer.wait_for(timeout=30000)
    text = (await user.text_content() or "").lower()
    assert "capital" in text and "france" in text, text

    await expect(answer).to_have_attribute("data-state", "done", timeout=90000)
    assert (await answer.locator(".text").text_content() or "").strip()
    await audio_heard(page, 30000)


async def test_hold_space_ask_and_hear_the_answer(page, fake_media) -> None:
    await ask_aloud_and_hear_the_answer(page, fake_media[2])


async def test_the_banner_names_the_local_model_and_how_good_it_is(page) -> None:
    banner = page.locator("#banner")
    await banner.wait_for(timeout=5000)
    text = await banner.text_content() or ""
    assert "SmolLM2-135M-Instruct" in text and "of 26 on Parley's spoken-assistant quiz" in text and "README" in text, text
    assert "cannot see pictures" in text and "detectors" in text, "the banner says how (little) the model sees"


async def test_what_do_you_see_is_answered_with_what_the_camera_shows(serve_app, tmp_path: Path) -> None:
    """The fake camera shows a real photo of a motorcycle (scikit-image's); asked aloud what it sees, the
    embedded default names it: the frame taken as the user starts talking went through the vision
    deployment, and its note reached the text-only model."""
    from playwright.async_api import expect

    from tests.support import photos
    from tests.support.chromium import write_photo_y4m, write_question_wav

    period = write_question_wav(tmp_path / "see.wav", "What do you see on my camera?")
    write_photo_y4m(tmp_path / "motorcycle.y4m", photos.rgb("motorcycle"))
    async with (
        launched(tmp_path / "see.wav", tmp_path / "motorcycle.y4m") as chromium,
        opened(chromium, serve_app.url, ready=CONNECTED, bypass_csp=True) as page,
    ):
        await page.wait_for_function(VIDEO_SENT_JS, timeout=30000)
        # A person: the camera has been on a couple of seconds before they ask. (Within the first
        # second the server may have no decoded frame yet, and the encoder's first frames are too
        # blurred for YOLOv4-tiny: such a turn is told it has no picture, or that nothing was found.)
        await asyncio.sleep(2.0)
        await page.evaluate("document.activeElement && document.activeElement.blur()")
        await page.keyboard.down("Space")
        await asyncio.sleep(period + 0.6)
        await page.keyboard.up("Space")
        user = page.locator('#chat [data-role="user"]').last
        await user.wait_for(timeout=30000)
        assert "see" in (await user.locator(".text").text_content() or "").lower()
        seen = user.locator(".scene")
        await expect(seen).to_contain_text("motorcycle", timeout=30000)  # what the model was told, shown to the user
        answer = page.locator('#chat [data-role="assistant"]').last
        await expect(answer).to_have_attribute("data-state", "done", timeout=90000)
        text = (await answer.locator(".text").text_content() or "").lower()
        assert any(word in text for word in ("motorcycle", "motorbike", "bike")), text


async def test_the_page_sends_only_the_video_the_server_asks_for(page) -> None:
    limits = await page.wait_for_function(
        """() => {
            const sender = window.parley.pc.getSenders().find((s) => s.track && s.track.kind === "video");
            const encoding = sender && sender.getParameters().encodings[0];
            return encoding && encoding.maxFramerate ? encoding : null;
        }""",
        timeout=10000,
    )
    encoding = await limits.json_value()
    assert encoding["maxFramerate"] == 2, encoding  # webrtc.video_max_fps: a frame per turn is all it needs


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


# -- over HTTPS, by any name: the server bound to 0.0.0.0 with its self-signed certificate ---------


@pytest.fixture(scope="module")
def https_app(serve_app, tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, Any]]:
    """A second ingress, bound to 0.0.0.0 (only lo exists in this namespace), serving HTTPS with the
    self-signed certificate Parley makes, asking for invitations (as it does off loopback), and
    calling the session app's own ASR, LLM and TTS."""
    from ray import serve

    from deployments.ingress import Ingress
    from parley.config import ParleyConfig
    from tests.support.network import free_port

    config = ParleyConfig.model_validate(
        {
            "server": {
                "host": "0.0.0.0",
                "port": free_port(),
                "self_signed_dir": str(tmp_path_factory.mktemp("tls")),
                "state_dir": str(tmp_path_factory.mktemp("state")),
                "allowed_hosts": ["parley.test", "127.0.0.1", "localhost"],
            },
            "webrtc": {"ice_addresses": ["127.0.0.1"]},
            "limits": {"turns_per_minute": 200},
        }
    )
    handles = [serve.get_deployment_handle(name, app_name="parley") for name in ("ASR", "LLM", "TTS")]
    ingress = serve.deployment(name="Ingress", ray_actor_options={"num_cpus": 0})(Ingress)
    url = serve.run(ingress.bind(config, *handles), name="parley-https", route_prefix=None).url.remote().result()
    assert url.startswith("https://")
    try:
        yield f"https://parley.test:{config.server.port}/", config
    finally:
        serve.delete("parley-https")


HTTPS_ARGS = ("--ignore-certificate-errors", "--host-resolver-rules=MAP parley.test 127.0.0.1")
"""parley.test is what a user on the LAN would type; here it resolves to the only interface, lo."""


async def test_over_https_without_an_invitation_the_page_says_why_it_cannot_get_in(https_app, fake_media) -> None:
    url, _ = https_app
    wav, y4m, _ = fake_media
    async with launched(wav, y4m, *HTTPS_ARGS) as chromium:
        page = await chromium.new_page(bypass_csp=True)
        await page.goto(url)
        refusal = page.locator("#rejected")
        await refusal.wait_for(timeout=20000)
        assert "invitation link" in (await refusal.text_content() or "")


async def test_over_https_by_a_name_of_its_own_with_an_invitation_a_typed_and_a_spoken_turn_are_answered(
    https_app, fake_media
) -> None:
    from parley.ingress.auth import mint, signing_secret

    url, config = https_app
    secret = signing_secret(config, create=False)
    assert secret, "the ingress made its secret in its state directory"
    wav, y4m, period = fake_media
    async with (
        launched(wav, y4m, *HTTPS_ARGS) as chromium,
        opened(chromium, f"{url}#token={mint(secret, 'tester', 3600)}", ready=CONNECTED, bypass_csp=True) as page,
    ):
        assert await page.evaluate("location.protocol") == "https:"
        assert "token" not in await page.evaluate("location.href"), "the invitation left the address bar"
        await page.fill("#text-input", "What is the capital of Italy?")
        await page.press("#text-input", "Enter")
        await page.locator('#chat [data-role="assistant"][data-state="done"]').first.wait_for(timeout=60000)
        assert (await page.locator('#chat [data-role="assistant"] .text').first.text_content() or "").strip()
        # the turn's latency line arrives once its speech has all been played: talking over it would interrupt it
        await page.locator('#chat [data-role="assistant"] .metrics').first.wait_for(timeout=60000)

        await ask_aloud_and_hear_the_answer(page, period)


# -- hands-free, with a microphone that speaks when the test says so ------------------------------

SAY_JS = "(i) => window.__bench.say(window.__bench.questions[i]).then((s) => s.ended)"
COLLECT_DELTAS_JS = """() => {
    window.__said = {};
    window.parley.socket.on("delta", (d) => (window.__said[d.id] = (window.__said[d.id] || "") + d.text));
}"""
STORY = "Tell me a long story about a dragon who learns to bake bread, with many details."


@pytest.fixture
async def talking_page(serve_app, fake_media) -> AsyncIterator[Any]:
    """The page with an injected microphone (silent until `SAY_JS`), hands-free switched on."""
    from tests.support.browser_mic import INIT_JS, encode
    from tests.support.speech import trim

    _, y4m, _ = fake_media
    async with (
        launched(None, y4m) as chromium,
        opened(chromium, serve_app.url, ready=CONNECTED, init_script=INIT_JS, bypass_csp=True) as page,
    ):
        await page.evaluate("(list) => window.__bench.load(list)", [encode(trim(speak(QUESTION, rate=48000)))])
        await page.click("label[for=hands-free]")
        assert await page.is_checked("#hands-free")
        await page.locator('#turn-state[data-state="listening"]').wait_for(timeout=5000)
        yield page


async def test_hands_free_a_question_is_answered_without_a_key_and_the_mode_is_remembered(talking_page) -> None:
    from playwright.async_api import expect

    page = talking_page
    await page.evaluate(SAY_JS, 0)
    user = page.locator('#chat [data-role="user"] .text').first
    await user.wait_for(timeout=30000)
    text = (await user.text_content() or "").lower()
    assert "capital" in text and "france" in text, text
    answer = page.locator('#chat [data-role="assistant"]').first
    await expect(answer).to_have_attribute("data-state", "done", timeout=60000)
    await audio_heard(page, 30000)
    assert await page.evaluate("localStorage.getItem('parley.handsFree')") == "1"
    await page.reload()
    await page.wait_for_function(CONNECTED, timeout=30000)
    assert await page.is_checked("#hands-free"), "hands-free is remembered across a reload"
    await page.locator('#turn-state[data-state="listening"]').wait_for(timeout=5000)


async def test_hands_free_talking_over_the_answer_interrupts_it_and_keeps_what_was_heard(talking_page) -> None:
    from playwright.async_api import expect

    page = talking_page
    await page.evaluate(COLLECT_DELTAS_JS)
    await page.fill("#text-input", STORY)
    await page.press("#text-input", "Enter")
    story = page.locator('#chat [data-role="assistant"]').first
    await story.wait_for(timeout=30000)
    await audio_heard(page, 60000)
    await page.locator('#turn-state[data-state="speaking"]').wait_for(timeout=5000)
    await page.evaluate(SAY_JS, 0)
    await expect(story).to_have_attribute("data-state", "interrupted", timeout=10000)
    heard = await story.locator(".text").text_content() or ""
    unspoken = await story.locator(".unspoken").text_content() if await story.locator(".unspoken").count() else ""
    said = await page.evaluate("(id) => window.__said[id]", await story.get_attribute("data-id"))
    words = [w for w in said.replace("*", "").replace("#", "").replace("`", "").split() if w]
    # The interruption carries the whole answer so far; the deltas the page was sent may lag it by
    # the text generated while the interruption was being handled, never the other way round.
    shown = f"{heard} {unspoken}".split()
    assert shown[: len(words)] == words and len(shown) - len(words) <= 12, (heard, unspoken, said)
    user = page.locator('#chat [data-role="user"] .text').nth(1)
    await user.wait_for(timeout=30000)
    assert "capital" in (await user.text_content() or "").lower()


# -- its own voice in the microphone, backchannels and a quick stop ------------------------------------

STATES_OF_JS = "(id) => window.__bench.states.filter((s) => s.id === id).map((s) => s.state)"


async def _story(page: Any) -> str:
    """Ask for a long story by typing; returns its message id once its voice is heard."""
    answers = page.locator('#chat [data-role="assistant"]')
    before = await answers.count()
    await page.fill("#text-input", STORY)
    await page.press("#text-input", "Enter")
    story = answers.nth(before)
    await story.wait_for(timeout=30000)
    await audio_heard(page, 60000)
    return str(await story.get_attribute("data-id"))


async def test_hands_free_its_own_voice_back_at_minus_6_db_never_interrupts_it_and_wait_stop_does(talking_page) -> None:
    """A speakerphone with no echo cancelling: what the page plays goes back into its microphone
    at -6 dB. The server's echo canceller removes it: the answer plays to its end with no user
    turn. Then "Wait, stop." at a normal level, over the same echo, interrupts the next one (said
    twice at most)."""
    from tests.support.browser_mic import encode
    from tests.support.speech import trim

    page = talking_page
    await page.evaluate("(list) => window.__bench.load(list)", [encode(trim(speak("Wait, stop.", rate=48000)))])
    await page.evaluate("window.__bench.setEcho(-6)")
    story = await _story(page)
    await page.locator(f'#chat [data-id="{story}"][data-state="done"]').wait_for(timeout=120000)
    await page.wait_for_function("(n) => window.__bench.metrics.length > n", arg=0, timeout=120000)  # spoken to its end
    assert await page.locator('#chat [data-role="user"]').count() == 1
    assert "interrupted" not in await page.evaluate(STATES_OF_JS, story)

    second = await _story(page)
    await asyncio.sleep(1.0)
    interrupted = page.locator(f'#chat [data-id="{second}"][data-state="interrupted"]')
    # Over echo this loud, the ASR now and then reads nothing in a "Wait, stop." (the benchmark
    # counts those misses); a person then says it again, and so does the test, once.
    for timeout in (8000, 15000):
        await page.evaluate(SAY_JS, 0)
        try:
            await interrupted.wait_for(timeout=timeout)
            break
        except Exception:
            if timeout == 15000:
                raise


async def test_hands_free_yeah_and_right_leave_the_answer_playing_with_no_turn(talking_page) -> None:
    """Backchannels while it tells a story: it may pause for them, but it plays to its end and no
    turn comes of them. ("Mm-hmm" and "okay" are left to the benchmark: Whisper tiny.en reads
    hibari's as other words now and then, "Mama", "Good boy".)"""
    from tests.support.browser_mic import encode
    from tests.support.speech import trim

    page = talking_page
    await page.evaluate("(list) => window.__bench.load(list)", [encode(trim(speak(w, rate=48000))) for w in ("Yeah.", "Right.")])
    story = await _story(page)
    for i in (0, 1):
        await asyncio.sleep(1.5)
        if await page.locator(f'#chat [data-id="{story}"][data-state="done"]').count() and await page.evaluate(
            "window.__bench.metrics.length"
        ):
            break  # spoken to its end already
        await page.evaluate(SAY_JS, i)
    await page.wait_for_function("(n) => window.__bench.metrics.length > n", arg=0, timeout=120000)  # spoken to its end
    await asyncio.sleep(1.0)  # a turn made of a backchannel would have come by now
    assert await page.locator('#chat [data-role="user"]').count() == 1
    states = await page.evaluate(STATES_OF_JS, story)
    assert "interrupted" not in states and states[-1] == "done", states


# -- a microphone that sends nothing while it is silent -------------------------------------------


async def test_a_release_with_a_microphone_silent_between_words_is_answered_without_waiting_for_audio(
    serve_app, fake_media
) -> None:
    """Chromium's WebAudio microphone sends no packet while it is silent (as Opus DTX and some
    headsets do): the release, 0.25 s after the last word, must not wait for audio that is not
    coming. The wait used to take its full 2 s (RELEASE_WAIT_S) on every turn, and showed in no stage."""
    from parley.engine.ear import RELEASE_WAIT_S
    from tests.support.browser_mic import INIT_JS, encode
    from tests.support.speech import trim

    _, y4m, _ = fake_media
    async with (
        launched(None, y4m) as chromium,
        opened(chromium, serve_app.url, ready=CONNECTED, init_script=INIT_JS, bypass_csp=True) as page,
    ):
        await page.evaluate("(list) => window.__bench.load(list)", [encode(trim(speak(QUESTION, rate=48000)))])
        await page.wait_for_function("window.__bench.hooked", timeout=10000)
        for _ in range(2):  # the second turn comes after a silence of several seconds
            seen = await page.evaluate("window.__bench.metrics.length")
            await page.evaluate("document.activeElement && document.activeElement.blur()")
            recordings = await page.evaluate("window.__bench.recording.length")
            await page.keyboard.down("Space")
            await page.wait_for_function(
                "(n) => window.__bench.recording.slice(n).some((r) => r.active)", arg=recordings, timeout=5000
            )
            timing = await page.evaluate("([i, ms]) => window.__bench.turn(i, ms)", [0, 250])
            await page.keyboard.up("Space")
            # The test's premise, not the product: a microphone that kept sending would send ~11
            # packets in the 0.23 s measured. The speech's own last packets may leave late on a busy
            # host (4 once in CI, with WebAudio's output and the encoder behind), so the premise is
            # only that it sends well under half of that.
            assert timing["sentBetween"] <= 5, f"this microphone sent {timing['sentBetween']} packets in silence"
            await page.wait_for_function("(m) => window.__bench.metrics.length > m", arg=seen, timeout=90000)
            metrics = (await page.evaluate("window.__bench.metrics"))[seen]
            assert metrics["turn_to_voice"] < RELEASE_WAIT_S, metrics
            user = page.locator('#chat [data-role="user"] .text').last
            assert "capital" in (await user.text_content() or "").lower()
            line = await page.locator('#chat [data-role="assistant"] .metrics').last.text_content() or ""
            assert "reply " in line and "voice " in line, line
