"""One utterance while it is spoken: its words transcribed in pieces.

Invariants:
- Audio is transcribed in pieces cut at real pauses: when speech resumes after at least
  `CUT_PAUSE_S` of quiet and the piece before it is at least `segment_s` long, the transcription
  made of that piece at the pause is kept; only the piece after the last kept one is transcribed
  again at later pauses, so at the end of a long turn only its last piece is left. (A pause is
  noticed after 64 ms, often inside a word; only a longer one is safe to cut at.)
- Cancelling the words up to a pause (speech resumed) cancels that piece's transcription unless it
  was kept: a kept piece serves every later transcript.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

import numpy as np

from media.vad import RATE
from parley.engine.clock import Clock
from parley.engine.types import Transcript

END_PAD_S = 0.2
"""Audio kept after the end of speech: the VAD's pause starts at the first quiet window, and soft
word endings ("s", "f") are quieter than that."""

CUT_PAUSE_S = 0.25
"""A pause at least this long lies between words: a piece may end there."""

Transcribe = Callable[[np.ndarray], Awaitable[Transcript]]


@dataclass(eq=False)
class Utterance:
    """What the user is saying now: where it began on the tape, and its transcript."""

    start: int
    transcribe: Transcribe
    audio: Callable[[int, int], np.ndarray]
    segment_s: float
    clock: Clock
    thought: bool = False
    """A pause in it was judged a thinking pause: the user has taken theirs, and resumed if it goes on."""
    asr_s: float | None = None
    """How long the latest ASR call took (the turn's `asr` stage when its text is used)."""
    heard: list[Transcript] = field(default_factory=list)
    """Every transcript made of it so far (the latest last): how sure Whisper was."""
    _kept: list[asyncio.Task[str]] = field(default_factory=list)
    _piece: int = -1
    _candidate: tuple[int, asyncio.Task[str]] | None = None

    def __post_init__(self) -> None:
        self._piece = self.start

    def text_until(self, end: int) -> asyncio.Task[str]:
        """The words from the start to `end` (plus a little padding), as a task: the kept pieces'
        words and a fresh transcription of the piece after them."""
        loop = asyncio.get_running_loop()
        piece = loop.create_task(self._transcribe(self._piece, end))
        self._candidate = (end, piece)
        return loop.create_task(self._joined(list(self._kept), piece))

    def resumed(self, at: int) -> None:
        """Speech came back at `at`: a long piece before a real pause is kept, with its transcription."""
        if self._candidate is None:
            return
        end, piece = self._candidate
        self._candidate = None
        if (at - end) / RATE >= CUT_PAUSE_S and (end - self._piece) / RATE >= self.segment_s:
            self._kept.append(piece)
            self._piece = end

    async def _joined(self, kept: list[asyncio.Task[str]], last: asyncio.Task[str]) -> str:
        """The pieces' words in order. Cancelling this cancels `last` unless it has been kept
        since: kept pieces serve every later transcript."""
        try:
            texts = [await asyncio.shield(piece) for piece in kept]
            texts.append(await asyncio.shield(last))
        except asyncio.CancelledError:
            if last not in self._kept:
                last.cancel()
            raise
        return " ".join(t for t in texts if t)

    async def _transcribe(self, a: int, b: int) -> str:
        audio = self.audio(a, b + round(END_PAD_S * RATE))
        if audio.size < RATE // 10:
            return ""
        began = self.clock()
        transcript = await self.transcribe(audio)
        self.asr_s = self.clock() - began
        self.heard.append(transcript)
        return transcript.text.strip()

    def guessing(self, words: str) -> bool:
        """Whether Whisper was guessing at `words` (this utterance's transcript, from one piece of it)."""
        return any(t.guessing for t in self.heard if t.text.strip() == words)

    def drop(self) -> None:
        """The utterance is over without a turn: cancel its transcriptions."""
        for task in self._kept:
            task.cancel()
        if self._candidate is not None:
            self._candidate[1].cancel()
