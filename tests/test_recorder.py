"""The recorder's two halves on their own: the utterance state machine fed window probabilities
directly (no VAD: fast and exact), the conditioning fed 16 kHz frames (no resampling: exact sample
counts), and the facade that joins them. Real speech through the real VAD is in test_turns.py.
"""

from __future__ import annotations

import av
import numpy as np
import pytest

from media.vad import RATE, WINDOW
from parley.engine.conditioning import FILL_AFTER_S, PREROLL_S, Conditioner, Tape
from parley.engine.endpointing import Endpointer, MicState, SpeechMark
from parley.engine.recorder import Recorder
from parley.engine.settings import TurnSettings
from tests.support.speech import speak, trim

OFF, QUIET, SPEAKING, PAUSED = MicState.OFF, MicState.QUIET, MicState.SPEAKING, MicState.PAUSED
PREROLL = round(PREROLL_S * RATE)
FRAME = 320
"""Samples in a 20 ms frame at 16 kHz."""


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def endpointer(*, hands_free: bool = True, end_silence_s: float = 0.2, max_record_s: float = 60.0) -> tuple[Endpointer, Tape]:
    """Default VAD settings: speech starts after 2 speech windows, pauses after 2 quiet ones
    (`pause_s` 0.064), and 2 windows of speech (0.064 s) are enough for the `speech` mark."""
    tape = Tape()
    turn = TurnSettings(hands_free=hands_free)
    return Endpointer(turn, tape, max_record_s=max_record_s, end_silence_s=end_silence_s, gate=lambda level: True), tape


def hear(ep: Endpointer, tape: Tape, windows: str) -> list[tuple[str, int]]:
    """One window per character, 'S' speech and '.' quiet, each also put on the tape (as zeros:
    the endpointer reads only the tape's ends); the marks as (kind, sample)."""
    marks: list[SpeechMark] = []
    for w in windows:
        tape.append(np.zeros(WINDOW, np.float32))
        marks += ep.step(0.9, 0.1) if w == "S" else ep.step(0.05, 0.0)
    return [(m.kind, m.sample) for m in marks]


def w(n: int) -> int:
    """Where window `n` begins."""
    return n * WINDOW


# -- the state machine ----------------------------------------------------------------------------


def test_hands_free_goes_off_quiet_speaking_paused_speaking_and_ends_back_in_quiet() -> None:
    ep, tape = endpointer(hands_free=False)
    assert ep.state is OFF
    ep.set_hands_free(True)
    assert ep.state is QUIET and ep.started_at is None and ep.paused_at is None
    assert hear(ep, tape, "." * 10) == [] and ep.state is QUIET
    assert hear(ep, tape, "SS") == [("start", w(10) - PREROLL), ("speech", w(12))], (
        "the utterance begins a preroll before the speech"
    )
    assert ep.state is SPEAKING and ep.speaking and ep.started_at == w(10) - PREROLL
    assert hear(ep, tape, "..") == [("pause", w(12))]
    assert ep.state is PAUSED and ep.paused_at == w(12) and not ep.speaking
    assert hear(ep, tape, "SS") == [("resume", w(14))]
    assert ep.state is SPEAKING and ep.paused_at is None
    assert ep.gaps == [(w(12), w(14))]
    assert hear(ep, tape, "..") == [("pause", w(16))]
    # 0.2 s of silence ends it: 6.25 windows from the pause's first window, so the 7th does.
    assert hear(ep, tape, "." * 4) == [] and ep.state is PAUSED
    tape.append(np.zeros(WINDOW, np.float32))
    (end,) = ep.step(0.05, 0.0)
    assert (end.kind, end.sample, end.reason) == ("end", w(16), None), "it ends where the speech stopped"
    assert end.speech_s == pytest.approx(4 * 0.032)
    assert ep.state is QUIET and ep.started_at is None and ep.paused_at is None
    assert hear(ep, tape, "..SS") == [("start", w(25) - PREROLL), ("speech", w(27))], "the next speech starts a new utterance"
    assert ep.state is SPEAKING


def test_the_start_mark_is_where_the_utterance_begins() -> None:
    ep, tape = endpointer()
    tape.append(np.zeros(w(20), np.float32))
    ep.restart(w(20))
    assert hear(ep, tape, "SS") == [("start", w(20) - PREROLL), ("speech", w(22))]


def test_push_to_talk_press_then_speech_pause_and_release_at_the_pause() -> None:
    ep, tape = endpointer(hands_free=False)
    assert ep.state is OFF
    assert ep.press() == SpeechMark("start", 0)
    assert ep.state is SPEAKING and ep.presses == 1 and ep.started_at == 0
    assert hear(ep, tape, "....") == [] and ep.state is SPEAKING, "key down, no pause heard yet"
    assert not ep.speaking
    assert hear(ep, tape, "SS") == [("resume", w(4)), ("speech", w(6))], "speech after a press: any early work is stale"
    assert hear(ep, tape, "..") == [("pause", w(6))] and ep.state is PAUSED
    assert hear(ep, tape, "." * 40) == [] and ep.state is PAUSED, "no silence ends a push-to-talk utterance"
    assert ep.limit_pause(w(6), 0.1) is None, "nor a judged pause"
    end = ep.release(tail_s=0.5)
    assert end is not None and (end.kind, end.sample) == ("end", w(6)) and end.speech_s == pytest.approx(0.064)
    assert ep.state is OFF, "released at a pause: no tail to wait for"
    assert ep.release() is None and ep.state is OFF


def test_a_release_mid_speech_ends_at_the_tapes_end_and_waits_for_the_tail() -> None:
    ep, tape = endpointer(hands_free=False)
    ep.press()
    hear(ep, tape, "..SSSS")
    tape.append(np.zeros(100, np.float32))  # less than a window: not analysed yet
    end = ep.release(tail_s=0.1)
    assert end is not None and end.sample == w(6) + 100
    assert ep.state is QUIET, "audio is still wanted: the tail on its way"
    tape.append(np.zeros(1000, np.float32))
    ep.analyse()
    assert ep.state is QUIET
    tape.append(np.zeros(600, np.float32))
    assert ep.analyse() == [] and ep.state is OFF, "the tail is on the tape"


def test_a_judged_pause_ends_after_the_silence_it_was_given() -> None:
    ep, tape = endpointer(end_silence_s=2.0)
    assert hear(ep, tape, "SSSS..") == [("start", 0), ("speech", w(2)), ("pause", w(4))]
    assert ep.limit_pause(w(4), 0.5) is None, "not that long yet"
    # 0.5 s is 15.6 windows: the 16th quiet window ends it (2 heard already).
    assert hear(ep, tape, "." * 13) == [] and ep.state is PAUSED
    assert hear(ep, tape, ".") == [("end", w(4))] and ep.state is QUIET


def test_a_pause_judged_after_its_silence_ends_at_once_and_a_stale_one_not_at_all() -> None:
    ep, tape = endpointer(end_silence_s=2.0)
    hear(ep, tape, "SSSS" + "." * 20)
    end = ep.limit_pause(w(4), 0.5)
    assert end is not None and (end.kind, end.sample) == ("end", w(4)) and ep.state is QUIET

    ep, tape = endpointer(end_silence_s=0.5)
    hear(ep, tape, "SSSS..SS..")
    assert ep.limit_pause(w(4), 0.1) is None, "speech came back since that pause"
    assert ep.limit_pause(w(8), 1.0) is None
    assert hear(ep, tape, "." * 30) == [("end", w(8))], "the judged 1 s, not end_silence_s, ends the current pause"
    assert ep.cursor - w(8) >= RATE


def test_the_recording_limit_ends_an_utterance_with_a_reason() -> None:
    ep, tape = endpointer(max_record_s=1.0)
    marks = hear(ep, tape, "S" * 40)
    assert marks == [
        ("start", 0),
        ("speech", w(2)),
        ("end", w(32)),  # past 1 s of utterance: at the window that passed it
        ("start", w(32) - PREROLL),  # speech going on starts another
        ("speech", w(34)),
    ]

    ep, tape = endpointer(hands_free=False, max_record_s=1.0)
    ep.press()
    ends: list[SpeechMark] = []
    for _ in range(40):
        tape.append(np.zeros(WINDOW, np.float32))
        ends += [m for m in ep.step(0.9, 0.1) if m.kind == "end"]
    assert len(ends) == 1 and ends[0].reason == "Recording stopped at the 1-second limit."
    assert ep.state is OFF and ep.release() is None, "push-to-talk: the key's release has nothing left to end"


def test_a_dropped_utterance_ends_with_no_mark_and_the_next_speech_starts_another() -> None:
    ep, tape = endpointer()
    hear(ep, tape, "SSSS")
    ep.drop_utterance()
    assert ep.state is QUIET and ep.started_at is None and ep.speech_s == 0
    assert hear(ep, tape, "..") == []
    assert [k for k, _ in hear(ep, tape, "SS")] == ["start", "speech"]

    ep, tape = endpointer()
    ep.press()
    ep.drop_utterance()
    assert ep.state is SPEAKING, "the key is down: nothing is dropped"


def test_switching_modes_drops_the_utterance_and_sets_whether_audio_is_wanted() -> None:
    ep, tape = endpointer()
    hear(ep, tape, "SSSS..")
    assert ep.state is PAUSED
    ep.set_hands_free(False)
    assert ep.state is OFF and ep.started_at is None and ep.paused_at is None
    ep.press()
    ep.set_hands_free(True)
    assert ep.state is QUIET and not ep.pressed


def test_a_gated_window_is_no_speech() -> None:
    tape = Tape()
    ep = Endpointer(TurnSettings(hands_free=True), tape, max_record_s=60, end_silence_s=0.6, gate=lambda level: level > 0.5)
    assert hear(ep, tape, "SSSS") == [], "the gate rejects windows this quiet (the assistant's echo)"


# -- conditioning ---------------------------------------------------------------------------------


def frame16(samples: np.ndarray, pts: int | None) -> av.AudioFrame:
    pcm = (np.clip(samples, -1, 1) * 32767).astype(np.int16)
    frame = av.AudioFrame.from_ndarray(pcm.reshape(1, -1), format="s16", layout="mono")
    frame.sample_rate = RATE
    frame.pts = pts
    return frame


def tone(n: int = FRAME) -> np.ndarray:
    return (0.1 * np.sin(np.arange(n) / 5)).astype(np.float32)


def test_unwanted_audio_keeps_only_the_preroll_which_a_restart_puts_on_the_tape() -> None:
    clock = Clock()
    mic = Conditioner(clock=clock, canceller=None)
    for i in range(50):
        mic.take(frame16(tone(), i * FRAME), wanted=False)
    assert mic.tape.end == 0 and mic.heard_to == 50 * FRAME and mic.heard_rate == RATE
    assert mic.restart() == 0
    assert mic.tape.end == PREROLL and mic.heard_to is None
    mic.take(frame16(tone(), 50 * FRAME), wanted=True)
    assert mic.tape.end == PREROLL + FRAME, "the timestamps before the restart are forgotten: no gap"


def test_a_timestamp_jump_is_silence_on_the_tape() -> None:
    mic = Conditioner(clock=Clock(), canceller=None)
    mic.take(frame16(tone(), 0), wanted=True)
    mic.take(frame16(tone(), 5 * FRAME), wanted=True)
    assert mic.tape.end == 6 * FRAME
    assert not mic.tape.slice(FRAME, 5 * FRAME).any() and mic.tape.slice(5 * FRAME, 6 * FRAME).any()


def test_time_with_no_frame_is_laid_down_as_silence() -> None:
    clock = Clock()
    mic = Conditioner(clock=clock, canceller=None)
    mic.take(frame16(tone(), 0), wanted=True)
    assert mic.wall_time(FRAME) == clock.now and mic.wall_time(0) == pytest.approx(clock.now - 0.02)
    clock.now += 0.01
    assert not mic.fill_silence(lambda: True), "too soon even for a sender that stopped"
    clock.now += 0.09
    assert not mic.fill_silence(lambda: False), "a sender still sending gets FILL_AFTER_S"
    assert mic.fill_silence(lambda: True) and mic.tape.end == FRAME + round(0.1 * RATE)
    clock.now += FILL_AFTER_S + 0.05
    assert mic.fill_silence(lambda: False) and mic.tape.end == FRAME + 1600 + 4000
    assert mic.wall_time(mic.tape.end) == pytest.approx(clock.now)
    mic.take(frame16(tone(), FRAME + 1600 + 4000), wanted=True)
    assert mic.tape.end == 2 * FRAME + 1600 + 4000, "the silence laid down is not laid again"


def test_preload_replaces_the_preroll() -> None:
    mic = Conditioner(clock=Clock(), canceller=None)
    mic.take(frame16(tone(), 0), wanted=False)
    mic.preload(np.ones(RATE, np.float32), RATE)
    mic.restart()
    assert mic.tape.end == PREROLL and np.all(mic.tape.slice(0, PREROLL) == 1)


# -- the recorder ---------------------------------------------------------------------------------


def test_push_to_talk_through_the_recorder() -> None:
    clock = Clock()
    recorder = Recorder(TurnSettings(), max_record_s=60, clock=clock)
    assert recorder.state is OFF and not recorder.wants_audio and not recorder.hands_free
    for i in range(50):
        assert recorder.feed(frame16(np.zeros(FRAME, np.float32), i * FRAME)) == []
    assert recorder.tape.end == 0, "nothing is computed while nobody listens"
    assert recorder.press() == SpeechMark("start", 0)
    assert recorder.state is SPEAKING and recorder.wants_audio and recorder.started_at == 0 and recorder.presses == 1
    assert recorder.tape.end == PREROLL, "the preroll is on the tape"
    for i in range(50, 75):
        assert recorder.feed(frame16(np.zeros(FRAME, np.float32), i * FRAME)) == []
    clock.now += 0.3
    assert recorder.fill_silence() == [] and recorder.tape.end == PREROLL + 25 * FRAME + round(0.3 * RATE)
    end = recorder.release(tail_s=0.1)
    assert end == SpeechMark("end", recorder.tape.end), "no pause heard: it ends at the tape's end"
    assert recorder.state is QUIET and recorder.wants_audio and recorder.started_at is None
    at = recorder.tape.end
    for _ in range(4):
        recorder.feed(frame16(np.zeros(FRAME, np.float32), None))
    assert recorder.state is QUIET
    recorder.feed(frame16(np.zeros(FRAME, np.float32), None))
    assert recorder.tape.end == at + 5 * FRAME and recorder.state is OFF, "0.1 s of tail, then off"
    recorder.feed(frame16(np.zeros(FRAME, np.float32), None))
    assert recorder.tape.end == at + 5 * FRAME
    clock.now += 1.0
    assert recorder.fill_silence(lambda: True) == [] and recorder.tape.end == at + 5 * FRAME, "no utterance: no silence"


def test_a_press_lets_go_of_earlier_audio_and_hands_free_keeps_only_the_preroll() -> None:
    recorder = Recorder(TurnSettings(hands_free=True), max_record_s=60)
    assert recorder.state is QUIET and recorder.wants_audio
    for i in range(100):
        recorder.feed(frame16(np.zeros(FRAME, np.float32), i * FRAME))
    assert recorder.tape.end == 100 * FRAME and recorder.tape.end - recorder.tape.start <= PREROLL + WINDOW + FRAME
    recorder.set_hands_free(False)
    assert recorder.state is OFF
    recorder.set_hands_free(True)
    assert recorder.state is QUIET and recorder.tape.end == 100 * FRAME, "nothing was kept while off"


def test_end_silence_is_the_settings_unless_given() -> None:
    turn = TurnSettings.model_validate({"hands_free": True, "end_of_turn": {"silence_s": 0.9}})
    assert Recorder(turn, max_record_s=60).end_silence_s == 0.9
    assert Recorder(turn, max_record_s=60, end_silence_s=2.0).end_silence_s == 2.0


def test_spoken_words_go_quiet_speaking_paused_and_back_to_quiet() -> None:
    """Through the real VAD: the states the recorder passes through for a question and silence."""
    words = trim(speak("What is the capital of France?", rate=RATE))
    audio = np.concatenate([np.zeros(RATE // 2, np.float32), words, np.zeros(RATE, np.float32)])
    recorder = Recorder(TurnSettings.model_validate({"hands_free": True, "end_of_turn": {"silence_s": 0.6}}), max_record_s=60)
    states, kinds = [recorder.state], []
    for i in range(0, len(audio) - FRAME + 1, FRAME):
        kinds += [m.kind for m in recorder.feed(frame16(audio[i : i + FRAME], i))]
        if recorder.state is not states[-1]:
            states.append(recorder.state)
    assert kinds[:2] == ["start", "speech"] and kinds[-2:] == ["pause", "end"], kinds
    assert states[:3] == [QUIET, SPEAKING, PAUSED] and states[-2:] == [PAUSED, QUIET], states
