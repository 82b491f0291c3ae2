"""Conversations kept outside the ingress process, so they outlive the process that held them.

Two implementations of one interface (`ConversationStore`), each used through a `StoreQueue`
(`open_store`), which writes in a thread of its own, retries, and reads off the event loop:
- `SqliteStore` (default): one SQLite file per node (WAL), shared by every ingress process of the
  node. Embedded, nothing to start; a browser that reconnects to another process of the same node
  (they share a port), or after a restart or a crash, finds its conversation there.
- `RedisStore` (`server.store: redis://host:6379/0`): one Redis for the whole cluster, so a browser
  that reconnects to another node finds it too.

Invariants:
- What is stored is what the page shows: each message's id, role, text, state and unspoken words,
  with its seq (`Entry.seq`), in seq order. Camera frames are not stored (they stay in memory, for
  the prompt only).
- An answer stored as `streaming` whose process is gone was cut there: `load` gives it as `error`.
- Every failure raises `StoreError` (the `StoreQueue` retries writes and tells the sessions); none
  is swallowed here.
- The SQLite file, its -wal and -shm are readable by their owner only (0600), in a state folder
  made 0700. A file SQLite cannot read (corrupt, not a database) is moved aside, not crashed on.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import logging
import os
import sqlite3
import threading
import time
from collections.abc import Iterator
from pathlib import Path

from parley.engine.messages import ConversationStore, Entry, StoreError, StoreQueue
from parley.engine.types import MessageState

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

SIDE_FILES = ("-wal", "-shm")
"""The files SQLite keeps beside a WAL database."""


def _cut(state: str) -> MessageState:
    """An answer still streaming when its process stopped was cut there: it failed."""
    return "error" if state == "streaming" else state  # type: ignore[return-value]


def _corrupt(exc: sqlite3.DatabaseError) -> bool:
    """Whether SQLite says the file itself is bad (not merely busy, locked or read-only)."""
    name = getattr(exc, "sqlite_errorname", "")
    return name in ("SQLITE_CORRUPT", "SQLITE_NOTADB") or type(exc) is sqlite3.DatabaseError


def _owner_only(path: Path) -> None:
    """Create `path` readable by its owner only, or make an existing one so."""
    fd = os.open(path, os.O_CREAT | os.O_RDWR, 0o600)
    try:
        if os.fstat(fd).st_mode & 0o077:
            os.fchmod(fd, 0o600)
            log.info("made %s readable by its owner only", path)
    finally:
        os.close(fd)


class SqliteStore(ConversationStore):
    """Messages by session, in a SQLite file that several processes may open at once."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path).expanduser()
        self.where = f"conversation store {self.path}"
        # a state folder made here is private (0700): the conversations are nobody else's to list
        self.path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        self._lock = threading.Lock()
        with self._opening():  # one process of the node at a time checks (and may move) the file
            self._db = self._open()

    @contextlib.contextmanager
    def _opening(self) -> Iterator[None]:
        lock = self.path.with_name(self.path.name + ".lock")
        _owner_only(lock)
        with open(lock, "a") as held:
            fcntl.flock(held, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(held, fcntl.LOCK_UN)

    def _open(self) -> sqlite3.Connection:
        """The database, checked; a file SQLite cannot read is moved aside and a fresh one started."""
        try:
            return self._connect()
        except sqlite3.DatabaseError as exc:
            if not _corrupt(exc):
                raise
            aside = self.path.with_name(f"{self.path.name}.corrupt-{int(time.time())}")
            log.error(
                "%s cannot be read (%s): moved it aside to %s and started an empty one; "
                "the conversations it held are not available",
                self.path,
                exc,
                aside,
            )
            for suffix in ("", *SIDE_FILES):
                with contextlib.suppress(FileNotFoundError):
                    os.replace(f"{self.path}{suffix}", f"{aside}{suffix}")
            return self._connect()

    def _connect(self) -> sqlite3.Connection:
        _owner_only(self.path)  # SQLite gives the -wal and -shm files the database file's mode
        for suffix in SIDE_FILES:
            side = Path(f"{self.path}{suffix}")
            if side.exists() and side.stat().st_mode & 0o077:
                side.chmod(0o600)
        db = sqlite3.connect(self.path, timeout=5.0, check_same_thread=False, isolation_level=None)
        try:
            db.execute("PRAGMA journal_mode=WAL")
            db.execute("PRAGMA synchronous=NORMAL")
            check = db.execute("PRAGMA quick_check").fetchone()
            if check is None or check[0] != "ok":
                raise sqlite3.DatabaseError(f"quick_check: {check[0] if check else 'no answer'}")
            db.executescript(SCHEMA)
        except BaseException:
            db.close()
            raise
        return db

    @contextlib.contextmanager
    def _using(self, doing: str) -> Iterator[sqlite3.Connection]:
        try:
            with self._lock:
                yield self._db
        except sqlite3.Error as exc:
            raise StoreError(f"{doing}: {exc}") from exc

    def save(self, session: str, entry: Entry) -> None:
        with self._using("storing a message") as db:
            db.execute(
                "INSERT INTO messages (session, seq, id, role, text, state, unspoken, updated) VALUES (?,?,?,?,?,?,?,?) "
                "ON CONFLICT (session, id) DO UPDATE SET seq=excluded.seq, text=excluded.text, state=excluded.state, "
                "unspoken=excluded.unspoken, updated=excluded.updated",
                (session, entry.seq, entry.id, entry.role, entry.text, entry.state, entry.unspoken, time.time()),
            )

    def load(self, session: str, limit: int) -> list[Entry]:
        with self._using("reading a conversation") as db:
            rows = db.execute(
                "SELECT seq, id, role, text, state, unspoken FROM messages WHERE session=? ORDER BY seq DESC LIMIT ?",
                (session, limit),
            ).fetchall()
        return [
            Entry(id=i, seq=seq, role=role, text=text, state=_cut(state), unspoken=unspoken)
            for seq, i, role, text, state, unspoken in reversed(rows)
        ]

    def forget(self, session: str) -> None:
        with self._using("deleting a conversation") as db:
            db.execute("DELETE FROM messages WHERE session=?", (session,))

    def trim(self, session: str, before_seq: int) -> None:
        with self._using("dropping old messages") as db:
            db.execute("DELETE FROM messages WHERE session=? AND seq<?", (session, before_seq))

    def forget_older_than(self, seconds: float) -> int:
        with self._using("deleting old conversations") as db:
            cursor = db.execute(
                "DELETE FROM messages WHERE session IN (SELECT session FROM messages GROUP BY session HAVING max(updated) < ?)",
                (time.time() - seconds,),
            )
        return cursor.rowcount

    def close(self) -> None:
        with self._lock:
            self._db.close()


class RedisStore(ConversationStore):
    """Messages by session in Redis, shared by every node of a cluster.

    Each conversation is a hash (`parley:conv:<session>`, message id -> JSON with its seq) and an
    index of its messages by seq (a sorted set, `parley:seq:<session>`), both written together
    and expiring `keep_s` after the conversation's last write, so Redis itself forgets old
    conversations. Every call waits at most `timeout_s` for Redis (the `StoreQueue` keeps that off
    the event loop).
    """

    PREFIX = "parley:conv:"
    INDEX = "parley:seq:"

    def __init__(self, url: str, *, keep_s: float, timeout_s: float = 2.0) -> None:

        import redis

        self.url = _without_password(url)
        self.where = f"conversation store {self.url}"
        self.keep_s = int(keep_s)
        self._redis = redis.Redis.from_url(url, socket_timeout=timeout_s, socket_connect_timeout=timeout_s)
        self._errors: tuple[type[BaseException], ...] = (redis.RedisError, OSError)

    def _key(self, session: str) -> str:
        return self.PREFIX + session

    def _index(self, session: str) -> str:
        return self.INDEX + session

    @contextlib.contextmanager
    def _talking(self, doing: str) -> Iterator[None]:
        try:
            yield
        except self._errors as exc:
            raise StoreError(f"{doing}: {exc}") from exc

    def save(self, session: str, entry: Entry) -> None:
        value = json.dumps(
            {"seq": entry.seq, "role": entry.role, "text": entry.text, "state": entry.state, "unspoken": entry.unspoken},
            ensure_ascii=False,
        )
        key, index = self._key(session), self._index(session)
        with self._talking("storing a message"):
            pipe = self._redis.pipeline()
            pipe.hset(key, entry.id, value)
            pipe.zadd(index, {entry.id: entry.seq})
            pipe.expire(key, self.keep_s)
            pipe.expire(index, self.keep_s)
            pipe.execute()

    def forget(self, session: str) -> None:
        with self._talking("deleting a conversation"):
            self._redis.delete(self._key(session), self._index(session))

    def trim(self, session: str, before_seq: int) -> None:
        key, index = self._key(session), self._index(session)
        with self._talking("dropping old messages"):
            old: list[str] = [i.decode() for i in self._redis.zrangebyscore(index, "-inf", f"({before_seq}")]  # type: ignore[union-attr]
            if old:
                pipe = self._redis.pipeline()
                pipe.hdel(key, *old)
                pipe.zrem(index, *old)
                pipe.execute()

    def load(self, session: str, limit: int) -> list[Entry]:
        key, index = self._key(session), self._index(session)
        with self._talking("reading a conversation"):
            pipe = self._redis.pipeline()
            pipe.hlen(key)
            pipe.zcard(index)
            pipe.zrange(index, -limit, -1)
            count, indexed, ids = pipe.execute()
            if count == indexed:
                values: list[bytes | None] = self._redis.hmget(key, ids) if ids else []  # type: ignore[assignment]
                rows: dict[bytes, bytes] = {i: v for i, v in zip(ids, values, strict=True) if v is not None}
            else:  # written before the index existed: read it all, and index it
                rows = self._redis.hgetall(key)  # type: ignore[assignment]
        messages = []
        for message, value in rows.items():
            try:
                data = json.loads(value)
                messages.append(
                    Entry(
                        id=message.decode(),
                        seq=int(data["seq"]),
                        role=data["role"],
                        text=data["text"],
                        state=_cut(data["state"]),
                        unspoken=data.get("unspoken", ""),
                    )
                )
            except (ValueError, KeyError, TypeError, UnicodeDecodeError):
                log.error("session %s: an unreadable message in %s was skipped", session[:8], self.url)
        messages.sort(key=lambda e: e.seq)
        if count != indexed and messages:
            with self._talking("indexing a conversation"):
                self._redis.zadd(index, {e.id: e.seq for e in messages})
                self._redis.expire(index, self.keep_s)
        return messages[-limit:]

    def forget_older_than(self, seconds: float) -> int:
        return 0  # every conversation expires keep_s after its last write: Redis forgets them itself

    def close(self) -> None:
        self._redis.close()


def open_store(url: str | None, state_dir: str | None, keep_s: float) -> StoreQueue | None:
    """The store `server.store` names: `sqlite` (a file in `state_dir`), `redis://...`, or `memory`
    (None), behind its `StoreQueue`."""
    if url in (None, "", "sqlite"):
        return StoreQueue(SqliteStore(Path(state_dir) / "conversations.sqlite3")) if state_dir else None
    if url == "memory":
        return None
    if url.startswith(("redis://", "rediss://", "unix://")):
        return StoreQueue(RedisStore(url, keep_s=keep_s))
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
