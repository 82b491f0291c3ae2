"""Conversations outside the ingress process, in both stores (SQLite on the node's disk, Redis for a
cluster): a new process (a restart, another ingress, another node) finds a session's history as
the page showed it, with an answer cut by a crash marked as an error; a conversation keeps its
newest `limits.history_messages`; the SQLite file is private, and a corrupt one is moved aside.
(What happens while a store is down: tests/test_store_faults.py.)"""

from __future__ import annotations

import logging
import os
import re
import stat
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import pytest

from parley.config import ParleyConfig
from parley.engine.conversation import Conversation
from parley.engine.messages import Entry, StoreQueue
from parley.engine.session import Session
from parley.engine.settings import SessionSettings
from parley.ingress.store import ConversationStore, RedisStore, SqliteStore, open_store
from parley.policy import session_settings
from tests.support.fake_services import ScriptedServices, wait_until

WEEK = 7 * 24 * 3600.0


@pytest.fixture(params=["sqlite", "redis"])
async def open_process_store(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Callable[[], StoreQueue]]:
    """Opens the store as a new process would: a new connection each call, the same data."""
    opened: list[StoreQueue] = []

    def opener() -> StoreQueue:
        if request.param == "sqlite":
            store: ConversationStore = SqliteStore(tmp_path / "conversations.sqlite3")
        else:
            store = RedisStore(request.getfixturevalue("redis_url"), keep_s=WEEK)
        opened.append(StoreQueue(store))
        return opened[-1]

    yield opener
    for queue in opened:
        assert await queue.close(), "every write was stored"


def settings_with(**limits: int) -> SessionSettings:
    return session_settings(ParleyConfig.model_validate({"limits": limits}))


async def test_a_conversation_outlives_its_process(open_process_store: Callable[[], StoreQueue]) -> None:
    settings = settings_with()
    services = ScriptedServices(["Paris."])
    session = f"s{time.monotonic_ns()}"  # fresh in a Redis the whole test run shares
    first_store = open_process_store()
    first = Session(session, settings, services, store=first_store)
    await first.load()
    await first.send_text("What is the capital of France?")
    await wait_until(lambda: len(first.history) == 2 and first.history[1].state == "done")
    first.conversation.add(Entry(role="assistant", text="half an ans", state="streaming"))
    assert first_store.flush(), "the writes reached the store"

    again = Session(session, settings, services, store=open_process_store())  # another process
    assert again.history == [], "the constructor does not wait on the store"
    await again.load()
    assert again.saved
    assert [(e.role, e.text, e.state, e.seq) for e in again.history] == [
        ("user", "What is the capital of France?", "done", 0),
        ("assistant", "Paris.", "done", 1),
        ("assistant", "half an ans", "error", 2),  # its process stopped while it streamed
    ]
    other = Session("t" * 12 + session, settings, services, store=open_process_store())
    await other.load()
    assert other.history == [], "sessions stay apart"


async def test_a_forgotten_conversation_is_gone_for_every_process(open_process_store: Callable[[], StoreQueue]) -> None:
    session = f"f{time.monotonic_ns()}"
    store = open_process_store()
    store.save(session, Entry(role="user", text="hello", seq=0))
    assert [e.text for e in await store.load(session, 10)] == ["hello"]
    store.forget(session)
    assert store.flush() and await open_process_store().load(session, 10) == []


async def test_a_conversation_keeps_its_newest_messages_here_and_in_the_store(
    open_process_store: Callable[[], StoreQueue],
) -> None:
    """limits.history_messages: past it the oldest go, from memory and from the store; seqs only grow."""
    session = f"h{time.monotonic_ns()}"
    settings = session_settings(ParleyConfig())
    first = open_process_store()
    conversation = Conversation(settings.prompt, settings.model, store=first, session_id=session, max_messages=20)
    assert await conversation.load()
    for i in range(25):
        conversation.add(Entry(role="user" if i % 2 == 0 else "assistant", text=f"m{i}"))
    assert [e.text for e in conversation.entries] == [f"m{i}" for i in range(5, 25)]
    assert [e.seq for e in conversation.entries] == list(range(5, 25))
    assert first.flush()

    fresh = open_process_store()  # another process, even one that would read more
    assert [(e.text, e.seq) for e in await fresh.load(session, 1000)] == [(f"m{i}", i) for i in range(5, 25)]
    assert [e.text for e in await fresh.load(session, 3)] == ["m22", "m23", "m24"], "the newest, in order"

    again = Conversation(settings.prompt, settings.model, store=fresh, session_id=session, max_messages=20)
    assert await again.load()
    again.add(Entry(role="user", text="next"))
    assert again.entries[-1].seq == 25 and again.entries[0].text == "m6", "numbering goes on after a load"


async def test_a_lower_limit_trims_what_was_stored_under_a_higher_one(open_process_store: Callable[[], StoreQueue]) -> None:
    session = f"l{time.monotonic_ns()}"
    settings = session_settings(ParleyConfig())
    store = open_process_store()
    for i in range(30):
        store.save(session, Entry(role="user", text=f"m{i}", seq=i))
    smaller = Conversation(settings.prompt, settings.model, store=store, session_id=session, max_messages=20)
    assert await smaller.load()
    assert [e.seq for e in smaller.entries] == list(range(10, 30))
    assert store.flush() and [e.seq for e in await open_process_store().load(session, 1000)] == list(range(10, 30))


async def test_old_conversations_are_forgotten(tmp_path: Path, redis_url: str) -> None:
    sqlite = StoreQueue(SqliteStore(tmp_path / "c.sqlite3"))
    sqlite.save("old", Entry(role="user", text="hello", seq=0))
    assert sqlite.flush()
    assert await sqlite.forget_older_than(3600) == 0
    assert await sqlite.forget_older_than(-1) == 1 and await sqlite.load("old", 10) == []
    assert await sqlite.close()

    import redis

    store = StoreQueue(RedisStore(redis_url, keep_s=600))  # Redis forgets them itself: each conversation expires
    store.save("expiring", Entry(role="user", text="hello", seq=0))
    assert store.flush()
    client = redis.Redis.from_url(redis_url)
    for key in (RedisStore.PREFIX + "expiring", RedisStore.INDEX + "expiring"):
        assert 590 <= int(client.ttl(key)) <= 600  # type: ignore[arg-type]
    assert await store.close()


def test_a_redis_conversation_stored_before_the_index_is_read_whole(redis_url: str) -> None:
    """Conversations written by an older Parley (a hash with no seq index) load, and get indexed."""
    import json

    import redis

    session = f"legacy{time.monotonic_ns()}"
    client = redis.Redis.from_url(redis_url)
    for seq in (2, 0, 1):
        value = {"seq": seq, "role": "user", "text": f"m{seq}", "state": "done", "unspoken": ""}
        client.hset(RedisStore.PREFIX + session, f"id{seq}", json.dumps(value))
    store = RedisStore(redis_url, keep_s=WEEK)
    assert [(e.id, e.seq) for e in store.load(session, 2)] == [("id1", 1), ("id2", 2)]
    store.trim(session, 2)
    assert [e.id for e in store.load(session, 10)] == ["id2"]
    store.close()


async def test_the_store_setting_picks_the_implementation(tmp_path: Path, redis_url: str) -> None:
    sqlite = open_store("sqlite", str(tmp_path), WEEK)
    assert isinstance(sqlite, StoreQueue) and isinstance(sqlite.store, SqliteStore)
    assert await sqlite.close()
    assert open_store("sqlite", None, WEEK) is None and open_store("memory", str(tmp_path), WEEK) is None
    redis_store = open_store(redis_url, str(tmp_path), WEEK)
    assert isinstance(redis_store, StoreQueue) and isinstance(redis_store.store, RedisStore)
    assert await redis_store.close()
    with pytest.raises(ValueError, match=r"server\.store"):
        open_store("postgres://x", str(tmp_path), WEEK)


def mode(path: Path) -> int:
    return stat.S_IMODE(os.stat(path).st_mode)


def test_the_database_is_readable_by_its_owner_only(tmp_path: Path) -> None:
    old = os.umask(0o022)  # the usual umask, which made the file world-readable
    try:
        state = tmp_path / "made" / "state"
        store = SqliteStore(state / "conversations.sqlite3")
        store.save("s", Entry(role="user", text="private", seq=0))  # the WAL now holds it
        assert mode(state) == 0o700, "a state folder Parley makes is private"
        files = [state / "conversations.sqlite3", *(state / f"conversations.sqlite3{s}" for s in ("-wal", "-shm"))]
        assert all(f.exists() for f in files)
        assert {str(f.name): mode(f) for f in files} == {str(f.name): 0o600 for f in files}
        store.close()

        shared = tmp_path / "shared"  # a folder the operator made is left as it is
        shared.mkdir(mode=0o755)
        (shared / "c.sqlite3").touch(mode=0o644)  # a database made by an older Parley
        SqliteStore(shared / "c.sqlite3").close()
        assert mode(shared) == 0o755 and mode(shared / "c.sqlite3") == 0o600
    finally:
        os.umask(old)


@pytest.mark.parametrize("damage", ["garbage", "truncated"])
def test_a_corrupt_database_is_moved_aside_and_a_fresh_one_started(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, damage: str
) -> None:
    path = tmp_path / "conversations.sqlite3"
    if damage == "garbage":
        path.write_bytes(os.urandom(8192))
    else:  # a real database whose pages were lost after the header
        store = SqliteStore(path)
        for i in range(200):
            store.save("s", Entry(role="user", text="x" * 500, seq=i))
        store.close()
        import sqlite3

        sqlite3.connect(path).execute("PRAGMA wal_checkpoint(TRUNCATE)").close()
        data = path.read_bytes()
        path.write_bytes(data[:4096] + os.urandom(len(data) - 4096))
    with caplog.at_level(logging.ERROR, logger="parley.store"):
        store = SqliteStore(path)
    moved = sorted(p.name for p in tmp_path.iterdir() if ".corrupt-" in p.name)
    assert re.fullmatch(r"conversations\.sqlite3\.corrupt-\d+", moved[0]), moved
    assert set(moved) <= {moved[0], moved[0] + "-wal", moved[0] + "-shm"}, "its -wal and -shm go with it"
    assert "cannot be read" in caplog.text and "moved it aside" in caplog.text
    store.save("s", Entry(role="user", text="fresh", seq=0))
    assert [e.text for e in store.load("s", 10)] == ["fresh"]
    assert mode(path) == 0o600
    store.close()
