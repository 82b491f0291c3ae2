"""One message of a conversation (`Entry`), and where messages outlive the process: the store
interface (`ConversationStore`, implemented in `parley.ingress.store`) and the queue the engine
uses it through (`StoreQueue`), which never lets the event loop wait on the store.
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
from dataclasses import dataclass, field, replace
from typing import Any, Literal

from parley.engine.types import MessageState

log = logging.getLogger("parley.store")


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
