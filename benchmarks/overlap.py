"""What does speech over an answer read as, and does the rule let backchannels by and stop interruptions?

Every backchannel ("mm-hmm", "uh-huh", "yeah", "right", "okay", "I see", a laugh, a cough) and
every interruption ("wait, stop", "hold on", "sorry, what?", "no, no", "stop there, please") in
each voice of benchmarks/hearing.py (hibari and espeak-ng accents no test uses), clean and under a
fan at -38 dBFS, goes through the ingress's recorder (its speech length as the VAD counts it) and
each ASR model; `parley.engine.backchannel.overlap_verdict` then says what the session would do
with it, with what Whisper said of its own certainty. Prints, per model, how many backchannels
would interrupt and how many interruptions would not, and every wrong one with its transcript.
No browser and no echo: benchmarks/interruption.py measures the same in Chromium over a real
answer. A benchmark, not a test: it passes or fails nothing. About a minute on 2 cores.

    python benchmarks/overlap.py
    python benchmarks/overlap.py --models base --voices hibari,rp-160 --conditions clean
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import numpy as np  # noqa: E402

from benchmarks.hearing import CONDITIONS, MIC_RATE, VOICES, frames, models  # noqa: E402
from benchmarks.interruption import BACKCHANNELS, INTERRUPTIONS, cough, laugh  # noqa: E402
from deployments.asr import SAMPLE_RATE, FasterWhisperBackend  # noqa: E402
from media.echo import EchoCanceller  # noqa: E402
from media.speech import resample, trim  # noqa: E402
from parley.config import ASRConfig  # noqa: E402
from parley.engine.backchannel import overlap_verdict  # noqa: E402
from parley.engine.recorder import Recorder  # noqa: E402
from parley.engine.settings import TurnSettings  # noqa: E402
from parley.engine.utterance import END_PAD_S  # noqa: E402


def said(voice: str, text: str) -> np.ndarray:
    """The phrase at 48 kHz: spoken in `voice`, or the made laugh or cough."""
    if text in ("(laugh)", "(cough)"):
        return resample(laugh() if text == "(laugh)" else cough(), 16000, MIC_RATE)
    return trim(VOICES[voice](text))


def heard(stream: np.ndarray) -> tuple[np.ndarray, float]:
    """(the audio the session transcribes, the seconds of speech the VAD counted) for speech heard
    hands-free: the utterance from its start (with the pre-roll) to the end of its speech plus the
    padding; both as the recorder marks them."""
    recorder = Recorder(TurnSettings(hands_free=True), max_record_s=60.0, canceller=EchoCanceller(lambda: None))
    start = None
    at_pause = np.zeros(0, np.float32)
    for frame in frames(stream):
        for event in recorder.feed(frame):
            if event.kind == "start" and start is None:
                start = event.sample
            elif event.kind == "pause" and start is not None:
                # what the session transcribes at the pause (the tape forgets an utterance once it ends)
                at_pause = recorder.audio(start, event.sample + round(END_PAD_S * SAMPLE_RATE))
            elif event.kind == "end" and start is not None:
                return at_pause, event.speech_s
    return at_pause, recorder.speech_s


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", default="", help=f"comma-separated, from {', '.join(models())} (default: all installed)")
    parser.add_argument("--voices", default=",".join(VOICES), help=f"comma-separated, from {', '.join(VOICES)}")
    parser.add_argument("--conditions", default="clean,fan-38", help=f"comma-separated, from {', '.join(CONDITIONS)}")
    parser.add_argument("--all", action="store_true", help="print every clip, not only the wrong ones")
    args = parser.parse_args()
    names = [m for m in args.models.split(",") if m] or list(models())
    voices = [v for v in args.voices.split(",") if v]
    conditions = [c for c in args.conditions.split(",") if c]
    engines = {}
    for name in names:
        try:
            engines[name] = FasterWhisperBackend(ASRConfig(model=models()[name]))
        except Exception as e:  # not installed
            print(f"skipping {name}: {e}")
    clips = []
    for v, voice in enumerate(voices):
        for p, text in enumerate((*BACKCHANNELS, *INTERRUPTIONS)):
            speech = said(voice, text)
            dry = np.concatenate([np.zeros(MIC_RATE // 2, np.float32), speech, np.zeros(MIC_RATE, np.float32)])
            for c, condition in enumerate(conditions):
                make = CONDITIONS[condition]
                stream = dry if make is None else np.clip(dry + make(dry.size, [v, p, c]), -1, 1).astype(np.float32)
                clips.append((voice, condition, text, text in INTERRUPTIONS, *heard(stream)))
    for name, engine in engines.items():
        wrong, counts = [], {"backchannels": [0, 0], "interruptions": [0, 0]}
        for voice, condition, text, stops, audio, speech_s in clips:
            transcript = engine.transcribe(audio) if audio.size >= SAMPLE_RATE // 10 else None
            words = transcript.text if transcript is not None else ""
            verdict = overlap_verdict(words, speech_s, "en", transcript is not None and transcript.guessing)
            interrupts = verdict == "an interruption"
            row = counts["interruptions" if stops else "backchannels"]
            row[0] += 1
            row[1] += interrupts
            if interrupts != stops or args.all:
                doubt = (
                    ""
                    if transcript is None
                    else f" logprob {transcript.avg_logprob:.2f} no-speech {transcript.no_speech_prob:.2f}"
                )
                mark = "WRONG " if interrupts != stops else "      "
                wrong.append(f"  {mark}{voice:15s} {condition:7s} {text!r:22s} -> {words!r} ({speech_s:.2f} s, {verdict}{doubt})")
        (b, bi), (i, ii) = counts["backchannels"], counts["interruptions"]
        print(f"\n{name}: backchannels that would interrupt {bi} of {b}; interruptions that would not stop it {i - ii} of {i}")
        print("\n".join(wrong))


if __name__ == "__main__":
    main()
