"""One browser's conversation: its history, its recording, and its turn pipeline.

Invariants:
- At most one turn runs at a time; starting a turn, pressing talk or Stop interrupts the one
  running. Interrupting cancels the in-flight service calls, empties the pacing track at once
  and keeps in the history only the text that had streamed before the interruption.
- A session outlives its socket.io connection and its peer connection: a reconnecting browser
  gets the same history, and audio goes to whichever pacing track is current.
- Nothing a user sends can raise out of here: bad input becomes a notice in the page and a log
  line, and the session goes on.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
import uuid
from collections import deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any, Literal

import av
import numpy as np

from media.audio import normalize
from media.image import frame_to_data_url
from media.text import SentenceSplitter
from media.track import PacingTrack
from parley.config import ParleyConfig
from parley.metrics import Meter, Stopwatch, TurnMetrics
from parley.services import Services
from parley.types import ChatMessage, ImagePart, ImageURL, TextPart

log = logging.getLogger("parley.session")

Emit = Callable[[str, dict[str, Any]], Awaitable[None]]
MessageState = Literal["streaming", "done", "interrupted", "error"]

PREROLL_S = 0.3
"""Audio kept from before the talk key goes down, so the first syllable is not clipped."""

RELEASE_TAIL_S = 0.1
"""Audio still taken after the key comes up: RTP audio lags the socket.io event a little."""


@dataclass
class Entry:
    """One message of the conversation as the page shows it."""

    role: Literal["user", "assistant"]
    text: str
    state: MessageState = "done"
    image: str | None = None
    id: str = field(default_factory=lambda: uuid.uuid4().hex[:12])

    def public(self) -> dict[str, Any]:
        return {"id": self.id, "role": self.role, "text": self.text, "state": self.state}


@dataclass
class _Recording:
    chunks: list[np.ndarray]
    frame: av.VideoFrame | None
    samples: int = 0
    ending: bool = False


class Session:
    """A conversation that a browser (re)attaches to by its session id."""

    def __init__(
        self,
        session_id: str,
        config: ParleyConfig,
        services: Services,
        *,
        meter: Meter | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.id = session_id
        self.config = config
        self.services = services
        self.history: list[Entry] = []
        self.vision = config.llm.vision
        self.track: PacingTrack | None = None
        """Where speech goes: the current peer connection's track; None while no media is connected."""
        self.latest_frame: av.VideoFrame | None = None
        self.last_seen = clock()
        self._emit: Emit | None = None
        self._meter = meter or Meter()
        self._clock = clock
        self._turn: asyncio.Task[None] | None = None
        self._recording: _Recording | None = None
        self._preroll: deque[tuple[np.ndarray, int]] = deque()
        self._preroll_samples = 0
        self._audio_format = (1, 48000)
        self._turn_times: deque[float] = deque()

    # -- wiring -----------------------------------------------------------------------------

    def attach(self, emit: Emit | None) -> None:
        """Route this session's events to a connected page (None while disconnected)."""
        self._emit = emit
        self.last_seen = self._clock()

    def set_track(self, track: PacingTrack | None) -> None:
        """Send speech through a new peer connection's track from now on (None: nowhere)."""
        old, self.track = self.track, track
        if old is not None and old is not track:
            old.clear()

    @property
    def busy(self) -> bool:
        return self._turn is not None and not self._turn.done()

    async def emit(self, event: str, data: dict[str, Any]) -> None:
        if self._emit is None:
            return
        try:
            await self._emit(event, data)
        except Exception:  # a page that went away must not break the turn
            log.debug("emit %s failed", event, exc_info=True)

    async def notice(self, text: str, level: Literal["info", "warn", "error"] = "info") -> None:
        log.log(logging.WARNING if level == "error" else logging.INFO, "session %s: %s", self.id[:8], text)
        await self.emit("notice", {"level": level, "text": text})

    # -- media in ---------------------------------------------------------------------------

    def on_audio_frame(self, frame: av.AudioFrame) -> None:
        """Every decoded microphone frame passes here, recording or not (cheap when idle)."""
        pcm = frame.to_ndarray()
        channels = len(frame.layout.channels)
        self._audio_format = (channels, frame.sample_rate)
        samples = frame.samples
        rec = self._recording
        if rec is None:
            self._preroll.append((pcm, samples))
            self._preroll_samples += samples
            while self._preroll_samples - self._preroll[0][1] >= PREROLL_S * frame.sample_rate:
                self._preroll_samples -= self._preroll.popleft()[1]
            return
        rec.chunks.append(pcm)
        rec.samples += samples
        if rec.samples > self.config.limits.max_record_s * frame.sample_rate and not rec.ending:
            rec.ending = True
            asyncio.get_running_loop().create_task(self._record_limit_reached())

    def on_video_frame(self, frame: av.VideoFrame) -> None:
        self.latest_frame = frame

    # -- user actions -----------------------------------------------------------------------

    async def talk_start(self) -> None:
        """The talk key went down: interrupt any answer and start recording."""
        await self.interrupt()
        self._recording = _Recording(chunks=[pcm for pcm, _ in self._preroll], frame=self.latest_frame)
        self._preroll.clear()
        self._preroll_samples = 0
        await self.emit("recording", {"active": True})

    async def talk_end(self, reason: str | None = None) -> None:
        """The talk key came up (or the length limit was reached): the recording becomes a turn."""
        if self._recording is None:
            return
        stopwatch = Stopwatch(self._clock)
        await asyncio.sleep(RELEASE_TAIL_S)
        rec, self._recording = self._recording, None
        if rec is None:
            return
        await self.emit("recording", {"active": False, **({"reason": reason} if reason else {})})
        if not self._allow_turn():
            await self.notice("Too many turns in a minute; wait a moment and try again.", "warn")
            return
        self._start_turn(lambda: self._audio_turn(rec, stopwatch))

    async def _record_limit_reached(self) -> None:
        if self._recording is None:
            return
        limit = self.config.limits.max_record_s
        await self.talk_end(reason=f"Recording stopped at the {limit:g}-second limit.")

    async def send_text(self, text: Any) -> None:
        """A typed message goes through the same pipeline, without ASR."""
        if not isinstance(text, str):
            await self.notice("That message was not text.", "error")
            return
        text = text.strip()
        if not text:
            return
        limit = self.config.limits.max_text_chars
        if len(text) > limit:
            await self.notice(f"Messages are limited to {limit} characters; yours has {len(text)}.", "error")
            return
        await self.interrupt()
        if not self._allow_turn():
            await self.notice("Too many turns in a minute; wait a moment and try again.", "warn")
            return
        frame, stopwatch = self.latest_frame, Stopwatch(self._clock)
        self._start_turn(lambda: self._reply(text, frame, stopwatch))

    async def interrupt(self) -> None:
        """Stop the answer now: cancel the turn and drop queued speech."""
        if self.track is not None:
            self.track.clear()
        turn, self._turn = self._turn, None
        if turn is not None and not turn.done():
            turn.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await turn

    async def close(self) -> None:
        self._recording = None
        await self.interrupt()

    def _allow_turn(self) -> bool:
        now = self._clock()
        while self._turn_times and now - self._turn_times[0] > 60:
            self._turn_times.popleft()
        if len(self._turn_times) >= self.config.limits.turns_per_minute:
            return False
        self._turn_times.append(now)
        return True

    def _start_turn(self, work: Callable[[], Awaitable[None]]) -> None:
        async def run() -> None:
            self._meter.turn()
            try:
                await work()
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("session %s: turn failed", self.id[:8])
                await self.notice("Something went wrong with that turn; please try again.", "error")

        self._turn = asyncio.get_running_loop().create_task(run())

    # -- the turn pipeline ------------------------------------------------------------------

    async def _audio_turn(self, rec: _Recording, since_release: Stopwatch) -> None:
        channels, rate = self._audio_format
        audio = await asyncio.to_thread(normalize, rec.chunks, channels, rate) if rec.chunks else None
        if audio is None:
            await self.notice("I didn't hear any speech. Hold Space (or the talk button) while you speak.", "warn")
            return
        try:
            transcript = await self.services.transcribe(audio)
        except Exception as exc:
            log.exception("session %s: ASR failed", self.id[:8])
            self._meter.error("asr")
            await self.notice(f"Speech recognition failed: {_sentence(_reason(exc))} Please try again.", "error")
            return
        asr_s = since_release.elapsed()
        self._meter.stage("asr", asr_s)
        if not transcript.text.strip():
            await self.notice("I couldn't make out any words in that recording.", "warn")
            return
        await self._reply(transcript.text.strip(), rec.frame, since_release, asr_s=asr_s)

    async def _reply(self, text: str, frame: av.VideoFrame | None, since_input: Stopwatch, *, asr_s: float | None = None) -> None:
        image = None
        if frame is not None and self.vision:
            image = await asyncio.to_thread(frame_to_data_url, frame)
        user = Entry(role="user", text=text, image=image)
        self.history.append(user)
        await self.emit("message", user.public())

        answer = Entry(role="assistant", text="", state="streaming")
        self.history.append(answer)
        await self.emit("message", answer.public())
        metrics = TurnMetrics(asr=asr_s)
        track = self.track  # speech goes to this turn's track; None: no media connected, text only
        sentences: asyncio.Queue[str | None] = asyncio.Queue()
        speaker: asyncio.Task[None] | None = None

        def first_audio() -> None:
            metrics.voice_to_voice = since_input.elapsed()
            self._meter.stage("voice_to_voice", metrics.voice_to_voice)

        if track is not None:
            track.on_first_audio = first_audio
            speaker = asyncio.get_running_loop().create_task(self._speak(track, sentences, metrics))
        try:
            await self._stream_text(answer, sentences if speaker else None, metrics)
            if speaker is not None and track is not None:
                sentences.put_nowait(None)
                await speaker
                await track.drained()
            await self.emit("metrics", {"id": answer.id, **metrics.model_dump()})
        except asyncio.CancelledError:
            if speaker is not None:  # first, so no packet can land after the clear
                speaker.cancel()
            if track is not None:
                track.clear()
            answer.state = "interrupted"
            await self.emit("state", {"id": answer.id, "state": "interrupted"})
            raise
        except Exception as exc:
            answer.state = "error"
            log.exception("session %s: LLM failed", self.id[:8])
            self._meter.error("llm")
            await self.emit("state", {"id": answer.id, "state": "error", "error": _reason(exc)})
        finally:
            if speaker is not None:
                speaker.cancel()
            if track is not None and track.on_first_audio is first_audio:
                track.on_first_audio = None

    async def _stream_text(self, answer: Entry, sentences: asyncio.Queue[str | None] | None, metrics: TurnMetrics) -> None:
        splitter = SentenceSplitter()
        request = Stopwatch(self._clock)
        async for delta in self.services.stream_reply(self._conversation()):
            if not delta:
                continue
            if metrics.llm_ttft is None:
                metrics.llm_ttft = request.elapsed()
                self._meter.stage("llm_ttft", metrics.llm_ttft)
            answer.text += delta
            await self.emit("delta", {"id": answer.id, "text": delta})
            for sentence in splitter.feed(delta):
                self._hand_to_tts(sentence, sentences, metrics, request)
        for sentence in splitter.flush():
            self._hand_to_tts(sentence, sentences, metrics, request)
        answer.state = "done"
        await self.emit("state", {"id": answer.id, "state": "done"})

    def _hand_to_tts(
        self, sentence: str, sentences: asyncio.Queue[str | None] | None, metrics: TurnMetrics, request: Stopwatch
    ) -> None:
        if sentences is None:
            return
        if metrics.first_sentence is None:
            metrics.first_sentence = request.elapsed()
            self._meter.stage("first_sentence", metrics.first_sentence)
        sentences.put_nowait(sentence)

    async def _speak(self, track: PacingTrack, sentences: asyncio.Queue[str | None], metrics: TurnMetrics) -> None:
        """Synthesize sentences in order, each packet into the pacing track as it arrives."""
        while (sentence := await sentences.get()) is not None:
            handed = Stopwatch(self._clock)
            first = True
            try:
                async for packet in self.services.synthesize(sentence, self.config.tts.voice):
                    if first:
                        first = False
                        if metrics.tts_ttfb is None:
                            metrics.tts_ttfb = handed.elapsed()
                            self._meter.stage("tts_ttfb", metrics.tts_ttfb)
                    track.put(packet)
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # the text stays; this sentence just goes unspoken
                log.exception("session %s: TTS failed", self.id[:8])
                self._meter.error("tts")
                await self.notice(f"Part of the answer could not be spoken: {_sentence(_reason(exc))}", "error")

    def _conversation(self) -> list[ChatMessage]:
        """The history as chat messages: recent turns, images on the newest `keep_images` user turns."""
        entries = [e for e in self.history if e.text.strip()][-self.config.llm.history_messages :]
        keep = self.config.llm.keep_images
        user_images = [e.id for e in entries if e.role == "user" and e.image]
        with_image = set(user_images[len(user_images) - keep :]) if keep else set()
        messages = [ChatMessage(role="system", content=self.config.llm.system_prompt)]
        for entry in entries:
            if entry.id in with_image and entry.image and self.vision:
                detail = self.config.llm.image_detail
                parts: list[TextPart | ImagePart] = [
                    TextPart(text=entry.text),
                    ImagePart(image_url=ImageURL(url=entry.image, detail=detail)),
                ]
                messages.append(ChatMessage(role=entry.role, content=parts))
            else:
                messages.append(ChatMessage(role=entry.role, content=entry.text))
        return messages


def _sentence(text: str) -> str:
    return text if text.endswith((".", "!", "?")) else text + "."


def _reason(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    return text[:200]
