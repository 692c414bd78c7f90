"""The API tokens' statements (table `torpor_tokens`) and the per-tenant counts of
sessions that limits need; `torpor.api.tokens` holds the logic around them.

Token rows come back as (id, tenant, scopes, note, created_at, revoked_at).
"""

from __future__ import annotations

from typing import Any

from ..connection import Tx

Row = tuple[Any, ...]


def insert_token(tx: Tx, tid: str, tenant: str, scopes: str, hash_: str, note: str | None,
                 at: float) -> None:
    tx.run("INSERT INTO torpor_tokens (id, tenant, scopes, hash, note, created_at) "
           "VALUES (%s, %s, %s, %s, %s, %s)", (tid, tenant, scopes, hash_, note, at))


def tokens(tx: Tx, *, include_revoked: bool) -> list[Row]:
    sql = "SELECT id, tenant, scopes, note, created_at, revoked_at FROM torpor_tokens"
    if not include_revoked:
        sql += " WHERE revoked_at IS NULL"
    return tx.all(sql + " ORDER BY created_at")


def revoke(tx: Tx, tid: str, at: float) -> bool:
    """False when there is no live token with that id."""
    return tx.run("UPDATE torpor_tokens SET revoked_at = %s WHERE id = %s "
                  "AND revoked_at IS NULL", (at, tid)) == 1


def any_live(tx: Tx) -> bool:
    return tx.one("SELECT 1 FROM torpor_tokens WHERE revoked_at IS NULL LIMIT 1") is not None


def live_token(tx: Tx, tid: str) -> Row | None:
    """(tenant, scopes, hash) of the live token with that id."""
    return tx.one("SELECT tenant, scopes, hash FROM torpor_tokens "
                  "WHERE id = %s AND revoked_at IS NULL", (tid,))


def _tenant(column: str, tenant: str | None) -> tuple[str, tuple[Any, ...]]:
    return (f"{column} IS NULL", ()) if tenant is None else (f"{column} = %s", (tenant,))


def open_sessions(tx: Tx, tenant: str | None) -> int:
    """Sessions of the tenant (None: of no tenant) not closed."""
    cond, params = _tenant("tenant", tenant)
    return int(tx.value("SELECT COUNT(*) FROM torpor_sessions WHERE state != 'closed' AND "
                        + cond, params))


def busy_sessions(tx: Tx, tenant: str | None) -> int:
    """Sessions of the tenant with a turn queued, running, recovering or retrying."""
    cond, params = _tenant("s.tenant", tenant)
    return int(tx.value(
        "SELECT COUNT(*) FROM torpor_sessions s WHERE state != 'closed' AND " + cond
        + " AND (state IN ('running', 'recovering', 'retrying') OR EXISTS ("
        "  SELECT 1 FROM torpor_inbox i WHERE i.session = s.id AND i.consumed = 0))",
        params))
