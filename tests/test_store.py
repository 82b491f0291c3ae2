"""Conversations on the node's disk: a new process (a restart, or another ingress of the node)
finds a session's history as the page showed it, with an answer cut by a crash marked as an error."""

from __future__ import annotations

from pathlib import Path

from parley.config import ParleyConfig
from parley.session import Session, SessionSettings
from parley.store import SqliteStore
from tests.test_session import ScriptedServices, wait_until


async def test_a_conversation_outlives_its_process(tmp_path: Path) -> None:
    path = tmp_path / "conversations.sqlite3"
    settings = SessionSettings.of(ParleyConfig())
    services = ScriptedServices(["Paris."])
    first = Session("s" * 12, settings, services, store=SqliteStore(path))
    await first.send_text("What is the capital of France?")
    await wait_until(lambda: len(first.history) == 2 and first.history[1].state == "done")
    first.conversation.add(first.history[1].__class__(role="assistant", text="half an ans", state="streaming"))

    again = Session("s" * 12, settings, services, store=SqliteStore(path))  # another process, same disk
    assert [(e.role, e.text, e.state) for e in again.history] == [
        ("user", "What is the capital of France?", "done"),
        ("assistant", "Paris.", "done"),
        ("assistant", "half an ans", "error"),  # its process stopped while it streamed
    ]
    other = Session("t" * 12, settings, services, store=SqliteStore(path))
    assert other.history == [], "sessions stay apart"


def test_old_conversations_are_forgotten(tmp_path: Path) -> None:
    store = SqliteStore(tmp_path / "c.sqlite3")
    from parley.conversation import Entry

    store.save("old", 0, Entry(role="user", text="hello"))
    assert store.forget_older_than(3600) == 0
    assert store.forget_older_than(-1) == 1 and store.load("old") == []
