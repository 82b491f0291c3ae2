"""One answer delivered: the user's words and the answer in the history, the answer's events to
the page, its playout watched on the speech output, and its deadline.

A `Delivery` reports upward only through the callables it is given (`Page`, `on_first_audio`,
`read_ahead`); it never holds the session.

Invariants:
- The history gets the user's words, then the answer as it ends: `done` (all of it), `interrupted`
  (only the words that were played; the rest is `unspoken`), or `error`.
- The turn has `limits.turn_timeout_s` from when it was decided (on the session's clock); past that
  the answer is stopped as an error that says so (a timeout is expected, not a crash: no traceback).
- The output's watch is open exactly while the answer runs: the stage clock `voice_to_voice` stops
  at the first audio, and the page hears which sentence plays.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable, Hashable
from dataclasses import dataclass
from typing import Literal

from parley.engine.clock import Clock, within
from parley.engine.conversation import Conversation
from parley.engine.messages import Entry
from parley.engine.metrics import Meter, TurnMetrics, TurnTimes
from parley.engine.ports import SentenceTag, SpeechOutput
from parley.engine.reply import Reply, user_message
from parley.protocol import Delta, Message, Metrics, Outbound, Speaking, State

log = logging.getLogger("parley.session")

STOPPED = {
    "loop": "Parley stopped this answer: the model had begun repeating itself.",
    "copy": "Parley stopped this answer: the model had begun repeating an earlier answer.",
}
"""What the page says under an answer that Parley stopped (`Reply.stopped`)."""


class TurnTimeout(RuntimeError):
    """A turn ran past limits.turn_timeout_s; the message is for the page."""

    for_user = True


@dataclass(frozen=True)
class Page:
    """What a delivery tells the page: one event, or a notice (logged too)."""

    emit: Callable[[Outbound], Awaitable[None]]
    notice: Callable[[str, Literal["info", "warn", "error"]], Awaitable[None]]


class Delivery:
    """The answer to one turn, from showing the user's words to its last sentence played."""

    def __init__(
        self,
        user: Entry,
        reply: Reply,
        times: TurnTimes,
        *,
        conversation: Conversation,
        page: Page,
        output: SpeechOutput | None,
        clock: Clock,
        meter: Meter,
        timeout_s: float,
        on_first_audio: Callable[[], None],
        read_ahead: Callable[[], None],
        who: str,
        asr_s: float | None = None,
        scene_wait_s: float | None = None,
    ) -> None:
        self.user = user
        self.reply = reply
        self.times = times
        self.entry = Entry(role="assistant", text="", state="streaming")
        """The answer's history entry (added when it starts)."""
        self.metrics: TurnMetrics = reply.metrics
        if times.spoke_until is not None:
            self.metrics.end_of_turn = times.decided - times.spoke_until
        self.metrics.head_start = times.head_start
        self.metrics.asr = asr_s
        self.metrics.vision_wait = scene_wait_s
        self._conversation = conversation
        self._page = page
        self._output = output
        self._clock = clock
        self._meter = meter
        self._timeout_s = timeout_s
        self._on_first_audio = on_first_audio
        self._read_ahead = read_ahead
        self._who = who
        self._background: set[asyncio.Task[None]] = set()

    async def run(self) -> None:
        """Show the user's words, then make the reply live and see it through (or its interruption)."""
        answer, reply, page = self.entry, self.reply, self._page
        self._conversation.add(self.user)
        await page.emit(Message(**self.user.public()))
        self._conversation.add(answer)
        await page.emit(Message(**answer.public()))
        watch = contextlib.ExitStack()
        if self._output is not None:
            watch.enter_context(self._output.watch(on_first_audio=self._first_audio, on_tag=self._playing))
        reply.commit(self._output, self._publish)
        try:
            await self._text_within_deadline()
            answer.text, answer.state = reply.text, "done"
            answer.cut = reply.finish is not None and reply.finish.cut
            self._conversation.save(answer)
            await page.emit(self._done())
            self._spawn(self._read_ahead_next())
            await reply.played()
            if self._output is not None:
                await page.emit(Speaking(id=answer.id, sentence=None))
            await page.emit(Metrics(id=answer.id, **self.metrics.model_dump()))
        except asyncio.CancelledError:
            await self._interrupted()
            raise
        except Exception as exc:
            if isinstance(exc, TurnTimeout):
                log.warning("%s: %s", self._who, exc)
            else:
                log.exception("%s: LLM failed", self._who)
            self._meter.error("llm")
            answer.text, answer.state = reply.text, "error"
            self._conversation.save(answer)
            await reply.stop()
            await page.emit(State(id=answer.id, state="error", error=reason(exc, "llm")))
        finally:
            self._report()
            watch.close()

    async def _read_ahead_next(self) -> None:
        """Once the answer's speech is all synthesized (while it plays), let the model read the next
        turn's prompt start, this answer included. Not sooner: reading then would take the cores
        from the synthesis of the first sentence, which the user is waiting to hear."""
        with contextlib.suppress(Exception):  # a hint only; an answer that failed has nothing to add
            await self.reply.synthesized()
            self._read_ahead()

    def _done(self) -> State:
        """The answer's end as the page gets it: cut at the length limit, or stopped by Parley (with
        its text as kept: a loop is trimmed to where it began)."""
        done = State(id=self.entry.id, state="done")
        if self.entry.cut:
            done.cut = True
        if self.reply.stopped is not None:
            done.text = self.entry.text
            done.stopped = STOPPED[self.reply.stopped]
        return done

    async def _text_within_deadline(self) -> None:
        """Until the LLM's text is all out; the turn's deadline counts from when it was decided."""
        left = self.times.decided + self._timeout_s - self._clock()
        try:
            await within(self._clock, left, self.reply.text_finished())
        except TimeoutError:
            raise TurnTimeout(
                f"The answer took longer than {self._timeout_s:g} seconds and was stopped. Please try again."
            ) from None

    def _first_audio(self) -> None:
        now = self._clock()
        self.metrics.voice_to_voice = now - self.times.anchor
        self.metrics.turn_to_voice = now - self.times.decided
        self._on_first_audio()

    def _playing(self, tag: Hashable) -> None:
        if isinstance(tag, SentenceTag) and tag.reply == self.reply.id:
            start, end = self.reply.span(tag.index)
            self._spawn(self._page.emit(Speaking(id=self.entry.id, sentence=tag.index, start=start, end=end)))

    async def _publish(self, kind: str, text: str) -> None:
        if kind == "delta":
            await self._page.emit(Delta(id=self.entry.id, text=text))
        else:
            self._meter.error("tts")
            await self._page.notice(f"Part of the answer could not be spoken: {sentence(reason(text))}", "error")

    async def _interrupted(self) -> None:
        """Keep in the history only what the user heard; show the rest apart."""
        answer = self.entry
        if self._output is not None:
            self._output.clear()
        answer.text, answer.unspoken = self.reply.heard()
        answer.state = "interrupted"
        self._conversation.save(answer)
        log.info("%s: interrupted after %d heard words", self._who, len(answer.text.split()))
        state = State(id=answer.id, state="interrupted", text=answer.text, unspoken=answer.unspoken)
        if answer.cut:
            state.cut = True
        await self._page.emit(state)
        await self.reply.stop()

    def _report(self) -> None:
        for stage in TurnMetrics.model_fields:
            value = getattr(self.metrics, stage)
            if value is not None:
                self._meter.stage(stage, value)

    def _spawn(self, work: Awaitable[None]) -> None:
        task = asyncio.ensure_future(work)
        self._background.add(task)
        task.add_done_callback(self._background.discard)


def sentence(text: str) -> str:
    return text if text.endswith((".", "!", "?")) else text + "."


def reason(exc: BaseException | str, kind: str = "") -> str:
    """What the page says of a failure of `kind` (`parley.engine.reply.user_message`): Parley's own
    message, never a backend's; a str is one already made for the page."""
    if isinstance(exc, BaseException):
        return user_message(exc, kind)
    return exc.strip().splitlines()[0][:200] if exc.strip() else "Something went wrong."
