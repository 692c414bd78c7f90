"""Storage's statements (tables `torpor_pins`, `torpor_leases`, and reads of
`torpor_snapshots` and `torpor_sessions`): when each snapshot was taken, what still refers
to a snapshot, and the named leases that let one process per store run the scheduled gc.
`torpor.runtime.retention` and `torpor.runtime.storage` hold the logic around them.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from ..connection import Tx

Row = tuple[Any, ...]


# -- snapshots ----------------------------------------------------------------------------------
def snapshot_times(tx: Tx, ids: Sequence[str]) -> list[Row]:
    """(id, created_at, machine, process) of the recorded snapshots among `ids`."""
    if not ids:
        return []
    marks = ", ".join(["%s"] * len(ids))
    return tx.all("SELECT id, created_at, machine, process FROM torpor_snapshots "
                  f"WHERE id IN ({marks})", list(ids))


def forget_snapshot(tx: Tx, snapshot: str) -> None:
    """A snapshot deleted from the store: its records of who took and holds it go too."""
    tx.run("DELETE FROM torpor_snapshots WHERE id = %s", (snapshot,))
    tx.run("DELETE FROM torpor_copies WHERE snapshot = %s", (snapshot,))
    tx.run("DELETE FROM torpor_pins WHERE snapshot = %s", (snapshot,))


def tenant_snapshots(tx: Tx, tenant: str | None) -> int:
    """How many recorded snapshots the tenant's sessions have (None: sessions without a
    tenant)."""
    cond = "s.tenant IS NULL" if tenant is None else "s.tenant = %s"
    return int(tx.value("SELECT COUNT(*) FROM torpor_snapshots p JOIN torpor_sessions s "
                        f"ON s.id = p.session WHERE {cond}",
                        () if tenant is None else (tenant,)) or 0)  # fmt: skip


# -- pins -----------------------------------------------------------------------------------------
def pin(tx: Tx, snapshot: str, holder: str, until: float) -> None:
    tx.run("INSERT INTO torpor_pins (snapshot, holder, until) VALUES (%s, %s, %s) "
           "ON CONFLICT (snapshot, holder) DO UPDATE SET until = excluded.until",
           (snapshot, holder, until))


def unpin(tx: Tx, snapshot: str, holder: str) -> None:
    tx.run("DELETE FROM torpor_pins WHERE snapshot = %s AND holder = %s", (snapshot, holder))


def pin_holder(tx: Tx, snapshot: str, now: float) -> str | None:
    """Who pins the snapshot (a pin not expired), if anyone."""
    return tx.value("SELECT holder FROM torpor_pins WHERE snapshot = %s AND until > %s "
                    "LIMIT 1", (snapshot, now))


def drop_expired_pins(tx: Tx, now: float) -> int:
    return tx.run("DELETE FROM torpor_pins WHERE until <= %s", (now,))


# -- named leases ---------------------------------------------------------------------------------
def take_named_lease(tx: Tx, name: str, owner: str, until: float, now: float) -> bool:
    """Take (or extend) the lease `name` unless another owner holds a live one; its note
    (what the last holder left) stays."""
    return tx.run(
        "INSERT INTO torpor_leases (name, owner, until) VALUES (%s, %s, %s) "
        "ON CONFLICT (name) DO UPDATE SET owner = excluded.owner, until = excluded.until "
        "WHERE torpor_leases.until < %s OR torpor_leases.owner = excluded.owner",
        (name, owner, until, now)) == 1


def end_named_lease(tx: Tx, name: str, owner: str, note: str | None) -> None:
    """Let go of the lease (it expires now); note: what to leave for the next holder and
    for readers (None: the note stays as it is)."""
    if note is None:
        tx.run("UPDATE torpor_leases SET until = 0 WHERE name = %s AND owner = %s",
               (name, owner))
    else:
        tx.run("UPDATE torpor_leases SET until = 0, note = %s WHERE name = %s AND owner = %s",
               (note, name, owner))


def named_lease(tx: Tx, name: str) -> Row | None:
    """(owner, until, note) of the lease `name`."""
    return tx.one("SELECT owner, until, note FROM torpor_leases WHERE name = %s", (name,))


def named_leases(tx: Tx, prefix: str) -> list[Row]:
    """(name, owner, until, note) of the leases whose name starts with `prefix`."""
    return tx.all("SELECT name, owner, until, note FROM torpor_leases WHERE name LIKE %s "
                  "ORDER BY name", (prefix + "%",))


def unlisted_snapshots(tx: Tx, before: float) -> list[Row]:
    """(snapshot, session, policy) of the snapshots recorded before `before` whose session
    lists them no more (neither as its latest nor in its list): a wait point's retention
    delete that a crash cut short leaves them (or a keep-everything session's older
    ones: the caller tells them apart by the policy)."""
    return tx.all(
        "SELECT p.id, p.session, s.policy FROM torpor_snapshots p JOIN torpor_sessions s "
        "ON s.id = p.session WHERE p.created_at < %s AND (s.snapshot IS NULL OR "
        "s.snapshot <> p.id) AND s.snapshots NOT LIKE (%s || p.id || %s) "
        "ORDER BY p.created_at", (before, '%"', '"%'))


# -- usage ----------------------------------------------------------------------------------------
USAGE_COLUMNS = ("kind", "name", "tenant", "snapshots", "logical", "stored", "exclusive", "at")


def replace_usage(tx: Tx, rows: Sequence[Sequence[Any]]) -> None:
    """Every usage row at once (in the order of USAGE_COLUMNS): the old ones go."""
    tx.run("DELETE FROM torpor_usage")
    for r in rows:
        tx.run(f"INSERT INTO torpor_usage ({', '.join(USAGE_COLUMNS)}) VALUES "
               f"({', '.join(['%s'] * len(USAGE_COLUMNS))})", r)


def usage_rows(tx: Tx, kind: str, *, tenant: str | None = None,
               name: str | None = None) -> list[Row]:  # fmt: skip
    """Usage rows of a kind ('session', 'tenant', 'store'), of one tenant or name."""
    sql = f"SELECT {', '.join(USAGE_COLUMNS)} FROM torpor_usage WHERE kind = %s"
    params: list[Any] = [kind]
    if tenant is not None:
        sql += " AND tenant = %s"
        params.append(tenant)
    if name is not None:
        sql += " AND name = %s"
        params.append(name)
    return tx.all(sql + " ORDER BY stored DESC, name", params)


def snapshot_sessions(tx: Tx) -> list[Row]:
    """(snapshot, session, tenant) of every recorded snapshot."""
    return tx.all("SELECT p.id, p.session, s.tenant FROM torpor_snapshots p LEFT JOIN "
                  "torpor_sessions s ON s.id = p.session")


def session_tenants(tx: Tx) -> list[Row]:
    """(session, tenant) of every session."""
    return tx.all("SELECT id, tenant FROM torpor_sessions")


def closed_sessions(tx: Tx, before: float) -> list[Row]:
    """(id, snapshot, snapshots) of the sessions closed before `before` (their last
    change) that still name a snapshot or have one recorded."""
    return tx.all(
        "SELECT s.id, s.snapshot, s.snapshots FROM torpor_sessions s WHERE s.state = "
        "'closed' AND s.updated_at < %s AND (s.snapshot IS NOT NULL OR EXISTS (SELECT 1 "
        "FROM torpor_snapshots p WHERE p.session = s.id)) ORDER BY s.updated_at", (before,))


def recorded_of(tx: Tx, session: str) -> list[str]:
    """The recorded snapshots of a session."""
    return [str(r[0]) for r in tx.all(
        "SELECT id FROM torpor_snapshots WHERE session = %s ORDER BY created_at", (session,))]


def drop_session_snapshots(tx: Tx, session: str, now: float) -> None:
    """A closed session's snapshots are gone: its row names none any more."""
    tx.run("UPDATE torpor_sessions SET snapshot = NULL, snapshots = '[]', updated_at = %s "
           "WHERE id = %s AND state = 'closed'", (now, session))


def snapshot_named(tx: Tx, snapshot: str) -> bool:
    """Does a session's row (its latest or its list) or a sandbox's snapshot rows name it?"""
    return tx.value(
        "SELECT 1 FROM torpor_sessions WHERE snapshot = %s OR snapshots LIKE (%s || %s || %s) "
        "UNION ALL SELECT 1 FROM torpor_sandbox_snapshots WHERE id = %s LIMIT 1",
        (snapshot, '%"', snapshot, '"%', snapshot)) is not None
