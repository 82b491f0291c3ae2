"""Conversations outside the ingress process, in both stores (SQLite on the node's disk, Redis for a
cluster): a new process (a restart, another ingress, another node) finds a session's history as
the page showed it, with an answer cut by a crash marked as an error."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from parley.config import ParleyConfig
from parley.engine.conversation import Entry
from parley.engine.session import Session, SessionSettings
from parley.ingress.store import ConversationStore, RedisStore, SqliteStore, open_store
from tests.support.fake_services import ScriptedServices, wait_until
from tests.support.network import free_port

WEEK = 7 * 24 * 3600.0


@pytest.fixture(params=["sqlite", "redis"])
def open_process_store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Callable[[], ConversationStore]]:
    """Opens the store as a new process would: a new connection each call, the same data."""
    opened: list[ConversationStore] = []

    def opener() -> ConversationStore:
        if request.param == "sqlite":
            store: ConversationStore = SqliteStore(tmp_path / "conversations.sqlite3")
        else:
            store = RedisStore(request.getfixturevalue("redis_url"), keep_s=WEEK)
        opened.append(store)
        return store

    yield opener
    for store in opened:
        store.close()


def flushed(store: ConversationStore) -> ConversationStore:
    if isinstance(store, RedisStore):
        assert store.flush(), "the writes reached Redis"
    return store


async def test_a_conversation_outlives_its_process(open_process_store: Callable[[], ConversationStore]) -> None:
    settings = SessionSettings.of(ParleyConfig())
    services = ScriptedServices(["Paris."])
    session = f"s{time.monotonic_ns()}"  # fresh in a Redis the whole test run shares
    first_store = open_process_store()
    first = Session(session, settings, services, store=first_store)
    await first.send_text("What is the capital of France?")
    await wait_until(lambda: len(first.history) == 2 and first.history[1].state == "done")
    first.conversation.add(Entry(role="assistant", text="half an ans", state="streaming"))
    flushed(first_store)

    again = Session(session, settings, services, store=open_process_store())  # another process
    assert [(e.role, e.text, e.state) for e in again.history] == [
        ("user", "What is the capital of France?", "done"),
        ("assistant", "Paris.", "done"),
        ("assistant", "half an ans", "error"),  # its process stopped while it streamed
    ]
    other = Session("t" * 12 + session, settings, services, store=open_process_store())
    assert other.history == [], "sessions stay apart"


def test_a_forgotten_conversation_is_gone_for_every_process(open_process_store: Callable[[], ConversationStore]) -> None:
    session = f"f{time.monotonic_ns()}"
    store = open_process_store()
    store.save(session, 0, Entry(role="user", text="hello"))
    assert [e.text for e in flushed(store).load(session)] == ["hello"]
    store.forget(session)
    assert flushed(store) and open_process_store().load(session) == []


def test_old_conversations_are_forgotten(tmp_path: Path, redis_url: str) -> None:
    sqlite = SqliteStore(tmp_path / "c.sqlite3")
    sqlite.save("old", 0, Entry(role="user", text="hello"))
    assert sqlite.forget_older_than(3600) == 0
    assert sqlite.forget_older_than(-1) == 1 and sqlite.load("old") == []

    import redis

    store = RedisStore(redis_url, keep_s=600)  # Redis forgets them itself: each conversation expires
    store.save("expiring", 0, Entry(role="user", text="hello"))
    assert store.flush()
    ttl = int(redis.Redis.from_url(redis_url).ttl(RedisStore.PREFIX + "expiring"))  # type: ignore[arg-type]
    assert 590 <= ttl <= 600
    store.close()


def test_a_store_that_is_down_costs_no_turn_and_says_so_in_the_log(caplog: pytest.LogCaptureFixture) -> None:
    store = RedisStore(f"redis://:hunter2@127.0.0.1:{free_port()}/0", keep_s=WEEK, timeout_s=0.5)
    began = time.monotonic()
    store.save("down", 0, Entry(role="user", text="hello"))  # never waits on the network
    assert time.monotonic() - began < 0.1
    assert store.load("down") == []
    assert time.monotonic() - began < 3
    assert "could not read session down" in caplog.text and "could not store a message" in caplog.text
    assert "hunter2" not in caplog.text, "the password stays out of the log"
    store.close()


def test_the_store_setting_picks_the_implementation(tmp_path: Path, redis_url: str) -> None:
    assert isinstance(open_store("sqlite", str(tmp_path), WEEK), SqliteStore)
    assert open_store("sqlite", None, WEEK) is None and open_store("memory", str(tmp_path), WEEK) is None
    redis_store = open_store(redis_url, str(tmp_path), WEEK)
    assert isinstance(redis_store, RedisStore)
    redis_store.close()
    with pytest.raises(ValueError, match=r"server\.store"):
        open_store("postgres://x", str(tmp_path), WEEK)
