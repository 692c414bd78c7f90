"""API tokens: a small table next to the runtime's own (Idempotency-Keys live with the
messages they were posted with, in the runtime's inbox); its statements and migration
belong to the database layer (`torpor.db.queries.tokens`).

A token is shown once when it is made (`tpk_<id>_<secret>`); only its SHA-256 is stored.
Each token belongs to one tenant and carries scopes: `drive` (sessions, messages, events,
log, snapshots), `exec` (commands and file reads in a session's sandbox), `sandboxes`
(the sandbox resource, /v1/sandboxes and the E2B protocol: create, commands, files,
pause, resume, snapshots, kill) and `admin` (metrics, and every tenant's sessions and
sandboxes).
"""

from __future__ import annotations

import hashlib
import hmac
import json
import secrets
import time
from dataclasses import dataclass, field
from typing import Any

from torpor.db.queries import tokens as q
from torpor.runtime.db import RuntimeDB

SCOPES = ("drive", "exec", "sandboxes", "admin")


class TokenError(Exception):
    """A token request that cannot be done (unknown scope, unknown token id)."""


@dataclass
class Principal:
    """Who is asking: a tenant with scopes (tenant None with auth off: sees everything)."""

    tenant: str | None
    scopes: frozenset[str] = field(default_factory=lambda: frozenset(SCOPES))
    token_id: str | None = None

    @property
    def all_tenants(self) -> bool:
        return self.tenant is None or "admin" in self.scopes


@dataclass
class TokenInfo:
    id: str
    tenant: str
    scopes: list[str]
    note: str | None
    created_at: float
    revoked_at: float | None

    def to_json(self) -> dict[str, Any]:
        return dict(self.__dict__)


def _hash(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


class TokenStore:
    """Tokens in the runtime's database (SQLite or PostgreSQL)."""

    def __init__(self, db: RuntimeDB) -> None:
        self.db = db  # (its database was migrated when it was opened: the table is there)
        self._read, self._write = db.database.read, db.database.write

    # -- tokens ------------------------------------------------------------------------

    def create(self, tenant: str, scopes: list[str] | None = None,
               note: str | None = None) -> tuple[str, TokenInfo]:  # fmt: skip
        """Make a token; returns (the token text, shown only now, and its record)."""
        scopes = sorted(set(scopes or ["drive"]))
        bad = [s for s in scopes if s not in SCOPES]
        if bad:
            raise TokenError(f"unknown scope {bad[0]!r} (scopes: {', '.join(SCOPES)})")
        if not tenant or len(tenant) > 200:
            raise TokenError("a token needs a tenant name (1-200 characters)")
        tid = secrets.token_hex(4)
        token = f"tpk_{tid}_{secrets.token_urlsafe(24)}"
        now = time.time()
        with self._write() as tx:
            q.insert_token(tx, tid, tenant, json.dumps(scopes), _hash(token), note, now)
        return token, TokenInfo(tid, tenant, scopes, note, now, None)

    def list(self, include_revoked: bool = False) -> list[TokenInfo]:
        with self._read() as tx:
            rows = q.tokens(tx, include_revoked=include_revoked)
        return [TokenInfo(r[0], r[1], json.loads(r[2]), r[3], r[4], r[5]) for r in rows]

    def revoke(self, tid: str) -> None:
        with self._write() as tx:
            if not q.revoke(tx, tid, time.time()):
                raise TokenError(f"no such live token: {tid}")

    def any(self) -> bool:
        with self._read() as tx:
            return q.any_live(tx)

    def check(self, token: str) -> Principal | None:
        """The principal of a live token, or None."""
        parts = token.split("_")
        if len(parts) < 3 or parts[0] != "tpk":
            return None
        with self._read() as tx:
            r = q.live_token(tx, parts[1])
        if r is None or not hmac.compare_digest(r[2], _hash(token)):
            return None
        return Principal(tenant=r[0], scopes=frozenset(json.loads(r[1])), token_id=parts[1])

    # -- per-tenant counts (limits) ----------------------------------------------------

    def open_sessions(self, tenant: str | None) -> int:
        with self._read() as tx:
            return q.open_sessions(tx, tenant)

    def busy_sessions(self, tenant: str | None) -> int:
        """Sessions of the tenant with a turn queued, running, recovering or retrying."""
        with self._read() as tx:
            return q.busy_sessions(tx, tenant)
