"""An ingress in the test's own process, with no Ray."""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from parley.config import ParleyConfig
    from parley.ingress.server import IngressServer


def local_ingress(config: ParleyConfig) -> IngressServer:
    """An ingress served in this process, its deployments as plain objects beside it (no Ray)."""
    from deployments.asr import ASR
    from deployments.llm import LLM
    from deployments.tts import TTS
    from deployments.vision import Vision
    from parley.engine.services import LocalServices
    from parley.ingress.server import IngressServer
    from parley.policy import sight

    vision = Vision(config.vision) if sight(config) == "note" else None  # as serve_app binds it
    return IngressServer(config, LocalServices(ASR(config.asr), LLM(config.llm, config.prompt), TTS(config.tts), vision))
