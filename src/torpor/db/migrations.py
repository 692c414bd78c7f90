"""Versioned migrations of every torpor table: one ordered list, one version table.

`migrate(db)` brings a database to `SCHEMA_VERSION`: it applies, in order and in one
write transaction, each migration the version table `torpor_schema` does not list, and
records it there. PostgreSQL holds an advisory lock meanwhile (two servers starting at
once on one database migrate one after the other); SQLite's write lock already does
that. A database that is current is only read (no lock taken). A database whose version
is newer than this torpor's is refused with `SchemaTooNew`, before anything is written.

Databases written before this version table existed (torpor 0.1.0) are adopted:
- the context log's tables were versioned in `context_schema` (version 1 = migration 1
  here); its rows are copied, and a row with version `LEGACY_GUARD` is added to it, so
  that an older torpor opening the database refuses it as newer than it understands
  instead of creating tables again;
- the runtime's and the tokens' tables were made with CREATE TABLE IF NOT EXISTS and
  columns added when missing; migrations 2 and 3 do the same once, so they apply to an
  empty database and to one of those alike.

A new migration is appended to `MIGRATIONS` with the next version; it never edits one
that shipped.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime

from . import schema
from .connection import Database, DatabaseError, Tx


class SchemaTooNew(DatabaseError):
    """The database was migrated by a newer torpor than this one."""


@dataclass(frozen=True)
class Migration:
    version: int
    name: str
    apply: Callable[[Tx], None]


def _run(statements: tuple[str, ...]) -> Callable[[Tx], None]:
    def apply(tx: Tx) -> None:
        for sql in schema.ddl(statements, tx.dialect):
            tx.run(sql)
    return apply


def _table_exists(tx: Tx, table: str) -> bool:
    if tx.dialect.postgres:  # (pg_tables, not to_regclass: the catalog cache of a
        # transaction begun before another's commit would not see that one's tables)
        return tx.one("SELECT 1 FROM pg_catalog.pg_tables WHERE schemaname = "
                      "current_schema() AND tablename = %s", (table,)) is not None
    return tx.one("SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = %s",
                  (table,)) is not None


def _columns(tx: Tx, table: str) -> set[str]:
    if tx.dialect.postgres:
        return {r[0] for r in tx.all(
            "SELECT column_name FROM information_schema.columns WHERE "
            "table_schema = current_schema() AND table_name = %s", (table,))}
    return {r[1] for r in tx.all(f"PRAGMA table_info({table})")}


def _runtime(tx: Tx) -> None:
    _run(schema.RUNTIME)(tx)
    for table, column, kind in schema.RUNTIME_ADDED:  # tables of an older torpor
        if column not in _columns(tx, table):
            tx.run(f"ALTER TABLE {table} ADD COLUMN {column} {kind}")
    _run(schema.RUNTIME_INDEXES)(tx)
    # Idempotency-Keys kept in a table of their own before (torpor_idempotency) move to
    # the inbox rows they were posted with.
    if _table_exists(tx, "torpor_idempotency"):
        tx.run("UPDATE torpor_inbox SET key = (SELECT k.key FROM torpor_idempotency k "
               "WHERE k.session = torpor_inbox.session AND k.turn = torpor_inbox.id) "
               "WHERE key IS NULL")
        tx.run("DROP TABLE torpor_idempotency")


MIGRATIONS: tuple[Migration, ...] = (
    Migration(1, "context log: sessions, entries, idempotency keys", _run(schema.CONTEXT_LOG)),
    Migration(2, "runtime: sessions, inbox, heartbeats, snapshots, copies", _runtime),
    Migration(3, "API tokens", _run(schema.TOKENS)),
    Migration(4, "LangGraph checkpoints, channel values, writes", _run(schema.LANGGRAPH)),
    Migration(5, "sandboxes and their snapshots", _run(schema.SANDBOXES)),
    Migration(6, "storage: snapshot pins, named leases, usage, quotas",
              _run(schema.STORAGE)),
)
SCHEMA_VERSION = MIGRATIONS[-1].version
MIGRATION_LOCK = 0x746F72706F72  # pg_advisory_xact_lock key held while migrating
LEGACY_TABLE = "context_schema"  # the version table of the context log's tables alone
LEGACY_VERSION = 1  # the highest version a legacy context_schema can hold
LEGACY_GUARD = 1000  # added to it: older torpor refuses the database as too new


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="microseconds").replace("+00:00", "Z")


def _applied(tx: Tx) -> set[int] | None:
    """The versions recorded, or None when there is no version table yet."""
    if not _table_exists(tx, "torpor_schema"):
        return None
    return {int(r[0]) for r in tx.all("SELECT version FROM torpor_schema")}


def _adopt_legacy(tx: Tx, db: Database) -> set[int]:
    """Make the version table; copy what a legacy context_schema says was applied."""
    tx.run(schema.VERSION_TABLE)
    if not _table_exists(tx, LEGACY_TABLE):
        return set()
    rows = tx.all(f"SELECT version, applied_at FROM {LEGACY_TABLE} ORDER BY version")
    _refuse_newer(db, max((int(v) for v, _ in rows), default=0), LEGACY_VERSION)
    names = {m.version: m.name for m in MIGRATIONS}
    for version, applied_at in rows:
        tx.run("INSERT INTO torpor_schema (version, name, applied_at) VALUES (%s, %s, %s)",
               (int(version), names[int(version)], applied_at))
    tx.run(f"INSERT INTO {LEGACY_TABLE} (version, applied_at) VALUES (%s, %s)",
           (LEGACY_GUARD, f"{_now()} (versions are in torpor_schema now)"))
    return {int(v) for v, _ in rows}


def _refuse_newer(db: Database, have: int, known: int = SCHEMA_VERSION) -> None:
    if have > known:
        raise SchemaTooNew(f"{db.display}: database schema version {have} is newer than "
                           f"this torpor understands ({SCHEMA_VERSION}); upgrade torpor")


def migrate(db: Database) -> int:
    """Apply the missing migrations; returns the schema version (see the docstring)."""
    want = {m.version for m in MIGRATIONS}
    with db.read() as tx:
        have = _applied(tx)
    if have is not None:
        _refuse_newer(db, max(have, default=0))
        if want <= have:
            return SCHEMA_VERSION
    with db.write() as tx:
        if tx.dialect.postgres:
            tx.run("SELECT pg_advisory_xact_lock(%s)", (MIGRATION_LOCK,))
        have = _applied(tx)
        if have is None:
            have = _adopt_legacy(tx, db)
        _refuse_newer(db, max(have, default=0))
        for m in MIGRATIONS:
            if m.version not in have:
                m.apply(tx)
                tx.run("INSERT INTO torpor_schema (version, name, applied_at) "
                       "VALUES (%s, %s, %s)", (m.version, m.name, _now()))
    return SCHEMA_VERSION


def schema_version(db: Database) -> int:
    """The highest version applied (0 for a database torpor never opened)."""
    with db.read() as tx:
        if not _table_exists(tx, "torpor_schema"):
            return 0
        return int(tx.value("SELECT COALESCE(MAX(version), 0) FROM torpor_schema"))
