"""The page's wire protocol: every socket.io event between a browser and an ingress, and its payload.

One model per event. The server parses what a page sends with the `Inbound` models and the session
and the server emit only `Outbound` ones; the Python client (`parley.tools.client`) speaks the same.
The page's side is `static/protocol.js`, a JSDoc mirror of this file, and `tests/test_protocol.py`
checks that the two name the same events and fields.

Invariants:
- Each event carries one JSON object (socket.io's payload), whose fields are the model's.
- An inbound payload is checked strictly (no coercion: `"true"` is not a boolean). A wrong-typed
  optional field of `hello` or `text` reads as absent, as it always has: a stale page still gets a
  session, a non-text message gets the session's own "that was not text".
- An outbound payload holds the fields that were set, in nested models too: a field left unset is
  absent (the page tells "not said" from null: `metrics` sends null for a stage that did not happen).
"""

from __future__ import annotations

from typing import Annotated, Any, ClassVar, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, ValidatorFunctionWrapHandler, WrapValidator

from parley.engine.metrics import TurnMetrics
from parley.engine.types import MessageState, Sight, VideoSource


def _absent_if_wrong(value: Any, handler: ValidatorFunctionWrapHandler) -> Any:
    try:
        return handler(value)
    except ValidationError:
        return None


_Lenient = WrapValidator(_absent_if_wrong)
"""An optional field that reads as absent (None) when the page sent the wrong type."""
LenientStr = Annotated[str | None, _Lenient]
LenientBool = Annotated[bool | None, _Lenient]
LenientSource = Annotated[VideoSource | None, _Lenient]


class Event(BaseModel):
    """One socket.io event: its name is `event`, its payload the model's fields."""

    event: ClassVar[str]

    def payload(self) -> dict[str, Any]:
        return self.model_dump(exclude_unset=True)


# -- page → server --------------------------------------------------------------------------------


class Inbound(Event):
    model_config = ConfigDict(strict=True, extra="ignore", frozen=True)


class Hello(Inbound):
    """The page's first word on each connection: which conversation it had, and its switches."""

    event = "hello"
    session_id: LenientStr = None
    session_key: LenientStr = None
    """The proof, from an earlier welcome, that this user holds `session_id`."""
    vision: LenientBool = None
    source: LenientSource = None
    """What the video track carries: the camera or a shared screen."""
    hands_free: LenientBool = None


class Offer(Inbound):
    """The browser's WebRTC offer (microphone and camera or screen, sendrecv audio)."""

    event = "offer"
    sdp: str
    type: str


class TalkStart(Inbound):
    """Push-to-talk: the key went down."""

    event = "talk_start"


class TalkEnd(Inbound):
    """Push-to-talk: the key came up."""

    event = "talk_end"


class Text(Inbound):
    """A typed message (acknowledged with `Ack`)."""

    event = "text"
    text: LenientStr = None


class Stop(Inbound):
    """The Stop button: interrupt the answer."""

    event = "stop"


class Vision(Inbound):
    """Let the model know what the camera shows, or not; and what the video track carries now."""

    event = "vision"
    enabled: bool
    source: VideoSource | None = None


class HandsFree(Inbound):
    """Switch between push-to-talk and hands-free."""

    event = "hands_free"
    enabled: bool


class NewConversation(Inbound):
    """Forget this conversation and start over (acknowledged with `Ack`)."""

    event = "new_conversation"


class Link(Inbound):
    """The page's link-quality banner showed (`poor`) or cleared (`good`): sent once per change, with
    what the page measured over its last few seconds (null: not measured). `loss_in`: the share of
    Parley's voice packets lost on the way to the page; `loss_out`: of the page's own audio packets
    lost on the way to the server, as the server's receiver reports say; `rtt_s`: the round trip."""

    event = "link"
    state: Literal["poor", "good"]
    loss_in: Annotated[float, Field(ge=0, le=1)] | None = None
    loss_out: Annotated[float, Field(ge=0, le=1)] | None = None
    rtt_s: Annotated[float, Field(ge=0)] | None = None


INBOUND: dict[str, type[Inbound]] = {
    m.event: m for m in (Hello, Offer, TalkStart, TalkEnd, Text, Stop, Vision, HandsFree, NewConversation, Link)
}


class Ack(BaseModel):
    """The acknowledgement of `text` and `new_conversation`: whether the server took it."""

    ok: bool


# -- server → page --------------------------------------------------------------------------------


class Outbound(Event):
    model_config = ConfigDict(extra="forbid")


class Message(Outbound):
    """A message enters the conversation (the user's words, or an answer starting to stream)."""

    event = "message"
    id: str
    role: Literal["user", "assistant"]
    text: str
    state: MessageState
    unspoken: str = Field(default="", description="An interrupted answer's words the user never heard.")
    cut: bool = Field(default=False, description="The model stopped at its length limit.")
    scene: str | None = Field(default=None, description="User: the scene note the model got with these words.")


class TurnLimits(BaseModel):
    max_record_s: float
    max_text_chars: int


class TurnInfo(BaseModel):
    """How turns are taken here, and what keeps hands-free from doing it as configured."""

    model_config = ConfigDict(extra="forbid")
    hands_free: bool
    end_of_turn: Literal["model", "silence"]
    turn_models: str | None = None
    max_silence_s: float | None = None
    end_silence_s: float | None = None
    problem: str | None = None


class VideoLimits(BaseModel):
    max_fps: float
    max_width: int


class ModelInfo(BaseModel):
    backend: str
    model: str
    quality: str | None = None
    vision: bool
    """The user's switch: the model is told what the camera shows."""
    sight: Sight = "image"
    """How: the frame itself, a scene note from offline detectors, or not at all."""
    sight_problem: str | None = None
    """What the banner says about it (it cannot see, or sees only through detectors); None: nothing."""


class Welcome(Outbound):
    """The server took the hello: the session, its history and what the page must know."""

    event = "welcome"
    session_id: str
    session_key: str | None
    user: str
    ingress: str
    history: list[Message]
    """The conversation's newest messages (`limits.welcome_messages` at most)."""
    earlier: int = 0
    """How many older messages of the conversation the history leaves out."""
    saved: bool = True
    """False: the conversation's stored history could not be read (the store is down), so `history`
    holds only what this process has; it is stored once the store answers again."""
    ice_servers: list[dict[str, Any]]
    limits: TurnLimits
    turn: TurnInfo
    video: VideoLimits
    llm: ModelInfo


class Rejected(Outbound):
    """The server cannot take this session (full, or too many for this user); the page retries later."""

    event = "rejected"
    reason: str
    code: Literal["full", "too_many"]


class Answer(Outbound):
    """The server's WebRTC answer."""

    event = "answer"
    sdp: str
    type: str


class Delta(Outbound):
    """More words of a streaming answer."""

    event = "delta"
    id: str
    text: str


class State(Outbound):
    """An answer's state changed; an interrupted one says what was heard (`text`) and what not; one
    that Parley stopped says why (`stopped`) and what it kept (`text`)."""

    event = "state"
    id: str
    state: MessageState | Literal["paused"]
    cut: bool | None = None
    error: str | None = None
    text: str | None = None
    unspoken: str | None = None
    stopped: str | None = None
    """Why Parley itself ended the answer early (it looped, or repeated an earlier answer), for the page."""


class Metrics(Outbound, TurnMetrics):
    """A finished turn's stage times in seconds (null: the stage did not happen): the fields of
    `parley.engine.metrics.TurnMetrics`, where each stage is defined, and the answer's id."""

    event = "metrics"
    id: str


class Speaking(Outbound):
    """Which sentence of an answer is being heard now (`sentence` null: the answer's audio ended);
    `start`/`end` are its character span in the answer's text."""

    event = "speaking"
    id: str
    sentence: int | None
    start: int | None = None
    end: int | None = None


class Notice(Outbound):
    """Something the user should know: a refusal, a failure, a hint."""

    event = "notice"
    level: Literal["info", "warn", "error"]
    text: str


TurnState = Literal["idle", "listening", "hearing", "thinking", "speaking"]


class TurnStatus(Outbound):
    """What the conversation is doing now: derived from its turns in one place (the coordinator) and sent on change."""

    event = "turn"
    state: TurnState


class Recording(Outbound):
    """Push-to-talk: recording started or stopped (`reason`: why it stopped, if not the release)."""

    event = "recording"
    active: bool
    reason: str | None = None


OUTBOUND: dict[str, type[Outbound]] = {
    m.event: m for m in (Welcome, Rejected, Answer, Message, Delta, State, Metrics, Speaking, Notice, TurnStatus, Recording)
}
