"""The unit of speech that crosses every boundary: one Opus packet, ready for RTP.

It lives in `media` because the codecs, the Ogg parser and the pacing track make and consume it,
and `media` depends on nothing of `parley`. The TTS deployment yields it, the turn engine passes it
through, the track sends it.
"""

from __future__ import annotations

from pydantic import BaseModel, Field


class OpusPacket(BaseModel):
    """One Opus packet ready for RTP: its bytes and its length in 48 kHz samples."""

    data: bytes
    samples: int = Field(default=960, description="Duration in samples of the 48 kHz RTP clock (960 = 20 ms).")
    level: float | None = Field(default=None, description="RMS level of the audio it carries (0..1), when the producer knows it.")
