"""A session's coordinator: one loop over typed events, and the one place turns are decided.

The session's parts report only by posting events (`parley.engine.events`): the ear (speech
started, lasted, paused, resumed, ended; a pause judged), a turn's speculation (the words at a
pause), a hold (what speech over an answer came to) and a delivery (first audio). The coordinator
handles them one at a time, in order, on its own task; the user's actions (the talk key, a typed
message, Stop) are its methods. The stages of a turn are functions (`parley.engine.stages`).

Invariants:
- At most one turn is answered at a time (`answering`). A new turn, the talk key, Stop, or
  (hands-free) the user speaking over the answer interrupts it: its work is cancelled, queued
  speech dropped, and the history keeps only the words that had been played.
- Hands-free, speech over an answer holds it at once (the output plays silence, nothing is lost);
  its `Hold` settles it exactly once: an interruption, or the answer goes on.
- The turn state the page sees is derived from the two turns in one place
  (`parley.engine.turn.page_state`) and emitted whenever it changes.
- Every timer goes through the session's clock (`parley.engine.clock`).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Coroutine
from typing import Any

from parley.engine import events as ev
from parley.engine import floor, stages
from parley.engine.budget import TurnBudget
from parley.engine.ear import Ear
from parley.engine.messages import Entry
from parley.engine.metrics import TurnTimes
from parley.engine.ports import SpeechOutput
from parley.engine.turn import Turn, page_state
from parley.protocol import Recording, TurnState, TurnStatus

log = logging.getLogger("parley.session")


class Coordinator:
    """One session's turns: the ear's events in, answers out."""

    def __init__(self, stage: stages.Stage, ear: Ear, budget: TurnBudget) -> None:
        self.stage, self.ear, self.budget = stage, ear, budget
        """What the stages of its turns may use; its ear; the user's turns this minute."""
        self.settings, self.clock, self.who, self._emit = stage.settings, stage.clock, stage.who, stage.emit
        self.hearing: Turn | None = None
        """The turn being said (its utterance is open, or it is being decided)."""
        self.answering: Turn | None = None
        """The turn being answered: at most one."""
        self.state: TurnState = self._page_state()
        self._events: asyncio.Queue[ev.Event] = asyncio.Queue()
        self._loop: asyncio.Task[None] | None = None

    @property
    def output(self) -> SpeechOutput | None:
        return self.stage.output()

    @property
    def hands_free(self) -> bool:
        return self.ear.hands_free

    @property
    def busy(self) -> bool:
        return self.answering is not None and self.answering.running

    def spawn(self, work: Awaitable[Any]) -> None:
        """Run `work` in the background, keeping a reference until it ends."""
        stages.keep(work)

    def _page_state(self) -> TurnState:
        return page_state(self.hearing, self.answering, hands_free=self.hands_free)

    def _publish_state(self) -> None:
        state = self._page_state()
        if state != self.state:
            self.state = state
            self.spawn(self._emit(TurnStatus(state=state)))

    # -- user actions -----------------------------------------------------------------------

    async def set_hands_free(self, on: bool) -> None:
        """Switch between push-to-talk and hands-free."""
        if on != self.hands_free:
            await self._drop_hearing()
            self.ear.recorder.set_hands_free(on)
            self._publish_state()

    async def talk_start(self) -> None:
        """The talk key went down: interrupt any answer and start recording. Each press takes a turn
        from the user's budget at once, since it starts a scene note and a read-ahead."""
        await self.interrupt()
        await self._drop_hearing()
        if not self.budget.take():
            log.info("%s: a press past the turn budget", self.who)
            await self.stage.notice(stages.BUDGET_SPENT, "warn")
            await self._emit(Recording(active=False))
            return
        self._begin(self.ear.press().sample, paid=True)
        await self._emit(Recording(active=True))

    async def talk_end(self) -> None:
        """The talk key came up: what was said becomes a turn."""
        ended = await self.ear.release()
        if ended is not None:
            await self._ended(ended)

    async def send_text(self, text: Any) -> bool:
        """A typed message goes through the same pipeline, without ASR; False if it was refused (the
        page was told why)."""
        text = await stages.typed_text(self.stage, text)
        if not text:
            return False
        await self.interrupt()
        if not self.budget.take():
            await self.stage.notice(stages.BUDGET_SPENT, "warn")
            return False
        frame = self.stage.eyes.latest_frame
        turn = Turn(utterance=None, frame=frame, scene=self.stage.eyes.look(frame), paid=True)
        self._answer(turn, stages.typed(self.stage, turn, text, TurnTimes(decided=self.clock())))
        return True

    async def interrupt(self, *, keep_utterance: bool = False) -> None:
        """Stop the answer now: cancel its turn and drop queued speech."""
        turn, self.answering = self.answering, None
        if self.output is not None:
            self.output.clear()
        if turn is not None:
            if turn.hold is not None:
                turn.hold.close()
            if turn.task is not None and not turn.task.done():
                turn.task.cancel()
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await turn.task
        if keep_utterance and self.hearing is not None:
            stages.look_now(self.hearing, self.stage.eyes, self.read_ahead)  # speech over the answer became a turn
        self._publish_state()

    async def close(self) -> None:
        await self._drop_hearing()
        await self.interrupt()

    # -- the loop ---------------------------------------------------------------------------

    def post(self, event: ev.Event) -> None:
        """A part reports an event: it is handled after those before it, on the session's loop."""
        self._events.put_nowait(event)
        if self._loop is None or self._loop.done():
            self._loop = asyncio.get_running_loop().create_task(self._run())

    async def _run(self) -> None:
        while not self._events.empty():
            event = self._events.get_nowait()
            try:
                await self._handle(event)
            except Exception:
                log.exception("%s: handling %s failed", self.who, type(event).__name__)
            self._publish_state()

    async def _handle(self, event: ev.Event) -> None:
        hearing, answering = self.hearing, self.answering
        if isinstance(event, ev.SpeechStarted):
            self._begin(event.sample, paid=event.paid)
        elif isinstance(event, ev.SpeechLasted):
            self._speech_over_answer()
        elif isinstance(event, ev.SpeechPaused) and hearing is not None and not hearing.ended:
            stages.speculate(self.stage, hearing, event.sample)
            if self.ear.judge is not None and self.hands_free:
                self.spawn(stages.judge_pause(hearing, self.ear, event.sample, lets_answer_on=self._lets_answer_on))
        elif isinstance(event, ev.SpeechResumed) and hearing is not None and not hearing.ended:
            hold = floor.held_over(answering, hearing)
            if answering is not None and hold is not None and hold.rehold():
                # it played on: hold again
                self.spawn(floor.hold_audio(answering, self.output, self.ear, self._emit, self.who))
            stages.resumed(hearing, event.sample, thought=event.thought)
        elif isinstance(event, ev.SpeechEnded):
            self.spawn(self._ended(event))
        elif isinstance(event, ev.PauseJudged):
            self.ear.limit_pause(event.paused_at, event.wait_s)
        elif isinstance(event, ev.PauseHeard):
            self._pause_heard(event)
        elif isinstance(event, ev.Settled):
            await self._settled(event)
        elif isinstance(event, ev.FirstAudio) and event.turn is answering:
            event.turn.phase = "speaking"

    # -- turns ------------------------------------------------------------------------------

    def _begin(self, start: int, *, paid: bool) -> None:
        """An utterance starts at `start`: a turn is being heard."""
        if self.hearing is not None and not self.hearing.ended:
            self.spawn(self.hearing.drop())
        over_answer = self.busy and self.hands_free  # a backchannel, mostly: no note until it is a turn
        self.hearing = stages.hear(
            self.stage, self.ear.recorder, start, self.stage.eyes.latest_frame, over_answer, paid, self.budget
        )
        self._publish_state()

    async def _drop_hearing(self) -> None:
        turn, self.hearing = self.hearing, None
        if turn is not None:
            self.ear.recorder.drop_utterance()
            await turn.drop()

    def _speech_over_answer(self) -> None:
        """The user has spoken over the answer long enough to count (hands-free)."""
        interruption, answering = self.settings.turn.interruption, self.answering
        if not (self.hands_free and interruption.enabled and answering is not None and answering.running):
            return
        if not interruption.backchannels:
            log.info("%s: barge-in", self.who)
            self.spawn(self.interrupt(keep_utterance=True))
        elif floor.open_hold(
            answering, self.hearing, ear=self.ear, services=self.stage.services, clock=self.clock, post=self.post
        ):
            self.spawn(floor.hold_audio(answering, self.output, self.ear, self._emit, self.who))

    def _lets_answer_on(self, words: str) -> str | None:
        speech_s, language = self.ear.recorder.speech_s, self.settings.language
        return floor.lets_answer_on(words, self.hearing, self.answering, speech_s=speech_s, clock=self.clock, language=language)

    def _pause_heard(self, event: ev.PauseHeard) -> None:
        """The words up to a pause: speech over a held answer is weighed; anything that may be a turn
        has its answer started, held back until the turn is confirmed."""
        turn, spec = event.turn, event.turn.speculation
        if turn.phase != "hearing" or spec is None or spec.until != event.until:
            return
        hold = floor.held_over(self.answering, turn)
        if hold is not None:
            speech_s, language = self.ear.recorder.speech_s, self.settings.language
            heard = floor.overheard("pause", turn, self.answering, event.words, speech_s, clock=self.clock, language=language)
            if hold.heard(heard).action != "interrupt":
                return  # no turn (yet): nothing to answer
        if event.words:
            spec.reply = asyncio.get_running_loop().create_task(stages.prepare(self.stage, turn, event.words))

    async def _settled(self, event: ev.Settled) -> None:
        """What speech over the answer came to: an interruption, the answer resumed, or played on."""
        answering, hold = self.answering, event.hold
        if answering is None or answering.hold is not hold:
            return  # the answer ended, or another turn took its place
        if event.action == "interrupt":
            log.info("%s: barge-in (%s)", self.who, event.why)
            await self.interrupt(keep_utterance=True)
            return
        if event.action == "resume" and self.hearing is not None and self.hearing.utterance is (hold.utterance or False):
            await self._drop_hearing()  # it was no turn
        await floor.play_on(answering, event, self.output, self._emit, self.who)

    async def _ended(self, event: ev.SpeechEnded) -> None:
        """The utterance is over: it becomes a turn, or (too little speech, or speech over an answer
        that goes on) nothing."""
        turn = self.hearing
        if turn is None or turn.ended:
            if not self.hands_free:
                await self._emit(Recording(active=False, **({"reason": event.mark.reason} if event.mark.reason else {})))
            return
        turn.ended = True
        made = await stages.end(self.stage, turn, event, self.answering, self.ear, self.budget)
        if self.hearing is turn:
            self.hearing = None
        if made is None:
            await turn.drop()
            self._publish_state()
            return
        mark, times = made
        await self.interrupt(keep_utterance=False)
        stages.look_now(turn, self.stage.eyes, self.read_ahead)
        self._answer(turn, stages.spoken(self.stage, turn, mark.sample, times))

    def _answer(self, turn: Turn, work: Coroutine[Any, Any, None]) -> None:
        """`turn` is the one answered now: its work runs until its answer is played (or it is interrupted)."""
        turn.phase = "thinking"
        self.answering = turn

        async def run() -> None:
            try:
                await stages.run_safely(self.stage, work)
            finally:
                turn.phase = "over"
                if turn.hold is not None:
                    turn.hold.close()
                if self.answering is turn:
                    self.answering = None
                self._publish_state()

        turn.task = asyncio.get_running_loop().create_task(run())
        turn.on_first_audio = lambda: self.post(ev.FirstAudio(turn))
        self._publish_state()

    def read_ahead(self, start: Entry, *, answered: bool = False) -> None:
        """Let a local model read the prompt up to the user's words while they talk, or (`answered`)
        once an answer's speech is synthesized (`parley.engine.stages.read_ahead`)."""
        if not (self.busy and not answered):
            stages.read_ahead(self.stage, start)
