"""One answer: the LLM's words, cut into sentences, each spoken by TTS into the pacing track.

Invariants:
- Until `commit`, a reply is speculative: the LLM and TTS work, but nothing reaches the page or
  the track; text and packets wait. `commit` hands over what waited, in order, and from then on
  text goes to the page and packets to the track as they come.
- What is spoken is the answer's Markdown made plain (media/speakable.py): no markup, no code.
  Each sentence knows the span of the answer's text it was made from.
- Sentence i's packets enter the track tagged `SentenceTag(reply id, i)`, so `heard()` can say from what the
  track really played which words the user heard: whole sentences, then the start of the one
  being played, in proportion to its audio played, cut in the answer's own text.
- `stop()` cancels the LLM stream and the TTS call at once (the caller clears the track).
- Nothing of an answer that begins as a copy of an earlier answer (to another question) reaches the
  page or TTS: it is asked for again without that exchange and what followed it, at last with no
  history (`ATTEMPTS`). A sentence of an earlier answer, held while it is said, ends the answer
  before it. An answer that loops or turns into a copy later is stopped there (`stopped`); a loop
  keeps its text up to the repeat.
- Its stage times (llm_ttft, first_sentence, tts_ttfb) are measured here, on its own requests.
- What a failure shows the page is Parley's own words (`user_message`): a message Parley wrote for
  the user (an exception whose class says `for_user`), else a fixed sentence for the kind of failure.
  A backend's own text (an endpoint's error body, its address, a library's exception) goes to the
  log only.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import re
import time
from collections.abc import Callable, Coroutine
from dataclasses import dataclass
from typing import Any

from media.packet import OpusPacket
from media.speakable import Speakable
from media.text import SentenceSplitter, clean_for_speech
from parley.engine.guard import ReplyGuard, same_question
from parley.engine.metrics import Stopwatch, TurnMetrics
from parley.engine.ports import SentenceTag, SpeechOutput
from parley.engine.services import ServiceError, Services
from parley.engine.sight import without_scene
from parley.engine.types import ChatMessage, Finish

log = logging.getLogger("parley.reply")

ATTEMPTS = 4
"""At most how many times an answer is asked for. One that begins as a copy of an earlier answer is
asked for again without that exchange and the ones after it (the prompt's start, which a local
model has read, stays), again if it then copies one further back, and at last with no history at
all (the system prompt and the user's words), which copies nothing."""


GENERIC_ERRORS: dict[str, str] = {
    "llm": "The language model is not answering right now; please try again.",
    "asr": "Speech could not be transcribed this time.",
    "tts": "The voice could not be made for this sentence.",
    "vision": "The camera could not be looked at this time.",
    "": "Something went wrong on the server.",
}
"""What the page says of a failure whose message Parley did not write, by the kind of work that failed
("" when the caller does not say): the exception's own text may hold an internal address, a key's
start, a path or a stack detail, so it goes to the log and never to the page."""


def for_user(exc: BaseException) -> bool:
    """Whether `exc`'s message is one Parley wrote for the user to read: its class says so
    (`for_user = True`: LLMError, TTSError, a turn's timeout), or it is a ServiceError in Parley's own
    words. A ServiceError made from a Ray failure (deployments/ingress.py) is judged by what the
    replica raised (Ray's `cause`); a replica that died mid-call is told in Parley's words."""
    if getattr(type(exc), "for_user", False) is True:
        return True
    if isinstance(exc, ServiceError):
        cause = exc.__cause__
        if cause is None:
            return True
        inner = getattr(cause, "cause", None)
        if isinstance(inner, BaseException) and inner is not cause:
            return for_user(inner)
        return any(k.__name__ == "RayActorError" for k in type(cause).__mro__)
    return False


def user_message(exc: BaseException, kind: str = "") -> str:
    """What the page says of a failure of `kind` ("llm", "asr", "tts", "vision"; "" unsaid): the
    first line of a message Parley wrote for the user (`for_user`), else `GENERIC_ERRORS[kind]`. The
    caller logs `exc` itself, in full."""
    inner = getattr(exc, "cause", None)  # Ray's RayTaskError: the replica's own exception
    if isinstance(inner, BaseException) and inner is not exc and not isinstance(exc, ServiceError):
        return user_message(inner, kind)
    text = str(exc).strip()
    if text and for_user(exc):
        return text.splitlines()[0][:200]
    return GENERIC_ERRORS.get(kind, GENERIC_ERRORS[""])


Publish = Callable[[str, str], Coroutine[Any, Any, None]]
"""`publish(kind, text)`: show text in the page; kind is 'delta' (answer text) or 'tts_error' (a reason)."""


@dataclass
class _Sentence:
    text: str
    """What TTS is asked to say."""
    start: int = 0
    end: int = 0
    """The span of the answer's text it was made from."""
    samples: int = 0
    """48 kHz samples TTS made for it so far."""
    complete: bool = False


class Reply:
    """The assistant's answer to one prompt, speculative until committed."""

    def __init__(
        self,
        reply_id: str,
        messages: list[ChatMessage],
        services: Services,
        *,
        voice: str | None = None,
        user: str = "",
        first_clause_words: int | None = None,
        first_max_words: int | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.id = reply_id
        self._user = user
        self.text = ""
        """The LLM's text so far."""
        self.text_done = False
        self.finish: Finish | None = None
        """Why the LLM stopped, when it said: `finish.cut` when the length limit cut the answer."""
        self.stopped: str | None = None
        """Why Parley stopped the answer itself: "loop" (it repeated itself) or "copy" (it turned into an
        earlier answer); None when the model ended it."""
        self.metrics = TurnMetrics()
        self.tts_errors: list[str] = []
        self._messages = messages
        self._services = services
        self._voice = voice
        self._clause_words = first_clause_words
        self._max_words = first_max_words
        self._clock = clock
        self._sentences: list[_Sentence] = []
        self._outbox: asyncio.Queue[tuple[str, str] | None] = asyncio.Queue()
        """('delta', text) for the page, then None at the end of the text."""
        self._publish_fn: Publish | None = None
        self._notices: set[asyncio.Task[None]] = set()
        self._held: list[tuple[OpusPacket, SentenceTag]] = []
        self._track: SpeechOutput | None = None
        self._live = False
        self._work: asyncio.Task[None] | None = None
        self._publisher: asyncio.Task[None] | None = None
        self._text_ended = False

    # -- lifecycle --------------------------------------------------------------------------

    def start(self) -> Reply:
        """Begin asking the LLM (and speaking sentences, held back until commit)."""
        self._work = asyncio.get_running_loop().create_task(self._run())
        return self

    def commit(self, track: SpeechOutput | None, publish: Publish) -> None:
        """Go live: what waited goes out now, in order, and everything after as it comes.

        `publish(kind, text)` shows text in the page (kind 'delta' or 'tts_error'); `track` plays
        the speech (None: no media connected, text only).
        """
        self._track = track
        if track is not None:
            for packet, tag in self._held:
                track.capture(packet, tag)
        self._held.clear()
        self._live = True
        self._publish_fn = publish
        self._publisher = asyncio.get_running_loop().create_task(self._publish(publish))
        for reason in self.tts_errors:
            self._tell(reason)

    async def text_finished(self) -> None:
        """Wait until the LLM has finished and the page has been given all of its text.

        Raises what the LLM raised (the text up to then stays in `text`)."""
        assert self._work is not None and self._publisher is not None, "start() and commit() first"
        await self._publisher
        if not self.text_done:
            await self._work  # the text ended early: this raises why

    async def synthesized(self) -> None:
        """Wait until every sentence has been synthesized (its audio may still be playing)."""
        assert self._work is not None
        await self._work

    async def played(self) -> None:
        """Wait until every sentence has been synthesized and played."""
        await self.synthesized()
        if self._track is not None:
            await self._track.wait_for_playout()

    async def stop(self) -> None:
        """Cancel the LLM and TTS work and the publishing, now."""
        for task in (self._work, self._publisher):
            if task is not None and not task.done():
                task.cancel()
        for task in (self._work, self._publisher):
            if task is not None:
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await task
        if self._track is not None:
            for index in range(len(self._sentences)):
                self._track.stop_counting(SentenceTag(self.id, index))

    # -- what was heard -----------------------------------------------------------------------

    def heard(self) -> tuple[str, str]:
        """(the words the user heard, the words they did not), from the audio that left the track.

        Audio that has left is on its way and will be played, so it counts; audio still queued
        when the track was cleared never will. With no track (no media connected) the user read
        everything: it all counts as heard. Call it before `stop()`, which forgets the counts.
        """
        track = self._track
        if track is None:
            return clean_for_speech(self.text), ""
        cut = 0
        for index, sentence in enumerate(self._sentences):
            heard = track.played(SentenceTag(self.id, index)).samples
            if sentence.complete and sentence.samples and heard >= sentence.samples:
                cut = sentence.end
                continue
            if sentence.samples:
                cut = _after_words(self.text, sentence.start, sentence.end, min(1.0, heard / sentence.samples))
            break
        return clean_for_speech(self.text[:cut]), clean_for_speech(self.text[cut:])

    def spoken_since(self, since: float) -> str:
        """What was spoken of the answer since clock time `since`: the sentences with audio that left
        the track since then (what may come back through the microphone now)."""
        track = self._track
        if track is None:
            return ""
        spoken = [s for i, s in enumerate(self._sentences) if track.played(SentenceTag(self.id, i)).last_at >= since]
        return " ".join(sentence.text for sentence in spoken)

    def span(self, index: int) -> tuple[int, int]:
        """Where sentence `index` came from in the answer's text: (start, end)."""
        sentence = self._sentences[index]
        return sentence.start, sentence.end

    # -- the work ---------------------------------------------------------------------------

    async def _run(self) -> None:
        sentences: asyncio.Queue[int | None] = asyncio.Queue()
        speaker = asyncio.get_running_loop().create_task(self._speak(sentences))
        request = Stopwatch(self._clock)
        speakable = Speakable()
        splitter = SentenceSplitter(first_clause_words=self._clause_words, first_max_words=self._max_words)

        def release(text: str) -> None:
            """Text the guard let through goes to the page and, sentence by sentence, to TTS."""
            if not text:
                return
            self.text += text
            self._outbox.put_nowait(("delta", text))
            for sentence, spoken_end in splitter.feed_spans(speakable.feed(text)):
                self._hand_to_tts(sentence, speakable.source_at(spoken_end), sentences, request)

        try:
            await self._answer(request, release)
            if self.stopped is not None:  # the kept text's end is left to say, not what the splitter holds
                offset = self._sentences[-1].end if self._sentences else 0
                speakable, splitter = Speakable(), SentenceSplitter()
                splitter_input = speakable.feed(self.text[offset:]) + speakable.flush()
            else:
                offset, splitter_input = 0, speakable.flush()
            for sentence, spoken_end in [*splitter.feed_spans(splitter_input), *splitter.flush_spans()]:
                self._hand_to_tts(sentence, offset + speakable.source_at(spoken_end), sentences, request)
            if self._sentences:  # trailing text that says nothing (a rule, spaces) belongs to the last sentence
                self._sentences[-1].end = len(self.text)
            self.text_done = True
            self._end_text()
            sentences.put_nowait(None)
            await speaker
        finally:
            self._end_text()
            speaker.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await speaker

    async def _answer(self, request: Stopwatch, release: Callable[[str], None]) -> None:
        """Generate the answer, asking again while it begins as a copy of an earlier answer: without
        the copied exchange and those after it (the prompt's start, already read, stays), and at
        last with no history, which copies nothing (`ATTEMPTS`)."""
        earlier = _answers_to_other_questions(self._messages)
        bare = [m for m in self._messages if m.role == "system"] + self._messages[-1:]
        messages, cut = self._messages, len(earlier)
        for attempt in range(ATTEMPTS):
            last = messages is bare or attempt == ATTEMPTS - 1
            copied = await self._generate(bare if last else messages, [] if last else earlier, request, release)
            if copied is None or last:
                return
            log.info("reply %s: the model began an earlier answer again; asking once more, without it", self.id)
            if copied < cut:  # cut further back: less history, but the start a local model has read
                messages, cut = _before_exchange(self._messages, earlier[copied]), copied
            else:
                messages = bare

    async def _generate(
        self, messages: list[ChatMessage], earlier: list[str], request: Stopwatch, release: Callable[[str], None]
    ) -> int | None:
        """Stream one answer to `messages` through the guard (`parley.engine.guard`), against the
        `earlier` answers of the original prompt. Returns the index of the earlier answer it began to
        copy while nothing of it was released yet (the caller asks again), else None: it ended, or it
        looped or copied later and was stopped (`stopped` says so)."""
        guard = ReplyGuard(earlier)
        attempt = ""
        stream = self._services.stream_reply(messages, user=self._user)
        try:
            async for delta in stream:
                if isinstance(delta, Finish):
                    self.finish = delta
                    continue
                if not delta:
                    continue
                if self.metrics.llm_ttft is None:
                    self.metrics.llm_ttft = request.elapsed()
                attempt += delta
                if self._judge(guard, guard.check(attempt), attempt, release):
                    return guard.copied if not self.text and self.stopped is None else None
        finally:
            close = getattr(stream, "aclose", None)
            if close is not None:
                await close()
        if self._judge(guard, guard.check(attempt, final=True), attempt, release):
            return guard.copied if not self.text and self.stopped is None else None
        return None

    def _judge(self, guard: ReplyGuard, verdict: str, attempt: str, release: Callable[[str], None]) -> bool:
        """Act on the guard's verdict on `attempt` so far; True when this attempt is over (a copy
        before anything was released, to be asked again; or stopped)."""
        if verdict == "hold":
            return False
        if verdict == "copy" and not self.text:
            return True
        if verdict == "repeat":  # held, so never shown or spoken: the answer just ends before it
            log.info("reply %s: ended before a sentence of an earlier answer", self.id)
            return True
        if verdict != "clear":
            self._stop_guarded(verdict, attempt, guard.loop_at, release)
            return True
        release(attempt[len(self.text) :])
        return False

    def _stop_guarded(self, verdict: str, attempt: str, loop_at: int | None, release: Callable[[str], None]) -> None:
        """The reply looped or turned into a copy of an earlier answer after it was shown: stop it there.
        A loop keeps its text up to where the repeating began."""
        if verdict == "loop" and loop_at is not None:
            keep = attempt[:loop_at].rstrip()
            if len(keep) > len(self.text):
                release(keep[len(self.text) :])
            elif len(keep) < len(self.text):
                self.text = keep  # the page gets the trimmed text with the answer's end
        self.stopped = verdict
        self.finish = None
        log.info("reply %s: stopped: it %s", self.id, "looped" if verdict == "loop" else "repeated an earlier answer")

    def _end_text(self) -> None:
        if not self._text_ended:
            self._text_ended = True
            self._outbox.put_nowait(None)

    def _hand_to_tts(self, sentence: str, end: int, sentences: asyncio.Queue[int | None], request: Stopwatch) -> None:
        if self.metrics.first_sentence is None:
            self.metrics.first_sentence = request.elapsed()
        start = self._sentences[-1].end if self._sentences else 0
        self._sentences.append(_Sentence(sentence, start=start, end=max(start, end)))
        sentences.put_nowait(len(self._sentences) - 1)

    async def _speak(self, sentences: asyncio.Queue[int | None]) -> None:
        """Synthesize sentences in order; each packet goes out (or waits) as soon as it exists."""
        while (index := await sentences.get()) is not None:
            sentence = self._sentences[index]
            handed = Stopwatch(self._clock)
            try:
                async for packet in self._services.synthesize(sentence.text, self._voice):
                    if self.metrics.tts_ttfb is None:
                        self.metrics.tts_ttfb = handed.elapsed()
                    sentence.samples += packet.samples
                    self._out(packet, SentenceTag(self.id, index))
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # the text stays; this sentence just goes unspoken
                log.warning("reply %s: TTS failed: %r", self.id, exc)
                said = user_message(exc, "tts")
                self.tts_errors.append(said)
                if self._live:
                    self._tell(said)
            sentence.complete = True

    def _tell(self, reason: str) -> None:
        """Show a TTS failure in the page (once live), whenever it happens."""
        assert self._publish_fn is not None
        task = asyncio.get_running_loop().create_task(self._publish_fn("tts_error", reason))
        self._notices.add(task)
        task.add_done_callback(self._notices.discard)

    def _out(self, packet: OpusPacket, tag: SentenceTag) -> None:
        if not self._live:
            self._held.append((packet, tag))
        elif self._track is not None:
            self._track.capture(packet, tag)

    async def _publish(self, publish: Publish) -> None:
        """Hand the page what the reply has, in order: waiting deltas merged into one event."""
        ahead: list[tuple[str, str] | None] = []
        """An item taken while merging deltas that is no delta: it goes next."""
        while (item := ahead.pop() if ahead else await self._outbox.get()) is not None:
            kind, text = item
            while kind == "delta" and not ahead and not self._outbox.empty():
                more = self._outbox.get_nowait()
                if more is not None and more[0] == "delta":
                    text += more[1]
                else:
                    ahead.append(more)
            await publish(kind, text)


def _answers_to_other_questions(messages: list[ChatMessage]) -> list[str]:
    """The assistant answers in `messages` whose question was not (nearly) the one asked now: asked
    the same thing again, the model may rightly answer the same."""
    asked = without_scene(messages[-1].text()) if messages and messages[-1].role == "user" else ""
    out = []
    for i, m in enumerate(messages):
        question = messages[i - 1].text() if i and messages[i - 1].role == "user" else ""
        if m.role == "assistant" and not same_question(question, asked):
            out.append(m.text())
    return out


def _before_exchange(messages: list[ChatMessage], answer: str) -> list[ChatMessage]:
    """`messages` up to the exchange whose answer is `answer` (its question included), then the last
    message (the user's words now): the prompt keeps the start a local model has already read, so
    asking again costs it only the words, not the whole history."""
    at = next((i for i, m in enumerate(messages) if m.role == "assistant" and m.text() == answer), None)
    if at is None:
        return messages
    start = at - 1 if at > 0 and messages[at - 1].role == "user" else at
    return messages[:start] + messages[-1:]


def _after_words(text: str, start: int, end: int, fraction: float) -> int:
    """The position in `text` just after the first `fraction` of the words of text[start:end]."""
    words = list(re.finditer(r"\S+", text[start:end]))
    count = int(len(words) * fraction)
    return start + words[count - 1].end() if count else start
