"""In-process aiortc client against the running ingress (Serve on a local Ray, real models)."""

from __future__ import annotations

import numpy as np
import pytest

from tests.support.client import ParleyClient
from tests.support.speech import speak

pytestmark = pytest.mark.serve


@pytest.fixture(scope="module")
def question() -> np.ndarray:
    return speak("What is the capital of France?", rate=48000)


async def test_push_to_talk_gets_transcript_answer_and_audio(serve_app, question) -> None:
    client = ParleyClient(serve_app.url)
    try:
        await client.connect()
        released = await client.push_to_talk(question)
        user = await client.wait_for(lambda: client.messages("user"), timeout=30)
        text = user[0]["text"].lower()
        assert "capital" in text and "france" in text, text
        done = await client.wait_for(lambda: [m for m in client.messages("assistant") if m["state"] == "done"], timeout=60)
        assert done[0]["text"].strip(), "the answer has text"
        # the answer may have been written while the key was still held (started at the pause), and
        # then arrives in one piece: what counts is that the deltas make up the whole text
        deltas = [d["text"] for d in client.of("delta") if d["id"] == done[0]["id"]]
        assert deltas and "".join(deltas) == done[0]["text"]
        first_sound = await client.wait_for(lambda: client.heard.first_sound_after(released), timeout=30)
        assert first_sound > released
        await client.wait_for(lambda: client.of("metrics"), timeout=60)
        metrics = client.of("metrics")[-1]
        assert metrics["id"] == done[0]["id"]
        assert all(metrics[k] is not None and metrics[k] > 0 for k in ("asr", "llm_ttft", "voice_to_voice"))
        assert client.heard.loud_frames() > 25, "at least half a second of speech came back"
    finally:
        await client.close()


async def test_silence_gets_a_notice_and_no_answer(serve_app) -> None:
    client = ParleyClient(serve_app.url)
    try:
        await client.connect()
        await client.push_to_talk(np.zeros(48000, dtype=np.float32))
        notice = await client.wait_for(lambda: client.of("notice"), timeout=20)
        assert "speech" in notice[0]["text"].lower()
        assert not client.messages("user") and not client.messages("assistant")
    finally:
        await client.close()


async def test_reconnect_shows_history_and_sessions_stay_apart(serve_app) -> None:
    first = ParleyClient(serve_app.url)
    other = ParleyClient(serve_app.url)
    try:
        await first.connect(media=False)
        await other.connect(media=False)
        await first.sio.emit("text", {"text": "Say hello to Alice."})
        await first.wait_for(lambda: [m for m in first.messages("assistant") if m["state"] in ("done", "error")], 60)
        await first.close()

        again = ParleyClient(serve_app.url, session_id=first.session_id, session_key=first.session_key)
        welcome = await again.connect(media=False)
        await again.close()
        roles = [m["role"] for m in welcome["history"]]
        assert roles[:2] == ["user", "assistant"]
        assert welcome["history"][0]["text"] == "Say hello to Alice."
        assert not other.of("message"), "the other session saw nothing of the first"
    finally:
        await other.close()


async def test_bad_input_gets_clear_messages_and_session_goes_on(serve_app) -> None:
    client = ParleyClient(serve_app.url)
    try:
        await client.connect(media=False)
        await client.sio.emit("offer", {"sdp": "v=0 nonsense", "type": "offer"})
        await client.sio.emit("offer", ["not", "a", "dict"])
        await client.sio.emit("text", {"text": "x" * (serve_app.config.limits.max_text_chars + 1)})
        await client.sio.emit("text", {"text": 42})
        await client.wait_for(lambda: len(client.of("notice")) >= 4, timeout=20)
        texts = " | ".join(n["text"] for n in client.of("notice"))
        assert "offer" in texts.lower() and "characters" in texts and "not text" in texts
        await client.sio.emit("text", {"text": "Hi."})
        await client.wait_for(lambda: [m for m in client.messages("assistant") if m["state"] == "done"], timeout=60)
    finally:
        await client.close()
