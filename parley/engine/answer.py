"""One answer being given: the user's words and the answer in the history, the answer's events to
the page, its playout watched on the speech output, and its deadline.

Invariants:
- The history gets the user's words, then the answer as it ends: `done` (all of it), `interrupted`
  (only the words that were played; the rest is `unspoken`), or `error`.
- The turn has `limits.turn_timeout_s` from when it was decided; past that the answer is stopped
  as an error that says so (a timeout is expected, not a crash: no traceback).
- The output's watch is open exactly while the answer runs: the stage clock `voice_to_voice` stops
  at the first audio, and the page hears which sentence plays.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Hashable
from dataclasses import dataclass
from typing import TYPE_CHECKING

from parley.engine.messages import Entry
from parley.engine.metrics import TurnMetrics
from parley.engine.ports import SentenceTag
from parley.engine.reply import Reply, user_message
from parley.protocol import Delta, Message, Metrics, Speaking, State

if TYPE_CHECKING:
    from parley.engine.session import Session

log = logging.getLogger("parley.session")


@dataclass(frozen=True)
class TurnTimes:
    """When a turn ended, on the session's clock (the stage definitions are in parley.engine.metrics)."""

    decided: float
    """When the server learned the turn is over: the release event arrived, the end-of-turn
    decision was made (hands-free), or the message arrived."""
    spoke_until: float | None = None
    """Hands-free: when the last speech audio arrived (the end-of-turn delay counts from here)."""
    head_start: float = 0.0
    """How long the work the turn used (transcript and answer) had been running at `decided`."""

    @property
    def anchor(self) -> float:
        """Where the user starts waiting: the end of speech (hands-free), else `decided`."""
        return self.decided if self.spoke_until is None else self.spoke_until


STOPPED = {
    "loop": "Parley stopped this answer: the model had begun repeating itself.",
    "copy": "Parley stopped this answer: the model had begun repeating an earlier answer.",
}
"""What the page says under an answer that Parley stopped (`Reply.stopped`)."""


class TurnTimeout(RuntimeError):
    """A turn ran past limits.turn_timeout_s; the message is for the page."""

    for_user = True


class Answering:
    """The answer to one turn, from showing the user's words to its last sentence played."""

    def __init__(self, session: Session, user: Entry, reply: Reply, times: TurnTimes, *, asr_s: float | None) -> None:
        self._session = session
        self.user = user
        self.reply = reply
        self.times = times
        self.entry = Entry(role="assistant", text="", state="streaming")
        """The answer's history entry (added when it starts)."""
        self.metrics: TurnMetrics = reply.metrics
        self.metrics.asr = asr_s
        self.metrics.head_start = times.head_start
        self.metrics.vision_wait = user.scene_wait_s
        if times.spoke_until is not None:
            self.metrics.end_of_turn = times.decided - times.spoke_until
        self._output = session.output

    async def run(self) -> None:
        """Show the user's words, then make the reply live and see it through (or its interruption)."""
        s, answer, reply = self._session, self.entry, self.reply
        s.conversation.add(self.user)
        await s.emit(Message(**self.user.public()))
        s.conversation.add(answer)
        await s.emit(Message(**answer.public()))
        watch = contextlib.ExitStack()
        if self._output is not None:
            watch.enter_context(self._output.watch(on_first_audio=self._first_audio, on_tag=self._playing))
        reply.commit(self._output, self._publish)
        try:
            await self._text_within_deadline()
            answer.text, answer.state = reply.text, "done"
            answer.cut = reply.finish is not None and reply.finish.cut
            s.conversation.save(answer)
            await s.emit(self._done())
            s.spawn(self._read_ahead_next())
            await reply.played()
            if self._output is not None:
                await s.emit(Speaking(id=answer.id, sentence=None))
            await s.emit(Metrics(id=answer.id, **self.metrics.model_dump()))
        except asyncio.CancelledError:
            await self._interrupted()
            raise
        except Exception as exc:
            if isinstance(exc, TurnTimeout):
                log.warning("session %s: %s", s.id[:8], exc)
            else:
                log.exception("session %s: LLM failed", s.id[:8])
            s.meter.error("llm")
            answer.text, answer.state = reply.text, "error"
            s.conversation.save(answer)
            await reply.stop()
            await s.emit(State(id=answer.id, state="error", error=reason(exc, "llm")))
        finally:
            self._report()
            watch.close()

    async def _read_ahead_next(self) -> None:
        """Once the answer's speech is all synthesized (while it plays), let the model read the next
        turn's prompt start, this answer included. Not sooner: reading then would take the cores
        from the synthesis of the first sentence, which the user is waiting to hear."""
        with contextlib.suppress(Exception):  # a hint only; an answer that failed has nothing to add
            await self.reply.synthesized()
            self._session.read_ahead(Entry(role="user", text="", source=self._session.source), answered=True)

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
        """Until the LLM's text is all out; the turn's deadline counts from when it was decided (on
        the session's clock), and is waited for on the event loop's."""
        s = self._session
        limit = s.settings.limits.turn_timeout_s
        left = max(0.0, self.times.decided + limit - s.clock())
        try:
            async with asyncio.timeout_at(asyncio.get_running_loop().time() + left):
                await self.reply.text_finished()
        except TimeoutError:
            raise TurnTimeout(f"The answer took longer than {limit:g} seconds and was stopped. Please try again.") from None

    def _first_audio(self) -> None:
        now = self._session.clock()
        self.metrics.voice_to_voice = now - self.times.anchor
        self.metrics.turn_to_voice = now - self.times.decided
        self._session.set_state("speaking")

    def _playing(self, tag: Hashable) -> None:
        if isinstance(tag, SentenceTag) and tag.reply == self.reply.id:
            start, end = self.reply.span(tag.index)
            self._session.spawn(self._session.emit(Speaking(id=self.entry.id, sentence=tag.index, start=start, end=end)))

    async def _publish(self, kind: str, text: str) -> None:
        s = self._session
        if kind == "delta":
            await s.emit(Delta(id=self.entry.id, text=text))
        else:
            s.meter.error("tts")
            await s.notice(f"Part of the answer could not be spoken: {sentence(reason(text))}", "error")

    async def _interrupted(self) -> None:
        """Keep in the history only what the user heard; show the rest apart."""
        s, answer = self._session, self.entry
        if s.output is not None:
            s.output.clear()
        answer.text, answer.unspoken = self.reply.heard()
        answer.state = "interrupted"
        s.conversation.save(answer)
        log.info("session %s: interrupted after %d heard words", s.id[:8], len(answer.text.split()))
        state = State(id=answer.id, state="interrupted", text=answer.text, unspoken=answer.unspoken)
        if answer.cut:
            state.cut = True
        await s.emit(state)
        await self.reply.stop()

    def _report(self) -> None:
        for stage in TurnMetrics.model_fields:
            value = getattr(self.metrics, stage)
            if value is not None:
                self._session.meter.stage(stage, value)


def sentence(text: str) -> str:
    return text if text.endswith((".", "!", "?")) else text + "."


def reason(exc: BaseException | str, kind: str = "") -> str:
    """What the page says of a failure of `kind` (`parley.engine.reply.user_message`): Parley's own
    message, never a backend's; a str is one already made for the page."""
    if isinstance(exc, BaseException):
        return user_message(exc, kind)
    return exc.strip().splitlines()[0][:200] if exc.strip() else "Something went wrong."
