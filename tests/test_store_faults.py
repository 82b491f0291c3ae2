"""A conversation store that is down, slow or failing: no session's event loop waits on it, no
message is lost or stored out of order, and the user is told when their conversation is not
being saved.

Two ways to break a store, both real: a redis-server of the test's own that is stopped (SIGSTOP:
it accepts connections and never answers, the worst case for a caller that waits), and a SQLite
store behind `Outage`, a `ConversationStore` whose calls fail while the test says it is down (as
any store's do when its disk or network fails).
"""

from __future__ import annotations

import asyncio
import logging
import signal
import subprocess
import time
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any, TypeVar

import pytest

from parley.config import ParleyConfig
from parley.engine.conversation import Conversation
from parley.engine.messages import ConversationStore, Entry, StoreError, StoreQueue
from parley.engine.saving import NOT_SAVED, NOT_STORING, SAVED_AGAIN
from parley.engine.session import Session
from parley.engine.settings import SessionSettings
from parley.ingress.store import RedisStore, SqliteStore
from parley.policy import session_settings
from tests.support.fake_services import Page, ScriptedServices, wait_until
from tests.support.network import free_port
from tests.support.redis import redis_server

T = TypeVar("T")


def fast(store: ConversationStore, *, max_pending: int = 10_000, settle_s: float = 1.0) -> StoreQueue:
    """A queue whose retries are quick enough for a test (the default backoff is 0.2 s doubling to 5 s)."""
    return StoreQueue(store, max_pending=max_pending, settle_s=settle_s, first_retry_s=0.02, max_retry_s=0.1)


class Outage(ConversationStore):
    """A real store whose every call fails while `down` (as on a full disk or a dropped network)."""

    def __init__(self, store: ConversationStore) -> None:
        self.store = store
        self.where = "test store"
        self.down = False
        self.attempts = 0
        self.delay_s = 0.0

    def _call(self, do: Callable[..., T], *args: Any) -> T:
        self.attempts += 1
        time.sleep(self.delay_s)
        if self.down:
            raise StoreError("connection refused (the test's outage)")
        return do(*args)

    def save(self, session: str, entry: Entry) -> None:
        self._call(self.store.save, session, entry)

    def load(self, session: str, limit: int) -> list[Entry]:
        return self._call(self.store.load, session, limit)

    def forget(self, session: str) -> None:
        self._call(self.store.forget, session)

    def trim(self, session: str, before_seq: int) -> None:
        self._call(self.store.trim, session, before_seq)

    def forget_older_than(self, seconds: float) -> int:
        return self._call(self.store.forget_older_than, seconds)

    def close(self) -> None:
        self.store.close()


@pytest.fixture
def own_redis(tmp_path: Path) -> Iterator[tuple[str, subprocess.Popen[bytes]]]:
    """A redis-server for this test alone (it gets stopped and continued)."""
    with redis_server(tmp_path) as (url, server):
        try:
            yield url, server
        finally:
            server.send_signal(signal.SIGCONT)  # a stopped server would not hear the terminate


async def ticking(work: Awaitable[T]) -> tuple[T, float, float]:
    """`work`'s result, how long it took, and the longest the event loop went without running a
    10 ms ticker meanwhile (a loop that waits on a store shows it here)."""
    gaps: list[float] = []
    done = asyncio.Event()

    async def ticker() -> None:
        last = time.monotonic()
        while not done.is_set():
            await asyncio.sleep(0.01)
            now = time.monotonic()
            gaps.append(now - last)
            last = now

    tick = asyncio.create_task(ticker())
    began = time.monotonic()
    try:
        result = await work
    finally:
        took = time.monotonic() - began
        done.set()
        await tick
    return result, took, max(gaps, default=took)


DEFAULTS = session_settings(ParleyConfig())
"""A session's settings as configured by default (the prompt, the model's limits)."""


def settings(**limits: int) -> SessionSettings:
    config = {"limits": limits, "llm": {"backend": "openai"}, "prompt": {"vision": False}}
    return session_settings(ParleyConfig.model_validate(config))


def stored(path: Path, session: str) -> list[tuple[int, str]]:
    """What a new process would find in the SQLite file: (seq, text) in order."""
    store = SqliteStore(path)
    try:
        return [(e.seq, e.text) for e in store.load(session, 10_000)]
    finally:
        store.close()


async def test_a_hung_redis_freezes_no_session_and_what_is_said_meanwhile_is_stored_after_the_old(
    own_redis: tuple[str, subprocess.Popen[bytes]], caplog: pytest.LogCaptureFixture
) -> None:
    url, server = own_redis
    session_id = f"hung{time.monotonic_ns()}"
    before = StoreQueue(RedisStore(url, keep_s=3600))
    for i, text in enumerate(["old question", "old answer", "another old one"]):
        before.save(session_id, Entry(role="user" if i % 2 == 0 else "assistant", text=text, seq=i))
    assert await before.close()

    queue = StoreQueue(RedisStore(url, keep_s=3600, timeout_s=0.5), settle_s=0.2)
    session = Session(session_id, settings(), ScriptedServices(["New answer."]), store=queue)
    page = Page()
    server.send_signal(signal.SIGSTOP)  # Redis accepts connections and never answers
    try:
        _, took, longest_gap = await ticking(session.load())
        assert took >= 0.4, "the load did wait for Redis"
        assert longest_gap < 0.2, f"the event loop went {longest_gap:.2f} s without running"
        assert not session.saved and not queue.ok
        assert "is failing" in caplog.text
        session.attach(page)
        await session.announce()  # the page is welcomed after the load: the notice waits for it
        assert {"level": "warn", "text": NOT_SAVED} in page.of("notice")

        assert await session.send_text("A new question")
        await wait_until(lambda: len(session.history) == 2 and session.history[1].state == "done")
        assert queue.pending == 0, "an unsaved conversation's messages are held, not queued"
        await session.resync()  # the reaper's: the store still does not answer
        assert not session.saved
    finally:
        server.send_signal(signal.SIGCONT)

    await session.resync()
    assert session.saved and queue.ok
    assert {"level": "info", "text": SAVED_AGAIN} in page.of("notice")
    assert [e.text for e in session.history] == ["old question", "old answer", "another old one", "A new question", "New answer."]
    assert await queue.close()

    fresh = StoreQueue(RedisStore(url, keep_s=3600))
    again = await fresh.load(session_id, 1000)
    assert [(e.seq, e.text) for e in again] == list(
        enumerate(["old question", "old answer", "another old one", "A new question", "New answer."])
    ), "the old messages first, the new ones after: nothing interleaved"
    assert await fresh.close()


async def test_writes_during_an_outage_are_retried_and_land_in_order(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="parley.store")
    path = tmp_path / "c.sqlite3"
    outage = Outage(SqliteStore(path))
    queue = StoreQueue(outage)
    conversation = Conversation(DEFAULTS.prompt, DEFAULTS.model, store=queue, session_id="s1")
    assert await conversation.load()
    conversation.add(Entry(role="user", text="before"))
    assert queue.flush()

    outage.down, outage.attempts = True, 0
    answer = conversation.add(Entry(role="assistant", text="", state="streaming"))
    answer.text, answer.state = "streamed whole", "done"
    conversation.save(answer)
    for text in ["one", "two", "three"]:
        conversation.add(Entry(role="user", text=text))
    await wait_until(lambda: not queue.ok)
    assert conversation.saved, "the history was read: what is said now queues in order"
    await asyncio.sleep(1.2)
    assert queue.pending == 5 and stored(path, "s1") == [(0, "before")]
    assert 2 <= outage.attempts <= 5, f"retried with a growing delay, not in a tight loop ({outage.attempts} tries)"
    assert caplog.text.count("is failing") == 1, "the first failure is logged, not every retry"

    outage.down = False
    await wait_until(lambda: queue.ok and queue.pending == 0, timeout=10)
    assert "works again" in caplog.text
    assert stored(path, "s1") == [(0, "before"), (1, "streamed whole"), (2, "one"), (3, "two"), (4, "three")]
    assert await queue.close()


async def test_a_store_failing_mid_conversation_is_told_to_the_user_and_its_recovery_too(tmp_path: Path) -> None:
    outage = Outage(SqliteStore(tmp_path / "c.sqlite3"))
    queue = fast(outage)
    session = Session("m" * 12, settings(), ScriptedServices(["Fine."]), store=queue)
    await session.load()
    page = Page()
    session.attach(page)
    outage.down = True
    assert await session.send_text("How are you?")
    await wait_until(lambda: not queue.ok)
    await session.resync()  # the server's housekeeping, every few seconds
    await session.resync()
    assert [n["text"] for n in page.of("notice")] == [NOT_STORING], "said once"
    outage.down = False
    await wait_until(lambda: queue.ok and queue.pending == 0)
    await session.resync()
    assert [n["text"] for n in page.of("notice")] == [NOT_STORING, SAVED_AGAIN]
    assert await queue.close()
    assert [text for _, text in stored(tmp_path / "c.sqlite3", "m" * 12)] == ["How are you?", "Fine."]


async def test_a_load_waits_for_the_sessions_own_writes_and_never_returns_a_stale_history(tmp_path: Path) -> None:
    outage = Outage(SqliteStore(tmp_path / "c.sqlite3"))
    queue = fast(outage, settle_s=0.3)
    outage.delay_s = 0.05
    for i in range(3):
        queue.save("s", Entry(role="user", text=f"m{i}", seq=i))
    assert [e.text for e in await queue.load("s", 10)] == ["m0", "m1", "m2"]

    outage.delay_s, outage.down = 0.0, True
    queue.save("s", Entry(role="user", text="m3", seq=3))
    with pytest.raises(StoreError, match="still waiting"):
        await queue.load("s", 10)
    outage.down = False
    assert await queue.close()


async def test_reload_while_the_store_is_down_keeps_the_history_in_memory(tmp_path: Path) -> None:
    outage = Outage(SqliteStore(tmp_path / "c.sqlite3"))
    queue = fast(outage, settle_s=0.1)
    session = Session("r" * 12, settings(), ScriptedServices([]), store=queue)
    await session.load()
    session.conversation.add(Entry(role="user", text="kept"))
    outage.down = True
    session.conversation.add(Entry(role="user", text="also kept"))
    await session.reload()  # a browser reconnecting to this process meanwhile
    assert [e.text for e in session.history] == ["kept", "also kept"] and session.saved
    outage.down = False
    assert await queue.close()
    assert stored(tmp_path / "c.sqlite3", "r" * 12) == [(0, "kept"), (1, "also kept")]


async def test_a_new_conversation_started_while_unsaved_replaces_the_stored_one(tmp_path: Path) -> None:
    path = tmp_path / "c.sqlite3"
    seed = SqliteStore(path)
    seed.save("n1", Entry(role="user", text="old", seq=0))
    seed.close()
    outage = Outage(SqliteStore(path))
    outage.down = True
    queue = fast(outage)
    session = Session("n1", settings(), ScriptedServices([]), store=queue)
    await session.load()
    assert not session.saved
    await session.start_over()  # the user starts over: the stored conversation is to go too
    session.conversation.add(Entry(role="user", text="new"))
    outage.down = False
    assert await queue.close()
    assert stored(path, "n1") == [(0, "new")], "the old conversation did not come back"


async def test_resync_keeps_the_history_limit(tmp_path: Path) -> None:
    path = tmp_path / "c.sqlite3"
    seed = SqliteStore(path)
    for i in range(15):
        seed.save("lim", Entry(role="user", text=f"old{i}", seq=i))
    seed.close()
    outage = Outage(SqliteStore(path))
    outage.down = True
    queue = fast(outage)
    conversation = Conversation(DEFAULTS.prompt, DEFAULTS.model, store=queue, session_id="lim", max_messages=20)
    assert not await conversation.load()
    for i in range(10):
        conversation.add(Entry(role="user", text=f"new{i}"))
    outage.down = False
    assert await conversation.resync() and conversation.saved
    expected = [f"old{i}" for i in range(5, 15)] + [f"new{i}" for i in range(10)]
    assert [e.text for e in conversation.entries] == expected
    assert await queue.close()
    assert stored(path, "lim") == list(zip(range(5, 25), expected, strict=True))


async def test_close_stores_what_is_queued_without_freezing_the_loop(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    path = tmp_path / "c.sqlite3"
    outage = Outage(SqliteStore(path))
    outage.down = True
    queue = fast(outage)
    for i in range(3):
        queue.save("c", Entry(role="user", text=f"m{i}", seq=i))
    asyncio.get_running_loop().call_later(0.3, setattr, outage, "down", False)
    flushed, took, longest_gap = await ticking(queue.close(timeout_s=5.0))
    assert flushed and 0.25 < took < 3 and longest_gap < 0.2
    assert stored(path, "c") == [(0, "m0"), (1, "m1"), (2, "m2")]

    down = Outage(SqliteStore(tmp_path / "d.sqlite3"))
    down.down = True
    lost = fast(down)
    lost.save("c", Entry(role="user", text="never", seq=0))
    with caplog.at_level(logging.ERROR, logger="parley.store"):
        began = time.monotonic()
        assert not await lost.close(timeout_s=0.3), "a store that never came back: close says writes were lost"
        assert time.monotonic() - began < 2
    assert "1 writes could not be stored before shutdown" in caplog.text


async def test_at_most_max_pending_writes_wait_and_the_oldest_go_first(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    path = tmp_path / "c.sqlite3"
    outage = Outage(SqliteStore(path))
    outage.down = True
    queue = fast(outage, max_pending=5)
    queue.save("q", Entry(role="user", text="m0", seq=0))
    await wait_until(lambda: outage.attempts > 0)  # being tried
    for i in range(1, 8):
        queue.save("q", Entry(role="user", text=f"m{i}", seq=i))
    assert queue.pending == 5 and queue.dropped == 3
    assert "the oldest was dropped" in caplog.text
    outage.down = False
    assert await queue.close()
    # the write being tried when the queue filled is kept; the oldest waiting ones went
    assert [text for _, text in stored(path, "q")] == ["m0", "m4", "m5", "m6", "m7"]


async def test_a_saved_entry_is_stored_as_it_was_when_saved(tmp_path: Path) -> None:
    outage = Outage(SqliteStore(tmp_path / "c.sqlite3"))
    outage.down = True
    queue = fast(outage)
    conversation = Conversation(DEFAULTS.prompt, DEFAULTS.model, store=queue, session_id="snap")
    conversation.saved = True  # as after a load
    answer = conversation.add(Entry(role="assistant", text="", state="streaming"))
    answer.text, answer.state = "changed later, never saved", "done"
    outage.down = False
    assert await queue.close()
    assert stored(tmp_path / "c.sqlite3", "snap") == [(0, "")]


async def test_a_redis_that_is_not_there_costs_no_turn_and_its_password_stays_out_of_the_log(
    caplog: pytest.LogCaptureFixture,
) -> None:
    queue = fast(RedisStore(f"redis://:hunter2@127.0.0.1:{free_port()}/0", keep_s=3600, timeout_s=0.5), settle_s=0.1)
    began = time.monotonic()
    queue.save("down", Entry(role="user", text="hello", seq=0))  # never waits on the network
    assert time.monotonic() - began < 0.05
    with pytest.raises(StoreError):
        await queue.load("down", 10)
    await wait_until(lambda: not queue.ok)
    assert "is failing" in caplog.text and "127.0.0.1" in caplog.text
    assert "hunter2" not in caplog.text, "the password stays out of the log"
    assert not await queue.close(timeout_s=0.2)
    assert "hunter2" not in caplog.text
