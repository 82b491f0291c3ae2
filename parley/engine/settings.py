"""The engine's own settings: what one conversation needs to know, grouped by concern.

Turn-taking (`TurnSettings`) is defined here and nowhere else: `parley.config` puts it in the
configuration file as the `turn` section, with these groups and descriptions, so a field has one
default and one description. `SessionSettings` is everything a session reads, built from a whole
configuration by `parley.policy.session_settings`; the engine never imports `parley.config`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from parley.engine.types import Sight


class _Group(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class VadSettings(_Group):
    """What counts as speech and as a pause in it (Silero VAD, 32 ms windows)."""

    threshold: float = Field(default=0.5, gt=0, lt=1, description="Silero VAD probability at which a window is speech.")
    end_threshold: float = Field(
        default=0.35, gt=0, lt=1, description="While speaking, windows below this probability count towards a pause."
    )
    pause_s: float = Field(
        default=0.064,
        gt=0,
        description="Quiet that counts as a pause in speech (VAD windows are 32 ms): transcribing and answering start "
        "there, and are dropped if speech comes back. Shorter starts sooner and wastes more work.",
    )
    min_speech_s: float = Field(
        default=0.25, ge=0, description="Less speech than this in a turn (a cough, a click, a lone 'uh') is not a turn."
    )

    @model_validator(mode="after")
    def _thresholds(self) -> VadSettings:
        if self.end_threshold > self.threshold:
            raise ValueError("turn.vad.end_threshold must not be above turn.vad.threshold")
        return self


class EndOfTurnSettings(_Group):
    """Hands-free: when silence after speech ends the user's turn."""

    judge: Literal["model", "silence"] = Field(
        default="model",
        description="How the end of a turn is decided. 'model': at each pause the turn judge reads the transcript made "
        "there (SmolLM2-135M: how likely the message ends there) and, when that does not settle it, hears the speech "
        "(Smart Turn v3.2, from the pipecat-ai wheel). Finished ends the turn after quiet_s of silence; a thinking pause "
        "only after max_silence_s. 'silence': silence_s of silence alone. With neither model loadable, 'model' falls "
        "back to 'silence' (a log line, a notice in the page).",
    )
    silence_s: float = Field(default=0.6, gt=0, description="Silence rule: the silence after speech that ends the user's turn.")
    quiet_s: float = Field(default=0.2, gt=0, description="Turn judge: the silence that ends a turn it judged finished.")
    unsure_silence_s: float = Field(
        default=0.8,
        gt=0,
        description="Turn judge without its sound model: the silence that ends a turn whose transcript reads neither "
        "finished nor unfinished.",
    )
    max_silence_s: float = Field(
        default=2.0,
        gt=0,
        description="Turn judge: the silence that ends a turn it judged a thinking pause (a pause longer than this is "
        "taken for the end).",
    )
    text_finished: float = Field(
        default=0.4, gt=0, lt=1, description="A transcript at least this likely to be a whole message is finished."
    )
    text_unfinished: float = Field(
        default=0.1, gt=0, lt=1, description="A transcript less likely than this to be whole is a thinking pause."
    )
    sound_finished: float = Field(
        default=0.7,
        gt=0,
        lt=1,
        description="Between those, speech at least this likely to sound finished (Smart Turn) is finished.",
    )

    @model_validator(mode="after")
    def _order(self) -> EndOfTurnSettings:
        if not self.quiet_s <= self.unsure_silence_s <= self.max_silence_s:
            raise ValueError("turn.end_of_turn: quiet_s <= unsure_silence_s <= max_silence_s must hold")
        if self.text_unfinished > self.text_finished:
            raise ValueError("turn.end_of_turn.text_unfinished must not be above text_finished")
        return self


class SpeculationSettings(_Group):
    """Work started before the turn is over."""

    enabled: bool = Field(
        default=True,
        description="At each pause, transcribe and start the answer before the turn is over; it is shown and spoken "
        "only once the turn ends (key released, or the end-of-turn silence), and dropped if the user goes on.",
    )
    segment_s: float = Field(
        default=4.0, gt=0, description="Long speech is transcribed in pieces of at least this long, cut at pauses."
    )


class InterruptionSettings(_Group):
    """Hands-free: the user speaking over an answer."""

    enabled: bool = Field(default=True, description="Speaking over the answer holds it, and may interrupt it.")
    min_speech_s: float = Field(
        default=0.064,
        ge=0,
        description="Speech over an answer holds it once it has lasted this long (two 32 ms VAD windows; its own echo "
        "is told apart by level and the echo canceller, not by length: this only skips clicks).",
    )
    backchannels: bool = Field(
        default=True,
        description="A short acknowledgement ('mm-hmm', 'yeah', 'okay') or a cough over the answer resumes it from the "
        "sentence it was in; anything else interrupts it. Off: any speech over it interrupts.",
    )


class EchoSettings(_Group):
    """Parley's own voice coming back through the user's microphone."""

    cancel: bool = Field(
        default=True,
        description="Remove Parley's own voice from the microphone on the server (WebRTC's AEC3, with what Parley sent "
        "as the reference), before the VAD and the recording. Costs ~1 % of a core per session while Parley speaks, "
        "nothing while it is quiet.",
    )
    margin_db: float = Field(
        default=15.0,
        description="While Parley speaks, the microphone counts as speech only if it is no more than this many dB below "
        "what Parley played in the last window_s: its own voice coming back is quieter than that.",
    )
    window_s: float = Field(
        default=0.6, gt=0, description="How far back played audio can come back as echo (speaker, room, network)."
    )


class TurnSettings(_Group):
    """When a user's turn starts and ends, and what the server does before it is sure."""

    hands_free: bool = Field(
        default=False, description="New sessions start hands-free (the server's VAD ends turns) instead of push-to-talk."
    )
    vad: VadSettings = Field(default_factory=VadSettings, description="Speech and pauses.")
    end_of_turn: EndOfTurnSettings = Field(default_factory=EndOfTurnSettings, description="Hands-free: the end of a turn.")
    speculation: SpeculationSettings = Field(default_factory=SpeculationSettings, description="Work started at pauses.")
    interruption: InterruptionSettings = Field(default_factory=InterruptionSettings, description="Speech over an answer.")
    echo: EchoSettings = Field(default_factory=EchoSettings, description="Parley's own voice in the microphone.")


class ReplySettings(_Group):
    """How an answer is cut into the pieces the TTS speaks."""

    first_clause_words: int | None = Field(
        default=6, ge=1, description="Speak the answer's first clause at a comma after this many words (null: whole sentences)."
    )
    first_piece_max_words: int | None = Field(
        default=12,
        ge=1,
        description="The answer's first spoken piece ends after at most this many words (or 90 characters), at a natural "
        "break where there is one, even when the model writes no punctuation: the first sound never waits for a "
        "sentence that does not end (null: no limit).",
    )


class PromptSettings(_Group):
    """What the language model reads with each turn."""

    system_prompt: str = Field(
        default="You are Parley, a friendly voice assistant. Answer in short spoken sentences without lists or markdown.",
        description="System prompt for every turn. Parley adds one sentence saying what the model can see (the frame, "
        "a scene note, or nothing): parley.engine.sight.SIGHT_PROMPTS.",
    )
    vision: bool = Field(
        default=True,
        description="Let the model know what the camera (or shared screen) shows: the openai backend gets the frame as an "
        "image part; the local backend, which reads text only, gets the vision deployment's scene note (see `vision`).",
    )
    image_detail: Literal["low", "high", "auto"] = Field(default="low", description="OpenAI image detail level.")
    scene_note: Literal["asked", "always"] = Field(
        default="asked",
        description="A text-only model's scene note (or the line saying it has none): asked (the default) goes in front "
        "of the user's words only when they ask about the camera or screen (a cue word such as see, camera, holding, "
        "or a word of the note itself), so a note never hijacks an everyday question; always: every turn "
        "(benchmarks/conversation.py measures both).",
    )
    history_messages: int = Field(
        default=20,
        ge=1,
        description="At most how many past messages are sent with each turn; past it the oldest half of them is left "
        "out at once (a local model then reads its prompt's start from its cache on most turns).",
    )
    keep_images: int = Field(
        default=1, ge=0, description="How many of the latest user images stay in the history sent to the LLM (0: none)."
    )
    read_ahead: bool = Field(
        default=True,
        description="While the user talks, and while an answer plays, an idle local model reads the next prompt up to "
        "the user's words (the system prompt, the history and any scene note), so the turn's request reads only the words.",
    )


@dataclass(frozen=True)
class ModelLimits:
    """What the prompt must fit: the local model's context, less the longest answer."""

    context_tokens: int
    max_tokens: int
    local: bool
    """The model runs in-process (llama.cpp): it is told with the words when it cannot see, and reads ahead."""


@dataclass(frozen=True)
class SessionLimits:
    """Per-session limits (the `limits` section's share of them)."""

    max_record_s: float
    turn_timeout_s: float
    max_text_chars: int
    turns_per_minute: int
    history_messages: int


@dataclass(frozen=True)
class SessionSettings:
    """Everything a session reads of the configuration (`parley.policy.session_settings` builds it)."""

    model: ModelLimits
    limits: SessionLimits
    turn: TurnSettings = field(default_factory=TurnSettings)
    reply: ReplySettings = field(default_factory=ReplySettings)
    prompt: PromptSettings = field(default_factory=PromptSettings)
    voice: str | None = None
    language: str | None = "en"
    """The conversation's language (the ASR's), for telling backchannels."""
    sight: Sight = "blind"
    """How the model learns what the camera shows (`parley.policy.sight`; "blind" where the vision service is missing)."""
    scene_wait_s: float = 1.5
    """How long a turn whose words are ready may still wait for its scene note."""
