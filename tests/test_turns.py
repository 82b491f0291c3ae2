"""Turn-taking without Ray or models but the VAD: speech and silence in, events and turns out.

Speech is hibari's voice (as in every test that needs spoken words); the services are scripted,
so what is asserted is what the session decides and when, on the audio's own clock.
"""

from __future__ import annotations

import asyncio
from typing import Any

import av
import numpy as np
import pytest

from media.packet import OpusPacket
from media.track import PacingTrack, Played
from media.vad import RATE, WINDOW, SileroVAD, SpeechDetector, rms
from parley.config import ParleyConfig
from parley.engine.clock import SystemClock
from parley.engine.recorder import Recorder
from parley.engine.reply import Reply
from parley.engine.settings import TurnSettings
from parley.engine.types import Transcript
from parley.engine.utterance import END_PAD_S, Utterance
from tests.support.clock import FakeClock
from tests.support.fake_services import Page, ScriptedServices, frames, make_session, pump, wait_until
from tests.support.speech import speak, trim

QUESTION = "What is the capital of France?"


def silence(seconds: float, rate: int = RATE) -> np.ndarray:
    return np.zeros(int(seconds * rate), np.float32)


def trimmed(audio: np.ndarray, rate: int) -> np.ndarray:
    return trim(audio)


def detect(audio: np.ndarray) -> list[tuple[str, float]]:
    vad, detector = SileroVAD(), SpeechDetector()
    events: list = []
    for i in range(0, len(audio) - WINDOW + 1, WINDOW):
        window = audio[i : i + WINDOW]
        (prob,) = vad.feed(window)
        if (event := detector.update(prob, rms(window))) is not None:
            events.append((event.kind, event.at))
    return events


def test_the_detector_marks_speech_its_pauses_and_its_return_on_recorded_audio() -> None:
    words = trimmed(speak(QUESTION, rate=RATE), RATE)
    said = len(words) / RATE
    audio = np.concatenate([silence(0.5), words, silence(0.8), words, silence(0.5)])
    events = detect(audio)
    assert [k for k, _ in events] == ["start", "pause", "resume", "pause"], events
    (_, start), (_, pause), (_, resume), (_, end) = events
    assert abs(start - 0.5) < 0.1 and abs(pause - (0.5 + said)) < 0.15, events
    assert abs(resume - (0.5 + said + 0.8)) < 0.1 and abs(end - (0.5 + 2 * said + 0.8)) < 0.15, events


def test_silence_noise_and_a_click_are_not_speech() -> None:
    rng = np.random.default_rng(1)
    click = np.zeros(RATE, np.float32)
    click[8000:8040] = 0.9
    noise = (0.01 * rng.standard_normal(2 * RATE)).astype(np.float32)
    assert detect(np.concatenate([silence(1.0), click, noise])) == []


def test_a_vad_fed_in_odd_chunks_gives_the_same_probabilities() -> None:
    audio = np.concatenate([silence(0.3), speak(QUESTION, rate=RATE)])
    whole = SileroVAD().feed(audio)
    chunked = SileroVAD()
    pieces = [chunked.feed(audio[i : i + 333]) for i in range(0, len(audio), 333)]
    assert np.allclose(whole, [p for piece in pieces for p in piece], atol=1e-5)


def recorder_run(audio_48k: np.ndarray, **turn: Any) -> tuple[Recorder, list[tuple[str, float, float]]]:
    recorder = Recorder(TurnSettings(hands_free=True, **turn), max_record_s=60)
    events: list = []
    for frame in frames(audio_48k):
        for event in recorder.feed(frame):
            events.append((event.kind, event.sample / RATE, event.speech_s))
    return recorder, events


def test_hands_free_a_turn_ends_after_the_silence_and_counts_its_speech() -> None:
    words = trimmed(speak(QUESTION, rate=48000), 48000)
    said = len(words) / 48000
    _, events = recorder_run(np.concatenate([silence(0.6, 48000), words, silence(1.0, 48000)]), end_of_turn={"silence_s": 0.6})
    kinds = [k for k, _, _ in events]
    assert kinds == ["start", "speech", "pause", "end"], events
    start, end = events[0][1], events[-1][1]
    assert abs(start - (0.6 - 0.3)) < 0.12, "the utterance begins a preroll before the speech"
    assert abs(end - (0.6 + said)) < 0.15, "the turn ends where speech ended, not where the silence did"
    assert 0.6 * said < events[-1][2] <= said + 0.1


def test_a_short_pause_inside_a_question_does_not_end_the_turn() -> None:
    first = trimmed(speak("What is the capital", rate=48000), 48000)
    second = trimmed(speak("of France?", rate=48000), 48000)
    audio = np.concatenate([silence(0.5, 48000), first, silence(0.3, 48000), second, silence(1.0, 48000)])
    _, events = recorder_run(audio, end_of_turn={"silence_s": 0.6})
    assert [k for k, _, _ in events] == ["start", "speech", "pause", "resume", "pause", "end"], events


def test_a_thinking_pause_is_cut_down_in_the_audio_the_asr_hears_and_nothing_else_is() -> None:
    """Whisper read "What is the capital of ... Italy?" as "What is the capital of?" when it heard the
    whole pause: the ASR gets the speech with each pause inside it cut to ~0.35 s."""
    first = trimmed(speak("What is the capital of", rate=48000), 48000)
    second = trimmed(speak("Italy?", rate=48000), 48000)
    audio = np.concatenate([silence(0.5, 48000), first, silence(1.2, 48000), second, silence(1.0, 48000)])
    recorder, events = recorder_run(audio, end_of_turn={"silence_s": 2.0})
    start = round(events[0][1] * RATE)
    end = round(events[-1][1] * RATE)
    assert [k for k, _, _ in events] == ["start", "speech", "pause", "resume", "pause"], events
    whole, heard = recorder.audio(start, end), recorder.speech_audio(start, end)
    gap = (events[3][1] - events[2][1]) * RATE
    assert gap > 1.0 * RATE
    assert whole.size - heard.size == pytest.approx(gap - 0.35 * RATE, abs=2), "only the pause's middle is left out"
    assert np.allclose(heard[: round(0.5 * RATE)], whole[: round(0.5 * RATE)]), "the words before it are as they were"
    assert np.allclose(heard[-round(0.5 * RATE) :], whole[-round(0.5 * RATE) :]), "and the words after it"
    paused = round(events[2][1] * RATE)
    assert recorder.speech_audio(start, paused).size == paused - start


def test_a_cough_is_too_little_speech_for_a_turn() -> None:
    rng = np.random.default_rng(2)
    t = np.arange(int(0.15 * 48000)) / 48000
    cough = (0.6 * rng.standard_normal(t.size) * np.exp(-t * 25)).astype(np.float32)
    _, events = recorder_run(np.concatenate([silence(0.5, 48000), cough, silence(1.0, 48000)]))
    ends = [e for e in events if e[0] == "end"]
    assert all(speech_s < TurnSettings().vad.min_speech_s for _, _, speech_s in ends), events


def test_the_assistants_own_voice_at_minus_20_db_is_not_speech_but_the_user_is() -> None:
    answer = trim(speak("The capital of France is Paris, a city on the Seine.", rate=48000))
    playing = max(rms(answer[i : i + 960]) for i in range(0, len(answer), 960))  # the loudest it sent lately
    echo = playing * 10 ** (-TurnSettings().echo.margin_db / 20)
    recorder = Recorder(TurnSettings(hands_free=True), max_record_s=60, gate=lambda level: level >= echo)
    heard = [e for frame in frames(np.concatenate([silence(0.3, 48000), 0.1 * answer])) for e in recorder.feed(frame)]
    assert heard == []
    user = trim(speak(QUESTION, rate=48000))
    said = [e.kind for frame in frames(user) for e in recorder.feed(frame)]
    assert said[:2] == ["start", "speech"]


def test_push_to_talk_keeps_only_the_latest_recording_on_the_tape() -> None:
    """Memory is bounded by the recording limit, not by how often someone talks: a press lets go of
    the audio of earlier turns."""
    recorder = Recorder(TurnSettings(), max_record_s=60)
    said = np.concatenate([silence(0.2, 48000), trim(speak(QUESTION, rate=48000)), silence(0.3, 48000)])
    held = []
    for _ in range(6):
        recorder.press()
        for frame in frames(said):
            recorder.feed(frame)
        end = recorder.release()
        assert end is not None and end.speech_s > 0.5
        held.append((recorder.tape.end - recorder.tape.start) / RATE)
    one = len(said) / 48000
    assert max(held) < one + 0.5, (held, one)
    assert held[-1] < held[0] + 0.1, held


# -- speculation ---------------------------------------------------------------------------------


async def test_work_started_at_a_pause_is_cancelled_when_speech_resumes_and_redone_at_the_end() -> None:
    reply = ["Paris ", "is ", "the ", "capital ", "of ", "France."]
    services = ScriptedServices(reply, delta_delay=0.1, transcript="What is the capital of France?")
    session, page, track = make_session(services, turn={"hands_free": True, "end_of_turn": {"silence_s": 0.6}})
    stop = asyncio.Event()
    pumping = asyncio.create_task(pump(track, stop))
    first = trimmed(speak("What is the capital", rate=48000), 48000)
    second = trimmed(speak("of France?", rate=48000), 48000)
    audio = np.concatenate([silence(0.4, 48000), first, silence(0.4, 48000), second, silence(1.0, 48000)])
    for frame in frames(audio):
        session.on_audio_frame(frame)
        await asyncio.sleep(0.02)  # frames arrive in real time, as from a browser
    await wait_until(lambda: page.of("metrics"), timeout=10)
    stop.set()
    await pumping
    assert services.transcribed >= 2 and len(services.requests) >= 2, "an answer was started at the first pause"
    assert services.cancelled >= 1, "the answer started at the first pause was stopped when speech resumed"
    user = [m for m in page.of("message") if m["role"] == "user"]
    assert [m["text"] for m in user] == ["What is the capital of France?"]
    assert len([m for m in page.of("message") if m["role"] == "assistant"]) == 1, "nothing speculative was shown"
    await session.close()


async def test_nothing_speculative_is_shown_or_spoken_before_the_turn_ends() -> None:
    services = ScriptedServices(["Paris is the capital."], transcript="What is the capital of France?")
    session, page, track = make_session(services, turn={"hands_free": True, "end_of_turn": {"silence_s": 3.0}})
    words = trimmed(speak(QUESTION, rate=48000), 48000)
    for frame in frames(np.concatenate([silence(0.4, 48000), words, silence(1.0, 48000)])):
        session.on_audio_frame(frame)
        await asyncio.sleep(0.002)
    await wait_until(lambda: services.spoken, timeout=5)  # the answer is written and synthesized...
    await asyncio.sleep(0.1)
    assert not page.of("message") and not page.of("delta") and track.queued_s == 0, "...but not shown nor queued"
    early = services.transcribed, len(services.requests)
    for frame in frames(silence(2.5, 48000)):  # the silence goes on: the turn ends
        session.on_audio_frame(frame)
    await wait_until(lambda: page.of("delta"), timeout=5)
    assert (services.transcribed, len(services.requests)) == early, "the early work was used, not redone"
    await session.close()


# -- what was heard ------------------------------------------------------------------------------


def fake_timed_track() -> tuple[FakeClock, PacingTrack]:
    """A track on a fake clock: waiting for a packet's time moves the clock there at once."""
    clock = FakeClock()
    return clock, PacingTrack(clock=clock, sleep=clock.sleep)


async def test_heard_words_follow_the_audio_the_track_played() -> None:
    clock, track = fake_timed_track()
    services = ScriptedServices(["One two three four. ", "Five six seven eight."])
    services.packets = 10  # 200 ms of audio per sentence
    reply = Reply("r1", [], services, clock=clock).start()
    page = Page()
    reply.commit(track, lambda kind, text: page("delta", {"text": text}))
    await reply.text_finished()
    await wait_until(lambda: track.queued_s >= 0.4)

    async def play(packets: int) -> None:
        for _ in range(packets):
            await track.recv()

    assert reply.heard() == ("", "One two three four. Five six seven eight.")
    await play(5)
    assert reply.heard() == ("One two", "three four. Five six seven eight."), "words in proportion to the audio played"
    await play(5)
    assert reply.heard() == ("One two three four.", "Five six seven eight.")
    await play(5)
    track.clear()  # interrupted: the rest of the second sentence never leaves
    assert reply.heard() == ("One two three four. Five six", "seven eight.")
    await reply.stop()


async def test_the_track_counts_played_audio_per_tag_and_remembers_its_level() -> None:
    _, track = fake_timed_track()
    track.capture(OpusPacket(data=b"\xfc\x01", samples=960, level=0.2), tag="a")
    track.capture(OpusPacket(data=b"\xfc\x02", samples=960), tag="b")
    await track.recv()
    assert track.played("a").samples == 960 and track.played("b") == Played()
    assert track.recent_level(1.0) == pytest.approx(0.2)
    for _ in range(150):  # three seconds of silence later, nothing it played can still echo
        await track.recv()
    assert track.recent_level(1.0) == 0.0


async def test_a_long_utterance_is_transcribed_in_pieces_cut_only_at_real_pauses() -> None:
    heard: list[float] = []

    async def transcribe(audio: np.ndarray) -> Transcript:
        heard.append(round(audio.size / RATE - END_PAD_S, 1))
        return Transcript(text=f"<{heard[-1]:g} s>")

    tape = np.zeros(20 * RATE, np.float32)
    utterance = Utterance(start=0, transcribe=transcribe, audio=lambda a, b: tape[a:b], segment_s=4.0, clock=SystemClock())
    assert await utterance.text_until(5 * RATE) == "<5 s>"
    utterance.resumed(int(5.1 * RATE))  # 100 ms: maybe inside a word, not a place to cut
    assert await utterance.text_until(8 * RATE) == "<8 s>"
    utterance.resumed(int(8.4 * RATE))  # a real pause after 8 s of speech: that piece is kept
    assert await utterance.text_until(11 * RATE) == "<8 s> <3 s>", "only the new piece is transcribed again"
    assert heard == [5, 8, 3]


def test_the_microphone_is_kept_encoded_while_nobody_listens_and_its_preroll_decoded_on_demand() -> None:
    from aiortc.rtp import RtpPacket

    from media.opus import OpusEncoder
    from parley.ingress.loss import PREROLL_FRAMES, MicrophoneBuffer

    encoder = OpusEncoder(48000)
    packets = encoder.encode(trim(speak(QUESTION, rate=48000))[:48000])  # one second: 50 packets of 20 ms
    listening = False
    delivered: list[av.AudioFrame] = []
    buffer = MicrophoneBuffer(lambda: listening, delivered.append)

    def rtp(i: int) -> RtpPacket:
        packet = RtpPacket(payload_type=96, sequence_number=i, timestamp=960 * i, payload=packets[i].data)
        packet._data = packets[i].data  # type: ignore[attr-defined]  # the receiver sets it when it depayloads
        return packet

    for i in range(30):
        buffer.add(rtp(i))
    assert delivered == [], "nothing is decoded between turns"
    preroll = buffer.preroll()
    assert preroll.dtype == np.float32 and preroll.size == PREROLL_FRAMES * 960, "the last 20 frames, decoded"
    assert np.sqrt(np.mean(preroll**2)) > 0.01, "it is the speech, not silence"
    listening = True
    for i in range(30, 40):
        buffer.add(rtp(i))
        assert len(delivered) == i - 29, "while listening, every packet is a frame at once"
    assert [f.pts for f in delivered] == [960 * i for i in range(10)], "timestamps count from the first frame decoded"
    buffer.add(rtp(35))
    buffer.add(rtp(39))
    assert len(delivered) == 10, "a reordered or repeated packet is dropped"


def test_the_receiver_takes_the_microphone_buffer() -> None:
    """aiortc has no setting for its receiver's jitter buffer, so `listen_to_microphone` replaces a
    private attribute (aiortc is pinned in requirements.txt). If an upgrade renames it, this fails
    here instead of the server quietly decoding every packet 80 ms late."""
    from aiortc import RTCCertificate, RTCDtlsTransport, RTCRtpReceiver
    from aiortc.rtcicetransport import RTCIceGatherer, RTCIceTransport

    from parley.engine.session import Session
    from parley.ingress.loss import MicrophoneBuffer, listen_to_microphone
    from parley.policy import session_settings

    transport = RTCDtlsTransport(RTCIceTransport(RTCIceGatherer()), [RTCCertificate.generateCertificate()])
    receiver = RTCRtpReceiver("audio", transport)
    session = Session("m" * 12, session_settings(ParleyConfig()), ScriptedServices(["Ok."]))
    buffer = listen_to_microphone(receiver, session.on_audio_frame, lambda: session.listening, set())
    assert isinstance(getattr(receiver, "_RTCRtpReceiver__jitter_buffer", None), MicrophoneBuffer)
    assert buffer is getattr(receiver, "_RTCRtpReceiver__jitter_buffer", None)


# -- speech over an answer -----------------------------------------------------------------------


async def _talk_over(session: Any, text: str, after_s: float = 1.0) -> None:
    words = trimmed(speak(text, rate=48000), 48000)
    for frame in frames(np.concatenate([words, silence(after_s, 48000)])):
        session.on_audio_frame(frame)
        await asyncio.sleep(0.002)


@pytest.mark.parametrize(("heard", "interrupts"), [("here", False), ("Mm-hmm.", False), ("Wait, stop.", True)])
async def test_speech_over_an_answer_costs_no_scene_note_until_it_is_a_turn(heard: str, interrupts: bool) -> None:
    """Each "mm-hmm" made a scene note (0.3-0.8 s of a core while Parley spoke). And "yeah" read as
    "here" cut the answer: one short word that asks for nothing is no interruption."""
    story = [f"On day {n} the dragon baked {n + 2} loaves of bread. " for n in range(20)]
    services = ScriptedServices(story, transcript="Tell me a story.")
    services.packets = 100  # 2 s of audio a sentence
    session, page, track = make_session(
        services, turn={"hands_free": True, "end_of_turn": {"silence_s": 0.6}}, vision={"enabled": True}
    )
    session.on_video_frame(av.VideoFrame.from_ndarray(np.full((48, 64, 3), 128, np.uint8), format="rgb24"))
    assert await session.send_text("Tell me a long story.")
    await wait_until(lambda: track.queued_s > 0.5)  # nothing pumps the track: the answer goes on
    notes = len(services.described)
    services.transcript = heard
    await _talk_over(session, "Yeah." if heard == "here" else heard)
    interrupted = lambda: any(s.get("state") == "interrupted" for s in page.of("state"))  # noqa: E731

    # settled: the hold is gone and, if it was an interruption, the page was told so
    def settled() -> bool:
        hold = session.answering.hold if session.answering is not None else None
        return (hold is None or hold.settled) and (interrupted() or not interrupts)

    await wait_until(settled, timeout=5)
    assert any(s.get("state") == "paused" for s in page.of("state")), "the speech held the answer"
    assert interrupted() is interrupts, page.of("state")
    if interrupts:
        await wait_until(lambda: len(services.described) > notes, timeout=5)  # its note is made now
    assert len(services.described) == notes + interrupts, "a note only for speech that became a turn"
    await session.close()


class _ThinkingJudge:
    """A turn judge that takes every pause for a thinking pause (as SmolLM2 and Smart Turn did for
    espeak-ng voices reading garbled transcripts)."""

    def judge(self, audio: np.ndarray, transcript: str | None) -> Any:
        from parley.engine.turnmodel import Verdict

        return Verdict(wait_s=TurnSettings().end_of_turn.max_silence_s, text=0.05)


async def test_once_the_user_resumes_after_a_thinking_pause_the_long_wait_is_over() -> None:
    """ "What is the capital of ... Italy?": the pause in the middle was a thinking pause, and the
    user went on; the pause after "Italy?" ends the turn after `unsure_silence_s` (0.8 s), not the
    2 s of another thinking pause, whatever the judge makes of it."""
    services = ScriptedServices(["Rome."], transcript="What is the capital of Italy?")
    judge: Any = _ThinkingJudge()
    session, page, _ = make_session(services, turn={"hands_free": True}, turn_judge=judge)
    first = trimmed(speak("What is the capital of", rate=48000), 48000)
    second = trimmed(speak("Italy?", rate=48000), 48000)
    audio = np.concatenate([silence(0.3, 48000), first, silence(1.0, 48000), second, silence(1.3, 48000)])
    for frame in frames(audio):
        session.on_audio_frame(frame)
        await asyncio.sleep(0.005)
    await wait_until(lambda: [m for m in page.of("message") if m["role"] == "user"], timeout=5)
    assert session.hearing is None
    await session.close()
