"""The context log's statements (tables `context_sessions`, `context_entries`,
`context_idempotency`); `torpor.context.log` holds the logic around them.

Rows come back as tuples in the order of `SESSION_COLUMNS` and `ENTRY_COLUMNS`.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from ..connection import Tx

SESSION_COLUMNS = ("id", "epoch", "parent", "fork_seq", "head_seq", "head_hash", "bytes",
                   "warned", "created_at", "updated_at", "closed_at")
ENTRY_COLUMNS = ("seq", "kind", "role", "content", "content_blob", "tool_call_id",
                 "tool_name", "arguments", "arguments_blob", "usage", "meta", "epoch",
                 "created_at", "prev_hash", "hash", "size")
_S = ", ".join(SESSION_COLUMNS)
_E = ", ".join(ENTRY_COLUMNS)
_INSERT_ENTRY = (f"INSERT INTO context_entries (session, {_E}) VALUES ("
                 + ", ".join(["%s"] * (len(ENTRY_COLUMNS) + 1)) + ")")

Row = tuple[Any, ...]


# -- sessions ---------------------------------------------------------------------------------
def session(tx: Tx, sid: str, *, lock: bool = False) -> Row | None:
    """The session's row; lock: hold its row lock for the transaction (PostgreSQL; a
    SQLite write transaction holds the whole file already)."""
    return tx.one(f"SELECT {_S} FROM context_sessions WHERE id = %s"
                  + (tx.dialect.for_update if lock else ""), (sid,))


def create_session(tx: Tx, sid: str, ts: str) -> None:
    """Make the session's row unless it exists."""
    tx.run("INSERT INTO context_sessions (id, created_at, updated_at) VALUES (%s, %s, %s) "
           "ON CONFLICT (id) DO NOTHING", (sid, ts, ts))


def sessions(tx: Tx, *, prefix: str | None, closed: bool | None, closed_before: str | None,
             limit: int | None) -> list[Row]:
    """Sessions by id. closed: True only closed, False only open, None all; closed_before:
    only those closed before that ISO time; prefix: ids starting with it."""
    where: list[str] = []
    params: list[Any] = []
    if prefix:
        where.append("id >= %s AND id < %s")
        params += [prefix, prefix + "\U0010ffff"]
    if closed is True or closed_before:
        where.append("closed_at IS NOT NULL")
    elif closed is False:
        where.append("closed_at IS NULL")
    if closed_before:
        where.append("closed_at < %s")
        params.append(closed_before)
    sql = f"SELECT {_S} FROM context_sessions"
    if where:
        sql += " WHERE " + " AND ".join(where)
    sql += " ORDER BY id"
    if limit is not None:
        sql += " LIMIT %s"
        params.append(int(limit))
    return tx.all(sql, params)


def set_epoch(tx: Tx, sid: str, epoch: int, ts: str) -> None:
    tx.run("UPDATE context_sessions SET epoch = %s, updated_at = %s WHERE id = %s",
           (epoch, ts, sid))


def set_closed(tx: Tx, sid: str, ts: str) -> None:
    tx.run("UPDATE context_sessions SET closed_at = %s, updated_at = %s WHERE id = %s",
           (ts, ts, sid))


def set_head(tx: Tx, sid: str, *, seq: int, hash_: str, size: int, warned: bool,
             ts: str) -> None:
    tx.run("UPDATE context_sessions SET head_seq = %s, head_hash = %s, bytes = %s, "
           "warned = %s, updated_at = %s WHERE id = %s",
           (seq, hash_, size, int(warned), ts, sid))


def forks_of(tx: Tx, sid: str) -> list[str]:
    """The sessions forked from this one (they share its entries)."""
    return [r[0] for r in tx.all("SELECT id FROM context_sessions WHERE parent = %s", (sid,))]


def delete_session(tx: Tx, sid: str) -> None:
    """The session's entries, idempotency keys and row."""
    tx.run("DELETE FROM context_entries WHERE session = %s", (sid,))
    tx.run("DELETE FROM context_idempotency WHERE session = %s", (sid,))
    tx.run("DELETE FROM context_sessions WHERE id = %s", (sid,))


def insert_fork(tx: Tx, sid: str, *, parent: str, at_seq: int, head_hash: str, size: int,
                ts: str) -> None:
    tx.run("INSERT INTO context_sessions (id, parent, fork_seq, head_seq, head_hash, "
           "bytes, created_at, updated_at) VALUES (%s, %s, %s, %s, %s, %s, %s, %s)",
           (sid, parent, at_seq, at_seq, head_hash, size, ts, ts))


# -- entries ---------------------------------------------------------------------------------
def entries(tx: Tx, owner: str, after: int, upto: int, limit: int | None) -> list[Row]:
    """The rows `owner` holds with after < seq <= upto, in order, at most `limit`."""
    sql = (f"SELECT {_E} FROM context_entries WHERE session = %s AND seq > %s "
           "AND seq <= %s ORDER BY seq")
    params: list[Any] = [owner, after, upto]
    if limit is not None:
        sql += " LIMIT %s"
        params.append(limit)
    return tx.all(sql, params)


def insert_entries(tx: Tx, rows: Sequence[Sequence[Any]]) -> None:
    """Rows of (session, *ENTRY_COLUMNS)."""
    tx.many(_INSERT_ENTRY, rows)


def has_tool_call(tx: Tx, owner: str, upto: int, call_id: str) -> bool:
    return tx.one("SELECT 1 FROM context_entries WHERE session = %s AND seq <= %s "
                  "AND tool_call_id = %s AND kind = 'tool_call' LIMIT 1",
                  (owner, upto, call_id)) is not None


def entry_hash(tx: Tx, owner: str, seq: int) -> str | None:
    return tx.value("SELECT hash FROM context_entries WHERE session = %s AND seq = %s",
                    (owner, seq))


def entries_size(tx: Tx, owner: str, after: int, upto: int) -> int:
    """Total `size` of the rows `owner` holds with after < seq <= upto."""
    return int(tx.value("SELECT COALESCE(SUM(size), 0) FROM context_entries WHERE "
                        "session = %s AND seq > %s AND seq <= %s", (owner, after, upto)) or 0)


# -- idempotency keys --------------------------------------------------------------------------
def keyed_seqs(tx: Tx, sid: str, key: str) -> tuple[int, int] | None:
    """(first, last) seq of the batch appended with this key, if any."""
    r = tx.one("SELECT first_seq, last_seq FROM context_idempotency "
               "WHERE session = %s AND key = %s", (sid, key))
    return None if r is None else (int(r[0]), int(r[1]))


def insert_key(tx: Tx, sid: str, key: str, first: int, last: int) -> None:
    tx.run("INSERT INTO context_idempotency (session, key, first_seq, last_seq) "
           "VALUES (%s, %s, %s, %s)", (sid, key, first, last))


BLOB_LOCK = 0x746F72706F62  # pg_advisory_xact_lock key: the blob gc's deletes (exclusive)
#                               against appends that refer to blobs (shared)


def lock_blobs(tx: Tx, *, exclusive: bool) -> None:
    """The blob gc deletes under this lock exclusively; an append that refers to blobs
    checks they are there under it, shared (context/log.py: `_blobs_there`). PostgreSQL:
    a transaction-scoped advisory lock; SQLite: nothing more is needed (a write
    transaction excludes every other)."""
    if tx.dialect.postgres:
        fn = "pg_advisory_xact_lock" if exclusive else "pg_advisory_xact_lock_shared"
        tx.run(f"SELECT {fn}(%s)", (BLOB_LOCK,))


def blob_refs(tx: Tx) -> list[str]:
    """Every blob reference (`key:size`) an entry holds, of every session."""
    return [str(r[0]) for r in tx.all(
        "SELECT content_blob FROM context_entries WHERE content_blob IS NOT NULL UNION "
        "SELECT arguments_blob FROM context_entries WHERE arguments_blob IS NOT NULL")]
