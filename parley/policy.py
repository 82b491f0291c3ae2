"""What Parley makes of a configuration: how the model learns what the camera shows, the model's name
for the page, and the settings a session reads.

Invariant: `parley.config` is plain data and decides nothing; every rule that reads across its
sections (the LLM's backend and the prompt's vision, the vision deployment) is here, so the engine
gets one `SessionSettings` and never imports `parley.config`.
"""

from __future__ import annotations

from pathlib import Path

from parley.config import LLMConfig, ParleyConfig
from parley.engine.settings import ModelLimits, SessionLimits, SessionSettings
from parley.engine.types import Sight
from parley.local_models import CATALOGUE


def takes_images(config: ParleyConfig) -> bool:
    """The model gets the camera frame itself (an endpoint's vision model); else at most a scene note."""
    return config.llm.backend == "openai" and config.prompt.vision


def sight(config: ParleyConfig) -> Sight:
    """How the model learns what the camera shows, as configured: the frame, a scene note, or not at all."""
    if not config.prompt.vision:
        return "blind"
    if takes_images(config):
        return "image"
    return "note" if config.vision.enabled else "blind"


def model_label(llm: LLMConfig) -> str:
    """The model's name as the page and the startup line show it."""
    if llm.backend == "openai":
        return llm.model
    if llm.model_path:
        return Path(llm.model_path).stem
    return CATALOGUE[llm.resolved()[0]].label


def model_quality(llm: LLMConfig) -> str | None:
    """How well a catalogued local model answers, in words for the page; None when not measured here."""
    if llm.backend != "local" or llm.model_path:
        return None
    return f"{CATALOGUE[llm.resolved()[0]].quiz} on Parley's spoken-assistant quiz"


def session_settings(config: ParleyConfig) -> SessionSettings:
    """Everything a session reads of the configuration."""
    limits = config.limits
    return SessionSettings(
        model=ModelLimits(
            context_tokens=config.llm.context_tokens, max_tokens=config.llm.max_tokens, local=config.llm.backend == "local"
        ),
        limits=SessionLimits(
            max_record_s=limits.max_record_s,
            turn_timeout_s=limits.turn_timeout_s,
            max_text_chars=limits.max_text_chars,
            turns_per_minute=limits.turns_per_minute,
            history_messages=limits.history_messages,
        ),
        turn=config.turn,
        reply=config.reply,
        prompt=config.prompt,
        voice=config.tts.voice,
        language=config.asr.language,
        sight=sight(config),
        scene_wait_s=config.vision.wait_s,
    )
