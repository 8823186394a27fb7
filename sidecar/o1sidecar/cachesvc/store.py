"""The persistent exact cache (L3): ``key -> answer bytes`` in one SQLite file, and with the answers
the semantic layer's questions (their text and vector), which go when their answer goes.

Each entry lives until its own deadline (wall-clock seconds, so a restart keeps the ages). The file
holds at most ``max_bytes`` of answers: a write that would go over first drops expired entries, then
the least recently read or written ones. SQLite (standard library, one file, WAL) rather than a
key-value engine: one writer per pool service is all it needs, it survives restarts and Redis
flushes, and a copy of the file is a backup.
"""

from __future__ import annotations

import sqlite3
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

SCHEMA = """
CREATE TABLE IF NOT EXISTS entries (
    key TEXT PRIMARY KEY,
    body BLOB NOT NULL,
    expires REAL NOT NULL,
    used REAL NOT NULL,
    size INTEGER NOT NULL
);
CREATE INDEX IF NOT EXISTS entries_used ON entries (used);
CREATE INDEX IF NOT EXISTS entries_expires ON entries (expires);
CREATE TABLE IF NOT EXISTS questions (
    scope TEXT NOT NULL,
    key TEXT NOT NULL REFERENCES entries (key) ON DELETE CASCADE,
    text TEXT NOT NULL,
    vector BLOB NOT NULL,
    model TEXT NOT NULL,
    expires REAL NOT NULL,
    added REAL NOT NULL,
    PRIMARY KEY (scope, key)
);
CREATE INDEX IF NOT EXISTS questions_key ON questions (key);
"""
EVICT_BATCH = 64
# A read marks its entry used only when the mark is older than this: eviction by least recent use needs
# no finer clock, and a write per read would make every hit a commit (and, every thousand pages, a
# checkpoint that waits for the disk while the hits queue behind it).
TOUCH_S = 60.0


@dataclass(frozen=True)
class Question:
    """A question of the semantic index as the file keeps it: ``vector`` is the model's float32 bytes."""

    scope: str
    key: str  # its answer's entry
    text: str
    vector: bytes
    expires: float


@dataclass(frozen=True)
class Evictions:
    expired: int = 0
    least_used: int = 0


class EntryStore:
    """One SQLite file of answers. Not thread-safe: one caller (the service's single worker thread)."""

    def __init__(self, path: Path, max_bytes: int, clock: Callable[[], float] = time.time) -> None:
        if max_bytes <= 0:
            raise ValueError(f"max_bytes must be positive, got {max_bytes}")
        self.path = path
        self.max_bytes = max_bytes
        self._clock = clock
        path.parent.mkdir(parents=True, exist_ok=True)
        self._db = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=NORMAL")
        self._db.execute("PRAGMA foreign_keys=ON")  # a question goes with its answer
        self._db.executescript(SCHEMA)
        self.entries, self.bytes = self._db.execute(
            "SELECT COUNT(*), COALESCE(SUM(size), 0) FROM entries"
        ).fetchone()

    def get(self, key: str) -> tuple[bytes, float] | None:
        """``(body, seconds left)`` of a live entry (and it counts as used now, to ``TOUCH_S``), or
        ``None``."""
        now = self._clock()
        row = self._db.execute("SELECT body, expires, used FROM entries WHERE key = ?", (key,)).fetchone()
        if row is None:
            return None
        body, expires, used = row
        if expires <= now:
            self._delete([key])
            return None
        if now - used >= TOUCH_S:
            self._db.execute("UPDATE entries SET used = ? WHERE key = ?", (now, key))
        return bytes(body), expires - now

    def put(self, key: str, body: bytes, ttl_s: float) -> Evictions:
        """Store (or replace) an entry for ``ttl_s`` seconds, making room first. An entry larger than
        the whole store is refused with ``ValueError``."""
        if len(body) > self.max_bytes:
            raise ValueError(
                f"an entry of {len(body)} bytes is larger than the store ({self.max_bytes} bytes)"
            )
        now = self._clock()
        old = self._db.execute("SELECT size FROM entries WHERE key = ?", (key,)).fetchone()
        need = len(body) - (old[0] if old else 0)
        evicted = Evictions()
        if self.bytes + need > self.max_bytes:
            evicted = self._make_room(need, now, keep=key)
        self._db.execute(
            "INSERT INTO entries (key, body, expires, used, size) VALUES (?, ?, ?, ?, ?) ON CONFLICT (key) "
            "DO UPDATE SET body = excluded.body, expires = excluded.expires, used = excluded.used, "
            "size = excluded.size",  # (an update, not a replace: the entry's questions stay)
            (key, body, now + ttl_s, now, len(body)),
        )
        self.entries += 0 if old else 1
        self.bytes += need
        return evicted

    def _make_room(self, need: int, now: float, keep: str) -> Evictions:
        query = "SELECT key FROM entries WHERE expires <= ? AND key != ?"
        expired = [k for (k,) in self._db.execute(query, (now, keep)).fetchall()]
        self._delete(expired)
        least_used = 0
        while self.bytes + need > self.max_bytes:
            oldest = self._db.execute(
                "SELECT key FROM entries WHERE key != ? ORDER BY used LIMIT ?", (keep, EVICT_BATCH)
            ).fetchall()
            if not oldest:
                break
            for (k,) in oldest:
                if self.bytes + need <= self.max_bytes:
                    break
                self._delete([k])
                least_used += 1
        return Evictions(expired=len(expired), least_used=least_used)

    def _delete(self, keys: list[str]) -> None:
        for key in keys:
            row = self._db.execute("DELETE FROM entries WHERE key = ? RETURNING size", (key,)).fetchone()
            if row is not None:
                self.entries -= 1
                self.bytes -= row[0]

    def put_question(self, question: Question, model: str) -> bool:
        """Keep ``question`` (embedded by ``model``) with its answer's entry; False if that entry is not
        here (any more): a question without its answer is worth nothing."""
        try:
            self._db.execute(
                "INSERT INTO questions (scope, key, text, vector, model, expires, added) "
                "VALUES (?, ?, ?, ?, ?, ?, ?) ON CONFLICT (scope, key) DO UPDATE SET text = excluded.text, "
                "vector = excluded.vector, model = excluded.model, expires = excluded.expires, "
                "added = excluded.added",
                (
                    question.scope,
                    question.key,
                    question.text,
                    question.vector,
                    model,
                    question.expires,
                    self._clock(),
                ),
            )
        except sqlite3.IntegrityError:  # (the foreign key: no such entry)
            return False
        return True

    def questions(self, model: str, most: int) -> list[Question]:
        """The ``most`` newest live questions embedded by ``model``, oldest first. Those of another
        model (their vectors mean nothing to this one) and expired ones are dropped."""
        self._db.execute("DELETE FROM questions WHERE model != ? OR expires <= ?", (model, self._clock()))
        rows = self._db.execute(
            "SELECT scope, key, text, vector, expires FROM questions ORDER BY added DESC LIMIT ?", (most,)
        ).fetchall()
        return [
            Question(scope, key, text, bytes(vector), expires)
            for scope, key, text, vector, expires in reversed(rows)
        ]

    def close(self) -> None:
        self._db.close()
