"""Conversations kept outside the ingress process, so they outlive the process that held them.

Two implementations of one interface (`ConversationStore`):
- `SqliteStore` (default): one SQLite file per node (WAL), shared by every ingress process of the
  node. Embedded, nothing to start; a browser that reconnects to another process of the same node
  (they share a port), or after a restart or a crash, finds its conversation there.
- `RedisStore` (`server.store: redis://host:6379/0`): one Redis for the whole cluster, so a browser
  that reconnects to another node finds it too.

Invariants:
- What is stored is what the page shows: each message's id, role, text, state and unspoken words,
  in order. Camera frames are not stored (they stay in memory, for the prompt only).
- An answer stored as `streaming` whose process is gone was cut there: `load` gives it as `error`.
- A failure to store is logged and never breaks a turn.
"""

from __future__ import annotations

import json
import logging
import queue
import sqlite3
import threading
import time
from pathlib import Path

from parley.engine.conversation import ConversationStore, Entry, MessageState

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


def _cut(state: str) -> MessageState:
    """An answer still streaming when its process stopped was cut there: it failed."""
    return "error" if state == "streaming" else state  # type: ignore[return-value]


class SqliteStore(ConversationStore):
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
        try:
            with self._lock:
                rows = self._db.execute(
                    "SELECT id, role, text, state, unspoken FROM messages WHERE session=? ORDER BY seq", (session,)
                ).fetchall()
        except sqlite3.Error:
            log.exception("could not read session %s", session[:8])
            return []
        return [
            Entry(id=i, role=role, text=text, state=_cut(state), unspoken=unspoken) for i, role, text, state, unspoken in rows
        ]

    def forget(self, session: str) -> None:
        try:
            with self._lock:
                self._db.execute("DELETE FROM messages WHERE session=?", (session,))
        except sqlite3.Error:
            log.exception("could not delete session %s", session[:8])

    def forget_older_than(self, seconds: float) -> int:
        with self._lock:
            cursor = self._db.execute(
                "DELETE FROM messages WHERE session IN (SELECT session FROM messages GROUP BY session HAVING max(updated) < ?)",
                (time.time() - seconds,),
            )
        return cursor.rowcount

    def close(self) -> None:
        with self._lock:
            self._db.close()


class RedisStore(ConversationStore):
    """Messages by session in Redis, shared by every node of a cluster.

    Each conversation is one hash (`parley:conv:<session>`, message id -> JSON) that expires
    `keep_s` after its last write, so Redis itself forgets old conversations. Writes go through one
    background thread in order, so a turn never waits on the network; reads (once per session
    start) wait at most `timeout_s`.
    """

    PREFIX = "parley:conv:"

    def __init__(self, url: str, *, keep_s: float, timeout_s: float = 2.0) -> None:

        import redis

        self.url = _without_password(url)
        self.keep_s = int(keep_s)
        self._redis = redis.Redis.from_url(url, socket_timeout=timeout_s, socket_connect_timeout=timeout_s)
        self._errors: tuple[type[BaseException], ...] = (redis.RedisError, OSError)
        self._writes: queue.Queue[tuple[str, str, str | None] | None] = queue.Queue(maxsize=10_000)
        self._writer = threading.Thread(target=self._write_loop, name="parley-redis-writer", daemon=True)
        self._writer.start()

    def _key(self, session: str) -> str:
        return self.PREFIX + session

    def save(self, session: str, seq: int, entry: Entry) -> None:

        value = json.dumps(
            {"seq": seq, "role": entry.role, "text": entry.text, "state": entry.state, "unspoken": entry.unspoken},
            ensure_ascii=False,
        )
        self._put((session, entry.id, value))

    def forget(self, session: str) -> None:
        self._put((session, "", None))

    def _put(self, write: tuple[str, str, str | None]) -> None:

        try:
            self._writes.put_nowait(write)
        except queue.Full:
            log.error(
                "redis store %s: %d writes waiting; dropped one for session %s", self.url, self._writes.qsize(), write[0][:8]
            )

    def _write_loop(self) -> None:
        while (write := self._writes.get()) is not None:
            session, message, value = write
            try:
                if value is None:
                    self._redis.delete(self._key(session))
                else:
                    pipe = self._redis.pipeline()
                    pipe.hset(self._key(session), message, value)
                    pipe.expire(self._key(session), self.keep_s)
                    pipe.execute()
            except self._errors:
                log.exception("could not store a message of session %s in %s", session[:8], self.url)
            finally:
                self._writes.task_done()

    def flush(self, timeout_s: float = 5.0) -> bool:
        """Wait until every write so far has reached Redis (or failed); False if still waiting."""
        deadline = time.monotonic() + timeout_s
        while self._writes.unfinished_tasks and time.monotonic() < deadline:
            time.sleep(0.005)
        return not self._writes.unfinished_tasks

    def load(self, session: str) -> list[Entry]:

        self.flush(1.0)  # this process's own writes first
        try:
            rows: dict[bytes, bytes] = self._redis.hgetall(self._key(session))  # type: ignore[assignment]
        except self._errors:
            log.exception("could not read session %s from %s", session[:8], self.url)
            return []
        messages = []
        for message, value in rows.items():
            try:
                data = json.loads(value)
                messages.append(
                    (
                        int(data["seq"]),
                        Entry(
                            id=message.decode(),
                            role=data["role"],
                            text=data["text"],
                            state=_cut(data["state"]),
                            unspoken=data.get("unspoken", ""),
                        ),
                    )
                )
            except (ValueError, KeyError, TypeError, UnicodeDecodeError):
                log.error("session %s: an unreadable message in %s was skipped", session[:8], self.url)
        return [entry for _, entry in sorted(messages, key=lambda m: m[0])]

    def forget_older_than(self, seconds: float) -> int:
        return 0  # every conversation expires keep_s after its last write: Redis forgets them itself

    def close(self) -> None:
        self.flush()
        self._writes.put(None)
        self._writer.join(timeout=5)
        self._redis.close()


def open_store(url: str | None, state_dir: str | None, keep_s: float) -> ConversationStore | None:
    """The store `server.store` names: `sqlite` (a file in `state_dir`), `redis://...`, or `memory`."""
    if url in (None, "", "sqlite"):
        return SqliteStore(Path(state_dir) / "conversations.sqlite3") if state_dir else None
    if url == "memory":
        return None
    if url.startswith(("redis://", "rediss://", "unix://")):
        return RedisStore(url, keep_s=keep_s)
    raise ValueError(f"server.store must be sqlite, memory or a redis:// URL, not {url!r}")


def _without_password(url: str) -> str:
    """The URL as logs may show it."""
    from urllib.parse import urlsplit, urlunsplit

    parts = urlsplit(url)
    if parts.password is None:
        return url
    host = parts.hostname or ""
    netloc = f"{parts.username or ''}:***@{host}" + (f":{parts.port}" if parts.port else "")
    return urlunsplit(parts._replace(netloc=netloc))
