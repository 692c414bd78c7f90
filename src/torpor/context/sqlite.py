"""SQLite store for the context log: the embedded default for one machine.

WAL journal with synchronous=FULL, so an append that returned has been fsynced. Writers
serialise on SQLite's write lock (`BEGIN IMMEDIATE`), across threads and processes alike.
"""

from __future__ import annotations

import sqlite3
import threading
from collections.abc import Iterator
from contextlib import AbstractContextManager, contextmanager
from pathlib import Path

from .blobs import BlobStore
from .entry import ContextError, now_iso
from .log import DEFAULT_BLOB_THRESHOLD, ContextLog, Tx

MIGRATIONS: list[tuple[int, list[str]]] = [
    (1, [
        """CREATE TABLE context_sessions (
            id TEXT PRIMARY KEY,
            epoch INTEGER NOT NULL DEFAULT 0,
            parent TEXT REFERENCES context_sessions(id),
            fork_seq INTEGER NOT NULL DEFAULT 0,
            head_seq INTEGER NOT NULL DEFAULT 0,
            head_hash TEXT NOT NULL DEFAULT '',
            bytes INTEGER NOT NULL DEFAULT 0,
            warned INTEGER NOT NULL DEFAULT 0,
            created_at TEXT NOT NULL,
            updated_at TEXT NOT NULL,
            closed_at TEXT
        )""",
        "CREATE INDEX context_sessions_parent ON context_sessions(parent)",
        "CREATE INDEX context_sessions_closed ON context_sessions(closed_at)",
        # content: canonical JSON, NULL when None or in the blob store;
        # *_blob: 'sha256hex:size' of a payload kept in the blob store.
        """CREATE TABLE context_entries (
            session TEXT NOT NULL,
            seq INTEGER NOT NULL,
            kind TEXT NOT NULL,
            role TEXT,
            content TEXT,
            content_blob TEXT,
            tool_call_id TEXT,
            tool_name TEXT,
            arguments TEXT,
            arguments_blob TEXT,
            usage TEXT,
            meta TEXT NOT NULL,
            epoch INTEGER NOT NULL,
            created_at TEXT NOT NULL,
            prev_hash TEXT NOT NULL,
            hash TEXT NOT NULL,
            size INTEGER NOT NULL,
            PRIMARY KEY (session, seq)
        ) WITHOUT ROWID""",
        """CREATE INDEX context_entries_call ON context_entries(session, tool_call_id)
            WHERE tool_call_id IS NOT NULL""",
        """CREATE TABLE context_idempotency (
            session TEXT NOT NULL,
            key TEXT NOT NULL,
            first_seq INTEGER NOT NULL,
            last_seq INTEGER NOT NULL,
            PRIMARY KEY (session, key)
        ) WITHOUT ROWID""",
    ]),
]
SCHEMA_VERSION = MIGRATIONS[-1][0]


class _SqliteTx(Tx):
    placeholder = "?"


class SqliteLog(ContextLog):
    """Context log in one SQLite file; safe to share between threads and processes."""

    def __init__(self, path: str | Path, *, blobs: BlobStore | None = None,
                 blob_threshold: int = DEFAULT_BLOB_THRESHOLD, warn_bytes: int | None = None,
                 busy_timeout: float = 30.0) -> None:
        super().__init__(blobs=blobs, blob_threshold=blob_threshold, warn_bytes=warn_bytes)
        self.path = Path(path)
        self.url = f"sqlite:///{self.path}"
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._lock = threading.RLock()
        self._db = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False,
                                   timeout=busy_timeout)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=FULL")
        self._db.execute("PRAGMA foreign_keys=ON")
        self._migrate()

    def _migrate(self) -> None:
        with self._write() as tx:
            tx.run("CREATE TABLE IF NOT EXISTS context_schema "
                   "(version INTEGER PRIMARY KEY, applied_at TEXT NOT NULL)")
            row = tx.one("SELECT COALESCE(MAX(version), 0) FROM context_schema")
            have = int(row[0]) if row else 0
            if have > SCHEMA_VERSION:
                raise ContextError(f"{self.path}: context schema version {have} is newer than "
                                   f"this torpor understands ({SCHEMA_VERSION}); upgrade torpor")
            for version, statements in MIGRATIONS:
                if version <= have:
                    continue
                for sql in statements:
                    tx.run(sql)
                tx.run("INSERT INTO context_schema (version, applied_at) VALUES (%s, %s)",
                       (version, now_iso()))

    def schema_version(self) -> int:
        with self._read() as tx:
            row = tx.one("SELECT COALESCE(MAX(version), 0) FROM context_schema")
        return int(row[0]) if row else 0

    @contextmanager
    def _tx(self, begin: str) -> Iterator[Tx]:
        with self._lock:
            cur = self._db.cursor()
            cur.execute(begin)
            try:
                yield _SqliteTx(cur)
            except BaseException:
                self._db.execute("ROLLBACK")
                raise
            else:
                self._db.execute("COMMIT")
            finally:
                cur.close()

    def _write(self) -> AbstractContextManager[Tx]:
        return self._tx("BEGIN IMMEDIATE")

    def _read(self) -> AbstractContextManager[Tx]:
        return self._tx("BEGIN")

    def close(self) -> None:
        with self._lock:
            self._db.close()
