"""The sandbox resource's statements (tables `torpor_sandboxes`, `torpor_sandbox_snapshots`);
`torpor.runtime.sandboxes` holds the logic around them.

Sandbox rows come back as tuples in the order of `SANDBOX_COLUMNS`, snapshot rows in the
order of `SNAPSHOT_COLUMNS`. A change of a sandbox's state is one UPDATE conditional on
the row's `version` (which it bumps): of two processes changing one sandbox at once, one
wins and the other sees that it lost.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from ..connection import Tx

SANDBOX_COLUMNS = ("id", "tenant", "image", "state", "box", "machine", "process", "snapshot",
                   "source", "timeout", "on_timeout", "auto_resume", "last_activity",
                   "metadata", "env", "note", "version", "created_at", "updated_at",
                   "paused_at", "killed_at")
SNAPSHOT_COLUMNS = ("id", "sandbox", "tenant", "name", "kind", "bytes", "created_at")
_SELECT = f"SELECT {', '.join(SANDBOX_COLUMNS)} FROM torpor_sandboxes"
_SNAP_SELECT = f"SELECT {', '.join(SNAPSHOT_COLUMNS)} FROM torpor_sandbox_snapshots"

Row = tuple[Any, ...]


def _tenant(tenant: str | None) -> tuple[str, tuple[Any, ...]]:
    return ("tenant IS NULL", ()) if tenant is None else ("tenant = %s", (tenant,))


# -- sandboxes --------------------------------------------------------------------------------
def insert_sandbox(tx: Tx, values: Sequence[Any]) -> None:
    """A new row: values in the order of SANDBOX_COLUMNS."""
    tx.run(f"INSERT INTO torpor_sandboxes ({', '.join(SANDBOX_COLUMNS)}) VALUES ("
           + ", ".join(["%s"] * len(SANDBOX_COLUMNS)) + ")", values)


def sandbox(tx: Tx, sid: str) -> Row | None:
    return tx.one(f"{_SELECT} WHERE id = %s", (sid,))


def sandboxes(tx: Tx, *, tenant: str | None, every_tenant: bool = False,
              state: str | None = None) -> list[Row]:  # fmt: skip
    """Rows in order of creation: of `tenant` (None: of no tenant) unless `every_tenant`,
    of one state when given."""
    where: list[str] = []
    params: list[Any] = []
    if not every_tenant:
        cond, p = _tenant(tenant)
        where.append(cond)
        params += p
    if state is not None:
        where.append("state = %s")
        params.append(state)
    sql = _SELECT + (" WHERE " + " AND ".join(where) if where else "")
    return tx.all(sql + " ORDER BY created_at, id", params)


def update_sandbox(tx: Tx, sid: str, values: Mapping[str, Any], *,
                   version: int | None = None) -> bool:  # fmt: skip
    """Set columns and bump the version; with `version`, only if the row is still at it.
    False if the row did not match."""
    bad = [k for k in values if k not in SANDBOX_COLUMNS or k in ("id", "version")]
    if bad:
        raise ValueError(f"not a column of a sandbox's row: {bad[0]!r}")
    sets = ", ".join([*(f"{k} = %s" for k in values), "version = version + 1"])
    sql = f"UPDATE torpor_sandboxes SET {sets} WHERE id = %s"
    params: list[Any] = [*values.values(), sid]
    if version is not None:
        sql += " AND version = %s"
        params.append(version)
    return tx.run(sql, params) == 1


def touch(tx: Tx, sid: str, at: float) -> None:
    """Record activity at `at` (not a change of state: the version stays)."""
    tx.run("UPDATE torpor_sandboxes SET last_activity = %s WHERE id = %s AND "
           "last_activity < %s", (at, sid, at))


def held_by(tx: Tx, process: str) -> list[Row]:
    """The running sandboxes that `process` holds live."""
    return tx.all(f"{_SELECT} WHERE process = %s AND state = 'running' ORDER BY created_at",
                  (process,))


def running_on(tx: Tx, machine: str) -> list[Row]:
    """The running sandboxes held live by a process of `machine`."""
    return tx.all(f"{_SELECT} WHERE machine = %s AND state = 'running' ORDER BY created_at",
                  (machine,))


def running_count(tx: Tx, tenant: str | None) -> int:
    """Running sandboxes of the tenant (None: of no tenant)."""
    cond, params = _tenant(tenant)
    return int(tx.value("SELECT COUNT(*) FROM torpor_sandboxes WHERE state = 'running' "
                        "AND " + cond, params))


# -- snapshots --------------------------------------------------------------------------------
def insert_snapshot(tx: Tx, values: Sequence[Any]) -> None:
    """A new row: values in the order of SNAPSHOT_COLUMNS."""
    tx.run(f"INSERT INTO torpor_sandbox_snapshots ({', '.join(SNAPSHOT_COLUMNS)}) VALUES ("
           + ", ".join(["%s"] * len(SNAPSHOT_COLUMNS)) + ")", values)


def snapshot(tx: Tx, snap: str) -> Row | None:
    return tx.one(f"{_SNAP_SELECT} WHERE id = %s", (snap,))


def snapshots_of(tx: Tx, sid: str) -> list[Row]:
    """A sandbox's snapshots, oldest first."""
    return tx.all(f"{_SNAP_SELECT} WHERE sandbox = %s ORDER BY created_at, id", (sid,))


def delete_snapshot(tx: Tx, snap: str) -> bool:
    return tx.run("DELETE FROM torpor_sandbox_snapshots WHERE id = %s", (snap,)) == 1
