"""The OpenAI speech backend against a loopback fake of the real endpoint: Ogg Opus packets stream
through untouched, as they arrive, and every failure becomes a TTSError a user can read."""

from __future__ import annotations

import asyncio
import itertools
import re

import pytest

from deployments.asr import ASR
from deployments.tts import TTS, TTSError
from media.ogg import OggOpusParser
from media.opus import toc_duration_samples
from media.track import PacingTrack
from parley.config import ASRConfig, TTSConfig
from tests.support.clock import FakeClock
from tests.support.fake_openai import API_KEY, FakeOpenAI, ogg_opus
from tests.support.network import free_port
from tests.support.speech import decode_opus, resample

SENTENCE = "The quick brown fox jumps over the lazy dog."

FIRST_PACKET_S = 30
"""Generous: the fake synthesizes the whole sentence before its first byte, which took over 10 s
once on a loaded CI machine. A backend that waits for the whole (held) body never gets a packet."""


@pytest.fixture(scope="module")
def asr() -> ASR:
    return ASR(ASRConfig())


@pytest.fixture(scope="module")
def first_page_end() -> int:
    """How many bytes of SENTENCE's stream it takes to complete its first audio packet."""
    data, _ = ogg_opus(SENTENCE)  # the same bytes the fake sends: hibari and libopus are deterministic
    parser = OggOpusParser()
    return next(i for i in range(1, len(data) + 1) if parser.feed(data[i - 1 : i]))


def openai_tts(fake: FakeOpenAI, **config: object) -> TTS:
    settings: dict[str, object] = {"backend": "openai", "base_url": fake.base_url, "api_key_env": "PARLEY_TEST_KEY"}
    return TTS(TTSConfig.model_validate({**settings, **config}))


def words(text: str) -> str:
    return "".join(c for c in text.lower() if c.isalnum() or c.isspace())


async def test_asks_for_ogg_opus_and_passes_the_packets_through_unchanged(fake: FakeOpenAI) -> None:
    tts = openai_tts(fake, model="gpt-4o-mini-tts", voice="nova", speed=1.25)

    packets = [p async for p in tts.synthesize(SENTENCE)]

    [(path, body, headers)] = fake.requests
    assert path == "/v1/audio/speech"
    assert body == {"model": "gpt-4o-mini-tts", "voice": "nova", "input": SENTENCE, "response_format": "opus", "speed": 1.25}
    assert headers["Authorization"] == f"Bearer {API_KEY}"
    assert [p.data for p in packets] == fake.speech[SENTENCE]
    assert [p.samples for p in packets] == [toc_duration_samples(p.data) for p in packets]
    assert {p.samples for p in packets} == {960}


async def test_voice_defaults_to_alloy_and_any_endpoint_voice_is_accepted(fake: FakeOpenAI) -> None:
    tts = openai_tts(fake)

    assert [p async for p in tts.synthesize("Hi.")]
    assert [p async for p in tts.synthesize("Hi.", voice="my-cloned-voice")]  # not a hibari voice: no local check
    assert [p async for p in tts.synthesize("  ")] == []  # nothing to say: no request

    assert [body["voice"] for body in fake.bodies("/v1/audio/speech")] == ["alloy", "my-cloned-voice"]


async def test_the_first_packet_comes_while_the_response_is_still_streaming(fake: FakeOpenAI, first_page_end: int) -> None:
    fake.hold_after = first_page_end  # the fake sends the first page, then waits for us
    stream = openai_tts(fake).synthesize(SENTENCE)

    first = await asyncio.wait_for(anext(stream), FIRST_PACKET_S)  # a backend that waits for the whole body never gets here

    assert fake.holding.is_set()  # the rest of the body has not been sent yet
    fake.resume.set()
    rest = [p async for p in stream]
    assert [p.data for p in [first, *rest]] == fake.speech[SENTENCE]


async def test_closing_the_stream_early_closes_the_connection(fake: FakeOpenAI, first_page_end: int) -> None:
    fake.hold_after = first_page_end
    tts = openai_tts(fake)  # held, so that no garbage collection closes its connections for it
    stream = tts.synthesize(SENTENCE)
    await asyncio.wait_for(anext(stream), FIRST_PACKET_S)

    await stream.aclose()  # barge-in

    await asyncio.wait_for(fake.disconnected.wait(), 5)
    assert not fake.resume.is_set()  # the fake stopped because we hung up, not because it finished
    fake.hold_after = None
    assert [p async for p in tts.synthesize(SENTENCE)]  # and the client still works


async def test_the_pacing_track_sends_the_packets_unchanged_on_their_own_clock(fake: FakeOpenAI) -> None:
    packets = [p async for p in openai_tts(fake).synthesize(SENTENCE)]
    clock = FakeClock(1000.0)
    track = PacingTrack(clock=clock, sleep=clock.sleep)
    for packet in packets:
        track.capture(packet)

    sent = [await track.recv() for _ in packets]

    assert [bytes(p) for p in sent] == [p.data for p in packets]
    assert [p.pts for p in sent] == list(itertools.accumulate((p.samples for p in packets[:-1]), initial=0))
    assert track.queued_s == 0


async def test_the_speech_is_understood_by_the_asr(fake: FakeOpenAI, asr: ASR) -> None:
    packets = [p async for p in openai_tts(fake).synthesize(SENTENCE)]

    heard = words((await asr.transcribe(resample(decode_opus(packets), 48000, 16000))).text)

    for word in ("quick", "brown", "fox", "lazy", "dog"):
        assert word in heard


async def test_a_refused_key_names_the_variable_to_check(fake: FakeOpenAI, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PARLEY_TTS_KEY", "sk-wrong")

    with pytest.raises(TTSError, match=re.escape("The speech endpoint refused the API key (check $PARLEY_TTS_KEY)")):
        async for _ in openai_tts(fake, api_key_env="PARLEY_TTS_KEY").synthesize(SENTENCE):
            pass
    assert len(fake.requests) == 1  # a wrong key is not retried


async def test_rate_limits_are_retried_by_the_client(fake: FakeOpenAI) -> None:
    fake.fail = [429, 429]

    packets = [p async for p in openai_tts(fake, max_retries=2).synthesize(SENTENCE)]

    assert [p.data for p in packets] == fake.speech[SENTENCE]
    assert len(fake.requests) == 3


@pytest.mark.parametrize(
    ("status", "message"), [(429, "The speech endpoint is overloaded (HTTP 429)"), (500, "The speech endpoint failed (HTTP 500)")]
)
async def test_an_overloaded_or_failing_endpoint_gives_up_after_its_retries(fake: FakeOpenAI, status: int, message: str) -> None:
    fake.fail = [status]

    with pytest.raises(TTSError, match=re.escape(message)):
        async for _ in openai_tts(fake, max_retries=0).synthesize(SENTENCE):
            pass


async def test_a_rejected_request_is_a_plain_sentence_and_the_endpoint_words_go_to_the_log(
    fake: FakeOpenAI, caplog: pytest.LogCaptureFixture
) -> None:
    fake.fail = [400]

    with pytest.raises(TTSError) as raised:
        async for _ in openai_tts(fake, max_retries=0).synthesize(SENTENCE):
            pass
    assert str(raised.value) == "The speech endpoint rejected the request (HTTP 400)"
    assert "fake failure 400" in caplog.text, "the upstream message is kept for the operator"


async def test_an_unreachable_endpoint_says_where_it_looked_in_the_log_only(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setenv("OPENAI_API_KEY", API_KEY)
    url = f"http://127.0.0.1:{free_port()}/v1"
    tts = TTS(TTSConfig(backend="openai", base_url=url, max_retries=0))

    with pytest.raises(TTSError) as raised:
        async for _ in tts.synthesize(SENTENCE):
            pass
    assert str(raised.value) == "Could not reach the speech endpoint", "an internal address is not for the page"
    assert url in caplog.text


async def test_a_stream_cut_mid_sentence_keeps_the_packets_already_parsed(fake: FakeOpenAI, first_page_end: int) -> None:
    fake.cut_after = first_page_end + 1000  # inside the second audio page
    packets = []

    with pytest.raises(TTSError, match="The speech stream was cut off"):
        async for packet in openai_tts(fake).synthesize(SENTENCE):
            packets.append(packet)

    reference = fake.speech[SENTENCE]
    assert 0 < len(packets) < len(reference)
    assert [p.data for p in packets] == reference[: len(packets)]
