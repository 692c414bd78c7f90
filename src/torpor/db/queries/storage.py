"""Storage's statements (tables `torpor_pins`, `torpor_leases`, `torpor_usage`,
`torpor_usage_added`, `torpor_quotas`, and reads of `torpor_snapshots`,
`torpor_sessions` and the sandbox resource's tables): when each snapshot was taken, what
still refers to a snapshot, the named leases that let one process per store run the
scheduled gc, what each tenant stores and its limits. `torpor.runtime.retention`,
`torpor.runtime.storage` and `torpor.runtime.quotas` hold the logic around them.
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


def tenant_sandbox_snapshots(tx: Tx, tenant: str | None) -> int:
    """How many snapshots (pause and named) the tenant's sandboxes of the sandbox resource
    have (None: those without a tenant)."""
    cond = "tenant IS NULL" if tenant is None else "tenant = %s"
    return int(tx.value(f"SELECT COUNT(*) FROM torpor_sandbox_snapshots WHERE {cond}",
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
    if rows:  # one executemany, not a statement per session
        tx.many(f"INSERT INTO torpor_usage ({', '.join(USAGE_COLUMNS)}) VALUES "
                f"({', '.join(['%s'] * len(USAGE_COLUMNS))})", rows)


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


def most_snapshots(tx: Tx, tenant: str | None, most: int) -> dict[str, list[Row]]:
    """(owner, snapshots) of the tenant's sessions and sandboxes with the most recorded
    snapshots (None: those without a tenant), by kind ('session', 'sandbox')."""
    cond, args = ("IS NULL", ()) if tenant is None else ("= %s", (tenant,))
    return {
        "session": tx.all("SELECT p.session, COUNT(*) AS n FROM torpor_snapshots p JOIN "
                          f"torpor_sessions s ON s.id = p.session WHERE s.tenant {cond} "
                          "GROUP BY p.session ORDER BY n DESC, p.session LIMIT %s",
                          (*args, most)),
        "sandbox": tx.all("SELECT sandbox, COUNT(*) AS n FROM torpor_sandbox_snapshots "
                          f"WHERE tenant {cond} GROUP BY sandbox ORDER BY n DESC, sandbox "
                          "LIMIT %s", (*args, most)),
    }  # fmt: skip


def sandbox_snapshot_owners(tx: Tx) -> list[Row]:
    """(snapshot, sandbox, tenant) of every snapshot of the sandbox resource's sandboxes."""
    return tx.all("SELECT id, sandbox, tenant FROM torpor_sandbox_snapshots")


def sandbox_tenants(tx: Tx) -> list[Row]:
    """(sandbox, tenant) of every sandbox of the sandbox resource."""
    return tx.all("SELECT id, tenant FROM torpor_sandboxes")


def owner_tenant(tx: Tx, table: str, owner: str) -> Row | None:
    """(tenant,) of a session (`table` torpor_sessions) or a sandbox (torpor_sandboxes);
    None when there is no such row."""
    assert table in ("torpor_sessions", "torpor_sandboxes")
    return tx.one(f"SELECT tenant FROM {table} WHERE id = %s", (owner,))


def known_tenants(tx: Tx) -> list[str]:
    """Every tenant that has sessions, sandboxes, a usage count, a quota of its own or an
    API token not revoked ('' for those without a tenant)."""
    return sorted({str(r[0] or "") for r in tx.all(
        "SELECT tenant FROM torpor_sessions UNION SELECT tenant FROM torpor_sandboxes "
        "UNION SELECT name FROM torpor_usage WHERE kind = 'tenant' "
        "UNION SELECT tenant FROM torpor_quotas "
        "UNION SELECT tenant FROM torpor_tokens WHERE revoked_at IS NULL")})  # fmt: skip


# -- bytes stored since the last count ------------------------------------------------------------
def add_stored(tx: Tx, snapshot: str, tenant: str, nbytes: int, at: float) -> None:
    """A snapshot of the tenant's was stored, adding `nbytes` to the store (once per
    snapshot)."""
    tx.run("INSERT INTO torpor_usage_added (snapshot, tenant, bytes, at) VALUES "
           "(%s, %s, %s, %s) ON CONFLICT (snapshot) DO NOTHING",
           (snapshot, tenant, nbytes, at))


def stored_since(tx: Tx, tenant: str, since: float) -> int:
    """The bytes the tenant's snapshots added to the store since `since`."""
    return int(tx.value("SELECT COALESCE(SUM(bytes), 0) FROM torpor_usage_added WHERE "
                        "tenant = %s AND at >= %s", (tenant, since)) or 0)  # fmt: skip


def drop_stored_before(tx: Tx, before: float) -> int:
    """What a count that began at `before` has seen."""
    return tx.run("DELETE FROM torpor_usage_added WHERE at < %s", (before,))


# -- quotas ---------------------------------------------------------------------------------------
def quota_of(tx: Tx, tenant: str) -> Row | None:
    """(stored_bytes, snapshots) of the tenant's own limits (NULL: the server's)."""
    return tx.one("SELECT stored_bytes, snapshots FROM torpor_quotas WHERE tenant = %s",
                  (tenant,))


def set_quota(tx: Tx, tenant: str, stored_bytes: int | None, snapshots: int | None,
              now: float) -> None:  # fmt: skip
    tx.run("INSERT INTO torpor_quotas (tenant, stored_bytes, snapshots, updated_at) VALUES "
           "(%s, %s, %s, %s) ON CONFLICT (tenant) DO UPDATE SET stored_bytes = "
           "excluded.stored_bytes, snapshots = excluded.snapshots, updated_at = "
           "excluded.updated_at", (tenant, stored_bytes, snapshots, now))


def quotas(tx: Tx) -> list[Row]:
    """(tenant, stored_bytes, snapshots, updated_at) of every tenant with limits of its
    own."""
    return tx.all("SELECT tenant, stored_bytes, snapshots, updated_at FROM torpor_quotas "
                  "ORDER BY tenant")


def remove_quota(tx: Tx, tenant: str) -> bool:
    return tx.run("DELETE FROM torpor_quotas WHERE tenant = %s", (tenant,)) == 1
