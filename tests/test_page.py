"""The page as a person uses it, in headless Chromium with a fake microphone and camera: answers,
what they may not do, a server that dies, a new conversation.

The ingress runs in-process with the real deployments: the LLM and the speech on the OpenAI
backend pointed at the loopback fake (so each test chooses the answer), Whisper tiny for speech.
Runs only in a network namespace whose only interface is loopback (scripts/test.sh makes one).

Screenshots at desktop and phone size, light and dark, are saved under test-output/page/ for a
person to look at.
"""

from __future__ import annotations

import asyncio
import shutil
from pathlib import Path

import pytest

from tests.support.chromium import READY, launched, opened, until
from tests.support.fake_openai import FakeOpenAI
from tests.support.network import free_port, loopback_only
from tests.support.page import (
    CODE_ANSWER,
    DESKTOP,
    PHONE,
    SHOTS,
    Server,
    answered,
    spoken_texts,
    type_and_send,
    words,
)

pytestmark = [
    pytest.mark.browser,
    pytest.mark.skipif(not shutil.which("chromium"), reason="Debian chromium is not installed"),
    pytest.mark.skipif(not loopback_only(), reason="needs a loopback-only network namespace (run scripts/test.sh as root)"),
]


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


async def test_an_answer_that_loops_is_stopped_and_the_page_says_why(
    server: Server, fake: FakeOpenAI, media: tuple[Path, Path]
) -> None:
    fake.reply = ["Bees make sweet honey. "] * 6
    async with launched(*media) as chromium, opened(chromium, server.url, viewport=DESKTOP) as page:
        await type_and_send(page, "What do bees make?")
        answer = await answered(page, 1)
        await answer.locator(".stopped").wait_for(timeout=10000)
        assert "repeating itself" in await answer.locator(".stopped").inner_text()
        assert (await answer.locator(".text").inner_text()).strip() == "Bees make sweet honey."
        assert await answer.get_attribute("data-state") == "done"
    assert spoken_texts(fake) == ["Bees make sweet honey."], "the repeat was never spoken"


async def test_a_long_conversation_comes_a_page_at_a_time_and_a_store_that_cannot_be_read_is_said_plainly(
    fake: FakeOpenAI, media: tuple[Path, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from parley.engine.messages import Entry, StoreError

    server = Server(fake, free_port(), "sqlite", tmp_path / "state")
    await server.start()
    try:
        async with launched(*media) as chromium, opened(chromium, server.url, viewport=DESKTOP) as page:
            await type_and_send(page, "Hello there.")
            await answered(page, 1)
            assert server.ingress is not None
            (session,) = server.ingress.sessions.values()
            for i in range(120):  # a long conversation, as if it had been going on for a while
                session.conversation.add(Entry(role="user" if i % 2 == 0 else "assistant", text=f"Old message {i}."))
            await page.reload()
            await until(page, READY, 30000)
            await page.wait_for_selector("#chat .history-earlier")
            assert await page.inner_text("#chat .history-earlier") == "22 earlier messages are not shown."
            assert await page.locator("#chat .msg").count() == 100
            SHOTS.mkdir(parents=True, exist_ok=True)
            await page.locator("#chat .history-earlier").scroll_into_view_if_needed()
            await page.screenshot(path=str(SHOTS / "earlier-messages.png"))

            # The server restarts and its store cannot be read: the page keeps what it shows and says why.
            await server.stop()
            await server.start()
            assert server.ingress is not None and server.ingress.store is not None
            stored = server.ingress.store.store
            reads = stored.load

            def down(*_: object) -> list[Entry]:
                raise StoreError("the disk is not answering")

            monkeypatch.setattr(stored, "load", down)
            await until(page, READY, 30000)
            lost = await page.wait_for_selector("#chat .history-lost")
            assert lost is not None and "store is not answering" in await lost.inner_text()
            assert "no longer has" not in await lost.inner_text()
            await page.wait_for_selector("#notices .notice")
            assert "not being saved" in await page.inner_text("#notices")
            await page.screenshot(path=str(SHOTS / "store-not-answering.png"))
            monkeypatch.setattr(stored, "load", reads)  # it answers again: the housekeeping stores the conversation
            await until(page, "document.querySelector('#notices').innerText.includes('being saved again')", 20000)
    finally:
        await server.stop()
