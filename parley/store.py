"""Conversations kept on the node's disk, so they outlive the process that held them.

Invariants:
- One SQLite file per node (WAL), shared by every ingress process of the node: a browser that
  reconnects to another process (they share a port), or after a restart or a crash, finds its
  conversation there.
- What is stored is what the page shows: each message's id, role, text, state and unspoken words,
  in order. Camera frames are not stored (they stay in memory, for the prompt only).
- Every write is one short transaction; a failure to store is logged and never breaks a turn.
"""

from __future__ import annotations

import logging
import sqlite3
import threading
import time
from pathlib import Path

from parley.conversation import Entry

log = logging.getLogger("parley.store")

SCHEMA = """
CREATE TABLE IF NOT EXISTS messages (
    session TEXT NOT NULL,
    seq INTEGER NOT NULL,
    id TEXT NOT NULL,
    role TEXT NOT NULL,
    text TEXT NOT NULL,
    state TEXT NOT NULL,
    unspoken TEXT NOT NULL DEFAULT '',
    updated REAL NOT NULL,
    PRIMARY KEY (session, id)
);
CREATE INDEX IF NOT EXISTS messages_by_session ON messages (session, seq);
"""


class ConversationStore:
    """Messages by session, in a SQLite file that several processes may open at once."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path).expanduser()
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._db = sqlite3.connect(self.path, timeout=5.0, check_same_thread=False, isolation_level=None)
        self._lock = threading.Lock()
        with self._lock:
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute("PRAGMA synchronous=NORMAL")
            self._db.executescript(SCHEMA)

    def save(self, session: str, seq: int, entry: Entry) -> None:
        """Insert or update one message (its place in the conversation is `seq`)."""
        try:
            with self._lock:
                self._db.execute(
                    "INSERT INTO messages (session, seq, id, role, text, state, unspoken, updated) VALUES (?,?,?,?,?,?,?,?) "
                    "ON CONFLICT (session, id) DO UPDATE SET text=excluded.text, state=excluded.state, "
                    "unspoken=excluded.unspoken, updated=excluded.updated",
                    (session, seq, entry.id, entry.role, entry.text, entry.state, entry.unspoken, time.time()),
                )
        except sqlite3.Error:
            log.exception("could not store a message of session %s", session[:8])

    def load(self, session: str) -> list[Entry]:
        """The session's messages in order (none if it is unknown)."""
        try:
            with self._lock:
                rows = self._db.execute(
                    "SELECT id, role, text, state, unspoken FROM messages WHERE session=? ORDER BY seq", (session,)
                ).fetchall()
        except sqlite3.Error:
            log.exception("could not read session %s", session[:8])
            return []
        # an answer still streaming when its process stopped was cut there: it failed
        return [
            Entry(id=i, role=role, text=text, state="error" if state == "streaming" else state, unspoken=unspoken)
            for i, role, text, state, unspoken in rows
        ]

    def forget_older_than(self, seconds: float) -> int:
        """Delete the conversations untouched for `seconds`; returns how many messages went."""
        with self._lock:
            cursor = self._db.execute(
                "DELETE FROM messages WHERE session IN (SELECT session FROM messages GROUP BY session HAVING max(updated) < ?)",
                (time.time() - seconds,),
            )
        return cursor.rowcount

    def close(self) -> None:
        with self._lock:
            self._db.close()
