"""PostgreSQL store for the context log: many writers on many machines.

psycopg 3 with a connection pool. An append is one transaction that locks the session row
(`SELECT ... FOR UPDATE`), so concurrent writers to one session queue up behind each other and
the fencing epoch is checked under that lock; nothing else coordinates them.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import AbstractContextManager, contextmanager

from psycopg_pool import ConnectionPool

from .blobs import BlobStore
from .entry import ContextError, now_iso
from .log import DEFAULT_BLOB_THRESHOLD, ContextLog, Tx

MIGRATIONS: list[tuple[int, list[str]]] = [
    (1, [
        """CREATE TABLE context_sessions (
            id TEXT PRIMARY KEY,
            epoch BIGINT NOT NULL DEFAULT 0,
            parent TEXT REFERENCES context_sessions(id),
            fork_seq BIGINT NOT NULL DEFAULT 0,
            head_seq BIGINT NOT NULL DEFAULT 0,
            head_hash TEXT NOT NULL DEFAULT '',
            bytes BIGINT NOT NULL DEFAULT 0,
            warned INTEGER NOT NULL DEFAULT 0,
            created_at TEXT NOT NULL,
            updated_at TEXT NOT NULL,
            closed_at TEXT
        )""",
        "CREATE INDEX context_sessions_parent ON context_sessions(parent)",
        "CREATE INDEX context_sessions_closed ON context_sessions(closed_at)",
        # JSON is kept as text, not jsonb, so the bytes that were hashed are the bytes stored.
        """CREATE TABLE context_entries (
            session TEXT NOT NULL,
            seq BIGINT NOT NULL,
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
            epoch BIGINT NOT NULL,
            created_at TEXT NOT NULL,
            prev_hash TEXT NOT NULL,
            hash TEXT NOT NULL,
            size BIGINT NOT NULL,
            PRIMARY KEY (session, seq)
        )""",
        """CREATE INDEX context_entries_call ON context_entries(session, tool_call_id)
            WHERE tool_call_id IS NOT NULL""",
        """CREATE TABLE context_idempotency (
            session TEXT NOT NULL,
            key TEXT NOT NULL,
            first_seq BIGINT NOT NULL,
            last_seq BIGINT NOT NULL,
            PRIMARY KEY (session, key)
        )""",
    ]),
]
SCHEMA_VERSION = MIGRATIONS[-1][0]
MIGRATION_LOCK = 0x746F72706F72  # pg_advisory_xact_lock key held while migrating


class PostgresLog(ContextLog):
    """Context log in PostgreSQL tables `context_*`."""

    lock_suffix = " FOR UPDATE"

    def __init__(self, url: str, *, blobs: BlobStore | None = None,
                 blob_threshold: int = DEFAULT_BLOB_THRESHOLD, warn_bytes: int | None = None,
                 min_size: int = 1, max_size: int = 8, timeout: float = 30.0) -> None:
        super().__init__(blobs=blobs, blob_threshold=blob_threshold, warn_bytes=warn_bytes)
        self.url = url
        self.pool = ConnectionPool(url, min_size=min_size, max_size=max_size,
                                   timeout=timeout, kwargs={"autocommit": True},
                                   check=ConnectionPool.check_connection, open=True)
        try:
            self.pool.wait(timeout=timeout)
            self._migrate()
        except BaseException:
            self.pool.close()
            raise

    def _migrate(self) -> None:
        with self._write() as tx:
            tx.run("SELECT pg_advisory_xact_lock(%s)", (MIGRATION_LOCK,))
            tx.run("CREATE TABLE IF NOT EXISTS context_schema "
                   "(version INTEGER PRIMARY KEY, applied_at TEXT NOT NULL)")
            row = tx.one("SELECT COALESCE(MAX(version), 0) FROM context_schema")
            have = int(row[0]) if row else 0
            if have > SCHEMA_VERSION:
                raise ContextError(f"context schema version {have} in the database is newer "
                                   f"than this torpor understands ({SCHEMA_VERSION})")
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
    def _tx(self, read_only: bool) -> Iterator[Tx]:
        with self.pool.connection() as conn, conn.transaction(), conn.cursor() as cur:
            if read_only:
                cur.execute("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ READ ONLY")
            yield Tx(cur)

    def _write(self) -> AbstractContextManager[Tx]:
        return self._tx(False)

    def _read(self) -> AbstractContextManager[Tx]:
        return self._tx(True)

    def close(self) -> None:
        self.pool.close()
