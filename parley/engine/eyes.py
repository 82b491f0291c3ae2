"""What a session sees: the newest camera (or screen) frame, the user's vision switch, and how a
turn's frame reaches the model: as an image (a vision model), as a scene note (a text-only one, made
by the vision service while the user speaks), or not at all, with the reason said.

Invariants:
- A scene note is started when the user starts talking, from the frame then, so it is made while
  they speak; a turn whose words are ready waits for it at most `scene_wait_s` (that wait is the
  turn's `vision_wait`), then goes on without it, and the model is told it could not look.
- What a note says stays out of the info log: it may hold the text of someone's screen.
- The frame is dropped when no page is attached (a session kept for a reconnect must cost little).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable

import av

from media.image import frame_to_data_url, frame_to_jpeg
from parley.engine.clock import Clock, within
from parley.engine.messages import Entry
from parley.engine.metrics import Meter
from parley.engine.services import Services
from parley.engine.settings import SessionSettings
from parley.engine.types import FRAME_SIDE, SceneNote, Sight, VideoSource

log = logging.getLogger("parley.session")

NO_PICTURE = "no picture is coming from the browser"


class Eyes:
    """One session's camera, and what the model is told of it."""

    def __init__(
        self,
        settings: SessionSettings,
        services: Services,
        *,
        clock: Clock,
        meter: Meter,
        noted: Callable[[Entry], None],
        who: str,
    ) -> None:
        self._settings = settings
        self._services = services
        self._clock = clock
        self._meter = meter
        self._noted = noted
        """Told of each note as it is made (the session lets the model read ahead with it)."""
        self._who = who
        self.vision = settings.sight != "blind"
        """The user lets the model know what the camera shows (the page's switch)."""
        self.source: VideoSource = "camera"
        """What the video track carries now: the camera or a shared screen."""
        self.latest_frame: av.VideoFrame | None = None

    @property
    def sight(self) -> Sight:
        """How this turn's model sees: the configured way, or "blind" while the user has vision off
        (a scene-note model still reads that it cannot see)."""
        sight = self._settings.sight
        return sight if self.vision or sight == "note" else "blind"

    def switch(self, on: bool, source: VideoSource | None = None) -> None:
        self.vision = on and self._settings.sight != "blind"
        if source is not None:
            self.source = source

    def look(self, frame: av.VideoFrame | None) -> asyncio.Task[SceneNote | None] | None:
        """Start making the scene note of `frame` (a text-only model's eyes), or None where no note
        is wanted."""
        if frame is None or not self.vision or self._settings.sight != "note":
            return None
        source = self.source
        began = self._clock()

        async def describe() -> SceneNote | None:
            try:
                jpeg = await asyncio.to_thread(frame_to_jpeg, frame, max_side=FRAME_SIDE[source])
                note = await self._services.describe(jpeg, source)
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                log.warning("%s: no scene note for this turn: %s", self._who, exc)
                return None
            took = self._clock() - began
            self._meter.stage("vision", took)
            self._noted(Entry(role="user", text="", scene=note.text, source=note.source))
            log.info("%s: %s note of a %dx%d frame in %.0f ms", self._who, source, frame.width, frame.height, 1000 * took)
            log.debug("%s: the note: %s", self._who, note.text or "(nothing found)")
            return note

        return asyncio.get_running_loop().create_task(describe())

    def why_blind(self) -> str | None:
        """Why a turn with no scene note has none, said in front of a local model's words when they ask
        about the picture (`parley.engine.sight.about_scene`); None where the model is not told so
        with its words (a vision endpoint, or an endpoint that reads text only: the system prompt says
        it). Said with the words because, told only in the system prompt, every local model described
        a camera it could not see (benchmarks/llm_quiz.py's vision quiz)."""
        if self._settings.sight == "image" or not self._settings.model.local:
            return None
        if self._settings.sight == "blind":
            return "Parley cannot see on this server"
        return "the user switched vision off" if not self.vision else NO_PICTURE

    async def user_entry(
        self, words: str, frame: av.VideoFrame | None, scene: asyncio.Task[SceneNote | None] | None
    ) -> tuple[Entry, float | None]:
        """The user's turn as the history keeps it (the words, the frame as an image for a vision model,
        or its scene note for a text-only one), and how long it waited for the note (None: no note)."""
        note: SceneNote | None = None
        waited: float | None = None
        blind = self.why_blind() if scene is None else None
        if scene is not None:
            began = self._clock()
            try:
                note = await within(self._clock, self._settings.scene_wait_s, asyncio.shield(scene))
            except TimeoutError:
                log.warning("%s: the scene note took over %.1f s; this turn goes without", self._who, self._settings.scene_wait_s)
            waited = self._clock() - began
            if note is None:
                blind = "its detectors could not look this time"
        entry = Entry(
            role="user",
            text=words,
            image=await self._image(frame),
            scene=None if note is None else note.text,
            blind=blind,
            source=self.source if note is None else note.source,
        )
        return entry, waited

    async def _image(self, frame: av.VideoFrame | None) -> str | None:
        if frame is None or not self.vision or self._settings.sight != "image":
            return None
        return await asyncio.to_thread(frame_to_data_url, frame)
