"""Connections and transactions: one `Database` per URL, SQLite or PostgreSQL.

    db = Database("sqlite:////var/lib/torpor/context.db")   # or postgresql://...
    with db.write() as tx:        # committed on normal exit, rolled back on an error
        tx.run("UPDATE ...", (a, b))
    with db.read() as tx:         # one consistent snapshot, no write lock
        rows = tx.all("SELECT ...", (a,))

Statements are written once, with `%s` placeholders; `Tx` turns them into SQLite's `?`.

SQLite (one machine): WAL journal with `synchronous=FULL` (a COMMIT that returned has
been fsynced), foreign keys on, a busy timeout. A write transaction is `BEGIN IMMEDIATE`:
it takes the file's write lock at its start, so it never fails half-way on a lock
upgrade, and writers of all processes queue on it; writers of one process queue first on
an in-process lock per file, which wakes the next one at once where SQLite's busy handler
would poll with sleeps. A read transaction is a deferred `BEGIN`: in WAL mode it reads a
snapshot as of its first statement and takes no write lock, so reads go on while a
writer holds it. Connections are kept in a small per-`Database` pool (a connection is
used by one transaction at a time, by whichever thread runs it).

PostgreSQL (many machines): a psycopg pool of autocommit connections; with `check`, each
is checked when taken (a server restart costs a reconnect, not a failed call, and every
transaction one round trip more: the context log checks, the runtime's calls on the
claim and wait point path do not, as before); a write is `BEGIN`
(READ COMMITTED: row locks and conditional UPDATEs do the coordinating), a read is
`BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY` (one snapshot for all its statements).
"""

from __future__ import annotations

import contextlib
import sqlite3
import threading
from collections.abc import Iterator, Sequence
from contextlib import AbstractContextManager, contextmanager
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl, unquote, urlencode, urlparse


class DatabaseError(Exception):
    """A database torpor cannot use as it is (a bad URL, a schema it does not know)."""


@dataclass(frozen=True)
class Dialect:
    """What differs between the two databases in how torpor speaks to them."""

    name: str  # "sqlite" or "postgres"
    begin_write: str
    begin_read: str
    for_update: str  # appended to a SELECT that locks its rows for the transaction
    skip_locked: str  # ... that locks them and skips rows another transaction holds

    @property
    def postgres(self) -> bool:
        return self.name == "postgres"


SQLITE = Dialect("sqlite", "BEGIN IMMEDIATE", "BEGIN", "", "")
POSTGRES = Dialect("postgres", "BEGIN", "BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY",
                   " FOR UPDATE", " FOR UPDATE SKIP LOCKED")


@lru_cache(maxsize=1024)
def _qmarks(sql: str) -> str:
    return sql.replace("%s", "?")


class Tx:
    """One transaction's statements: `%s` placeholders, fetch helpers, the dialect."""

    __slots__ = ("cur", "dialect", "_sqlite")

    def __init__(self, cur: Any, dialect: Dialect) -> None:
        self.cur = cur
        self.dialect = dialect
        self._sqlite = dialect is SQLITE

    def _sql(self, sql: str) -> str:
        return _qmarks(sql) if self._sqlite else sql

    def run(self, sql: str, params: Sequence[Any] = ()) -> int:
        """Execute; returns the number of rows changed (-1 when not known)."""
        self.cur.execute(self._sql(sql), params)
        return int(self.cur.rowcount)

    def one(self, sql: str, params: Sequence[Any] = ()) -> tuple[Any, ...] | None:
        self.cur.execute(self._sql(sql), params)
        return self.cur.fetchone()  # (both drivers' rows are tuples)

    def all(self, sql: str, params: Sequence[Any] = ()) -> list[tuple[Any, ...]]:
        self.cur.execute(self._sql(sql), params)
        return self.cur.fetchall()

    def value(self, sql: str, params: Sequence[Any] = ()) -> Any:
        """The first column of the first row, or None."""
        row = self.one(sql, params)
        return None if row is None else row[0]

    def many(self, sql: str, rows: Sequence[Sequence[Any]]) -> None:
        self.cur.executemany(self._sql(sql), rows)

    # a DB-API cursor's names, for code written against `RuntimeDB.tx()`'s old cursor
    def execute(self, sql: str, params: Sequence[Any] = ()) -> None:
        self.cur.execute(self._sql(sql), params)

    def fetchone(self) -> Any:
        return self.cur.fetchone()

    def fetchall(self) -> list[Any]:
        return list(self.cur.fetchall())

    @property
    def rowcount(self) -> int:
        return int(self.cur.rowcount)


@contextmanager
def _transaction(conn: Any, begin: str, dialect: Dialect) -> Iterator[Tx]:
    cur = conn.cursor()
    try:
        cur.execute(begin)
        try:
            yield Tx(cur, dialect)
            cur.execute("COMMIT")
        except BaseException:
            with contextlib.suppress(Exception):  # the first error is the one to report
                cur.execute("ROLLBACK")
            raise
    finally:
        cur.close()


# One writer lock per SQLite file in this process, shared by every Database on it (the
# runtime's tables and the context log are two Databases on one file).
_FILE_LOCKS: dict[Path, threading.RLock] = {}
_FILE_LOCKS_GUARD = threading.Lock()


def _file_lock(path: Path) -> threading.RLock:
    key = path.resolve()
    with _FILE_LOCKS_GUARD:
        return _FILE_LOCKS.setdefault(key, threading.RLock())


class _SqliteConnections:
    """Idle connections to one SQLite file, opened with torpor's pragmas on demand.

    Hand-written: a connection pool for SQLite is a list and a lock; the libraries that
    pool SQLite connections come with a whole toolkit (SQLAlchemy) this one would not use."""

    KEEP = 8  # idle connections kept; more are closed when returned

    def __init__(self, path: Path, busy_timeout: float) -> None:
        self.path = path
        self.busy_timeout = busy_timeout
        self._idle: list[sqlite3.Connection] = []
        self._lock = threading.Lock()

    def _open(self) -> sqlite3.Connection:
        conn = sqlite3.connect(self.path, timeout=self.busy_timeout, isolation_level=None,
                               check_same_thread=False)
        conn.execute("PRAGMA journal_mode=WAL")
        conn.execute("PRAGMA synchronous=FULL")
        conn.execute("PRAGMA foreign_keys=ON")
        return conn

    def take(self) -> sqlite3.Connection:
        with self._lock:
            if self._idle:
                return self._idle.pop()
        return self._open()

    def give(self, conn: sqlite3.Connection) -> None:
        """Back to the idle list (closed instead if left inside a transaction, or when
        enough are idle)."""
        if not conn.in_transaction:
            with self._lock:
                if len(self._idle) < self.KEEP:
                    self._idle.append(conn)
                    return
        conn.close()

    def close(self) -> None:
        """Close the idle connections (one in use is kept until its transaction ends; a
        later transaction opens a new one)."""
        with self._lock:
            idle, self._idle = self._idle, []
        for conn in idle:
            conn.close()


def split_url(url: str) -> tuple[str, dict[str, str]]:
    """(the URL without torpor's own query parameters, those parameters): `blobs=` names
    the context log's blob store and is no business of the database driver."""
    base, _, qs = url.partition("?")
    query = dict(parse_qsl(qs))
    own = {k: query.pop(k) for k in ("blobs",) if k in query}
    if not own:
        return url, own
    return (f"{base}?{urlencode(query)}" if query else base), own


class Database:
    """Connections to one database and its transactions (see the module's docstring).

    url: `sqlite:///absolute/path.db` or `postgresql://user@host:port/db` (a `blobs=`
    query parameter is ignored here). busy_timeout: how long a SQLite writer waits for the
    write lock. pool_min, pool_max, timeout: the PostgreSQL pool's; check: test each
    connection taken from it. Opening does not migrate: `torpor.db.open_database` does."""

    def __init__(self, url: str, *, busy_timeout: float = 30.0, pool_min: int = 1,
                 pool_max: int = 8, timeout: float = 30.0, check: bool = False) -> None:
        self.url, _own = split_url(url)
        parsed = urlparse(self.url)
        self.path: Path | None = None
        if parsed.scheme == "sqlite":
            if parsed.netloc not in ("", "localhost"):
                raise DatabaseError(f"SQLite URLs look like sqlite:///absolute/path.db, "
                                    f"got {url!r}")
            self.dialect = SQLITE
            self.path = Path(unquote(parsed.path))
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self._sqlite = _SqliteConnections(self.path, busy_timeout)
            self._writer = _file_lock(self.path)
        elif parsed.scheme in ("postgresql", "postgres"):
            from psycopg_pool import ConnectionPool

            self.dialect = POSTGRES
            self._pool = ConnectionPool(self.url, min_size=pool_min, max_size=pool_max,
                                        timeout=timeout, kwargs={"autocommit": True},
                                        check=ConnectionPool.check_connection if check
                                        else None, open=True)
            try:
                self._pool.wait(timeout=timeout)
            except BaseException:
                self._pool.close()
                raise
        else:
            raise DatabaseError(f"unsupported database URL {url!r} "
                                "(use sqlite:/// or postgresql://)")

    @property
    def kind(self) -> str:
        """"sqlite" or "postgres"."""
        return self.dialect.name

    @property
    def display(self) -> str:
        """Where the database is, for messages (no password)."""
        if self.path is not None:
            return str(self.path)
        p = urlparse(self.url)
        return f"PostgreSQL database {p.path.lstrip('/') or '?'} on {p.hostname or 'localhost'}"

    def write(self) -> AbstractContextManager[Tx]:
        """A write transaction: committed on normal exit, rolled back on an error."""
        if self.dialect is SQLITE:
            return self._sqlite_tx(SQLITE.begin_write, self._writer)
        return self._pg_tx(POSTGRES.begin_write)

    def read(self) -> AbstractContextManager[Tx]:
        """A read-only transaction over one snapshot; it takes no write lock."""
        if self.dialect is SQLITE:
            return self._sqlite_tx(SQLITE.begin_read, None)
        return self._pg_tx(POSTGRES.begin_read)

    @contextmanager
    def _sqlite_tx(self, begin: str, lock: threading.RLock | None) -> Iterator[Tx]:
        # (take/give, not a third nested context manager: a tail read is ~70 us)
        if lock is not None:
            lock.acquire()
        try:
            conn = self._sqlite.take()
            try:
                with _transaction(conn, begin, SQLITE) as tx:
                    yield tx
            finally:
                self._sqlite.give(conn)
        finally:
            if lock is not None:
                lock.release()

    @contextmanager
    def _pg_tx(self, begin: str) -> Iterator[Tx]:
        with self._pool.connection() as conn, _transaction(conn, begin, POSTGRES) as tx:
            yield tx

    def close(self) -> None:
        if self.dialect is SQLITE:
            self._sqlite.close()
        else:
            self._pool.close()

    def __enter__(self) -> Database:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
