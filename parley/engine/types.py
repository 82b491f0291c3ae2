"""Small typed values that cross process boundaries between the ingress and the deployments.

Invariant: everything a deployment receives or yields is one of these (or a numpy array of
audio), never a raw dict, so both sides agree on the shape without reading each other's code.
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, Field

Role = Literal["system", "user", "assistant"]

MessageState = Literal["streaming", "done", "interrupted", "error"]
"""A message's state, as the history and the store keep it (the page also shows an answer "paused"
while the user speaks over it: `parley.protocol.State`)."""


GUESSING_LOGPROB = -2.0
"""Whisper's mean token log-probability under which its words are a guess at sounds (a laugh, a
cough); real words misread stayed above -1.7 on benchmarks/overlap.py."""


class Transcript(BaseModel):
    """What the ASR heard in one recording."""

    text: str = Field(description="The recognised words, stripped; empty when nothing was heard.")
    language: str | None = Field(default=None, description="Detected or forced language code.")
    audio_s: float = Field(default=0.0, description="Length of the audio that was transcribed, in seconds.")
    avg_logprob: float | None = Field(
        default=None, description="The decoder's mean log-probability per token (None where the engine gives none)."
    )
    no_speech_prob: float | None = Field(
        default=None, description="Whisper's probability that the audio held no speech (None where the engine gives none)."
    )

    @property
    def guessing(self) -> bool:
        """Whisper was guessing at sounds, not reading words: a mean token log-probability under
        `GUESSING_LOGPROB` (a laugh read as "I'm not a real man.")."""
        return self.avg_logprob is not None and self.avg_logprob < GUESSING_LOGPROB


class TextPart(BaseModel):
    """A text part of an OpenAI-style chat message."""

    type: Literal["text"] = "text"
    text: str


class ImageURL(BaseModel):
    url: str = Field(description="A data URL (data:image/jpeg;base64,...) or an http(s) URL.")
    detail: Literal["low", "high", "auto"] = "auto"


class ImagePart(BaseModel):
    """An image part of an OpenAI-style chat message."""

    type: Literal["image_url"] = "image_url"
    image_url: ImageURL


class ChatMessage(BaseModel):
    """One message in the OpenAI chat format; content is a string or a list of parts."""

    role: Role
    content: str | list[TextPart | ImagePart]

    def text(self) -> str:
        """The message's text with any image parts left out."""
        if isinstance(self.content, str):
            return self.content
        return "".join(p.text for p in self.content if isinstance(p, TextPart))

    def has_image(self) -> bool:
        return not isinstance(self.content, str) and any(isinstance(p, ImagePart) for p in self.content)

    def to_openai(self, with_images: bool = True) -> dict[str, object]:
        """The wire form for an OpenAI-compatible endpoint (images dropped for text-only models)."""
        if isinstance(self.content, str) or not with_images:
            return {"role": self.role, "content": self.text()}
        return {"role": self.role, "content": [p.model_dump() for p in self.content]}


class Finish(BaseModel):
    """Why the LLM stopped, sent after its last delta when the caller asks (`stream_reply(..., finish=True)`)."""

    reason: str = Field(description='"stop" (it was done), "length" (cut by the token limit), or what the backend said.')

    @property
    def cut(self) -> bool:
        """True when the answer was cut by the length limit, not finished."""
        return self.reason == "length"


Sight = Literal["image", "note", "blind"]
"""How the language model learns what the camera shows: the frame itself (a vision LLM), a scene note
the vision deployment writes from it (a text-only LLM), or not at all."""

VideoSource = Literal["camera", "screen"]

FRAME_SIDE: dict[VideoSource, int] = {"camera": 640, "screen": 1280}
"""The longest side a frame is scaled to for a scene note: the detectors work at 640 or below; a shared
screen's text must stay readable."""


class SceneNote(BaseModel):
    """What the vision deployment found in one frame, as the language model reads it."""

    text: str = Field(description='The note, e.g. "1 person (face, smiling); a dog; a bicycle". Empty: nothing found.')
    source: VideoSource = "camera"
    ms: dict[str, float] = Field(default_factory=dict, description="Milliseconds each detector took on this frame.")


class VisionInfo(BaseModel):
    """What a vision replica can find, what it lacks, and what it costs."""

    finds: list[str] = Field(description='What its loaded detectors find, in words ("faces", "objects", "text").')
    missing: dict[str, str] = Field(default_factory=dict, description="Detector -> why it is not loaded (how to install).")
    memory_mb: float = Field(default=0.0, description="Resident memory its models added at load.")
    ms_per_frame: dict[str, float] = Field(default_factory=dict, description="Each detector's time on a 640x480 frame.")
