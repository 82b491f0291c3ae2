"""One session's conversation: what was said, what was heard, and the prompt built from it.

Invariants:
- An assistant entry's `text` is what the user got: every word, or, once an answer is interrupted,
  only the words that had been played; the rest is kept apart in `unspoken`, shown in the page and
  never sent to the LLM. The prompt is built here and nowhere else.
- The prompt leaves out what a small model would copy instead of answering: an exchange whose answer
  was a non-answer, a repeat of an earlier answer or a loop (`parley.engine.guard.worth_rereading`),
  and, with `llm.scene_note: asked`, the scene note (or the line saying there is none) of a turn whose
  words are not about the camera or screen (`parley.engine.sight.about_scene`).
"""

from __future__ import annotations

import abc
import asyncio
import collections
import concurrent.futures
import logging
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from typing import Any, Literal

from parley.config import LLMConfig
from parley.engine.guard import worth_rereading
from parley.engine.sight import about_scene, system_prompt, with_scene
from parley.engine.types import ChatMessage, ImagePart, ImageURL, Sight, TextPart

log = logging.getLogger("parley.store")

MessageState = Literal["streaming", "done", "interrupted", "error"]


@dataclass
class Entry:
    """One message of the conversation as the page shows it."""

    role: Literal["user", "assistant"]
    text: str
    state: MessageState = "done"
    image: str | None = None
    scene: str | None = None
    """User: the scene note made from the turn's frame ("" when it found nothing; None when none was made)."""
    blind: str | None = None
    """User, with a local (text-only) model: why this turn has no scene note (not stored)."""
    source: str = "camera"
    """User: what the frame showed, "camera" or "screen"."""
    scene_wait_s: float | None = None
    """User: how long the turn waited for its scene note once its words were ready (not stored)."""
    unspoken: str = ""
    """Assistant: the words of the answer the user never heard (after an interruption)."""
    cut: bool = False
    """Assistant: the model stopped at its length limit (`llm.max_tokens`), not at the end."""
    id: str = field(default_factory=lambda: uuid.uuid4().hex[:12])
    seq: int = -1
    """Its place in the conversation, given when it is added (`Conversation.add`): seqs only grow, and
    the store keeps them (not shown in the page)."""

    def public(self) -> dict[str, Any]:
        data: dict[str, Any] = {"id": self.id, "role": self.role, "text": self.text, "state": self.state}
        if self.unspoken:
            data["unspoken"] = self.unspoken
        if self.cut:
            data["cut"] = True
        if self.scene:
            data["scene"] = self.scene
        return data


class StoreError(Exception):
    """A conversation store could not do what it was asked (unreachable, locked, full, ...)."""


class ConversationStore(abc.ABC):
    """Where conversations outlive the process: messages by session id, each with its `Entry.seq`.

    The engine owns this interface; `parley.ingress.store` has the SQLite and Redis implementations.
    Every method is blocking and raises `StoreError` when the store fails (never swallows it):
    `StoreQueue` runs them off the event loop, retries writes and says when the store is failing.
    """

    where: str = "the conversation store"
    """What log lines call this store (no password)."""

    @abc.abstractmethod
    def save(self, session: str, entry: Entry) -> None:
        """Insert or update one message (by id; its place in the conversation is `entry.seq`)."""

    @abc.abstractmethod
    def load(self, session: str, limit: int) -> list[Entry]:
        """The session's newest `limit` messages in order, with their seq (none if it is unknown);
        `streaming` ones come back as `error`."""

    @abc.abstractmethod
    def forget(self, session: str) -> None:
        """Delete one conversation (the user asked for a new one)."""

    @abc.abstractmethod
    def trim(self, session: str, before_seq: int) -> None:
        """Delete the session's messages whose seq is below `before_seq` (past the history limit)."""

    @abc.abstractmethod
    def forget_older_than(self, seconds: float) -> int:
        """Delete the conversations untouched for `seconds`; returns how many messages went."""

    def close(self) -> None:  # noqa: B027 - a store may hold nothing to close
        """Release connections and files."""


@dataclass(frozen=True)
class _Write:
    """One queued write: `save` (with a snapshot of the entry), `forget` or `trim`."""

    kind: Literal["save", "forget", "trim"]
    session: str
    entry: Entry | None = None
    before_seq: int = 0


class StoreQueue:
    """A `ConversationStore` used from the event loop without ever waiting on it.

    Invariants:
    - Writes (`save`, `forget`, `trim`) return at once; one worker thread performs them in the
      order they were asked. A write that fails is retried (0.2 s, doubling to 5 s) and the writes
      after it wait behind it, so a conversation is never stored out of order. At most
      `max_pending` writes wait; past it the oldest is dropped (counted in `dropped`, logged).
    - `save` stores the entry as it is when called (a snapshot: the entry changes later).
    - Reads (`load`, `forget_older_than`) run in this queue's own threads, never on the loop; a
      load first waits (at most `settle_s`) for the session's queued writes, and raises
      `StoreError` rather than return a conversation those writes would change.
    - `ok` is False from a failed write or load until one succeeds; the first failure is logged
      with its reason (an error) and the recovery once (info), not every retry.
    - `close` waits (bounded) until every queued write is stored, then closes the store.
    """

    def __init__(
        self,
        store: ConversationStore,
        *,
        max_pending: int = 10_000,
        settle_s: float = 1.0,
        load_timeout_s: float = 10.0,
        first_retry_s: float = 0.2,
        max_retry_s: float = 5.0,
    ) -> None:
        self.store = store
        self.max_pending = max_pending
        self.settle_s = settle_s
        self.load_timeout_s = load_timeout_s
        self.first_retry_s = first_retry_s
        self.max_retry_s = max_retry_s
        self.dropped = 0
        """Writes given up: dropped past `max_pending`, or refused by the store for a reason a retry cannot fix."""
        self._ok = True
        self._health = threading.Lock()
        self._writes: collections.deque[_Write] = collections.deque()
        self._current: _Write | None = None
        self._by_session: dict[str, int] = {}
        self._cond = threading.Condition()
        self._stop = False
        self._hurry = False
        self._closed = False
        self._readers = concurrent.futures.ThreadPoolExecutor(max_workers=4, thread_name_prefix="parley-store-read")
        self._worker = threading.Thread(target=self._work, name="parley-store-writer", daemon=True)
        self._worker.start()

    @property
    def ok(self) -> bool:
        """False while the store is failing (the last write or load failed)."""
        return self._ok

    @property
    def pending(self) -> int:
        """Writes not yet stored (waiting, or being tried)."""
        with self._cond:
            return len(self._writes) + (self._current is not None)

    def pending_for(self, session: str) -> int:
        with self._cond:
            return self._by_session.get(session, 0)

    # -- writes (never wait) -------------------------------------------------------------------

    def save(self, session: str, entry: Entry) -> None:
        """Store the message as it is now (its image is not stored)."""
        self._put(_Write("save", session, entry=replace(entry, image=None)))

    def forget(self, session: str) -> None:
        self._put(_Write("forget", session))

    def trim(self, session: str, before_seq: int) -> None:
        self._put(_Write("trim", session, before_seq=before_seq))

    def _put(self, write: _Write) -> None:
        with self._cond:
            if self._closed:
                log.error("%s is closed: a write for session %s was not stored", self.store.where, write.session[:8])
                return
            if self._writes and len(self._writes) + (self._current is not None) >= self.max_pending:
                old = self._writes.popleft()
                self._done(old)
                self.dropped += 1
                if self.dropped == 1 or self.dropped % 1000 == 0:
                    log.error(
                        "%s: %d writes are waiting; the oldest was dropped (%d dropped so far)",
                        self.store.where,
                        self.max_pending,
                        self.dropped,
                    )
            self._writes.append(write)
            self._by_session[write.session] = self._by_session.get(write.session, 0) + 1
            self._cond.notify_all()

    def _done(self, write: _Write) -> None:
        """Called with the lock held: `write` no longer waits."""
        left = self._by_session.get(write.session, 0) - 1
        if left > 0:
            self._by_session[write.session] = left
        else:
            self._by_session.pop(write.session, None)
        self._cond.notify_all()

    def _work(self) -> None:
        while True:
            with self._cond:
                while not self._writes and not self._stop:
                    self._cond.wait()
                if self._stop:
                    return
                write = self._current = self._writes.popleft()
            delay = self.first_retry_s
            while not self._try(write):
                with self._cond:
                    self._cond.wait_for(lambda: self._stop or self._hurry, timeout=delay)
                    self._hurry = False
                    if self._stop:  # `close` gave up waiting: this write is lost, and logged there
                        self._writes.appendleft(write)
                        self._current = None
                        return
                delay = min(2 * delay, self.max_retry_s)
            with self._cond:
                self._current = None
                self._done(write)

    def _try(self, write: _Write) -> bool:
        """Perform one write; False if it is to be tried again."""
        try:
            if write.kind == "save":
                assert write.entry is not None
                self.store.save(write.session, write.entry)
            elif write.kind == "forget":
                self.store.forget(write.session)
            else:
                self.store.trim(write.session, write.before_seq)
        except StoreError as exc:
            self._failed(exc, "writing")
            return False
        except Exception:  # a bug, not an outage: retrying cannot help, and it must not block the rest
            log.exception("%s: a %s of session %s failed and was dropped", self.store.where, write.kind, write.session[:8])
            with self._cond:
                self.dropped += 1
            return True
        self._succeeded()
        return True

    def _failed(self, exc: BaseException, doing: str) -> None:
        with self._health:
            was, self._ok = self._ok, False
        if was:
            log.error("%s is failing (%s): %s; writes wait in order and are retried", self.store.where, doing, exc)

    def _succeeded(self) -> None:
        with self._health:
            was, self._ok = self._ok, True
        if not was:
            log.info("%s works again (%d writes waiting)", self.store.where, self.pending)

    def flush(self, timeout_s: float = 5.0) -> bool:
        """Wait (blocking: tests, shutdown threads) until every write so far is stored; False if some still wait."""
        with self._cond:
            self._hurry = True
            self._cond.notify_all()
            return self._cond.wait_for(lambda: not self._writes and self._current is None, timeout=timeout_s)

    # -- reads (in threads) ------------------------------------------------------------------

    async def load(self, session: str, limit: int) -> list[Entry]:
        """The session's newest `limit` messages (`ConversationStore.load`), read in a thread; raises
        `StoreError` if the store fails, or if this process's writes of the session still wait."""
        deadline = time.monotonic() + self.settle_s
        while self.pending_for(session) and time.monotonic() < deadline:
            await asyncio.sleep(0.01)
        if waiting := self.pending_for(session):
            raise StoreError(f"{waiting} earlier writes of this conversation are still waiting to be stored")
        loop = asyncio.get_running_loop()
        try:
            entries = await asyncio.wait_for(
                loop.run_in_executor(self._readers, self.store.load, session, limit), self.load_timeout_s
            )
        except TimeoutError:
            exc = StoreError(f"reading took over {self.load_timeout_s:g} s")
            self._failed(exc, "reading")
            raise exc from None
        except StoreError as exc:
            self._failed(exc, "reading")
            raise
        self._succeeded()
        return entries

    async def forget_older_than(self, seconds: float) -> int:
        """Delete conversations untouched for `seconds` (in a thread); 0 if the store failed (logged)."""
        try:
            return await asyncio.get_running_loop().run_in_executor(self._readers, self.store.forget_older_than, seconds)
        except StoreError as exc:
            log.warning("%s: old conversations could not be deleted: %s", self.store.where, exc)
            return 0

    async def close(self, timeout_s: float = 5.0) -> bool:
        """Store what is queued (waiting at most `timeout_s`, without blocking the loop), stop the
        writer and close the store; False if writes were lost (logged)."""
        with self._cond:
            self._closed = True
            self._hurry = True
            self._cond.notify_all()
        deadline = time.monotonic() + timeout_s
        while self.pending and time.monotonic() < deadline:
            await asyncio.sleep(0.01)
        with self._cond:
            self._stop = True
            self._cond.notify_all()
        loop = asyncio.get_running_loop()
        await loop.run_in_executor(None, self._worker.join, 5.0)
        lost = self.pending
        if lost:
            log.error("%s: %d writes could not be stored before shutdown and are lost", self.store.where, lost)
        try:
            await loop.run_in_executor(None, self.store.close)
        except Exception:
            log.exception("%s did not close cleanly", self.store.where)
        self._readers.shutdown(wait=False)
        return not lost


class Conversation:
    """The history and the prompt: recent messages, with the newest `keep_images` images.

    With a store, every message is written there (through the `StoreQueue`, never waiting) when
    added and when `save`d after a change; `load` and `reload` take the stored history back
    (another process, or this one before a restart, may have written it).

    Invariants:
    - Each message has a `seq`, given when it is added: one more than the last one's. Seqs only
      grow (dropping old messages never reuses one), and the stored order is the seq order.
    - At most `max_messages` are kept: adding past it drops the oldest, here and in the store.
    - While `saved` is False (the stored history could not be read) nothing is written: the
      messages are held in memory, and `resync` puts them after the stored ones once the store
      answers. So a conversation's stored messages never interleave.
    """

    def __init__(
        self,
        llm: LLMConfig,
        *,
        store: StoreQueue | None = None,
        session_id: str = "",
        language: str | None = "en",
        max_messages: int = 1000,
    ) -> None:
        self.llm = llm
        self.language = language
        """The conversation's language (the ASR's; None: any): an English one judges answers' language too."""
        self.entries: list[Entry] = []
        self.max_messages = max_messages
        self.saved = True
        """False while the stored history could not be read: messages are held here, not stored (`resync`)."""
        self._store = store
        self._session = session_id
        self._next_seq = 0
        self._generation = 0
        """Counts `clear`s: a load that a clear overtook is not taken."""
        self._loading = asyncio.Lock()

    @property
    def store_ok(self) -> bool:
        """Whether the store works (`StoreQueue.ok`; True without one)."""
        return self._store is None or self._store.ok

    async def load(self, *, keep: Callable[[Entry], bool] | None = None) -> bool:
        """Take the stored history (its newest `max_messages`); the messages in memory that it lacks
        (those `keep` accepts; default all) go after it, renumbered, and are written. True on success
        (and without a store); on failure (`StoreError`) the memory is kept and `saved` turns False."""
        if self._store is None:
            return True
        async with self._loading:
            generation = self._generation
            try:
                stored = await self._store.load(self._session, self.max_messages)
            except StoreError as exc:
                log.warning("session %s: the stored conversation could not be read: %s", self._session[:8], exc)
                if keep is None:
                    self.saved = False
                return False
            if generation != self._generation:  # cleared meanwhile: what was read is forgotten
                return True
            ids = {e.id for e in stored}
            extra = [e for e in self.entries if e.id not in ids and (keep is None or keep(e))]
            self._next_seq = stored[-1].seq + 1 if stored else 0
            for entry in extra:
                entry.seq = self._next_seq
                self._next_seq += 1
            self.entries = stored + extra
            self.saved = True
            for entry in extra:
                self._store.save(self._session, entry)
            self._trim(force=bool(stored) and len(stored) >= self.max_messages)
            return True

    async def reload(self) -> bool:
        """Take the stored history back in place of the one in memory (another process may have added
        to it), keeping only messages added while it was read; on failure the memory stays as it is.
        Held (not saved) messages are `resync`'s to merge."""
        if self._store is None or not self.saved:
            return await self.resync()
        before = {id(e) for e in self.entries}
        held = list(self.entries)  # keeps the ids above meaningful
        ok = await self.load(keep=lambda e: id(e) not in before)
        del held
        return ok

    async def resync(self) -> bool:
        """While not `saved`: read the stored history again and, if it answers, put the messages held in
        memory after it and write them; True once saved (at once if it is)."""
        if self.saved:
            return True
        return await self.load()

    def clear(self) -> None:
        """Forget the whole conversation, here and in the store (the user started a new one)."""
        self.entries = []
        self._next_seq = 0
        self._generation += 1
        if self._store is not None:
            self._store.forget(self._session)  # in order before any new message: nothing old comes back
            self.saved = True

    def add(self, entry: Entry) -> Entry:
        entry.seq = self._next_seq
        self._next_seq += 1
        self.entries.append(entry)
        if entry.image:  # only the newest keep_images frames are ever sent: the rest need no memory
            with_images = [e for e in self.entries if e.role == "user" and e.image]
            for old in with_images[: max(0, len(with_images) - self.llm.keep_images)]:
                old.image = None
        self.save(entry)
        self._trim()
        return entry

    def _trim(self, *, force: bool = False) -> None:
        """Past `max_messages`, drop the oldest here and in the store (`force`: in the store even if
        nothing is dropped here, in case it holds older ones)."""
        over = len(self.entries) - self.max_messages
        if over > 0:
            del self.entries[:over]
        if (over > 0 or force) and self.entries and self._store is not None and self.saved:
            self._store.trim(self._session, self.entries[0].seq)

    def save(self, entry: Entry) -> None:
        """Store a message after a change to its text or state (no-op without a store, while not
        `saved`, or once it has left the conversation)."""
        if self._store is not None and self.saved and any(e is entry for e in reversed(self.entries)):
            self._store.save(self._session, entry)

    def messages(self, *, sight: Sight, then: Entry | None = None, note: bool | None = None) -> list[ChatMessage]:
        """The prompt: the system prompt, then the recent history, then `then` (a user turn not yet
        in the history: a speculative one is only added once its turn is confirmed).

        `sight` "image": the newest `keep_images` user frames go as image parts. Otherwise the newest
        user turn's scene note, or why it has none (a local model, `Entry.blind`), goes in front of
        its words when they ask about the picture (`llm.scene_note`; `note` True: whatever they ask);
        older notes describe frames no longer shown."""
        history = self._rereadable() + ([then] if then and then.text.strip() else [])
        entries = _within_budget(_window(history, self.llm.history_messages), self.prompt_budget_tokens())
        keep = self.llm.keep_images
        user_images = [e.id for e in entries if e.role == "user" and e.image]
        with_image = set(user_images[len(user_images) - keep :]) if keep else set()
        messages = [ChatMessage(role="system", content=system_prompt(self.llm.system_prompt, sight))]
        users = [e for e in entries if e.role == "user"]
        newest_user = users[-1].id if users else None
        for entry in entries:
            wanted = note if note is not None else self._note_wanted(entry, users[:-1])
            if sight != "image" and entry.id == newest_user and wanted:
                messages.append(ChatMessage(role="user", content=with_scene(entry.text, entry.scene, entry.blind, entry.source)))
            elif entry.id in with_image and entry.image and sight == "image":
                parts: list[TextPart | ImagePart] = [
                    TextPart(text=entry.text),
                    ImagePart(image_url=ImageURL(url=entry.image, detail=self.llm.image_detail)),
                ]
                messages.append(ChatMessage(role=entry.role, content=parts))
            else:
                messages.append(ChatMessage(role=entry.role, content=entry.text))
        return messages

    def _note_wanted(self, entry: Entry, earlier: list[Entry]) -> bool:
        """Whether the newest user turn gets its scene note (or the line saying it has none)."""
        if self.llm.scene_note == "always":
            return True
        before = earlier[-1] if earlier else None
        follows = before is not None and about_scene(before.text, before.scene)
        return about_scene(entry.text, entry.scene, after_scene_question=follows)

    def prompt_start(self, *, sight: Sight, then: Entry) -> list[ChatMessage]:
        """The prompt a turn by `then` will begin with, up to where the user's words go: the system
        prompt, the history, and the scene note whether or not the words will ask for it (a local
        model reads it ahead, `Services.prime`: a turn whose words do not ask for the note differs
        from it only after the history, where its words begin, so reading the note ahead costs that
        turn nothing and spares a turn that asks for it reading the note then)."""
        mark = "\x00"
        messages = self.messages(sight=sight, then=replace(then, text=mark), note=True)
        head = messages[-1].text().split(mark)[0]
        return [*messages[:-1], ChatMessage(role="user", content=head)]

    def prompt_budget_tokens(self) -> int:
        """Tokens the history may take: the model's context less the answer and the system prompt."""
        prompt = system_prompt(self.llm.system_prompt, "note")  # the longest
        return max(256, self.llm.context_tokens - self.llm.max_tokens - estimate_tokens(prompt) - 96)

    def _rereadable(self) -> list[Entry]:
        """The answered history with text, less the exchanges whose answer the model should not read
        again (`worth_rereading`): the answer and the question it answered go together."""
        # Only the newest messages can reach the window, and judging costs: a few windows' worth.
        history = [e for e in self._answered()[-4 * self.llm.history_messages :] if e.text.strip()]
        answers = [i for i, e in enumerate(history) if e.role == "assistant" and e.state != "streaming"]
        verdicts = worth_rereading([history[i].text for i in answers], english=(self.language or "").startswith("en"))
        drop: set[int] = set()
        for i, keep in zip(answers, verdicts, strict=True):
            if not keep:
                drop |= {i - 1, i} if i and history[i - 1].role == "user" else {i}
        return [e for i, e in enumerate(history) if i not in drop]

    def _answered(self) -> list[Entry]:
        """The history without the turns the model failed to answer at all: a message that made
        the model fail (too long for it, say) must not make every later turn fail too."""
        out: list[Entry] = []
        for i, entry in enumerate(self.entries):
            following = self.entries[i + 1] if i + 1 < len(self.entries) else None
            failed = (
                entry.role == "user"
                and following is not None
                and following.role == "assistant"
                and following.state == "error"
                and not following.text.strip()
            )
            if not failed:
                out.append(entry)
        return out


def estimate_tokens(text: str) -> int:
    """A safe over-estimate of a text's tokens for the byte-level tokenizers LLMs use: a token per
    3 ASCII characters (English runs at ~4), and 3 per 4 bytes of anything else (an emoji, 4 bytes,
    is often 2-3 tokens; a CJK character, 3 bytes, 1-2)."""
    data = text.encode("utf-8", "replace")
    ascii_bytes = sum(1 for b in data if b < 128)
    return max(ascii_bytes // 3, len(text.split())) + (3 * (len(data) - ascii_bytes)) // 4 + 4


def _window(entries: list[Entry], limit: int) -> list[Entry]:
    """The newest of `entries`, at most `limit`, starting at a user message. Past the limit the window
    moves on by half the limit at once, not by one message a turn: a local model reads a prompt
    whose start it has already read from its cache, so the prompt's start changes once every few
    turns instead of every turn (a new start costs a whole prompt's reading, seconds on 2 cores)."""
    if len(entries) <= limit:
        return entries
    step = max(2, limit // 2)
    start = -(-(len(entries) - limit) // step) * step
    while start < len(entries) - 1 and entries[start].role != "user":
        start += 1
    return entries[start:]


def _within_budget(entries: list[Entry], budget: int) -> list[Entry]:
    """The newest entries whose estimated tokens fit the budget (the newest is always kept)."""
    kept: list[Entry] = []
    used = 0
    for entry in reversed(entries):
        cost = estimate_tokens(entry.text)
        if kept and used + cost > budget:
            break
        kept.append(entry)
        used += cost
    return kept[::-1]
