"""One browser's microphone: audio conditioned onto a 16 kHz tape (`conditioning`), utterances marked on it (`endpointing`).

Invariants:
- Every decoded microphone frame passes through `feed`. While no audio is wanted (`state` OFF) only
  the last `PREROLL_S` of it is kept, raw; once it is wanted (a press, hands-free turned on) that
  preroll goes on the tape and the VAD's windows start over there.
- Wanted audio goes onto the tape and each 32 ms window of it through the VAD and the utterance
  state machine, at once, in order; marks carry tape positions. `fill_silence` lays down the time
  in which no frame came only while an utterance is open, so an utterance always ends.
- Nothing before the open utterance is kept on the tape but the preroll (trimmed after each frame
  while hands-free and QUIET, and at each press), so memory is bounded by the recording limit.
"""

from __future__ import annotations

import time
from collections.abc import Callable

import av
import numpy as np

from media.echo import EchoCanceller
from media.vad import RATE
from parley.engine.conditioning import PREROLL_S, Conditioner, Tape
from parley.engine.endpointing import OPEN, Endpointer, MarkKind, MicState, SpeechMark
from parley.engine.settings import TurnSettings

__all__ = ["PREROLL_S", "MarkKind", "MicState", "Recorder", "SpeechMark", "Tape"]


class Recorder:
    """The microphone of one session: push-to-talk (`press`/`release`) or hands-free."""

    def __init__(
        self,
        turn: TurnSettings,
        *,
        max_record_s: float,
        end_silence_s: float | None = None,
        clock: Callable[[], float] = time.monotonic,
        canceller: EchoCanceller | None = None,
        gate: Callable[[float], bool] | None = None,
    ) -> None:
        """`end_silence_s`: hands-free, the silence that ends an utterance by itself (default
        `turn.end_of_turn.silence_s`). `gate(level)`: may a window this loud count as speech?"""
        self._in = Conditioner(clock=clock, canceller=canceller)
        self._marks = Endpointer(
            turn,
            self._in.tape,
            max_record_s=max_record_s,
            end_silence_s=turn.end_of_turn.silence_s if end_silence_s is None else end_silence_s,
            gate=gate or (lambda level: True),
        )

    # -- what the session reads -----------------------------------------------------------------

    @property
    def state(self) -> MicState:
        return self._marks.state

    @property
    def tape(self) -> Tape:
        return self._in.tape

    @property
    def hands_free(self) -> bool:
        return self._marks.hands_free

    @property
    def wants_audio(self) -> bool:
        """Whether microphone audio is wanted now (the key is down, hands-free, or a release's tail)."""
        return self._marks.state is not MicState.OFF

    @property
    def speaking(self) -> bool:
        """Speech is going on now (VAD), in an utterance."""
        return self._marks.speaking

    @property
    def speech_s(self) -> float:
        return self._marks.speech_s

    @property
    def started_at(self) -> int | None:
        """Tape position where the open utterance began; None while none is open."""
        return self._marks.started_at

    @property
    def paused_at(self) -> int | None:
        """Where the open utterance's speech paused; None while it goes on (or none is open)."""
        return self._marks.paused_at

    @property
    def gaps(self) -> list[tuple[int, int]]:
        """(where speech paused, where it came back) for the pauses inside utterances still on the tape."""
        return self._marks.gaps

    @property
    def end_silence_s(self) -> float:
        return self._marks.end_silence_s

    @property
    def presses(self) -> int:
        """How many times the talk key went down: a release that waited knows if another press came."""
        return self._marks.presses

    @property
    def canceller(self) -> EchoCanceller | None:
        """Removes the assistant's own voice from what is put on the tape (None: nothing removed)."""
        return self._in.canceller

    @property
    def heard_to(self) -> int | None:
        """The timestamp just after the latest frame fed (its pts units; None if frames carry none)."""
        return self._in.heard_to

    @property
    def heard_rate(self) -> int:
        """The sample rate of that frame."""
        return self._in.heard_rate

    def audio(self, a: int, b: int) -> np.ndarray:
        return self.tape.slice(a, b)

    def speech_audio(self, a: int, b: int) -> np.ndarray:
        """The tape from `a` to `b` as the ASR should hear it: the long pauses inside it cut down
        (`Endpointer.speech_audio`)."""
        return self._marks.speech_audio(a, b)

    def wall_time(self, sample: int) -> float:
        """The clock time at which tape position `sample` was heard (from the latest frame's arrival)."""
        return self._in.wall_time(sample)

    # -- audio in ---------------------------------------------------------------------------

    def feed(self, frame: av.AudioFrame) -> list[SpeechMark]:
        """One decoded microphone frame; returns the marks it completes, in order."""
        wanted = self.wants_audio
        self._in.take(frame, wanted=wanted)
        return self._analyse() if wanted else []

    def fill_silence(self, sender_stopped: Callable[[], bool] = lambda: False) -> list[SpeechMark]:
        """While an utterance is open and no frame has come for a while, that time was silent:
        lay it down, so the utterance can end. `sender_stopped()`: the sender has stopped sending
        and all it sent is on the tape, so the wait is shorter (asked only when it matters).
        Returns the marks that completes."""
        if self.state not in OPEN or not self._in.fill_silence(sender_stopped):
            return []
        return self._analyse()

    def preload(self, audio: np.ndarray, rate: int) -> None:
        """The audio just before now, decoded late (frames arrive undecoded while nobody listens):
        it becomes the preroll of the next utterance."""
        self._in.preload(audio, rate)

    def _analyse(self) -> list[SpeechMark]:
        marks = self._marks.analyse()
        if self.state is MicState.QUIET and self.hands_free:
            self.tape.trim(self._marks.cursor - round(PREROLL_S * RATE))
        return marks

    def _restart(self) -> None:
        """Audio is wanted again: the preroll goes on the tape and the windows start over there."""
        self._marks.restart(self._in.restart())

    # -- what the session decides ---------------------------------------------------------------

    def press(self) -> SpeechMark:
        """The talk key went down: an utterance starts here (with the preroll before it)."""
        if not self.wants_audio:
            self._restart()
        mark = self._marks.press()
        self.tape.trim(mark.sample)  # earlier turns' audio is done with (the session dropped their work)
        return mark

    def release(self, tail_s: float = 0.0) -> SpeechMark | None:
        """The talk key came up: the utterance ends where its speech ended, or, if speech was still
        going on, at the tape's end; the tape then keeps filling for `tail_s` more (the audio still
        on its way), which the caller waits for."""
        return self._marks.release(tail_s)

    def limit_pause(self, paused_at: int, silence_s: float) -> SpeechMark | None:
        """Hands-free: `silence_s` of the pause that began at `paused_at` ends the utterance
        (`Endpointer.limit_pause`); the end mark if it has lasted that long already."""
        return self._marks.limit_pause(paused_at, silence_s)

    def drop_utterance(self) -> None:
        """Forget the utterance going on, with no end mark (hands-free: it was a backchannel)."""
        self._marks.drop_utterance()

    def set_hands_free(self, on: bool) -> None:
        """Switch modes; an utterance in progress is dropped (its audio stays on the tape)."""
        was_off = not self.wants_audio
        self._marks.set_hands_free(on)
        if was_off and self.wants_audio:
            self._restart()
