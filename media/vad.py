"""Voice activity: a streaming Silero VAD, and the detector that turns its output into speech events.

Invariants:
- `SileroVAD.feed` takes 16 kHz float32 mono audio in chunks of any size and returns one speech
  probability per complete 512-sample (32 ms) window, in order; the recurrent state and the 64
  samples of context the model needs carry over between calls, so the probabilities do not
  depend on how the audio was chunked.
- `SpeechDetector` is a pure state machine over (window probability, window level): it emits
  `start` when speech begins, `pause` when it stops, and `resume` when it begins again after a
  pause, each stamped with the time (seconds of audio fed) where the boundary lies. It never
  blocks and needs no clock but the audio itself, so recorded audio replays it exactly.
"""

from __future__ import annotations

import functools
import importlib.util
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np

RATE = 16000
WINDOW = 512
"""Samples per VAD window at 16 kHz (32 ms): the only size Silero's 16 kHz model accepts."""
WINDOW_S = WINDOW / RATE
CONTEXT = 64
"""Samples of the previous window the model sees in front of each window."""


def silero_model_path() -> Path:
    """Silero VAD v6 as ONNX, which faster-whisper ships (no download, no torch)."""
    spec = importlib.util.find_spec("faster_whisper")
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError("faster-whisper is not installed: it carries the Silero VAD model")
    return Path(next(iter(spec.submodule_search_locations))) / "assets" / "silero_vad_v6.onnx"


@functools.cache
def _session() -> object:
    """One ONNX session per process, shared by every stream (run() is thread-safe)."""
    import onnxruntime

    options = onnxruntime.SessionOptions()
    options.inter_op_num_threads = 1
    options.intra_op_num_threads = 1  # 0.07 ms a window: threads would cost more than they save
    options.log_severity_level = 4
    return onnxruntime.InferenceSession(str(silero_model_path()), providers=["CPUExecutionProvider"], sess_options=options)


class SileroVAD:
    """One audio stream's voice activity: speech probability per 32 ms window."""

    def __init__(self) -> None:
        self._session = _session()
        self.reset()

    def reset(self) -> None:
        """Forget the stream so far (state, context and any partial window)."""
        self._h = np.zeros((1, 1, 128), np.float32)
        self._c = np.zeros((1, 1, 128), np.float32)
        self._context = np.zeros(CONTEXT, np.float32)
        self._pending = np.zeros(0, np.float32)

    def feed(self, audio: np.ndarray) -> list[float]:
        """Speech probabilities (0..1) of the windows completed by `audio` (16 kHz float32 mono)."""
        pending = np.concatenate([self._pending, np.asarray(audio, np.float32).reshape(-1)])
        count = len(pending) // WINDOW
        self._pending = pending[count * WINDOW :]
        out: list[float] = []
        for i in range(count):
            window = pending[i * WINDOW : (i + 1) * WINDOW]
            x = np.concatenate([self._context, window])[None, :]
            probs, self._h, self._c = self._session.run(None, {"input": x, "h": self._h, "c": self._c})  # type: ignore[attr-defined]
            self._context = window[-CONTEXT:]
            out.append(float(np.asarray(probs).reshape(-1)[0]))
        return out


@dataclass(frozen=True)
class VADSettings:
    threshold: float = 0.5
    """A window at or above this probability is speech."""
    end_threshold: float = 0.35
    """Once speaking, only windows below this count towards a pause (hysteresis)."""
    start_windows: int = 2
    """Consecutive speech windows that make a start (64 ms): one loud click is not speech."""
    pause_windows: int = 3
    """Consecutive quiet windows that make a pause (96 ms)."""
    min_level: float = 0.003
    """Windows quieter than this RMS (about -50 dBFS) are never speech, whatever the model says."""


SpeechKind = Literal["start", "pause", "resume"]


@dataclass(frozen=True)
class SpeechEvent:
    kind: SpeechKind
    at: float
    """Seconds of audio fed when the boundary happened: speech's first window, or the first quiet one."""


class SpeechDetector:
    """Speech/pause decisions over VAD windows, with hysteresis and minimum run lengths.

    `gate(level)` (optional, per window) says whether a window loud enough for the model may count
    as speech at all: the session uses it to ignore the assistant's own voice coming back.
    """

    def __init__(self, settings: VADSettings | None = None) -> None:
        self.settings = settings or VADSettings()
        self.windows = 0
        self.speaking = False
        self.heard_speech = False
        """Whether any speech started since the last reset."""
        self.speech_s = 0.0
        """Seconds of windows judged speech since the last reset."""
        self._run = 0
        self._run_start = 0.0

    def reset(self) -> None:
        """Start a new utterance: no speech heard yet (the window count, i.e. the clock, goes on)."""
        self.speaking = False
        self.heard_speech = False
        self.speech_s = 0.0
        self._run = 0

    @property
    def now(self) -> float:
        return self.windows * WINDOW_S

    def update(self, prob: float, level: float, *, allowed: bool = True) -> SpeechEvent | None:
        """One window's probability and RMS level; returns the event it completes, if any."""
        s = self.settings
        at = self.now
        self.windows += 1
        voiced = allowed and level >= s.min_level and prob >= (s.end_threshold if self.speaking else s.threshold)
        if voiced:
            self.speech_s += WINDOW_S
        if voiced == self.speaking:
            self._run = 0
            return None
        if self._run == 0:
            self._run_start = at
        self._run += 1
        if self._run < (s.pause_windows if self.speaking else s.start_windows):
            return None
        self._run = 0
        self.speaking = voiced
        if not voiced:
            return SpeechEvent("pause", self._run_start)
        kind: SpeechKind = "resume" if self.heard_speech else "start"
        self.heard_speech = True
        return SpeechEvent(kind, self._run_start)


def rms(audio: np.ndarray) -> float:
    """Root mean square of float audio (0 for none)."""
    return float(np.sqrt(np.mean(np.square(audio, dtype=np.float64)))) if audio.size else 0.0
