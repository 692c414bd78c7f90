"""The LangGraph checkpointer's statements (tables `langgraph_checkpoints`,
`langgraph_values`, `langgraph_writes`); `torpor.integrations.langgraph.saver` holds
the logic around them (what a value row holds: `torpor.db.schema.LANGGRAPH`).

Checkpoint rows come back in the order of `CHECKPOINT_COLUMNS`, value rows in that of
`VALUE_COLUMNS`, write rows in that of `WRITE_COLUMNS`.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

from ..connection import Tx

CHECKPOINT_COLUMNS = ("thread_id", "checkpoint_ns", "checkpoint_id", "parent_id", "type",
                      "checkpoint", "metadata_type", "metadata")
VALUE_COLUMNS = ("channel", "version", "base", "anchor", "depth", "digest", "type", "data")
WRITE_COLUMNS = ("checkpoint_id", "task_id", "idx", "channel", "type", "data", "task_path")
_C = ", ".join(CHECKPOINT_COLUMNS)
_V = ", ".join(f"v.{c}" for c in VALUE_COLUMNS)
_W = ", ".join(WRITE_COLUMNS)
_INSERT_VALUE = (f"INSERT INTO langgraph_values (thread_id, checkpoint_ns, "
                 f"{', '.join(VALUE_COLUMNS)}) VALUES ({', '.join(['%s'] * 10)}) "
                 "ON CONFLICT (thread_id, checkpoint_ns, channel, version) DO NOTHING")
_INSERT_WRITE = ("INSERT INTO langgraph_writes (thread_id, checkpoint_ns, checkpoint_id, "
                 "task_id, idx, channel, type, data, task_path) "
                 "VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s) "
                 "ON CONFLICT (thread_id, checkpoint_ns, checkpoint_id, task_id, idx) ")
_TABLES = ("langgraph_checkpoints", "langgraph_values", "langgraph_writes")

Row = tuple[Any, ...]


def _marks(n: int, width: int = 1) -> str:
    """n placeholders, or n parenthesized tuples of `width` placeholders."""
    one = "%s" if width == 1 else "(" + ", ".join(["%s"] * width) + ")"
    return ", ".join([one] * n)


# -- checkpoints ------------------------------------------------------------------------------
def upsert_checkpoint(tx: Tx, row: Sequence[Any], run_id: str | None) -> None:
    """A checkpoint (values in the order of CHECKPOINT_COLUMNS); put again, it replaces
    the stored one (as LangGraph's own savers do)."""
    tx.run(f"INSERT INTO langgraph_checkpoints ({_C}, run_id) VALUES ({_marks(9)}) "
           "ON CONFLICT (thread_id, checkpoint_ns, checkpoint_id) DO UPDATE SET "
           "parent_id = excluded.parent_id, type = excluded.type, "
           "checkpoint = excluded.checkpoint, metadata_type = excluded.metadata_type, "
           "metadata = excluded.metadata, run_id = excluded.run_id", (*row, run_id))


def checkpoint(tx: Tx, thread_id: str, ns: str, checkpoint_id: str | None) -> Row | None:
    """That checkpoint, or the thread's latest in the namespace when the id is None."""
    if checkpoint_id is not None:
        return tx.one(f"SELECT {_C} FROM langgraph_checkpoints WHERE thread_id = %s AND "
                      "checkpoint_ns = %s AND checkpoint_id = %s", (thread_id, ns, checkpoint_id))
    return tx.one(f"SELECT {_C} FROM langgraph_checkpoints WHERE thread_id = %s AND "
                  "checkpoint_ns = %s ORDER BY checkpoint_id DESC LIMIT 1", (thread_id, ns))


def checkpoints(tx: Tx, *, thread_id: str | None = None, ns: str | None = None,
                checkpoint_id: str | None = None, before: str | None = None,
                limit: int | None = None) -> list[Row]:
    """Checkpoints newest first (by id), of a thread, a namespace, an id, with an id
    before `before`, at most `limit`; None: any."""
    where: list[str] = []
    params: list[Any] = []
    for column, value, op in (("thread_id", thread_id, "="), ("checkpoint_ns", ns, "="),
                              ("checkpoint_id", checkpoint_id, "="),
                              ("checkpoint_id", before, "<")):
        if value is not None:
            where.append(f"{column} {op} %s")
            params.append(value)
    sql = f"SELECT {_C} FROM langgraph_checkpoints"
    if where:
        sql += " WHERE " + " AND ".join(where)
    sql += " ORDER BY checkpoint_id DESC"
    if limit is not None:
        sql += " LIMIT %s"
        params.append(int(limit))
    return tx.all(sql, params)


def run_checkpoints(tx: Tx, run_ids: Sequence[str]) -> list[tuple[str, str, str]]:
    """(thread_id, checkpoint_ns, checkpoint_id) of the checkpoints of these runs."""
    if not run_ids:
        return []
    return [tuple(r) for r in tx.all(  # type: ignore[misc]
        "SELECT thread_id, checkpoint_ns, checkpoint_id FROM langgraph_checkpoints "
        f"WHERE run_id IN ({_marks(len(run_ids))})", list(run_ids))]


def delete_checkpoints(tx: Tx, keys: Iterable[tuple[str, str, str]]) -> None:
    """These checkpoints (thread_id, checkpoint_ns, checkpoint_id) and their writes."""
    keys = list(keys)
    tx.many("DELETE FROM langgraph_writes WHERE thread_id = %s AND checkpoint_ns = %s AND "
            "checkpoint_id = %s", keys)
    tx.many("DELETE FROM langgraph_checkpoints WHERE thread_id = %s AND checkpoint_ns = %s "
            "AND checkpoint_id = %s", keys)


def delete_thread(tx: Tx, thread_id: str) -> None:
    """Every checkpoint, value and write of the thread, in all its namespaces."""
    for table in _TABLES:
        tx.run(f"DELETE FROM {table} WHERE thread_id = %s", (thread_id,))


def copy_thread(tx: Tx, source: str, target: str) -> None:
    """Every row of `source` again under the thread id `target`."""
    tx.run(f"INSERT INTO langgraph_checkpoints ({_C}, run_id) SELECT %s, "
           + ", ".join(CHECKPOINT_COLUMNS[1:]) + ", run_id FROM langgraph_checkpoints "
           "WHERE thread_id = %s", (target, source))
    cols = ", ".join(VALUE_COLUMNS)
    tx.run(f"INSERT INTO langgraph_values (thread_id, checkpoint_ns, {cols}) SELECT %s, "
           f"checkpoint_ns, {cols} FROM langgraph_values WHERE thread_id = %s",
           (target, source))
    tx.run(f"INSERT INTO langgraph_writes (thread_id, checkpoint_ns, {_W}) SELECT %s, "
           f"checkpoint_ns, {_W} FROM langgraph_writes WHERE thread_id = %s", (target, source))


# -- channel values ---------------------------------------------------------------------------
def value_head(tx: Tx, thread_id: str, ns: str, channel: str,
               version: str) -> tuple[int, bytes] | None:
    """(depth, digest) of one value row, if it is there."""
    r = tx.one("SELECT depth, digest FROM langgraph_values WHERE thread_id = %s AND "
               "checkpoint_ns = %s AND channel = %s AND version = %s",
               (thread_id, ns, channel, version))
    return None if r is None else (int(r[0]), bytes(r[1]))


def insert_values(tx: Tx, rows: Sequence[Sequence[Any]]) -> None:
    """Rows of (thread_id, checkpoint_ns, channel, version, base, depth, digest, type,
    data); a (channel, version) stored already is kept as it is."""
    tx.many(_INSERT_VALUE, rows)


def value_chains(tx: Tx, thread_id: str, ns: str,
                 keys: Sequence[tuple[str, str]]) -> list[Row]:
    """The value rows of these (channel, version) keys and of every row they extend,
    down to whole values, in one statement: each key's chain is the whole row it is
    anchored at and the rows anchored there no deeper than it (an index lookup, not a
    walk: a recursive walk was planned as a scan of the thread per step on PostgreSQL).
    Rows of other branches anchored at the same row may come too; the caller follows
    `base`."""
    if not keys:
        return []
    flat = [x for k in keys for x in k]
    return tx.all(
        f"WITH want(channel, version) AS (VALUES {_marks(len(keys), 2)}), "
        "heads AS (SELECT v.channel, COALESCE(v.anchor, v.version) AS anchor, "
        "MAX(v.depth) AS depth FROM want w JOIN langgraph_values v ON v.thread_id = %s AND "
        "v.checkpoint_ns = %s AND v.channel = w.channel AND v.version = w.version "
        "GROUP BY v.channel, COALESCE(v.anchor, v.version)) "
        f"SELECT {_V} FROM heads h JOIN langgraph_values v ON v.thread_id = %s AND "
        "v.checkpoint_ns = %s AND v.channel = h.channel AND v.version = h.anchor "
        f"UNION ALL SELECT {_V} FROM heads h JOIN langgraph_values v ON v.thread_id = %s "
        "AND v.checkpoint_ns = %s AND v.channel = h.channel AND v.anchor = h.anchor AND "
        "v.depth <= h.depth",
        [*flat, thread_id, ns, thread_id, ns, thread_id, ns])


def value_keys(tx: Tx, thread_id: str, ns: str) -> list[tuple[str, str, str | None]]:
    """(channel, version, base) of every value row of a thread's namespace."""
    return [tuple(r) for r in tx.all(  # type: ignore[misc]
        "SELECT channel, version, base FROM langgraph_values WHERE thread_id = %s AND "
        "checkpoint_ns = %s", (thread_id, ns))]


def delete_values(tx: Tx, thread_id: str, ns: str, keys: Iterable[tuple[str, str]]) -> None:
    tx.many("DELETE FROM langgraph_values WHERE thread_id = %s AND checkpoint_ns = %s AND "
            "channel = %s AND version = %s", [(thread_id, ns, c, v) for c, v in keys])


# -- pending writes ---------------------------------------------------------------------------
def insert_writes(tx: Tx, rows: Sequence[Sequence[Any]], *, replace: bool) -> None:
    """Rows of (thread_id, checkpoint_ns, checkpoint_id, task_id, idx, channel, type, data,
    task_path). replace: a write stored under the same (task_id, idx) is replaced;
    otherwise it is kept."""
    if replace:
        tx.many(_INSERT_WRITE + "DO UPDATE SET channel = excluded.channel, "
                "type = excluded.type, data = excluded.data, task_path = excluded.task_path",
                rows)
    else:
        tx.many(_INSERT_WRITE + "DO NOTHING", rows)


def writes(tx: Tx, thread_id: str, ns: str, checkpoint_ids: Sequence[str]) -> list[Row]:
    """The writes of these checkpoints of a thread's namespace (in no order)."""
    if not checkpoint_ids:
        return []
    return tx.all(f"SELECT {_W} FROM langgraph_writes WHERE thread_id = %s AND "
                  f"checkpoint_ns = %s AND checkpoint_id IN ({_marks(len(checkpoint_ids))})",
                  [thread_id, ns, *checkpoint_ids])


# -- sizes ------------------------------------------------------------------------------------
def thread_bytes(tx: Tx, thread_id: str) -> dict[str, int]:
    """The bytes of a thread's stored checkpoints, values and writes (the serialized
    payloads and the ids, not the database's own overhead), by table."""
    out = {}
    for table, cols in (
            ("langgraph_checkpoints", "checkpoint_ns, checkpoint_id, parent_id, run_id, "
                                      "type, checkpoint, metadata_type, metadata"),
            ("langgraph_values", "checkpoint_ns, channel, version, base, anchor, digest, "
                                 "type, data"),
            ("langgraph_writes", "checkpoint_ns, checkpoint_id, task_id, channel, type, "
                                 "data, task_path")):
        total = " + ".join(f"COALESCE(LENGTH({c}), 0)" for c in ["thread_id",
                                                                 *cols.split(", ")])
        out[table] = int(tx.value(f"SELECT COALESCE(SUM({total}), 0) FROM {table} "
                                  "WHERE thread_id = %s", (thread_id,)) or 0)
    return out
