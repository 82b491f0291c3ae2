"""End to end in Debian's Firefox ESR (headless, WebDriver BiDi): a typed, a push-to-talk and a hands-free turn.

One page for the module, as a new user would use it: it says Ready, then answers a typed question,
a question spoken while Space is held, and (hands-free ticked) a question just spoken; every answer
arrives as text in the chat and as audio the page received, and the page raises nothing. The
microphone is tests/support/browser_mic.py's, which plays hibari's speech when the test says so; Firefox's
sound goes to a PulseAudio null sink of the test's own (without an output device its AudioContext
stays suspended). Runs only in a network namespace whose only interface is loopback (scripts/test.sh
makes one), so every packet of the call stays on 127.0.0.1.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest

from tests.support.firefox_driver import SAY_JS, Firefox, bench_page, missing
from tests.support.network import loopback_only

pytestmark = [
    pytest.mark.browser,
    pytest.mark.serve,
    pytest.mark.skipif(missing() is not None, reason=str(missing())),
    pytest.mark.skipif(not loopback_only(), reason="needs a loopback-only network namespace (run scripts/test.sh as root)"),
]

QUESTION = "What is the capital of France?"
"""The page says Ready (welcomed, WebRTC connected, Parley's audio arriving) and the test microphone watches its socket."""

ENERGY_JS = """(async () => {
    let energy = 0;
    (await window.parley.pc.getStats()).forEach(r => {
        if (r.type === 'inbound-rtp' && r.kind === 'audio') energy += r.totalAudioEnergy || 0;
    });
    return energy;
})()"""
"""Total energy of the audio the page has received (getStats inbound-rtp), as tests/test_browser.py reads it."""

ANSWER_JS = """(n) => {
    const answer = document.querySelectorAll('#chat [data-role="assistant"]')[n];
    return answer && answer.dataset.state === 'done' ? answer.querySelector('.text').textContent : null;
}"""
"""The text of the n-th answer once it is done, else null."""

PLAYED_JS = """(n) => !!document.querySelectorAll('#chat [data-role="assistant"]')[n]?.querySelector('.metrics')"""
"""The n-th answer's latency line is shown: the server sends it once the answer's speech has all been played."""

USER_JS = """(n) => {
    const user = document.querySelectorAll('#chat [data-role="user"] .text')[n];
    return user ? user.textContent : null;
}"""
"""The n-th thing the user said or typed, as the chat shows it, else null."""

MARK_JS = f"""(async () => [
    document.querySelectorAll('#chat [data-role="assistant"]').length,
    document.querySelectorAll('#chat [data-role="user"]').length,
    await {ENERGY_JS},
])()"""
"""Where the chat and the received audio stand before a turn: [answers, user messages, energy]."""


@pytest.fixture(scope="module")
async def page(serve_app, tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[Firefox]:
    """The page in Firefox with the test microphone (silent until SAY_JS), connected and Ready."""
    async with bench_page(serve_app.url, tmp_path_factory.mktemp("firefox"), QUESTION) as browser:
        yield browser


async def answered(page: Firefox, n: int, energy_before: float) -> str:
    """The text of answer `n` once it is done, its audio heard and finished (so the next turn interrupts nothing)."""
    text = await page.wait_for(ANSWER_JS, n, timeout_ms=90000)
    assert str(text).strip(), "the answer is empty"
    await page.wait_for(f"(async () => (await {ENERGY_JS}) > {energy_before + 0.001})()", timeout_ms=30000)
    await page.wait_for(PLAYED_JS, n, timeout_ms=60000)
    return str(text)


async def user_said(page: Firefox, n: int) -> str:
    said = str(await page.wait_for(USER_JS, n, timeout_ms=30000)).lower()
    assert "capital" in said and "france" in said, said
    return said


async def test_the_page_connects_and_a_typed_question_is_answered(page: Firefox) -> None:
    assert await page.evaluate("window.parley.status") == "ready"
    answers, users, before = await page.evaluate(MARK_JS)
    await page.type("#text-input", QUESTION)
    await page.press("Enter")
    assert await page.wait_for(USER_JS, users) == QUESTION
    await answered(page, answers, before)
    assert not page.errors, page.errors


async def test_hold_space_speak_release_and_the_answer_is_shown_and_heard(page: Firefox) -> None:
    answers, users, before = await page.evaluate(MARK_JS)
    recordings = await page.evaluate("window.__bench.recording.length")
    await page.evaluate("document.activeElement && document.activeElement.blur()")  # Space in the text box types a space
    await page.key_down(" ")  # the Space bar (WebDriver BiDi names keys by their value)
    try:
        # the server says it is recording before the user starts speaking, as a person waits for the light
        await page.wait_for("(n) => window.__bench.recording.slice(n).some((r) => r.active)", recordings, timeout_ms=10000)
        await page.evaluate(SAY_JS, 0)
        await asyncio.sleep(0.3)
    finally:
        await page.key_up(" ")
    await user_said(page, users)
    await answered(page, answers, before)
    assert not page.errors, page.errors


async def test_hands_free_just_speak_and_the_answer_is_shown_and_heard(page: Firefox) -> None:
    answers, users, before = await page.evaluate(MARK_JS)
    await page.click("label[for=hands-free]")
    assert await page.evaluate("document.getElementById('hands-free').checked")
    await page.wait_for("document.getElementById('turn-state').dataset.state === 'listening'", timeout_ms=10000)
    await page.evaluate(SAY_JS, 0)
    await user_said(page, users)
    await answered(page, answers, before)
    assert not page.errors, page.errors
