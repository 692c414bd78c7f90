"""The runtime's statements (tables `torpor_sessions`, `torpor_inbox`,
`torpor_heartbeats`, `torpor_snapshots`, `torpor_copies`); `torpor.runtime.db` holds
the logic around them.

Session rows come back as tuples in the order of `SESSION_COLUMNS`. Every change of a
lease is one conditional UPDATE; claims of "any work" on PostgreSQL lock the row they
pick with FOR UPDATE SKIP LOCKED, so concurrent workers pick different sessions.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from ..connection import Tx

SESSION_COLUMNS = ("id", "state", "image", "model", "system", "tools", "policy", "snapshot",
                   "snapshot_seq", "snapshots", "lease_owner", "lease_until", "wake_at",
                   "attempt", "parent", "error", "created_at", "updated_at", "tenant",
                   "cancel")
_COLS = ", ".join(SESSION_COLUMNS)
_SELECT = f"SELECT {_COLS} FROM torpor_sessions"
_INSERT = (f"INSERT INTO torpor_sessions ({_COLS}) VALUES ("
           + ", ".join(["%s"] * len(SESSION_COLUMNS)) + ")")
# the machines with a hot copy of a session's latest snapshot: the one that took it, and
# those that fetched it ahead (runtime/prefetch.py)
_HOLDERS = ("(SELECT p.machine AS machine FROM torpor_snapshots p WHERE p.id = "
            "s.snapshot UNION SELECT c.machine FROM torpor_copies c WHERE "
            "c.snapshot = s.snapshot)")

Row = tuple[Any, ...]


# -- sessions ---------------------------------------------------------------------------------
def insert_session(tx: Tx, values: Sequence[Any]) -> None:
    """A new row: values in the order of SESSION_COLUMNS."""
    tx.run(_INSERT, values)


def session(tx: Tx, sid: str) -> Row | None:
    return tx.one(f"{_SELECT} WHERE id = %s", (sid,))


def sessions(tx: Tx, *, state: str | None = None, tenant: str | None = None) -> list[Row]:
    """Rows in order of creation, of one state and one tenant when given."""
    where, params = [], []
    if state:
        where.append("state = %s")
        params.append(state)
    if tenant is not None:
        where.append("tenant = %s")
        params.append(tenant)
    sql = _SELECT + (" WHERE " + " AND ".join(where) if where else "")
    return tx.all(sql + " ORDER BY created_at", params)


def update_session(tx: Tx, sid: str, values: Mapping[str, Any], *,
                   owner: str | None = None) -> bool:
    """Set columns; with owner, only while that owner holds the lease. False if the row
    did not match."""
    bad = [k for k in values if k not in SESSION_COLUMNS or k == "id"]
    if bad:
        raise ValueError(f"not a column of a session's row: {bad[0]!r}")
    sets = ", ".join(f"{k} = %s" for k in values)
    sql = f"UPDATE torpor_sessions SET {sets} WHERE id = %s"
    params: list[Any] = [*values.values(), sid]
    if owner is not None:
        sql += " AND lease_owner = %s"
        params.append(owner)
    return tx.run(sql, params) == 1


def session_state(tx: Tx, sid: str) -> str | None:
    return tx.value("SELECT state FROM torpor_sessions WHERE id = %s", (sid,))


def snapshot_named(tx: Tx, snapshot: str, like: str, *, besides: str) -> bool:
    """Does a session other than `besides` name the snapshot (as its latest, or in its
    list: `like`, a LIKE pattern over the JSON list)?"""
    return tx.one("SELECT 1 FROM torpor_sessions WHERE id <> %s AND (snapshot = %s OR "
                  "snapshots LIKE %s) LIMIT 1", (besides, snapshot, like)) is not None


def next_wake(tx: Tx) -> float | None:
    return tx.value("SELECT MIN(wake_at) FROM torpor_sessions WHERE state = 'retrying'")


def set_cancel(tx: Tx, sid: str, what: str, now: float) -> None:
    tx.run("UPDATE torpor_sessions SET cancel = %s, updated_at = %s "
           "WHERE id = %s AND state != 'closed'", (what, now, sid))


def clear_cancel(tx: Tx, sid: str, *, retry: bool) -> None:
    """A message was posted: no cancel stands; retry: a failed session waits again."""
    new_state = ", state = 'waiting'" if retry else ""
    tx.run(f"UPDATE torpor_sessions SET cancel = NULL{new_state} WHERE id = %s", (sid,))


def cancel_requested(tx: Tx, sid: str) -> str | None:
    return tx.value("SELECT cancel FROM torpor_sessions WHERE id = %s", (sid,))


# -- leases -----------------------------------------------------------------------------------
def take_lease(tx: Tx, sid: str, owner: str, until: float, now: float) -> bool:
    """Take the session's lease if nobody holds a live one (or `owner` does)."""
    return tx.run(
        "UPDATE torpor_sessions SET lease_owner = %s, lease_until = %s, updated_at = %s "
        "WHERE id = %s AND state != 'closed' "
        "AND (lease_owner IS NULL OR lease_until < %s OR lease_owner = %s)",
        (owner, until, now, sid, now, owner)) == 1


def set_lease(tx: Tx, sid: str, owner: str, until: float, now: float) -> None:
    """Give the lease of a session this transaction picked (and locked) to `owner`."""
    tx.run("UPDATE torpor_sessions SET lease_owner = %s, lease_until = %s, updated_at = %s "
           "WHERE id = %s", (owner, until, now, sid))


def extend_lease(tx: Tx, sid: str, owner: str, until: float) -> bool:
    return tx.run("UPDATE torpor_sessions SET lease_until = %s WHERE id = %s "
                  "AND lease_owner = %s", (until, sid, owner)) == 1


def session_with_work(tx: Tx, owner: str, now: float, *, machine: str | None,
                      affinity: float, machine_ttl: float) -> str | None:
    """The id of one session with work that `owner` may claim, locked for this transaction
    on PostgreSQL (see `RuntimeDB.claim_any` for what counts as work and affinity)."""
    mine, params = "", [now, owner, now]
    if machine is not None and affinity > 0:
        # (a holder's free slots: over its processes whose heartbeat is fresh)
        mine = (
            f"AND (%s IN {_HOLDERS} OR NOT EXISTS (SELECT 1 FROM {_HOLDERS} hm "
            "  WHERE hm.machine <> %s AND (SELECT COALESCE(SUM(h.slots - h.running), 0) "
            "    FROM torpor_heartbeats h WHERE h.machine = hm.machine "
            "    AND h.heartbeat_at > %s) > 0) "
            "  OR EXISTS (SELECT 1 FROM torpor_inbox i WHERE i.session = s.id "
            "    AND i.consumed = 0 AND i.created_at <= %s)) "
        )
        params += [machine, machine, now - machine_ttl, now - affinity]
    order = "updated_at"
    if machine is not None:
        order = f"CASE WHEN %s IN {_HOLDERS} THEN 0 ELSE 1 END, updated_at"
        params.append(machine)
    return tx.value(
        "SELECT id FROM torpor_sessions s WHERE state NOT IN ('closed', 'failed') "
        "AND (lease_owner IS NULL OR lease_until < %s OR lease_owner = %s) "
        # wake_at is a retry's timer; on a waiting session it only says when a
        # warm sandbox gets snapshotted, and does not hold the session back.
        "AND (wake_at IS NULL OR wake_at <= %s OR state = 'waiting') "
        "AND (state IN ('running', 'recovering', 'retrying') OR EXISTS ("
        "  SELECT 1 FROM torpor_inbox i WHERE i.session = s.id AND i.consumed = 0)) "
        f"{mine}ORDER BY {order} LIMIT 1{tx.dialect.skip_locked}",
        params,
    )


# -- machines ---------------------------------------------------------------------------------
def beat(tx: Tx, process: str, machine: str, host: str, at: float, slots: int,
         running: int) -> None:
    tx.run("INSERT INTO torpor_heartbeats (process, machine, host, heartbeat_at, slots, "
           "running) VALUES (%s, %s, %s, %s, %s, %s) ON CONFLICT (process) DO UPDATE SET "
           "heartbeat_at = excluded.heartbeat_at, slots = excluded.slots, "
           "running = excluded.running", (process, machine, host, at, slots, running))


def forget_process(tx: Tx, process: str) -> None:
    tx.run("DELETE FROM torpor_heartbeats WHERE process = %s", (process,))


def process_alive(tx: Tx, process: str, since: float) -> bool:
    return tx.one("SELECT 1 FROM torpor_heartbeats WHERE process = %s AND "
                  "heartbeat_at > %s", (process, since)) is not None


def live_machines(tx: Tx, since: float) -> list[str]:
    """Machines with a process whose heartbeat is newer than `since`."""
    return [str(r[0]) for r in tx.all(
        "SELECT DISTINCT machine FROM torpor_heartbeats WHERE heartbeat_at > %s", (since,))]


# -- snapshots and their copies -----------------------------------------------------------------
def record_snapshot(tx: Tx, snapshot: str, session: str, machine: str, process: str,
                    at: float) -> None:
    tx.run("INSERT INTO torpor_snapshots (id, session, machine, process, created_at) "
           "VALUES (%s, %s, %s, %s, %s) ON CONFLICT DO NOTHING",
           (snapshot, session, machine, process, at))


def record_copy(tx: Tx, snapshot: str, machine: str, at: float) -> None:
    tx.run("INSERT INTO torpor_copies (snapshot, machine, at) VALUES (%s, %s, %s) "
           "ON CONFLICT DO NOTHING", (snapshot, machine, at))


def snapshot_copies(tx: Tx, snapshot: str) -> list[str]:
    return [str(r[0]) for r in tx.all(
        "SELECT machine FROM torpor_copies WHERE snapshot = %s ORDER BY at", (snapshot,))]


def snapshots_since(tx: Tx, since: float) -> list[Row]:
    """(snapshot, session, machine, created_at) of the snapshots recorded after `since`
    that are still their live session's latest, oldest first."""
    return tx.all("SELECT p.id, p.session, p.machine, p.created_at FROM torpor_snapshots "
                  "p JOIN torpor_sessions s ON s.id = p.session AND s.snapshot = p.id "
                  "WHERE p.created_at > %s AND s.state NOT IN ('closed', 'failed') "
                  "ORDER BY p.created_at", (since,))


def snapshot_holder(tx: Tx, snapshot: str) -> Row | None:
    """(machine, process) that took the snapshot."""
    return tx.one("SELECT machine, process FROM torpor_snapshots WHERE id = %s", (snapshot,))


# -- inbox ------------------------------------------------------------------------------------
def queue_message(tx: Tx, sid: str, text: str, at: float, key: str | None) -> int | None:
    """The new inbox id, or None when a message with the key is there already (the
    unique index on (session, key))."""
    return tx.value("INSERT INTO torpor_inbox (session, text, created_at, consumed, key) "
                    "VALUES (%s, %s, %s, 0, %s) ON CONFLICT DO NOTHING RETURNING id",
                    (sid, text, at, key))


def message_with_key(tx: Tx, sid: str, key: str) -> int | None:
    return tx.value("SELECT id FROM torpor_inbox WHERE session = %s AND key = %s", (sid, key))


def unread(tx: Tx, sid: str) -> list[Row]:
    """(id, text) of the messages not consumed yet, oldest first."""
    return tx.all("SELECT id, text FROM torpor_inbox WHERE session = %s AND consumed = 0 "
                  "ORDER BY id", (sid,))


def consume(tx: Tx, ids: Sequence[int]) -> None:
    for i in ids:
        tx.run("UPDATE torpor_inbox SET consumed = 1 WHERE id = %s", (i,))


# -- the process's readiness ----------------------------------------------------------------------
def ping(tx: Tx) -> None:
    """A statement that needs the database to answer."""
    tx.one("SELECT 1")
