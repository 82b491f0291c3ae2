"""The stages of a turn, as functions: each takes the turn and the ports it needs (`Stage`), does
its part, and reports through them. They hold no state of their own; the coordinator decides which
runs when.

A spoken turn: `hear` (an utterance starts: its turn, its scene note) → `speculate` at each pause
(the words so far, then `prepare`: the user's entry and the reply, held back) → `end` (is it a
turn at all?) → `spoken` (the words, within the turn's deadline, then `deliver`). A typed one:
`typed` → `deliver`.
"""

from __future__ import annotations

import asyncio
import logging
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, replace
from typing import Any, Literal

import av

from parley.engine import floor
from parley.engine.budget import TurnBudget
from parley.engine.clock import Clock, within
from parley.engine.conversation import Conversation, estimate_tokens
from parley.engine.delivery import Delivery, Page, reason, sentence
from parley.engine.ear import Ear
from parley.engine.events import PauseHeard, Post, SpeechEnded
from parley.engine.eyes import Eyes
from parley.engine.messages import Entry
from parley.engine.metrics import Meter, TurnTimes
from parley.engine.ports import SpeechOutput
from parley.engine.recorder import Recorder, SpeechMark
from parley.engine.reply import GENERIC_ERRORS, Reply
from parley.engine.services import Services
from parley.engine.settings import SessionSettings
from parley.engine.turn import Speculation, Turn
from parley.engine.types import SceneNote
from parley.engine.utterance import Utterance
from parley.protocol import Outbound, Recording

log = logging.getLogger("parley.session")

Level = Literal["info", "warn", "error"]

BUDGET_SPENT = "Too many turns in a minute; wait a moment and try again."


@dataclass(frozen=True)
class Stage:
    """The ports a stage may use."""

    settings: SessionSettings
    services: Services
    eyes: Eyes
    conversation: Conversation
    clock: Clock
    meter: Meter
    post: Post
    notice: Callable[[str, Level], Awaitable[None]]
    emit: Callable[[Outbound], Awaitable[None]]
    output: Callable[[], SpeechOutput | None]
    read_ahead: Callable[..., None]
    hands_free: Callable[[], bool]
    user: str
    who: str


# -- hearing --------------------------------------------------------------------------------


def hear(
    stage: Stage, recorder: Recorder, start: int, frame: av.VideoFrame | None, over_answer: bool, paid: bool, budget: TurnBudget
) -> Turn:
    """An utterance starts at `start`: its turn, and its scene note unless it is speech over an
    answer. Hands-free, the note takes the turn from the budget now (and none is made when the budget
    is spent); `paid`: a key press already took it."""
    look = not over_answer and (paid or budget.take())
    utterance = Utterance(
        start=start,
        transcribe=stage.services.transcribe,
        audio=recorder.speech_audio,
        segment_s=stage.settings.turn.speculation.segment_s,
        clock=stage.clock,
    )
    turn = Turn(utterance=utterance, frame=frame, look_later=over_answer, paid=look)
    if look:
        turn.scene = look_or_say_blind(stage.eyes, frame, stage.read_ahead)
    return turn


def look_or_say_blind(
    eyes: Eyes, frame: av.VideoFrame | None, read_ahead: Callable[..., None]
) -> asyncio.Task[SceneNote | None] | None:
    """Start the scene note of `frame`, or, with none coming, let the model read ahead that it cannot see."""
    scene = eyes.look(frame)
    if scene is None and (why := eyes.why_blind()) is not None:
        read_ahead(Entry(role="user", text="", blind=why, source=eyes.source))
    return scene


def look_now(turn: Turn, eyes: Eyes, read_ahead: Callable[..., None]) -> None:
    """Speech that began over an answer is a turn after all: make its scene note now."""
    if turn.look_later:
        turn.look_later = False
        turn.scene = look_or_say_blind(eyes, turn.frame, read_ahead)


def speculate(stage: Stage, turn: Turn, until: int) -> None:
    """A pause: transcribe what was said so far; its words are reported (`PauseHeard`), and the
    coordinator has the answer started on them, held back (`prepare`)."""
    utterance = turn.utterance
    if not stage.settings.turn.speculation.enabled or utterance is None:
        return
    if turn.speculation is not None:
        keep(turn.speculation.cancel())
    transcript = utterance.text_until(until)
    turn.speculation = Speculation(until=until, transcript=transcript, began=stage.clock())

    def heard(task: asyncio.Task[str]) -> None:
        if not task.cancelled() and task.exception() is None:
            stage.post(PauseHeard(turn, until, task.result()))

    transcript.add_done_callback(heard)


async def prepare(stage: Stage, turn: Turn, words: str) -> tuple[Entry, Reply, float | None] | None:
    """The user's entry for `words` (with the scene note, waited for) and the reply started on it."""
    entry, waited = await stage.eyes.user_entry(words, turn.frame, turn.scene)
    return entry, reply_to(stage, entry), waited


def reply_to(stage: Stage, user: Entry) -> Reply:
    speaks = stage.output() is not None
    first = stage.settings.reply
    return Reply(
        uuid.uuid4().hex[:12],
        stage.conversation.messages(sight=stage.eyes.sight, then=user),
        stage.services,
        voice=stage.settings.voice,
        user=stage.user,
        first_clause_words=first.first_clause_words if speaks else None,
        first_max_words=first.first_piece_max_words if speaks else None,
        clock=stage.clock,
    ).start()


async def judge_pause(turn: Turn, ear: Ear, paused_at: int, *, lets_answer_on: Callable[[str], str | None]) -> None:
    """Hands-free: the turn judge weighs the pause at `paused_at`, with the words the speculation
    read there (`Ear.judge_pause`)."""
    spec = turn.speculation
    words = spec.transcript if spec is not None and spec.until == paused_at else None
    thought = turn.utterance is not None and turn.utterance.thought
    await ear.judge_pause(paused_at, words, thought=thought, lets_answer_on=lets_answer_on)


def resumed(turn: Turn, at: int, *, thought: bool) -> None:
    """Speech came back at `at` (after a thinking pause: `thought`): the work started at the pause is stale."""
    if turn.utterance is not None:
        turn.utterance.thought |= thought
        turn.utterance.resumed(at)  # first: a piece kept now survives the cancel
    if turn.speculation is not None:
        keep(turn.speculation.cancel())
        turn.speculation = None


# -- the end of an utterance ----------------------------------------------------------------


async def end(
    stage: Stage,
    turn: Turn,
    event: SpeechEnded,
    answering: Turn | None,
    ear: Ear,
    budget: TurnBudget,
) -> tuple[SpeechMark, TurnTimes] | None:
    """The utterance of `turn` is over: (where it ends, its times) if it is a turn; None if it is
    not (too little speech, the budget spent, or speech over an answer that goes on)."""
    mark, hands_free = event.mark, ear.hands_free
    if not hands_free:
        await stage.emit(Recording(active=False, **({"reason": mark.reason} if mark.reason else {})))
    hold = floor.held_over(answering, turn)
    if hold is not None:
        # Read even when the VAD let little of it count as speech: over Parley's own voice the
        # gates keep much of the user's speech from counting, and "stop" stops it all the same.
        words = await _words_or_none(turn, mark.sample)
        heard = floor.overheard("end", turn, answering, words, mark.speech_s, clock=stage.clock, language=stage.settings.language)
        if hold.heard(heard).action == "resume":
            return None
    if mark.speech_s < stage.settings.turn.vad.min_speech_s:
        log.info("%s: %.2f s of speech is not a turn", stage.who, mark.speech_s)
        if not hands_free:
            await stage.notice("I didn't hear any speech. Hold Space (or the talk button) while you speak.", "warn")
        return None
    if not turn.paid and not budget.take():
        await stage.notice(BUDGET_SPENT, "warn")
        return None
    return await ear.tail(mark), event.times


async def _words_or_none(turn: Turn, end: int) -> str | None:
    """The transcript of the utterance up to `end` (the speculation's, if it reached there); None if
    it could not be made."""
    spec, utterance = turn.speculation, turn.utterance
    try:
        if spec is not None and spec.until >= end:
            return await asyncio.shield(spec.transcript)
        return None if utterance is None else await utterance.text_until(end)
    except asyncio.CancelledError:
        raise
    except Exception:
        return None


# -- a turn's answer ------------------------------------------------------------------------


async def run_safely(stage: Stage, work: Awaitable[None]) -> None:
    """A turn's work: counted, and any failure said in the page (the session goes on)."""
    stage.meter.turn()
    try:
        await work
    except asyncio.CancelledError:
        raise
    except Exception:
        log.exception("%s: turn failed", stage.who)
        await stage.notice("Something went wrong with that turn; please try again.", "error")


async def spoken(stage: Stage, turn: Turn, end: int, times: TurnTimes) -> None:
    """A spoken turn: its words (the speculation's, if it reached the end), then its answer."""
    limit = stage.settings.limits.turn_timeout_s
    spec, utterance = turn.speculation, turn.utterance
    assert utterance is not None
    prepared: tuple[Entry, Reply, float | None] | None = None
    try:
        if spec is not None and spec.until >= end:
            times = replace(times, head_start=max(0.0, times.decided - spec.began))
            words = await within(stage.clock, limit, asyncio.shield(spec.transcript))
            if spec.reply is not None:
                prepared = await spec.reply
        else:
            if spec is not None:
                await spec.cancel()
                turn.speculation = None
            words = await within(stage.clock, limit, utterance.text_until(end))
    except TimeoutError:
        await turn.drop()
        stage.meter.error("asr")
        await stage.notice(f"Speech recognition took longer than {limit:g} seconds; please try again.", "error")
        return
    except Exception as exc:
        log.exception("%s: ASR failed", stage.who)
        stage.meter.error("asr")
        said = reason(exc, "asr")  # Parley's own words for it, or a plain sentence: never the backend's
        if said == GENERIC_ERRORS["asr"]:
            await stage.notice(f"{said} Please try again.", "error")
        else:
            await stage.notice(f"Speech recognition failed: {sentence(said)} Please try again.", "error")
        return
    if not words:
        if prepared is not None:
            await prepared[1].stop()
        log.info("%s: no words in the recording", stage.who)
        if not stage.hands_free():
            await stage.notice("I couldn't make out any words in that recording.", "warn")
        return
    if prepared is None:
        prepared = await prepare(stage, turn, words)
    assert prepared is not None
    entry, reply, waited = prepared
    await deliver(stage, turn, entry, reply, times, waited, asr_s=utterance.asr_s)


async def typed(stage: Stage, turn: Turn, text: str, times: TurnTimes) -> None:
    """A typed turn: its entry (with the scene note of the frame when it was sent), then its answer."""
    entry, waited = await stage.eyes.user_entry(text, turn.frame, turn.scene)
    await deliver(stage, turn, entry, reply_to(stage, entry), times, waited)


async def deliver(
    stage: Stage, turn: Turn, user: Entry, reply: Reply, times: TurnTimes, waited: float | None, *, asr_s: float | None = None
) -> None:
    """Give the answer (`parley.engine.delivery`); `waited`: for the scene note, `asr_s`: the ASR call whose words it used."""
    eyes = stage.eyes
    turn.delivery = Delivery(
        user,
        reply,
        times,
        conversation=stage.conversation,
        page=Page(emit=stage.emit, notice=stage.notice),
        output=stage.output(),
        clock=stage.clock,
        meter=stage.meter,
        timeout_s=stage.settings.limits.turn_timeout_s,
        on_first_audio=turn.on_first_audio,
        read_ahead=lambda: stage.read_ahead(Entry(role="user", text="", source=eyes.source), answered=True),
        who=stage.who,
        asr_s=asr_s,
        scene_wait_s=waited,
    )
    await turn.delivery.run()


# -- prompts --------------------------------------------------------------------------------


def read_ahead(stage: Stage, start: Entry) -> None:
    """Let a local model read the prompt up to the user's words (the system prompt, the history and
    any scene note) while they talk, or once an answer's speech is synthesized, while it plays: the
    turn's request then reads only the words. Without this, a note cost the first token ~300 ms on
    2 cores (benchmarks/voice_to_voice.py --camera), and once the history window moved on
    (`prompt.history_messages`), the whole prompt cost seconds to read again."""
    settings = stage.settings
    if settings.sight == "image" or not settings.prompt.read_ahead:
        return
    messages = stage.conversation.prompt_start(sight=settings.sight, then=start)

    async def read() -> None:
        try:
            await stage.services.read_ahead(messages, user=stage.user)
        except Exception:  # a hint only
            log.debug("%s: reading ahead failed", stage.who, exc_info=True)

    keep(read())


_running: set[asyncio.Future[Any]] = set()


def keep(work: Awaitable[Any]) -> None:
    """Run `work` in the background, keeping a reference until it ends."""
    task = asyncio.ensure_future(work)
    _running.add(task)
    task.add_done_callback(_running.discard)


async def typed_text(stage: Stage, text: Any) -> str:
    """A typed message, stripped, if it can be a turn; "" if not (the page was told why)."""
    problem, text = check_text(text, stage.settings.limits.max_text_chars, stage.conversation)
    if problem:
        await stage.notice(problem, "error")
        return ""
    return text


def check_text(text: Any, limit: int, conversation: Conversation) -> tuple[str, str]:
    """(why a typed message cannot be a turn, or ""; the message stripped)."""
    if not isinstance(text, str):
        return "That message was not text.", ""
    text = text.strip()
    if len(text) > limit:
        return f"Messages are limited to {limit} characters; yours has {len(text)}.", text
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return "That message holds characters that are not valid text (UTF-8); it was not sent.", text
    if estimate_tokens(text) > conversation.prompt_budget_tokens():
        return "That message is too long for the language model; please shorten it.", text
    return "", text
