"""End of turn: how often a thinking pause is taken for the end, and how soon a finished question is.

Makes spoken utterances at run time with the voices on this machine (hibari, and espeak-ng's
en-us and en-gb voices): for each of 40 questions (8 of them short: "What do bees make?"), the question spoken straight through
("complete"), and the same recording cut at an unfinished point ("Please tell me which ocean is
...") with a thinking pause of 0.7-1.5 s before the rest ("paused"). The cut is made inside the
whole sentence's audio, at its quietest moment near the word boundary, so the words before the
pause keep the intonation of a sentence that goes on. Each utterance (with 0.4 s of silence before
it and 3 s after) is played through Parley's own hands-free recorder (Silero VAD, 20 ms frames as
aiortc decodes them), and each rule decides when the turn ends:

- silence: `end_silence_s` (0.6 s) of silence ends the turn (Parley before the turn model);
- model: after `quiet_s` of silence, Smart Turn v3.2 judges the turn; finished ends it at once,
  unfinished waits, up to `max_silence_s` (Parley's hands-free default), for several settings.

Reported per rule: the false cut-off rate (a paused utterance ended during its pause), the share of
complete utterances judged unfinished (they wait for `max_silence_s`), and the median and p95 delay
from the end of a complete utterance's speech to the decision (the recorder's clock, plus the
model's own time measured here); for the paused ones that were not cut off, the same delay from the
end of the resumed speech, how many waited over 1 s, and how many lost a content word of the part
after the pause from the transcript the turn is answered with. Then LiveKit eot-bench's two figures
over the judge's thresholds, and the models' cost per decision on this machine (one thread). The
models hear what the session gives them: the speech with its pauses cut down (`--whole-pauses`:
as before that).

    .venv/bin/python benchmarks/end_of_turn.py              # 40 questions x 3 voices x 2 = 240 utterances
    .venv/bin/python benchmarks/end_of_turn.py --voices hibari --json eot.json
"""

from __future__ import annotations

import argparse
import json
import random
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from benchmarks.hearing import VOICES as HEARING_VOICES  # noqa: E402
from benchmarks.hearing import frames  # noqa: E402
from deployments.asr import FasterWhisperBackend  # noqa: E402
from media.speech import espeak, resample, speak, trim  # noqa: E402
from media.vad import RATE  # noqa: E402
from parley.config import ASRConfig  # noqa: E402
from parley.engine.ear import THOUGHT_PAUSE_S  # noqa: E402
from parley.engine.recorder import Recorder  # noqa: E402
from parley.engine.settings import EndOfTurnSettings, TurnSettings  # noqa: E402
from parley.engine.turnmodel import (  # noqa: E402
    SOUND_TAIL,
    ModelMissing,
    TurnJudge,
    load_sound_model,
    load_text_model,
)
from parley.engine.utterance import END_PAD_S  # noqa: E402

MIC_RATE = 48000
PAUSE_RANGE_S = (0.7, 1.5)
"""The thinking pause's length, drawn per question (--pause-range)."""
WHOLE_PAUSES = False
"""--whole-pauses: give the models the speech with its pauses whole (Parley before it cut them down)."""
PAUSE_SEEN_S = 0.064
"""A pause is seen (and its transcription starts) this long after the speech stops: turn.vad.pause_s."""

QUESTIONS: list[tuple[str, str]] = [
    ("Please tell me which ocean is", "the biggest one."),
    ("Can you remind me what the", "capital of Australia is?"),
    ("How many legs does a", "spider have?"),
    ("I would like to know why the", "sky is blue."),
    ("What is the best way to", "cook rice?"),
    ("Could you explain how a", "rainbow forms?"),
    ("Which planet in our", "solar system is the largest?"),
    ("Tell me something about the", "history of Rome."),
    ("What do you think about", "learning a new language?"),
    ("How long does it take to", "boil an egg?"),
    ("Where can I find a", "good book about birds?"),
    ("Why do cats like to", "sleep so much?"),
    ("What is the difference between a", "frog and a toad?"),
    ("Can you give me a", "simple recipe for pancakes?"),
    ("How far away is the", "moon from the earth?"),
    ("What should I pack for a", "trip to the mountains?"),
    ("Who was the first person to", "walk on the moon?"),
    ("Is it true that", "bananas are berries?"),
    ("How do I make my", "plants grow faster?"),
    ("What time is it in", "Tokyo right now?"),
    ("Could you help me write a", "short poem about the sea?"),
    ("What is the tallest", "mountain in Europe?"),
    ("Why does the moon", "change its shape?"),
    ("How many days are there in a", "leap year?"),
    ("What does the word", "serendipity mean?"),
    ("Can you tell me a", "joke about penguins?"),
    ("Which animal is the", "fastest on land?"),
    ("How do airplanes stay", "up in the air?"),
    ("What is the main ingredient in", "guacamole?"),
    ("Who painted the", "Mona Lisa?"),
    ("When did the first", "computer get built?"),
    ("What makes the", "ocean salty?"),
    # short questions, the kind a person asks most
    ("What do", "bees make?"),
    ("Name a color", "of the sky."),
    ("How many legs does a", "dog have?"),
    ("What is the capital", "of France?"),
    ("Who wrote", "Romeo and Juliet?"),
    ("What is two", "plus two?"),
    ("Where do", "penguins live?"),
    ("Why is the", "grass green?"),
]

VOICES = {
    "hibari": lambda text: speak(text, rate=MIC_RATE),
    "espeak-us": lambda text: espeak(text, rate=MIC_RATE, voice="en-us", speed=165),
    "espeak-gb": lambda text: espeak(text, rate=MIC_RATE, voice="en-gb+m3", speed=150),
    **{name: say for name, say in HEARING_VOICES.items() if name != "hibari"},  # voices no test uses
}


@dataclass
class Utterance:
    voice: str
    text: str
    audio: np.ndarray
    """48 kHz float32: 0.4 s of silence, the speech, 3 s of silence."""
    speech_end_s: float
    """Where the last word ends (seconds into `audio`)."""
    pause: tuple[float, float] | None = None
    """Paused utterances: where the thinking pause lies (seconds into `audio`)."""
    pauses: list[Pause] = field(default_factory=list)
    """What the recorder heard: every pause of at least the shortest quiet_s tried, and what the
    models made of it."""


@dataclass
class Pause:
    at_s: float
    """Where the speech stopped (the recorder's first quiet window), seconds into the audio."""
    length_s: float
    """How long it stayed quiet (until speech came back, or the end of the audio)."""
    sound: float = 0.0
    text: float = 0.0
    transcript: str = ""
    sound_s: float = 0.0
    """The sound model's time for it."""
    asr_s: float = 0.0
    """The transcription's time (the app's speculation starts it at the pause)."""
    text_s: float = 0.0
    """The text model's time for it."""


class Words:
    """Where each word ends in a recording, by faster-whisper's word timestamps (bundled tiny.en)."""

    def __init__(self) -> None:
        from faster_whisper import WhisperModel

        from deployments.asr import _model_path

        self.model = WhisperModel(_model_path(None), device="cpu", compute_type="int8")

    def cut(self, full: np.ndarray, words: int) -> int | None:
        """The sample (48 kHz) between word `words` and the next, or None if the words did not
        come out as many as were said."""
        audio = resample(full, MIC_RATE, RATE)
        segments, _ = self.model.transcribe(audio, language="en", word_timestamps=True, beam_size=1)
        found = [w for segment in segments for w in (segment.words or [])]
        if len(found) <= words:
            return None
        end, start = found[words - 1].end, found[words].start
        return int((end + start) / 2 * MIC_RATE)


def cut_point(full: np.ndarray, prefix_s: float) -> int:
    """The quietest 20 ms near `prefix_s` seconds into `full`: where the words before the pause end
    (when the word timestamps cannot tell)."""
    hop = MIC_RATE // 100
    energy = np.convolve(full**2, np.ones(2 * hop) / (2 * hop), mode="same")
    lo, hi = int((prefix_s - 0.3) * MIC_RATE), int((prefix_s + 0.1) * MIC_RATE)
    lo, hi = max(hop, lo), min(len(full) - hop, hi)
    return lo + int(np.argmin(energy[lo:hi:hop])) * hop


def make_utterances(voices: list[str], count: int, seed: int) -> list[Utterance]:
    rng = random.Random(seed)
    words = Words()
    lead, tail = np.zeros(int(0.4 * MIC_RATE), np.float32), np.zeros(3 * MIC_RATE, np.float32)
    out: list[Utterance] = []
    for voice in voices:
        say = VOICES[voice]
        for start, rest in QUESTIONS[:count]:
            full = trim(say(f"{start} {rest}"))
            cut = words.cut(full, len(start.split()))
            if cut is None:
                cut = cut_point(full, len(trim(say(start))) / MIC_RATE)
            pause = rng.uniform(*PAUSE_RANGE_S)
            out.append(Utterance(voice, f"{start} {rest}", np.concatenate([lead, full, tail]), 0.4 + len(full) / MIC_RATE))
            gap = np.zeros(int(pause * MIC_RATE), np.float32)
            audio = np.concatenate([lead, full[:cut], gap, full[cut:], tail])
            at = 0.4 + cut / MIC_RATE
            out.append(Utterance(voice, f"{start} ... {rest}", audio, 0.4 + (len(full) + len(gap)) / MIC_RATE, (at, at + pause)))
    return out


def listen(utterance: Utterance, shortest_s: float, judge: TurnJudge | None, asr: FasterWhisperBackend | None) -> None:
    """Play the utterance through a hands-free recorder that never ends the turn by itself, and
    note each pause of at least `shortest_s` and (with models) what they make of it, on exactly the
    audio and transcript the session would give them at that pause."""
    recorder = Recorder(TurnSettings(hands_free=True), max_record_s=60.0, end_silence_s=30.0)
    paused: int | None = None

    def close(until: int) -> None:
        if paused is None or (until - paused) / RATE < shortest_s:
            return
        pause = Pause(at_s=paused / RATE, length_s=(until - paused) / RATE)
        if judge is not None and asr is not None:
            measure(pause, recorder, paused, judge, asr)
        utterance.pauses.append(pause)

    for frame in frames(utterance.audio):
        for event in recorder.feed(frame):
            if event.kind == "pause" and recorder.started_at is not None:
                paused = event.sample
            elif event.kind == "resume":
                close(event.sample)
                paused = None
    close(recorder.tape.end)


def measure(pause: Pause, recorder: Recorder, paused_at: int, judge: TurnJudge, asr: FasterWhisperBackend) -> None:
    """What the session asks of the models at this pause (both of them, to compare the rules), timed."""
    start = recorder.started_at or 0
    cut = recorder.audio if WHOLE_PAUSES else recorder.speech_audio  # as the session gives the models the speech
    audio = cut(max(start, paused_at + SOUND_TAIL - 16 * RATE), paused_at + SOUND_TAIL)[-8 * RATE :]
    assert judge.sound is not None and judge.text is not None
    began = time.perf_counter()
    pause.sound = judge.sound.complete_probability(audio)
    pause.sound_s = time.perf_counter() - began
    began = time.perf_counter()
    speech = cut(start, paused_at + round(END_PAD_S * RATE))
    pause.transcript = asr.transcribe_batch([speech])[0].text.strip()
    pause.asr_s = time.perf_counter() - began
    began = time.perf_counter()
    pause.text = judge.text.complete_probability(pause.transcript)
    pause.text_s = time.perf_counter() - began


@dataclass(frozen=True)
class Rule:
    """When a turn ends: by silence alone (`judge` None), or by a judge's wait at each pause."""

    name: str
    judge: TurnJudge | None = None
    quiet_s: float = 0.2
    end_silence_s: float = 0.6
    uses: tuple[str, ...] = ("sound", "text")
    """Which models' verdicts the judge hears (the others count as missing)."""

    def decide(self, utterance: Utterance) -> float | None:
        """When (seconds into the audio) this rule ends the turn; None if never. As in the session,
        the judge starts at the pause: it reads the transcript made there, then hears the speech
        only if the reading did not decide, and the turn ends `quiet_s` into the pause at the
        earliest."""
        thought = False
        for pause in utterance.pauses:
            if self.judge is None:
                ends = self.end_silence_s
            else:
                settings = self.judge.settings
                text = pause.text if "text" in self.uses else None
                heard = text is None or settings.text_unfinished <= text < settings.text_finished
                sound = pause.sound if "sound" in self.uses and heard else None
                ready = PAUSE_SEEN_S + (pause.asr_s + pause.text_s if text is not None else 0.0)
                ready += pause.sound_s if sound is not None else 0.0
                wait = self.judge.wait_s(sound, text)
                if thought:  # as the session: after a thinking pause the user resumed, no more long waits
                    wait = min(wait, settings.unsure_silence_s)
                ends = max(self.quiet_s, wait, ready)
            if pause.length_s >= ends:
                return pause.at_s + ends
            thought = thought or pause.length_s >= THOUGHT_PAUSE_S
        return None


def lost_words(utterance: Utterance) -> bool:
    """Whether the transcript the turn would be answered with (the one made at the last pause) lacks
    a content word of the part said after the thinking pause."""
    from benchmarks.asr_noise import normalise
    from parley.engine.backchannel import FUNCTION_WORDS

    if not utterance.pauses:
        return True
    rest = utterance.text.split("...")[-1]
    wanted = {w for w in normalise(rest) if w not in FUNCTION_WORDS}
    return not wanted <= set(normalise(utterance.pauses[-1].transcript))


@dataclass
class Score:
    rule: Rule
    false_cutoffs: int = 0
    paused: int = 0
    early_complete: int = 0
    late_complete: int = 0
    complete: int = 0
    delays: list[float] = field(default_factory=list)
    resumed_delays: list[float] = field(default_factory=list)
    """Paused utterances not cut off: from the end of the resumed speech to the decision."""
    words_lost: int = 0
    """Paused utterances whose transcript at their end lacks a content word said after the pause."""

    def add(self, utterance: Utterance) -> None:
        ended = self.rule.decide(utterance)
        early = ended is not None and ended < utterance.speech_end_s - 0.05
        if utterance.pause is not None:
            self.paused += 1
            self.false_cutoffs += early
            if not early:
                self.resumed_delays.append((ended or len(utterance.audio) / MIC_RATE) - utterance.speech_end_s)
                self.words_lost += lost_words(utterance)
            return
        self.complete += 1
        self.early_complete += early
        if not early:
            delay = (ended if ended is not None else len(utterance.audio) / MIC_RATE) - utterance.speech_end_s
            self.delays.append(delay)
            self.late_complete += delay > 1.0

    def row(self) -> dict[str, float | str | int]:
        p50, p95 = np.percentile(self.delays, [50, 95]) if self.delays else (float("nan"), float("nan"))
        r50, r95 = np.percentile(self.resumed_delays, [50, 95]) if self.resumed_delays else (float("nan"), float("nan"))
        return {
            "resumed_delay_p50_ms": 1000 * r50,
            "resumed_delay_p95_ms": 1000 * r95,
            "resumed_over_1s": sum(d > 1.0 for d in self.resumed_delays),
            "resumed": len(self.resumed_delays),
            "words_lost": self.words_lost,
            "rule": self.rule.name,
            "false_cutoff_pct": 100 * self.false_cutoffs / max(1, self.paused),
            "complete_cut_early_pct": 100 * self.early_complete / max(1, self.complete),
            "complete_waited_pct": 100 * self.late_complete / max(1, self.complete),
            "delay_p50_ms": 1000 * p50,
            "delay_p95_ms": 1000 * p95,
        }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--voices", nargs="+", choices=sorted(VOICES), default=["hibari", "espeak-us", "espeak-gb"])
    parser.add_argument("--questions", type=int, default=len(QUESTIONS), help=f"questions per voice (at most {len(QUESTIONS)})")
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--json", help="write the table here")
    parser.add_argument("--dump", help="write every utterance's pauses and the models' verdicts here")
    parser.add_argument("--asr-model", help="the Whisper the transcripts come from (asr.model; default: Parley's)")
    parser.add_argument("--pause-range", nargs=2, type=float, default=[0.7, 1.5], metavar=("MIN_S", "MAX_S"))
    parser.add_argument(
        "--whole-pauses", action="store_true", help="the models hear pauses whole, as before Recorder.speech_audio"
    )
    args = parser.parse_args()
    global WHOLE_PAUSES, PAUSE_RANGE_S
    WHOLE_PAUSES = args.whole_pauses
    PAUSE_RANGE_S = (args.pause_range[0], args.pause_range[1])

    began = time.monotonic()
    utterances = make_utterances(args.voices, min(args.questions, len(QUESTIONS)), args.seed)
    paused = sum(u.pause is not None for u in utterances)
    print(f"{len(utterances)} utterances ({paused} with a thinking pause) made in {time.monotonic() - began:.0f} s", flush=True)

    sound, text = load_sound_model(), load_text_model()
    judge = None
    if isinstance(sound, ModelMissing) or isinstance(text, ModelMissing):
        print(f"a turn model could not load ({sound}, {text}): only the silence rule is measured")
    else:
        judge = TurnJudge(sound, text, EndOfTurnSettings())
    asr_config = ASRConfig(model=args.asr_model, language="en") if args.asr_model else ASRConfig()
    asr = FasterWhisperBackend(asr_config) if judge is not None else None
    began = time.monotonic()
    for i, utterance in enumerate(utterances, 1):
        listen(utterance, 0.1, judge, asr)
        if i % 20 == 0:
            print(f"  {i} of {len(utterances)} heard ({time.monotonic() - began:.0f} s)", flush=True)
    if args.dump:
        Path(args.dump).write_text(json.dumps([asdict(u) | {"audio": None} for u in utterances], indent=1))

    rules = [Rule("silence 0.6 s (before)")]
    if judge is not None:
        shipped = EndOfTurnSettings()
        rules += [
            Rule("sound model alone", judge, shipped.quiet_s, uses=("sound",)),
            Rule("text model alone", judge, shipped.quiet_s, uses=("text",)),
            Rule("Parley: text + sound (the default)", judge, shipped.quiet_s),
        ]
    voices = [None, *args.voices] if len(args.voices) > 1 else [None]
    rows = []
    print(
        f"{'rule':38s} {'voices':10s} {'false cut-offs':>14s} {'complete >1 s':>14s} {'end -> decision p50 / p95':>26s}"
        f" {'resumed: p50 / p95, >1 s, words lost':>38s}"
    )
    for rule in rules:
        for voice in voices:
            score = Score(rule)
            for utterance in utterances:
                if voice is None or utterance.voice == voice:
                    score.add(utterance)
            r = score.row() | {"voices": voice or "all"}
            rows.append(r)
            print(
                f"{rule.name if voice is None else '':38s} {voice or 'all':10s} {r['false_cutoff_pct']:12.1f} % "
                f"{r['complete_waited_pct']:12.1f} % {r['delay_p50_ms']:12.0f} / {r['delay_p95_ms']:.0f} ms"
                f"{r['resumed_delay_p50_ms']:12.0f} / {r['resumed_delay_p95_ms']:.0f} ms, {r['resumed_over_1s']} / "
                f"{r['resumed']}, {r['words_lost']} / {r['resumed']}",
                flush=True,
            )
    eot = eot_bench(utterances, judge) if judge is not None else {}
    costs = report_costs(utterances) if judge is not None else {}
    if args.json:
        summary = {"utterances": len(utterances), "paused": paused, "rules": rows, "eot_bench": eot, **costs}
        Path(args.json).write_text(json.dumps(summary, indent=2))


def eot_bench(utterances: list[Utterance], judge: TurnJudge) -> dict[str, float]:
    """The end-of-turn figures as LiveKit's eot-bench reports them, over the judge's two thresholds
    (text_finished, sound_finished): the false cut-offs (mid-turn pauses taken for the end) of the
    best setting whose mean end-of-speech -> decision latency is at most 300 ms, and the least mean
    latency of a setting with at most 5 % false cut-offs. Latency here includes the models' own
    time (they start at the pause), so it is the silence a user hears before the turn is taken."""
    points = []
    for text_finished in np.arange(0.2, 0.95, 0.05):
        for sound_finished in np.arange(0.3, 0.99, 0.05):
            turn = EndOfTurnSettings(text_finished=float(text_finished), sound_finished=float(sound_finished))
            score = Score(Rule("sweep", TurnJudge(judge.sound, judge.text, turn), turn.quiet_s))
            for utterance in utterances:
                score.add(utterance)
            delays = score.delays + score.resumed_delays
            points.append((100 * score.false_cutoffs / max(1, score.paused), 1000 * float(np.mean(delays))))
    fast = [cut for cut, latency in points if latency <= 300]
    safe = [latency for cut, latency in points if cut <= 5]
    out = {
        "false_cutoff_pct_at_300ms": min(fast) if fast else float("nan"),
        "latency_ms_at_5pct_cutoff": min(safe) if safe else float("nan"),
    }
    print(
        f"eot-bench style (thresholds swept): false cut-offs at <= 300 ms mean latency "
        f"{out['false_cutoff_pct_at_300ms']:.1f} %; mean latency at <= 5 % false cut-offs "
        f"{out['latency_ms_at_5pct_cutoff']:.0f} ms"
    )
    return out


def report_costs(utterances: list[Utterance]) -> dict[str, float]:
    """What a judgement costs on this machine: each model's time (p50, p95), and the transcription it reads."""
    heard = [p for u in utterances for p in u.pauses]
    costs: dict[str, float] = {"decisions": len(heard)}
    for name, values in (
        ("sound", [p.sound_s for p in heard]),
        ("text", [p.text_s for p in heard]),
        ("asr", [p.asr_s for p in heard]),
    ):
        costs[f"{name}_ms_p50"], costs[f"{name}_ms_p95"] = (1000 * float(v) for v in np.percentile(values, [50, 95]))
    print(
        f"per decision ({len(heard)}), on one thread: sound model {costs['sound_ms_p50']:.0f} / {costs['sound_ms_p95']:.0f} ms, "
        f"text model {costs['text_ms_p50']:.0f} / {costs['text_ms_p95']:.0f} ms (p50 / p95); the transcript it reads "
        f"(made at the pause for the early answer anyway) {costs['asr_ms_p50']:.0f} ms"
    )
    return costs


if __name__ == "__main__":
    main()
